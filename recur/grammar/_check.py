"""Semantic checks of one recurrence, with the dims it is loaded with.

Resolves names (:mod:`._scope`), checks definitions, updates and outputs and orders local
definitions by their dependencies (:mod:`._statements`), infers and checks every
expression's shape (:mod:`._infer`: NumPy broadcasting for elementwise operations, ``@``
rules, function arity, keywords and argument shapes) and evaluates the static integers
(dims, shapes, subscripts, axes). ``h'`` (the new state) is allowed only in an output's
value. The result is a :class:`Checked` recurrence that the symbolic pass and the code
generator read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from . import _ast as A
from ._infer import Inference
from ._scope import Scope
from ._shapes import MAX_ELEMENTS
from ._statements import (declare_all, declare_shapes, initial_values, match_updates,
                          order_locals, output_shapes, set_dims, sort_statements,
                          update_shapes)

__all__ = ["Checked", "check", "MAX_ELEMENTS"]


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


def check(rec: A.Recurrence, text: str, filename=None, dims: Optional[dict] = None) -> Checked:
    """Check one recurrence with the given dim overrides; raises ``DSLError``."""
    scope = Scope(rec, text, filename)
    types = Inference(scope)
    st = sort_statements(rec)
    declare_all(scope, st)
    set_dims(scope, st.dims, dict(dims or {}))
    declare_shapes(scope, st)
    param_values = initial_values(scope, types, st.params, "param", "default")
    state_inits = initial_values(scope, types, st.states, "state", "init")
    upd = match_updates(scope, st.updates, st.states)
    order, by_name, local_shapes = order_locals(scope, types, st.defines)
    updates = update_shapes(scope, types, st.states, upd)
    outputs, out_shapes = output_shapes(scope, types, st.outputs)
    shape_of = scope.name_shapes
    return Checked(
        name=rec.name, text=text, filename=filename, dims=dict(scope.dims),
        params={p.name: shape_of[p.name] for p in st.params}, param_values=param_values,
        inputs={i.name: shape_of[i.name] for i in st.inputs},
        states={s.name: shape_of[s.name] for s in st.states}, state_inits=state_inits,
        locals={n: by_name[n].value for n in order}, local_shapes=local_shapes,
        updates=updates, uses_t=scope.uses_t, outputs=outputs, output_shapes=out_shapes,
        update_stmts=upd, shapes=types.shapes, subscripts=types.subscripts, axes=types.axes,
        const_shapes=types.const_shapes, decl_nodes=dict(scope.decl_nodes),
        kinds=dict(scope.kinds))
