"""The statement rules of a recurrence, applied in the order :func:`._check.check` calls them.

Every name is declared once; load-time dim overrides name declared dims and are positive
integers, as are the dims' own values; inputs have no value; at least one state is
declared; a param's default and a state's initial value fit the declared shape; every
state is updated exactly once, with a value that fits its shape; local definitions are
ordered by their dependencies (file order among independent ones), which must not form a
cycle (``networkx``); no value is a boolean (comparisons live only inside ``where``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import networkx as nx

from . import _ast as A
from ._infer import Inference
from ._scope import Scope, article
from ._shapes import MAX_ELEMENTS, broadcast, fmt

__all__ = ["Statements", "sort_statements", "declare_all", "set_dims", "declare_shapes",
           "initial_values", "match_updates", "order_locals", "update_shapes", "output_shapes"]


class Statements(NamedTuple):
    """A recurrence's statements by kind, each in file order."""
    dims: list          # DimStmt items
    params: list        # DeclStmt items
    inputs: list
    states: list
    defines: list       # Define
    updates: list       # Update
    outputs: list       # Output


def sort_statements(rec: A.Recurrence) -> Statements:
    st = Statements([], [], [], [], [], [], [])
    for s in rec.statements:
        if isinstance(s, A.DimStmt):
            st.dims.extend(s.items)
        elif isinstance(s, A.DeclStmt):
            {"param": st.params, "input": st.inputs, "state": st.states}[s.kind].extend(s.items)
        elif isinstance(s, A.Define):
            st.defines.append(s)
        elif isinstance(s, A.Update):
            st.updates.append(s)
        elif isinstance(s, A.Output):
            st.outputs.append(s)
    return st


def declare_all(scope: Scope, st: Statements):
    """Every name, once."""
    for it in st.dims:
        scope.declare(it.name, "dim", it)
    for kind, items in (("param", st.params), ("input", st.inputs), ("state", st.states)):
        for it in items:
            scope.declare(it.name, kind, it)
    for d in st.defines:
        scope.declare(d.name, "local", d)
    for o in st.outputs:
        scope.declare(o.name, "output", o)


def set_dims(scope: Scope, dims_items, overrides: dict):
    """The dims' values (load-time overrides win)."""
    unknown = [k for k in overrides if scope.kinds.get(k) != "dim"]
    if unknown:
        names = [it.name for it in dims_items]
        declared = ", ".join(names) or "none"
        k = unknown[0]
        raise scope.err(f"unknown dim '{k}' given at load time{scope.suggest(k, names)}"
                        f" (the recurrence '{scope.rec.name}' declares dims: {declared})",
                        scope.rec)
    for it in dims_items:
        if it.name in overrides:
            raw = overrides[it.name]
            v = _override_int(raw)
            if v is None or v <= 0:
                raise scope.err(f"dim {it.name} must be a positive integer, got "
                                f"{raw if v is None else v!r}", it)
        else:
            v = scope.const_int(it.value, f"dim {it.name}")
            if v <= 0:
                raise scope.err(f"dim {it.name} must be a positive integer, got {v}", it.value)
        if v > MAX_ELEMENTS:
            raise scope.err(f"dim {it.name} = {v} is too large", it)
        scope.dims[it.name] = int(v)


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


def declare_shapes(scope: Scope, st: Statements):
    """The declared shapes of params, inputs and states."""
    for kind, items in (("param", st.params), ("input", st.inputs), ("state", st.states)):
        for it in items:
            scope.name_shapes[it.name] = scope.declared_shape(it.shape, it.name)
            if kind == "input" and it.value is not None:
                raise scope.err(f"input '{it.name}' cannot have a value: inputs are given "
                                "per step at run time", it.value)
    if not st.states:
        raise scope.err(f"recurrence '{scope.rec.name}' declares no state (e.g. state h = 0)",
                        scope.rec)


def initial_values(scope: Scope, types: Inference, items, kind, context) -> dict:
    """Param defaults (numbers and dims) or state initial values (numbers, dims and
    params): ``name -> Expr | None``."""
    values = {}
    scope.context = context
    for it in items:
        if it.value is not None:
            _check_value(scope, types, it.value, it.name, kind)
        values[it.name] = it.value
    return values


def _check_value(scope: Scope, types: Inference, expr, name, kind):
    shape, k = types.infer(expr)
    if k == "bool":
        raise scope.err(f"the value of {kind} '{name}' is a comparison; comparisons are usable "
                        "only inside where(...)", expr)
    decl = scope.name_shapes[name]
    if broadcast(shape, decl) != decl:
        raise scope.err(f"the value of {kind} '{name}' has shape {fmt(shape)}, which does not "
                        f"fit its declared shape {fmt(decl)}", expr)


def match_updates(scope: Scope, updates, states) -> dict:
    """Every state updated exactly once, nothing else: ``state name -> Update``."""
    upd: dict = {}
    for u in updates:
        kind = scope.kinds.get(u.name)
        if kind is None:
            raise scope.err(f"update of unknown state '{u.name}'"
                            f"{scope.suggest(u.name, [s.name for s in states])}", u)
        if kind != "state":
            raise scope.err(f"'{u.name}' is {article(kind)}, not a state: only states are "
                            f"updated with {u.name}' = ...", u)
        if u.name in upd:
            raise scope.err(f"state '{u.name}' is updated twice (first on line "
                            f"{upd[u.name].line}); every state has exactly one update", u)
        upd[u.name] = u
    for it in states:
        if it.name not in upd:
            raise scope.err(f"state '{it.name}' has no update: add a line {it.name}' = ...",
                            it)
    return upd


def order_locals(scope: Scope, types: Inference, defines):
    """The local definitions in dependency order (file order among independent ones),
    with their shapes: ``(order, name -> Define, name -> shape)``."""
    scope.context = "update"
    graph = nx.DiGraph()
    order_index = {}
    for i, d in enumerate(defines):
        graph.add_node(d.name)
        order_index[d.name] = i
    for d in defines:
        for ref in A.walk(d.value):
            if isinstance(ref, A.Name) and scope.kinds.get(ref.name) == "local":
                graph.add_edge(ref.name, d.name)
    try:
        order = list(nx.lexicographical_topological_sort(graph, key=lambda n: order_index[n]))
    except nx.NetworkXUnfeasible:
        raise _cycle_error(scope, graph, defines, order_index) from None
    by_name = {d.name: d for d in defines}
    local_shapes = {}
    for name in order:
        shape = types.value_shape(
            by_name[name].value, f"'{name}' is a comparison: comparisons and and/or/not "
                                 "are usable only inside where(...)")
        scope.name_shapes[name] = shape
        local_shapes[name] = shape
    return order, by_name, local_shapes


def _cycle_error(scope: Scope, graph, defines, order_index):
    cycle = _a_cycle(graph, defines)
    first = min(cycle, key=lambda n: order_index[n])
    if len(cycle) == 1:
        return scope.err(f"'{first}' is defined in terms of itself", scope.decl_nodes[first])
    cycle = list(reversed(cycle))          # edges point from a name to its users
    k = cycle.index(first)
    cycle = cycle[k:] + cycle[:k]
    path = " -> ".join(cycle + [first])
    return scope.err(f"definitions form a cycle: {path} (each uses the next)",
                     scope.decl_nodes[first])


def _a_cycle(graph, defines):
    for d in defines:
        if graph.has_edge(d.name, d.name):
            return [d.name]
    try:
        edges = nx.find_cycle(graph)
        return [u for u, _ in edges]
    except nx.NetworkXNoCycle:  # pragma: no cover
        return [defines[0].name]


def update_shapes(scope: Scope, types: Inference, states, upd) -> dict:
    """Each update's shape against its state's: ``state name -> Expr``."""
    updates_out = {}
    for it in states:
        u = upd[it.name]
        shape = types.value_shape(
            u.value, f"{it.name}' is a comparison: comparisons and and/or/not are usable"
                     " only inside where(...)")
        decl = scope.name_shapes[it.name]
        if broadcast(shape, decl) != decl:
            raise scope.err(f"{it.name}' has shape {fmt(shape)} but state '{it.name}' is "
                            f"declared with shape {fmt(decl)}", u.value)
        updates_out[it.name] = u.value
    return updates_out


def output_shapes(scope: Scope, types: Inference, outputs):
    """Outputs' values and shapes (``h'`` is the new state here)."""
    scope.context = "output"
    outputs_out, shapes = {}, {}
    for o in outputs:
        shapes[o.name] = types.value_shape(
            o.value, f"output '{o.name}' is a comparison: comparisons and and/or/not "
                     "are usable only inside where(...)")
        outputs_out[o.name] = o.value
    return outputs_out, shapes
