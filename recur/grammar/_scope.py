"""Names of one recurrence: what each one is, where it may be read, and static integers.

Every name is declared once, as a dim, param, input, state, local definition or output;
``t`` (the step index) and ``inf`` are reserved. What an expression may read depends on
where it stands: a param's default reads numbers and dims, a state's initial value also
params, definitions and updates everything but outputs, and an output's value also ``h'``
(the new state). Static integers (dims, shapes, subscripts, axes) are made of numbers and
dims and evaluated here, exactly (integer arithmetic where the operands are integers).
"""

from __future__ import annotations

import difflib
import math
import operator

from . import _ast as A
from ._diag import dsl_error
from ._functions import FUNCTIONS
from ._shapes import MAX_ELEMENTS

__all__ = ["Scope", "article"]


def article(kind: str) -> str:
    """``kind`` with its article: a param, an input."""
    return ("an " if kind[0] in "aeiou" else "a ") + kind


class Scope:
    """The names of one recurrence and the context expressions are read in: ``update``
    (definitions and updates), ``output``, ``default`` (a param's) or ``init`` (a state's)."""

    def __init__(self, rec: A.Recurrence, text: str, filename):
        self.rec = rec
        self.text = text
        self.filename = filename
        self.kinds: dict = {}             # name -> dim|param|input|state|local|output
        self.decl_nodes: dict = {}        # name -> AST node declaring it
        self.dims: dict = {}              # dim name -> int
        self.name_shapes: dict = {}       # name -> shape of params/inputs/states/locals
        self.uses_t = False
        self.context = "update"

    # -------------------------------------------------------------------------- messages
    def err(self, message, node=None):
        line = getattr(node, "line", None) if node is not None else None
        column = getattr(node, "column", None) if node is not None else None
        return dsl_error(message, self.text, self.filename, line, column)

    def suggest(self, name, candidates) -> str:
        close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
        return f"; did you mean '{close[0]}'?" if close else ""

    # ----------------------------------------------------------------------- declaration
    def declare(self, name, kind, node):
        if name in ("t", "inf"):
            what = "the step index" if name == "t" else "infinity"
            raise self.err(f"'{name}' is reserved ({what}) and cannot be declared", node)
        if name in self.kinds:
            first = self.decl_nodes[name]
            raise self.err(f"'{name}' is already defined (as {article(self.kinds[name])} on "
                           f"line {first.line}); a name is defined once in a recurrence", node)
        self.kinds[name] = kind
        self.decl_nodes[name] = node

    # ---------------------------------------------------------------------------- lookup
    def resolve(self, e: A.Name) -> tuple:
        """The shape of a name read in the current context."""
        name = e.name
        if name == "t":
            if self.context not in ("update", "output"):
                raise self.err("'t' (the step index) can be used only in definitions, "
                               "updates and outputs", e)
            self.uses_t = True
            return ()
        kind = self.kinds.get(name)
        if kind is None:
            if name in FUNCTIONS:
                raise self.err(f"'{name}' is a function: call it as {FUNCTIONS[name].signature}", e)
            cands = [n for n in self.kinds if self._allowed(self.kinds[n])]
            raise self.err(f"unknown name '{name}'{self.suggest(name, cands)}", e)
        if not self._allowed(kind):
            where = {"default": "a param's default may use only numbers and dims",
                     "init": "a state's initial value may use only numbers, dims and params"}
            raise self.err(f"'{name}' is {article(kind)}: {where[self.context]}", e)
        if kind == "output":
            raise self.err(f"'{name}' is an output: outputs are results, not read by other "
                           "expressions (compute the shared part in a local definition)", e)
        if kind == "dim":
            return ()
        return self.name_shapes[name]

    def resolve_primed(self, e: A.Primed) -> tuple:
        """The shape of ``h'``, the new state, readable only in an output's value."""
        if self.kinds.get(e.name) == "state":
            if self.context == "output":
                return self.name_shapes[e.name]
            raise self.err(f"{e.name}' may appear only in an output's value: updates are "
                           f"simultaneous, so use {e.name} (the previous state) or a local "
                           "definition shared by both updates", e)
        raise self.err(f"unexpected \"'\" after '{e.name}': only states are updated, "
                       f"as STATE' = ...", e)

    def _allowed(self, kind):
        if self.context == "default":
            return kind == "dim"
        if self.context == "init":
            return kind in ("dim", "param")
        return True

    # ------------------------------------------------------------------ static integers
    def const_int(self, expr, what: str) -> int:
        v = self._const(expr, what)
        if isinstance(v, float):
            if not math.isfinite(v) or v != int(v):
                raise self.err(f"{what} must be an integer, got {v}", expr)
            v = int(v)
        return v

    def _const(self, expr, what):
        bad = f"{what} must be an integer made of numbers and dims"
        if isinstance(expr, A.Number):
            return expr.value
        if isinstance(expr, A.Name):
            if expr.name in self.dims:
                return self.dims[expr.name]
            if expr.name in self.kinds:
                raise self.err(f"{bad}; '{expr.name}' is {article(self.kinds[expr.name])}", expr)
            cands = list(self.dims)
            raise self.err(f"unknown dim '{expr.name}' in {what}{self.suggest(expr.name, cands)}",
                           expr)
        if isinstance(expr, A.UnaryOp) and expr.op == "-":
            return -self._const(expr.operand, what)
        if isinstance(expr, A.BinOp) and expr.op in ("+", "-", "*", "/", "**"):
            a = self._const(expr.left, what)
            b = self._const(expr.right, what)
            try:
                if expr.op == "/":
                    if b == 0:
                        raise self.err(f"division by zero in {what}", expr)
                    return a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 \
                        else a / b
                if expr.op == "**":
                    if isinstance(a, int) and isinstance(b, int) and b >= 0:
                        if abs(a) > 1 and b > 64:
                            raise self.err(f"{what} is too large", expr)
                        return a ** b
                    return float(a) ** float(b)
                return {"+": operator.add, "-": operator.sub, "*": operator.mul}[expr.op](a, b)
            except (OverflowError, ZeroDivisionError, TypeError, ValueError):
                raise self.err(f"{what} cannot be evaluated", expr) from None
        raise self.err(bad, expr)

    def declared_shape(self, shape_exprs, name) -> tuple:
        """The shape written in a declaration (``()`` when none is written)."""
        if shape_exprs is None:
            return ()
        shape = []
        for e in shape_exprs:
            n = self.const_int(e, f"a size in the shape of '{name}'")
            if n <= 0:
                raise self.err(f"sizes must be positive: the shape of '{name}' has {n}", e)
            shape.append(n)
        total = math.prod(shape)
        if total > MAX_ELEMENTS:
            raise self.err(f"'{name}' would have {total} elements, more than {MAX_ELEMENTS}",
                           shape_exprs[0])
        return tuple(shape)
