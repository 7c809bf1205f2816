"""Shapes and types of expressions: every expression's shape, and whether it is a boolean.

Elementwise operations and functions broadcast (:mod:`._shapes`), ``@`` and ``dot`` follow
NumPy's rules, ``.T`` reverses the axes, a subscript removes its axis and a slice keeps
it (both static and in range), a reduction removes its axis (all axes without one), and
``eye``/``zeros``/``ones`` have static positive sizes. A function is called with its
arity; only reductions and ``max``/``min`` take a keyword (``axis``). Comparisons and
``and``/``or``/``not`` give booleans, which are usable only as the condition of
``where(c, a, b)``. The shapes, subscripts, axes and constant shapes are recorded by the
``id`` of their AST node, for the symbolic pass and the code generator.
"""

from __future__ import annotations

import math

from . import _ast as A
from ._functions import FUNCTIONS, is_reduction
from ._scope import Scope, article
from ._shapes import MAX_ELEMENTS, broadcast, fmt, matmul_shape

__all__ = ["Inference"]

_COMPARISONS = {"<", "<=", ">", ">=", "==", "!="}


def _arity(spec) -> str:
    if spec.name in ("max", "min"):
        return "1 or 2 arguments"
    if spec.max_args < 0:
        return f"at least {spec.min_args} argument" + ("s" if spec.min_args != 1 else "")
    if spec.min_args == spec.max_args:
        return f"{spec.min_args} argument" + ("s" if spec.min_args != 1 else "")
    return f"{spec.min_args} to {spec.max_args} arguments"


class Inference:
    """Infers expressions' shapes and kinds ("float" or "bool") in a :class:`Scope`,
    recording what the later passes read."""

    def __init__(self, scope: Scope):
        self.scope = scope
        self.err = scope.err
        self.shapes: dict = {}          # id(expr) -> shape
        self.subscripts: dict = {}      # id(Index) -> tuple of int | slice
        self.axes: dict = {}            # id(reduction Call) -> int | None
        self.const_shapes: dict = {}    # id(Call eye/zeros/ones) -> shape

    def infer(self, expr, in_where=False):
        """Shape and kind ("float" or "bool") of an expression; records the shape."""
        shape, kind = self._infer(expr, in_where)
        self.shapes[id(expr)] = shape
        return shape, kind

    def value_shape(self, expr, message) -> tuple:
        """The shape of a value that must not be boolean (``message`` otherwise)."""
        shape, kind = self.infer(expr)
        if kind == "bool":
            raise self.err(message, expr)
        return shape

    def _float(self, expr, in_where=False):
        shape, kind = self.infer(expr, in_where)
        if kind == "bool":
            raise self.err("a comparison gives a boolean, usable only as the condition of "
                           "where(c, a, b)", expr)
        return shape

    def _infer(self, e, in_where):
        if isinstance(e, A.Number):
            return (), "float"
        if isinstance(e, A.Name):
            return self.scope.resolve(e), "float"
        if isinstance(e, A.Primed):
            return self.scope.resolve_primed(e), "float"
        if isinstance(e, A.UnaryOp):
            if e.op == "not":
                shape, kind = self.infer(e.operand, in_where)
                if kind != "bool":
                    raise self.err("'not' needs a comparison as its operand", e)
                self._only_in_where(e, in_where)
                return shape, "bool"
            return self._float(e.operand, in_where), "float"
        if isinstance(e, A.BinOp):
            return self._infer_binop(e, in_where)
        if isinstance(e, A.Transpose):
            return tuple(reversed(self._float(e.operand))), "float"
        if isinstance(e, A.Index):
            return self._infer_index(e), "float"
        if isinstance(e, A.Call):
            return self._infer_call(e, in_where)
        raise self.err(f"unsupported expression {type(e).__name__}", e)

    def _only_in_where(self, e, in_where):
        if not in_where:
            raise self.err("comparisons and and/or/not are usable only inside where(c, a, b)", e)

    def _infer_binop(self, e, in_where):
        op = e.op
        if op in ("and", "or"):
            ls, lk = self.infer(e.left, in_where)
            rs, rk = self.infer(e.right, in_where)
            if lk != "bool" or rk != "bool":
                raise self.err(f"'{op}' combines comparisons (e.g. a < b {op} c > d)", e)
            self._only_in_where(e, in_where)
            return self._bcast(ls, rs, e), "bool"
        ls = self._float(e.left, in_where)
        rs = self._float(e.right, in_where)
        if op in _COMPARISONS:
            self._only_in_where(e, in_where)
            return self._bcast(ls, rs, e), "bool"
        if op == "@":
            out = matmul_shape(ls, rs)
            if out is None:
                why = " (@ needs arrays of at least one dimension)" if not ls or not rs else ""
                raise self.err(f"shapes {fmt(ls)} and {fmt(rs)} do not fit for '@'{why}", e)
            return out, "float"
        return self._bcast(ls, rs, e), "float"

    def _bcast(self, a, b, e, what=None):
        out = broadcast(a, b)
        if out is None:
            raise self.err(f"shapes {fmt(a)} and {fmt(b)} do not broadcast for "
                           f"{what or repr(e.op)}", e)
        return out

    def _infer_index(self, e):
        const_int = self.scope.const_int
        shape = self._float(e.operand)
        if len(e.subscripts) > len(shape):
            raise self.err(f"too many subscripts: {len(e.subscripts)} for an array of shape "
                           f"{fmt(shape)}", e)
        spec = []
        out = []
        for axis, sub in enumerate(e.subscripts):
            n = shape[axis]
            if isinstance(sub, A.Slice):
                parts = [None if x is None else const_int(x, "a slice bound")
                         for x in (sub.start, sub.stop, sub.step)]
                if parts[2] == 0:
                    raise self.err("a slice step cannot be zero", sub.step)
                sl = slice(*parts)
                length = len(range(*sl.indices(n)))
                if length == 0:
                    raise self.err(f"the slice selects nothing from an axis of size {n}", sub)
                spec.append(sl)
                out.append(length)
            else:
                i = const_int(sub, "an index")
                if not -n <= i < n:
                    raise self.err(f"index {i} is out of range for an axis of size {n}", sub)
                spec.append(i)
        out += list(shape[len(e.subscripts):])
        self.subscripts[id(e)] = tuple(spec)
        return tuple(out)

    # ------------------------------------------------------------------------- calls
    def _infer_call(self, e, in_where):
        spec = FUNCTIONS.get(e.func)
        if spec is None:
            hint = self.scope.suggest(e.func, FUNCTIONS)
            kinds = self.scope.kinds
            if e.func in kinds:
                raise self.err(f"'{e.func}' is {article(kinds[e.func])}, not a function", e)
            raise self.err(f"unknown function '{e.func}'{hint}", e)
        n = len(e.args)
        if n < spec.min_args or (spec.max_args >= 0 and n > spec.max_args):
            raise self.err(f"{e.func} takes {_arity(spec)}, got {n}: {spec.signature}", e)
        self._check_keywords(e, spec)
        if is_reduction(e):
            return self._infer_reduction(e), "float"
        cat = spec.category
        if cat == "constant":
            return self._infer_constant(e), "float"
        if cat == "where":
            return self._infer_where(e), "float"
        shapes = [self._float(a) for a in e.args]
        if cat == "elementwise":
            out = shapes[0]
            for s in shapes[1:]:
                out = self._bcast(out, s, e, f"{e.func}(...)")
            return out, "float"
        return self._infer_linalg(e, cat, shapes), "float"

    def _check_keywords(self, e, spec):
        if not e.kwargs:
            return
        reduce_like = spec.category == "reduce" or e.func in ("max", "min")
        for k in e.kwargs:
            if not reduce_like:
                raise self.err(f"{e.func} takes no keyword arguments: {spec.signature}", k)
            if k.name != "axis":
                raise self.err(f"unknown keyword '{k.name}' for {e.func}: the only keyword is "
                               f"axis{self.scope.suggest(k.name, ['axis'])}", k)
        if len(e.kwargs) > 1:
            raise self.err(f"axis is given twice in {e.func}(...)", e.kwargs[1])
        if len(e.args) > 1:
            what = ("max(a, b) is elementwise and takes no axis"
                    if e.func in ("max", "min") else f"{e.func} takes one axis")
            raise self.err(f"axis is given twice: {what} ({spec.signature})", e.kwargs[0])

    def _infer_reduction(self, e):
        shape = self._float(e.args[0])
        axis_expr = e.args[1] if len(e.args) == 2 else (e.kwargs[0].value if e.kwargs else None)
        if axis_expr is None:
            self.axes[id(e)] = None
            return ()
        ax = self.scope.const_int(axis_expr, f"the axis of {e.func}")
        self.shapes[id(axis_expr)] = ()
        if not -len(shape) <= ax < len(shape):
            raise self.err(f"axis {ax} is out of range for shape {fmt(shape)}", axis_expr)
        ax %= len(shape)
        self.axes[id(e)] = ax
        return shape[:ax] + shape[ax + 1:]

    def _infer_constant(self, e):
        """``eye(n)``, ``zeros(...)``, ``ones(...)``: static positive sizes."""
        dims = tuple(self.scope.const_int(a, f"the size in {e.func}(...)") for a in e.args)
        for a, d in zip(e.args, dims):
            self.shapes[id(a)] = ()
            if d <= 0:
                raise self.err(f"sizes must be positive, got {d}", a)
        shape = (dims[0], dims[0]) if e.func == "eye" else dims
        if math.prod(shape) > MAX_ELEMENTS:
            raise self.err(f"{e.func}(...) would be too large", e)
        self.const_shapes[id(e)] = shape
        return shape

    def _infer_where(self, e):
        cs, ck = self.infer(e.args[0], True)
        if ck != "bool":
            raise self.err("the condition of where(c, a, b) must be a comparison "
                           "(e.g. x > 0)", e.args[0])
        a = self._float(e.args[1])
        b = self._float(e.args[2])
        return self._bcast(self._bcast(cs, a, e, "where"), b, e, "where")

    def _infer_linalg(self, e, cat, shapes):
        """``dot``, ``outer``, the matrix functions and ``solve``, from their arguments'
        shapes."""
        if e.func == "dot":
            a, b = shapes
            if len(a) > 2 or len(b) > 2:
                raise self.err(f"dot(a, b) takes arrays of at most 2 dimensions, got {fmt(a)} "
                               f"and {fmt(b)}", e)
            if not a or not b:
                return self._bcast(a, b, e, "dot")
            out = matmul_shape(a, b)
            if out is None:
                raise self.err(f"shapes {fmt(a)} and {fmt(b)} do not fit for dot(a, b)", e)
            return out
        if e.func == "outer":
            a, b = shapes
            return (math.prod(a), math.prod(b))
        if cat == "matrix":
            (m,) = shapes
            if len(m) < 2 or m[-1] != m[-2]:
                raise self.err(f"{e.func}(M) needs a square matrix, got shape {fmt(m)}", e)
            return m[:-2] if e.func == "logdet" else m
        if e.func == "solve":
            a, b = shapes
            if len(a) != 2 or a[0] != a[1]:
                raise self.err(f"solve(A, b) needs a square matrix A, got shape {fmt(a)}", e)
            if len(b) not in (1, 2) or b[0] != a[0]:
                raise self.err(f"solve(A, b): b of shape {fmt(b)} does not fit A of shape "
                               f"{fmt(a)}", e)
            return b
        raise self.err(f"unsupported function {e.func}", e)   # pragma: no cover
