"""Python (JAX) code for one ``.rec`` expression, as written.

Every expression is generated from the AST as written: the operations in the file's order,
nothing simplified (DSL.md: the formula is evaluated as written); subexpressions made of
numbers and dims are folded as NumPy would (:func:`._structure.const_value`). Names become
the Python variables they are given by the code generator. Each piece of generated code is
a :class:`Frag`: its text, its precedence (parentheses are added only where Python needs
them) and the column span of every operation within the text, from which the source map
is built.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

from . import _ast as A
from ._check import Checked
from ._functions import FUNCTIONS, REDUCTIONS, is_reduction
from ._structure import const_value
from ._sympy_print import subs_str

__all__ = ["Frag", "AstPrinter"]

# Python operator precedence (the DSL's is the same)
_PREC = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "@": 6, "neg": 7, "**": 8}
_ATOM = 9


class Frag(NamedTuple):
    """Generated code for an expression: its text, precedence, and the spans
    ``(start, end, AST node)`` of every operation within the text."""
    text: str
    prec: int
    spans: tuple = ()


def _cat(prec, *parts, node=None) -> Frag:
    """Concatenate strings and fragments, shifting the fragments' spans; ``node`` spans
    the whole result."""
    out, spans, pos = [], [], 0
    for p in parts:
        if isinstance(p, str):
            out.append(p)
            pos += len(p)
        else:
            out.append(p.text)
            spans += [(a + pos, b + pos, n) for a, b, n in p.spans]
            pos += len(p.text)
    if node is not None:
        spans.append((0, pos, node))
    return Frag("".join(out), prec, tuple(spans))


def _paren(frag: Frag, need: int) -> Frag:
    return _cat(_ATOM, "(", frag, ")") if frag.prec < need else frag


def _float_lit(v: float) -> Frag:
    if math.isnan(v):
        return Frag("math.nan", _ATOM)
    if math.isinf(v):
        return Frag("math.inf", _ATOM) if v > 0 else Frag("-math.inf", 7)
    s = repr(float(v))
    return Frag(s, 7 if s.startswith("-") else _ATOM)


def _subs_code(spec):
    return subs_str(spec) if spec else "()"


class AstPrinter:
    """The code of the expressions of one checked recurrence."""

    def __init__(self, chk: Checked, names: dict):
        self.chk = chk
        self.names = names         # DSL name (h' for a new state) -> python variable
        self._consts: dict = {}

    def const(self, e) -> Optional[float]:
        """The value of a subexpression made of numbers and dims (folded as NumPy would)."""
        return const_value(self.chk, e, self._consts)

    def code(self, e) -> Frag:
        c = self.const(e)
        if c is not None:
            return _cat(_float_lit(c).prec, _float_lit(c), node=e)
        if isinstance(e, A.Name):
            return Frag(self.names[e.name], _ATOM)
        if isinstance(e, A.Primed):
            return Frag(self.names[e.name + "'"], _ATOM)
        if isinstance(e, A.UnaryOp):
            inner = self.code(e.operand)
            if e.op == "not":
                return _cat(_ATOM, "jnp.logical_not(", inner, ")", node=e)
            s = _paren(inner, 7)
            return _cat(7, "- " if s.text.startswith("-") else "-", s, node=e)
        if isinstance(e, A.BinOp):
            return self.binop(e)
        if isinstance(e, A.Transpose):
            return _cat(_ATOM, "jnp.transpose(", self.code(e.operand), ")", node=e)
        if isinstance(e, A.Index):
            spec = self.chk.subscripts[id(e)]
            return _cat(_ATOM, _paren(self.code(e.operand), _ATOM), f"[{_subs_code(spec)}]",
                        node=e)
        if isinstance(e, A.Call):
            return self.call(e)
        raise TypeError(type(e).__name__)  # pragma: no cover

    def binop(self, e) -> Frag:
        op = e.op
        left, right = self.code(e.left), self.code(e.right)
        if op in ("and", "or"):
            return _cat(_ATOM, f"jnp.logical_{op}(", left, ", ", right, ")", node=e)
        p = _PREC[op]
        if op == "**":
            rc = self.const(e.right)
            if rc == 0.5:       # NumPy's array power reads ** 0.5 as sqrt (-inf -> nan)
                return _cat(_ATOM, "jnp.sqrt(", left, ")", node=e)
            if rc is not None and float(rc).is_integer() and abs(rc) <= 2 ** 31:
                right = _cat(7 if rc < 0 else _ATOM, str(int(rc)), node=e.right)
            return _cat(p, _paren(left, p + 1), " ** ", _paren(right, 7), node=e)
        need_left = p + 1 if p == 4 else p
        return _cat(p, _paren(left, need_left), f" {op} ", _paren(right, p + 1), node=e)

    def call(self, e) -> Frag:
        name = e.func
        chk = self.chk
        if name == "eye":
            return _cat(_ATOM, f"jnp.eye({chk.const_shapes[id(e)][0]}, dtype=DTYPE)", node=e)
        if name in ("zeros", "ones"):
            return _cat(_ATOM, f"jnp.{name}({chk.const_shapes[id(e)]!r}, DTYPE)", node=e)
        if is_reduction(e):
            ax = chk.axes[id(e)]
            axis = "" if ax is None else f", axis={ax}"
            return _cat(_ATOM, f"{REDUCTIONS[name][0]}(", self.code(e.args[0]), f"{axis})",
                        node=e)
        parts: list = []
        for i, a in enumerate(e.args):
            parts += ([", "] if i else []) + [self.code(a)]
        if name == "logdet":
            return _cat(_ATOM, "jnp.linalg.slogdet(", *parts, ")[1]", node=e)
        return _cat(_ATOM, f"{FUNCTIONS[name].jax}(", *parts, ")", node=e)
