"""Semantic checks of one recurrence, with the dims it is loaded with.

Resolves names, checks definitions, updates and outputs, orders local definitions by
their dependencies (``networkx``), infers and checks every expression's shape (NumPy
broadcasting for elementwise operations, ``@`` rules, function arity, keywords and
argument shapes) and evaluates the static integers (dims, shapes, subscripts, axes).
``h'`` (the new state) is allowed only in an output's value. The result is a
:class:`Checked` recurrence that the symbolic pass and the code generator read.
"""

from __future__ import annotations

import difflib
import math
import operator
from dataclasses import dataclass, field
from typing import Optional

import networkx as nx

from . import _ast as A
from ._diag import dsl_error
from ._functions import FUNCTIONS, is_reduction

__all__ = ["Checked", "check", "MAX_ELEMENTS"]

MAX_ELEMENTS = 2 ** 31 - 1
_COMPARISONS = {"<", "<=", ">", ">=", "==", "!="}


@dataclass
class Checked:
    """A recurrence that passed every check; positions refer to ``text``."""
    name: str
    text: str
    filename: Optional[str]
    dims: dict                      # name -> int, file order
    params: dict                    # name -> shape
    param_values: dict              # name -> Expr | None
    inputs: dict                    # name -> shape
    states: dict                    # name -> shape
    state_inits: dict               # name -> Expr | None (None = 0)
    locals: dict                    # name -> Expr, in dependency order
    local_shapes: dict              # name -> shape
    updates: dict                   # state name -> Expr, in state order
    uses_t: bool
    outputs: dict = field(default_factory=dict)        # output name -> Expr, file order
    output_shapes: dict = field(default_factory=dict)  # output name -> shape
    update_stmts: dict = field(default_factory=dict)   # state name -> its Update statement
    shapes: dict = field(default_factory=dict)   # id(expr) -> shape
    subscripts: dict = field(default_factory=dict)  # id(Index) -> tuple of int | slice
    axes: dict = field(default_factory=dict)     # id(reduction Call) -> int | None
    const_shapes: dict = field(default_factory=dict)  # id(Call eye/zeros/ones) -> shape
    decl_nodes: dict = field(default_factory=dict)    # name -> AST node declaring it
    kinds: dict = field(default_factory=dict)    # name -> dim|param|input|state|local

    def shape_of(self, expr) -> tuple:
        return self.shapes[id(expr)]


def _broadcast(a: tuple, b: tuple) -> Optional[tuple]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _matmul_shape(a: tuple, b: tuple) -> Optional[tuple]:
    if len(a) == 0 or len(b) == 0:
        return None
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        return None
    batch = _broadcast(a2[:-2], b2[:-2])
    if batch is None:
        return None
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


class _Checker:
    def __init__(self, rec: A.Recurrence, text: str, filename, dim_overrides: dict):
        self.rec = rec
        self.text = text
        self.filename = filename
        self.overrides = dict(dim_overrides)
        self.kinds: dict = {}
        self.decl_nodes: dict = {}
        self.dims: dict = {}
        self.shapes_decl: dict = {}       # name -> shape for params/inputs/states/locals
        self.shapes: dict = {}
        self.subscripts: dict = {}
        self.axes: dict = {}
        self.const_shapes: dict = {}
        self.uses_t = False
        self.context = "update"

    # -------------------------------------------------------------------------- helpers
    def err(self, message, node=None):
        line = getattr(node, "line", None) if node is not None else None
        column = getattr(node, "column", None) if node is not None else None
        return dsl_error(message, self.text, self.filename, line, column)

    def _declared_names(self):
        return list(self.kinds)

    def suggest(self, name, candidates) -> str:
        close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
        return f"; did you mean '{close[0]}'?" if close else ""

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
                raise self.err(f"{bad}; '{expr.name}' is {_a(self.kinds[expr.name])}", expr)
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

    def eval_shape_decl(self, shape_exprs, name):
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

    # ------------------------------------------------------------------------- declare
    def declare(self, name, kind, node):
        if name in ("t", "inf"):
            what = "the step index" if name == "t" else "infinity"
            raise self.err(f"'{name}' is reserved ({what}) and cannot be declared", node)
        if name in self.kinds:
            first = self.decl_nodes[name]
            raise self.err(f"'{name}' is already defined (as {_a(self.kinds[name])} on line "
                           f"{first.line}); a name is defined once in a recurrence", node)
        self.kinds[name] = kind
        self.decl_nodes[name] = node

    # ------------------------------------------------------------------------ run
    def run(self) -> Checked:
        rec = self.rec
        dims_items, params, inputs, states, defines, updates, outputs = self._sort(rec)
        self._declare_all(dims_items, params, inputs, states, defines, outputs)
        self._set_dims(dims_items)
        self._declared_shapes(params, inputs, states)
        param_values = self._values(params, "param", "default")
        state_inits = self._values(states, "state", "init")
        upd = self._match_updates(updates, states)
        order, by_name, local_shapes = self._order_locals(defines)
        updates_out = self._update_shapes(states, upd)
        outputs_out, output_shapes = self._output_shapes(outputs)
        return Checked(
            name=rec.name, text=self.text, filename=self.filename, dims=dict(self.dims),
            params={p.name: self.shapes_decl[p.name] for p in params},
            param_values=param_values,
            inputs={i.name: self.shapes_decl[i.name] for i in inputs},
            states={s.name: self.shapes_decl[s.name] for s in states},
            state_inits=state_inits,
            locals={n: by_name[n].value for n in order}, local_shapes=local_shapes,
            updates=updates_out, uses_t=self.uses_t, outputs=outputs_out,
            output_shapes=output_shapes, update_stmts=upd, shapes=self.shapes,
            subscripts=self.subscripts, axes=self.axes, const_shapes=self.const_shapes,
            decl_nodes=dict(self.decl_nodes), kinds=dict(self.kinds))

    @staticmethod
    def _sort(rec):
        """The statements by kind: dim items, param/input/state items, definitions,
        updates, outputs (each in file order)."""
        dims_items, params, inputs, states, defines, updates, outputs = [], [], [], [], [], [], []
        for st in rec.statements:
            if isinstance(st, A.DimStmt):
                dims_items += list(st.items)
            elif isinstance(st, A.DeclStmt):
                {"param": params, "input": inputs, "state": states}[st.kind].extend(st.items)
            elif isinstance(st, A.Define):
                defines.append(st)
            elif isinstance(st, A.Update):
                updates.append(st)
            elif isinstance(st, A.Output):
                outputs.append(st)
        return dims_items, params, inputs, states, defines, updates, outputs

    def _declare_all(self, dims_items, params, inputs, states, defines, outputs):
        """Every name, once."""
        for it in dims_items:
            self.declare(it.name, "dim", it)
        for kind, items in (("param", params), ("input", inputs), ("state", states)):
            for it in items:
                self.declare(it.name, kind, it)
        for d in defines:
            self.declare(d.name, "local", d)
        for o in outputs:
            self.declare(o.name, "output", o)

    def _set_dims(self, dims_items):
        """The dims' values (load-time overrides win)."""
        unknown = [k for k in self.overrides if self.kinds.get(k) != "dim"]
        if unknown:
            names = self.dims_names(dims_items)
            declared = ", ".join(names) or "none"
            k = unknown[0]
            raise self.err(f"unknown dim '{k}' given at load time{self.suggest(k, names)}"
                           f" (the recurrence '{self.rec.name}' declares dims: {declared})",
                           self.rec)
        for it in dims_items:
            if it.name in self.overrides:
                raw = self.overrides[it.name]
                v = _override_int(raw)
                if v is None or v <= 0:
                    raise self.err(f"dim {it.name} must be a positive integer, got "
                                   f"{raw if v is None else v!r}", it)
            else:
                v = self.const_int(it.value, f"dim {it.name}")
                if v <= 0:
                    raise self.err(f"dim {it.name} must be a positive integer, got {v}", it.value)
            if v > MAX_ELEMENTS:
                raise self.err(f"dim {it.name} = {v} is too large", it)
            self.dims[it.name] = int(v)

    def _declared_shapes(self, params, inputs, states):
        for kind, items in (("param", params), ("input", inputs), ("state", states)):
            for it in items:
                self.shapes_decl[it.name] = self.eval_shape_decl(it.shape, it.name)
                if kind == "input" and it.value is not None:
                    raise self.err(f"input '{it.name}' cannot have a value: inputs are given "
                                   "per step at run time", it.value)
        if not states:
            raise self.err(f"recurrence '{self.rec.name}' declares no state (e.g. state h = 0)",
                           self.rec)

    def _values(self, items, kind, context):
        """Param defaults (numbers and dims) or state initial values (numbers, dims and
        params): ``name -> Expr | None``."""
        values = {}
        self.context = context
        for it in items:
            if it.value is not None:
                self.check_value(it.value, it.name, kind)
            values[it.name] = it.value
        return values

    def _match_updates(self, updates, states) -> dict:
        """Every state updated exactly once, nothing else: ``state name -> Update``."""
        upd: dict = {}
        for u in updates:
            kind = self.kinds.get(u.name)
            if kind is None:
                raise self.err(f"update of unknown state '{u.name}'"
                               f"{self.suggest(u.name, [s.name for s in states])}", u)
            if kind != "state":
                raise self.err(f"'{u.name}' is {_a(kind)}, not a state: only states are updated "
                               f"with {u.name}' = ...", u)
            if u.name in upd:
                raise self.err(f"state '{u.name}' is updated twice (first on line "
                               f"{upd[u.name].line}); every state has exactly one update", u)
            upd[u.name] = u
        for it in states:
            if it.name not in upd:
                raise self.err(f"state '{it.name}' has no update: add a line {it.name}' = ...",
                               it)
        return upd

    def _order_locals(self, defines):
        """The local definitions in dependency order (file order among independent ones),
        with their shapes: ``(order, name -> Define, name -> shape)``."""
        self.context = "update"
        graph = nx.DiGraph()
        order_index = {}
        for i, d in enumerate(defines):
            graph.add_node(d.name)
            order_index[d.name] = i
        for d in defines:
            for ref in _names_in(d.value):
                if self.kinds.get(ref.name) == "local":
                    graph.add_edge(ref.name, d.name)
        try:
            order = list(nx.lexicographical_topological_sort(graph, key=lambda n: order_index[n]))
        except nx.NetworkXUnfeasible:
            raise self._cycle_error(graph, defines, order_index) from None
        by_name = {d.name: d for d in defines}
        local_shapes = {}
        for name in order:
            shape = self._not_a_comparison(
                by_name[name].value, f"'{name}' is a comparison: comparisons and and/or/not "
                                     "are usable only inside where(...)")
            self.shapes_decl[name] = shape
            local_shapes[name] = shape
        return order, by_name, local_shapes

    def _cycle_error(self, graph, defines, order_index):
        cycle = _a_cycle(graph, defines)
        first = min(cycle, key=lambda n: order_index[n])
        if len(cycle) == 1:
            return self.err(f"'{first}' is defined in terms of itself", self.decl_nodes[first])
        cycle = list(reversed(cycle))          # edges point from a name to its users
        k = cycle.index(first)
        cycle = cycle[k:] + cycle[:k]
        path = " -> ".join(cycle + [first])
        return self.err(f"definitions form a cycle: {path} (each uses the next)",
                        self.decl_nodes[first])

    def _update_shapes(self, states, upd) -> dict:
        """Each update's shape against its state's: ``state name -> Expr``."""
        updates_out = {}
        for it in states:
            u = upd[it.name]
            shape = self._not_a_comparison(
                u.value, f"{it.name}' is a comparison: comparisons and and/or/not are usable"
                         " only inside where(...)")
            decl = self.shapes_decl[it.name]
            if _broadcast(shape, decl) != decl:
                raise self.err(f"{it.name}' has shape {_fmt(shape)} but state '{it.name}' is "
                               f"declared with shape {_fmt(decl)}", u.value)
            updates_out[it.name] = u.value
        return updates_out

    def _output_shapes(self, outputs):
        """Outputs' values and shapes (``h'`` is the new state here)."""
        self.context = "output"
        outputs_out, output_shapes = {}, {}
        for o in outputs:
            output_shapes[o.name] = self._not_a_comparison(
                o.value, f"output '{o.name}' is a comparison: comparisons and and/or/not "
                         "are usable only inside where(...)")
            outputs_out[o.name] = o.value
        return outputs_out, output_shapes

    def _not_a_comparison(self, expr, message) -> tuple:
        """The shape of a value that must not be boolean (``message`` otherwise)."""
        shape, kind = self.infer(expr)
        if kind == "bool":
            raise self.err(message, expr)
        return shape

    @staticmethod
    def dims_names(items):
        return [it.name for it in items]

    def check_value(self, expr, name, kind):
        shape, k = self.infer(expr)
        if k == "bool":
            raise self.err(f"the value of {kind} '{name}' is a comparison; comparisons are usable "
                           "only inside where(...)", expr)
        decl = self.shapes_decl[name]
        if _broadcast(shape, decl) != decl:
            raise self.err(f"the value of {kind} '{name}' has shape {_fmt(shape)}, which does not "
                           f"fit its declared shape {_fmt(decl)}", expr)

    # ----------------------------------------------------------------------- inference
    def infer(self, expr, in_where=False):
        """Shape and kind ("float" or "bool") of an expression; records the shape."""
        shape, kind = self._infer(expr, in_where)
        self.shapes[id(expr)] = shape
        return shape, kind

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
            return self._infer_name(e)
        if isinstance(e, A.Primed):
            if self.kinds.get(e.name) == "state":
                if self.context == "output":
                    return self.shapes_decl[e.name], "float"
                raise self.err(f"{e.name}' may appear only in an output's value: updates are "
                               f"simultaneous, so use {e.name} (the previous state) or a local "
                               "definition shared by both updates", e)
            raise self.err(f"unexpected \"'\" after '{e.name}': only states are updated, "
                           f"as STATE' = ...", e)
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

    def _infer_name(self, e):
        name = e.name
        if name == "t":
            if self.context not in ("update", "output"):
                raise self.err("'t' (the step index) can be used only in definitions, "
                               "updates and outputs", e)
            self.uses_t = True
            return (), "float"
        kind = self.kinds.get(name)
        if kind is None:
            if name in FUNCTIONS:
                raise self.err(f"'{name}' is a function: call it as {FUNCTIONS[name].signature}", e)
            cands = [n for n in self.kinds if self._allowed(self.kinds[n])]
            raise self.err(f"unknown name '{name}'{self.suggest(name, cands)}", e)
        if not self._allowed(kind):
            where = {"default": "a param's default may use only numbers and dims",
                     "init": "a state's initial value may use only numbers, dims and params"}
            raise self.err(f"'{name}' is {_a(kind)}: {where[self.context]}", e)
        if kind == "output":
            raise self.err(f"'{name}' is an output: outputs are results, not read by other "
                           "expressions (compute the shared part in a local definition)", e)
        if kind == "dim":
            return (), "float"
        return self.shapes_decl[name], "float"

    def _allowed(self, kind):
        if self.context == "default":
            return kind == "dim"
        if self.context == "init":
            return kind in ("dim", "param")
        return True

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
            out = _matmul_shape(ls, rs)
            if out is None:
                why = " (@ needs arrays of at least one dimension)" if not ls or not rs else ""
                raise self.err(f"shapes {_fmt(ls)} and {_fmt(rs)} do not fit for '@'{why}", e)
            return out, "float"
        return self._bcast(ls, rs, e), "float"

    def _bcast(self, a, b, e, what=None):
        out = _broadcast(a, b)
        if out is None:
            raise self.err(f"shapes {_fmt(a)} and {_fmt(b)} do not broadcast for "
                           f"{what or repr(e.op)}", e)
        return out

    def _infer_index(self, e):
        shape = self._float(e.operand)
        if len(e.subscripts) > len(shape):
            raise self.err(f"too many subscripts: {len(e.subscripts)} for an array of shape "
                           f"{_fmt(shape)}", e)
        spec = []
        out = []
        for axis, sub in enumerate(e.subscripts):
            n = shape[axis]
            if isinstance(sub, A.Slice):
                parts = [None if x is None else self.const_int(x, "a slice bound")
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
                i = self.const_int(sub, "an index")
                if not -n <= i < n:
                    raise self.err(f"index {i} is out of range for an axis of size {n}", sub)
                spec.append(i)
        out += list(shape[len(e.subscripts):])
        self.subscripts[id(e)] = tuple(spec)
        return tuple(out)

    def _check_keywords(self, e, spec):
        if not e.kwargs:
            return
        reduce_like = spec.category == "reduce" or e.func in ("max", "min")
        for k in e.kwargs:
            if not reduce_like:
                raise self.err(f"{e.func} takes no keyword arguments: {spec.signature}", k)
            if k.name != "axis":
                raise self.err(f"unknown keyword '{k.name}' for {e.func}: the only keyword is "
                               f"axis{self.suggest(k.name, ['axis'])}", k)
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
        ax = self.const_int(axis_expr, f"the axis of {e.func}")
        self.shapes[id(axis_expr)] = ()
        if not -len(shape) <= ax < len(shape):
            raise self.err(f"axis {ax} is out of range for shape {_fmt(shape)}", axis_expr)
        ax %= len(shape)
        self.axes[id(e)] = ax
        return shape[:ax] + shape[ax + 1:]

    def _infer_call(self, e, in_where):
        spec = FUNCTIONS.get(e.func)
        if spec is None:
            hint = self.suggest(e.func, FUNCTIONS)
            if e.func in self.kinds:
                raise self.err(f"'{e.func}' is {_a(self.kinds[e.func])}, not a function", e)
            raise self.err(f"unknown function '{e.func}'{hint}", e)
        n = len(e.args)
        if n < spec.min_args or (spec.max_args >= 0 and n > spec.max_args):
            raise self.err(f"{e.func} takes {_arity(spec)}, got {n}: {spec.signature}", e)
        self._check_keywords(e, spec)
        if is_reduction(e):
            return self._infer_reduction(e), "float"
        cat = spec.category
        if cat == "constant":
            dims = tuple(self.const_int(a, f"the size in {e.func}(...)") for a in e.args)
            for a, d in zip(e.args, dims):
                self.shapes[id(a)] = ()
                if d <= 0:
                    raise self.err(f"sizes must be positive, got {d}", a)
            shape = (dims[0], dims[0]) if e.func == "eye" else dims
            if math.prod(shape) > MAX_ELEMENTS:
                raise self.err(f"{e.func}(...) would be too large", e)
            self.const_shapes[id(e)] = shape
            return shape, "float"
        if cat == "where":
            cs, ck = self.infer(e.args[0], True)
            if ck != "bool":
                raise self.err("the condition of where(c, a, b) must be a comparison "
                               "(e.g. x > 0)", e.args[0])
            a = self._float(e.args[1])
            b = self._float(e.args[2])
            return self._bcast(self._bcast(cs, a, e, "where"), b, e, "where"), "float"
        shapes = [self._float(a) for a in e.args]
        if cat == "elementwise":
            out = shapes[0]
            for s in shapes[1:]:
                out = self._bcast(out, s, e, f"{e.func}(...)")
            return out, "float"
        if e.func == "dot":
            a, b = shapes
            if len(a) > 2 or len(b) > 2:
                raise self.err(f"dot(a, b) takes arrays of at most 2 dimensions, got {_fmt(a)} "
                               f"and {_fmt(b)}", e)
            if not a or not b:
                return self._bcast(a, b, e, "dot"), "float"
            out = _matmul_shape(a, b)
            if out is None:
                raise self.err(f"shapes {_fmt(a)} and {_fmt(b)} do not fit for dot(a, b)", e)
            return out, "float"
        if e.func == "outer":
            a, b = shapes
            return (math.prod(a), math.prod(b)), "float"
        if cat == "matrix":
            (m,) = shapes
            if len(m) < 2 or m[-1] != m[-2]:
                raise self.err(f"{e.func}(M) needs a square matrix, got shape {_fmt(m)}", e)
            return (m[:-2] if e.func == "logdet" else m), "float"
        if e.func == "solve":
            a, b = shapes
            if len(a) != 2 or a[0] != a[1]:
                raise self.err(f"solve(A, b) needs a square matrix A, got shape {_fmt(a)}", e)
            if len(b) not in (1, 2) or b[0] != a[0]:
                raise self.err(f"solve(A, b): b of shape {_fmt(b)} does not fit A of shape "
                               f"{_fmt(a)}", e)
            return b, "float"
        raise self.err(f"unsupported function {e.func}", e)   # pragma: no cover


def _override_int(v) -> Optional[int]:
    """A load-time dim override as an ``int`` (Python or NumPy integer), else ``None``."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with jax
        return None
    return int(v) if isinstance(v, np.integer) else None


def _a(kind: str) -> str:
    """``kind`` with its article: a param, an input."""
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _arity(spec) -> str:
    if spec.name in ("max", "min"):
        return "1 or 2 arguments"
    if spec.max_args < 0:
        return f"at least {spec.min_args} argument" + ("s" if spec.min_args != 1 else "")
    if spec.min_args == spec.max_args:
        return f"{spec.min_args} argument" + ("s" if spec.min_args != 1 else "")
    return f"{spec.min_args} to {spec.max_args} arguments"


def _names_in(expr):
    """All ``Name`` nodes of an expression (iteratively)."""
    out = []
    stack = [expr]
    while stack:
        e = stack.pop()
        if e is None:
            continue
        if isinstance(e, A.Name):
            out.append(e)
        elif isinstance(e, A.UnaryOp):
            stack.append(e.operand)
        elif isinstance(e, A.BinOp):
            stack += [e.left, e.right]
        elif isinstance(e, A.Transpose):
            stack.append(e.operand)
        elif isinstance(e, A.Index):
            stack.append(e.operand)
            stack += list(e.subscripts)
        elif isinstance(e, A.Slice):
            stack += [e.start, e.stop, e.step]
        elif isinstance(e, A.Call):
            stack += list(e.args) + [k.value for k in e.kwargs]
    return out


def _a_cycle(graph, defines):
    for d in defines:
        if graph.has_edge(d.name, d.name):
            return [d.name]
    try:
        edges = nx.find_cycle(graph)
        return [u for u, _ in edges]
    except nx.NetworkXNoCycle:  # pragma: no cover
        return [defines[0].name]


def check(rec: A.Recurrence, text: str, filename=None, dims: Optional[dict] = None) -> Checked:
    """Check one recurrence with the given dim overrides; raises ``DSLError``."""
    return _Checker(rec, text, filename, dims or {}).run()
