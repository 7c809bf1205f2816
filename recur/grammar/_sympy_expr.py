"""Sympy expressions of a checked recurrence, built from the AST (never from text).

One ``sympy.Symbol`` per declared name (so ``I``, ``N``, ``E``, ``S``, ``Q`` are plain
symbols), with elementwise meaning (commutative products, NumPy broadcasting); dims are
their integers and locals are substituted. Everything that is not elementwise algebra is
an opaque, undefined sympy function (:func:`F`): elementwise functions (``tanh``,
``sigmoid``, ..., comparisons, ``where``), and the shape-sensitive ones (``matmul``,
``transpose``, ``index``, the reductions, ``dot``, ``outer``, ``inv``, ``solve``,
``cholesky``, ``logdet``, ``eye``, ``zeros``, ``ones``: :data:`SHAPED`), which carry, as
their last argument, a ``Tuple`` with the shapes of their arguments and result (and a
static extra: subscript id or axis). Constant powers fold exactly where sympy can
(rationals to small integer powers) and in floats otherwise.
"""

from __future__ import annotations

import math
from typing import Optional

import sympy as sp

from . import _ast as A
from ._check import Checked
from ._functions import is_reduction

__all__ = ["F", "Builder", "fname", "data_args", "meta_of", "tree_size", "SHAPED",
           "ELEMENTWISE_OPS", "LINEAR_OPS", "NONLINEAR_REDUCTIONS", "BILINEAR_OPS",
           "MATRIX_OPS", "CONSTANT_OPS", "REDUCE_OPS"]

ELEMENTWISE_OPS = {"abs", "sqrt", "exp", "log", "log1p", "expm1", "sin", "cos", "tan",
                   "tanh", "sigmoid", "softplus", "relu", "max", "min", "clip",
                   "lt", "le", "gt", "ge", "eq", "ne", "and_", "or_", "not_"}
LINEAR_OPS = {"transpose", "index", "sum", "mean"}
NONLINEAR_REDUCTIONS = {"logsumexp", "max_over", "min_over"}
BILINEAR_OPS = {"matmul", "dot", "outer"}
MATRIX_OPS = {"inv", "cholesky", "logdet"}
CONSTANT_OPS = {"eye", "zeros", "ones"}
SHAPED = LINEAR_OPS | NONLINEAR_REDUCTIONS | BILINEAR_OPS | MATRIX_OPS | CONSTANT_OPS | {"solve"}
REDUCE_OPS = {"sum", "mean", "logsumexp", "max_over", "min_over"}
_CMP = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_FUNCS: dict = {}


def F(name):
    f = _FUNCS.get(name)
    if f is None:
        f = _FUNCS[name] = sp.Function(name)
    return f


def _meta(shapes, out, extra=None):
    items = [sp.Tuple(*[sp.Integer(d) for d in s]) for s in shapes]
    items.append(sp.Tuple(*[sp.Integer(d) for d in out]))
    if extra is not None:
        items.append(sp.Integer(extra))
    return sp.Tuple(*items)


def fname(e) -> Optional[str]:
    """The name of an opaque function application; ``None`` for anything else."""
    if isinstance(e, sp.core.function.AppliedUndef):
        return e.func.__name__
    return None


def data_args(e):
    """The data arguments of an opaque function application (without its shape tag)."""
    name = fname(e)
    return e.args[:-1] if name in SHAPED else e.args


def meta_of(e):
    m = e.args[-1]
    shapes = [tuple(int(d) for d in t) for t in m.args if isinstance(t, sp.Tuple)]
    extras = [int(x) for x in m.args if not isinstance(x, sp.Tuple)]
    return shapes[:-1], shapes[-1], (extras[0] if extras else None)


def _number(value):
    if isinstance(value, int):
        return sp.Integer(value) if abs(value) < 2 ** 53 else sp.Float(float(value))
    if math.isinf(value):
        return sp.oo if value > 0 else -sp.oo
    if math.isnan(value):
        return sp.nan
    return sp.Float(value)


def _pow(a, b):
    if a.is_Number and b.is_Number:
        if (a.is_Rational and b.is_Integer and abs(int(b)) <= 64) or (a in (0, 1) and b.is_Rational):
            return a ** b
        try:
            fa, fb = float(a), float(b)
            with_np = fa ** fb
            if isinstance(with_np, complex):
                return sp.nan
            return _number(float(with_np))
        except OverflowError:
            return sp.oo
        except (ZeroDivisionError, ValueError, TypeError):
            return sp.zoo if float(b) < 0 else sp.nan
    if b.is_Number and b.is_Rational is False and float(b).is_integer() and abs(float(b)) < 64:
        b = sp.Integer(int(float(b)))            # h ** 2.0 is h ** 2
    return sp.Pow(a, b)


class Builder:
    def __init__(self, chk: Checked, symbols: dict):
        self.chk = chk
        self.sym = symbols
        self.local_exprs: dict = {}
        self.subscripts: list = []            # id -> tuple of int | slice
        self._sub_ids: dict = {}

    def sub_id(self, spec) -> int:
        key = tuple(("s", s.start, s.stop, s.step) if isinstance(s, slice) else ("i", s)
                    for s in spec)
        if key not in self._sub_ids:
            self._sub_ids[key] = len(self.subscripts)
            self.subscripts.append(spec)
        return self._sub_ids[key]

    def shape(self, e):
        return self.chk.shapes[id(e)]

    def build(self, e):
        chk = self.chk
        if isinstance(e, A.Number):
            return _number(e.value)
        if isinstance(e, A.Name):
            if e.name == "t":
                return self.sym["t"]
            kind = chk.kinds[e.name]
            if kind == "dim":
                return sp.Integer(chk.dims[e.name])
            if kind == "local":
                return self.local_exprs[e.name]
            return self.sym[e.name]
        if isinstance(e, A.UnaryOp):
            a = self.build(e.operand)
            return F("not_")(a) if e.op == "not" else -a
        if isinstance(e, A.BinOp):
            a, b = self.build(e.left), self.build(e.right)
            op = e.op
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                return a / b
            if op == "**":
                return _pow(a, b)
            if op == "@":
                return F("matmul")(a, b, _meta([self.shape(e.left), self.shape(e.right)],
                                               self.shape(e)))
            if op in _CMP:
                return F(_CMP[op])(a, b)
            if op == "and":
                return F("and_")(a, b)
            if op == "or":
                return F("or_")(a, b)
        if isinstance(e, A.Transpose):
            a = self.build(e.operand)
            s = self.shape(e.operand)
            if len(s) <= 1:
                return a
            return F("transpose")(a, _meta([s], self.shape(e)))
        if isinstance(e, A.Index):
            a = self.build(e.operand)
            spec = chk.subscripts[id(e)]
            return F("index")(a, _meta([self.shape(e.operand)], self.shape(e), self.sub_id(spec)))
        if isinstance(e, A.Call):
            name = e.func
            if name in CONSTANT_OPS:
                return F(name)(_meta([], chk.const_shapes[id(e)]))
            if is_reduction(e):
                a = self.build(e.args[0])
                ax = chk.axes[id(e)]
                op = {"max": "max_over", "min": "min_over"}.get(name, name)
                return F(op)(a, _meta([self.shape(e.args[0])], self.shape(e),
                                      -1 if ax is None else ax))
            args = [self.build(x) for x in e.args]
            if name in BILINEAR_OPS or name in MATRIX_OPS or name == "solve":
                return F(name)(*args, _meta([self.shape(x) for x in e.args], self.shape(e)))
            return F(name)(*args)
        raise TypeError(f"cannot build {type(e).__name__}")  # pragma: no cover


def tree_size(e, limit):
    """The number of nodes of ``e``, counted up to just past ``limit``."""
    n, stack = 0, [e]
    while stack:
        x = stack.pop()
        n += 1
        if n > limit:
            return n
        stack.extend(x.args)
    return n
