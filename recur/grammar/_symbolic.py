r"""The symbolic pass: each definition and update of a ``.rec`` recurrence as a sympy
expression, and the classification of every state with its reason.

The classification is structural, on the AST as written (:mod:`._structure`): the code that
runs is generated from the AST, never from a simplified form (``(h*h - 1)/(h - 1)`` at
``h = 1`` is NaN, as in NumPy), so the verdict is the one the plan finds on the generated
step's jaxpr. Sympy informs the reasons only: when sympy's automatic simplification
(``h + 0*tanh(h)`` is ``h``) or ``sympy.cancel`` (``(h**2 - 1)/(h - 1)`` is ``h + 1`` away
from ``h = 1``) finds a simpler kind, the reason says so, and that writing the simplified
form gets that plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from ._check import Checked
from ._structure import classify_outputs, classify_states, describe
from ._sympy_affinity import simplification_hint
from ._sympy_expr import Builder
from ._sympy_print import dsl_str

__all__ = ["Symbolic", "build_symbolic"]


@dataclass
class Symbolic:
    """The symbolic view of one checked recurrence."""
    symbols: dict                 # name -> sympy.Symbol (params, inputs, states, t)
    locals: dict                  # local name -> sympy expression (locals substituted)
    updates: dict                 # state -> sympy expression (sympy's automatic forms)
    classification: dict          # state -> (kind, reason): staged, on the AST as written
    reads: dict                   # state -> tuple of states its update reads
    stages: list                  # lists of states, in dependency order
    verdicts: dict                # state -> _structure.Staged
    output_classification: dict = field(default_factory=dict)   # output -> (kind, reason)
    subscripts: list = field(default_factory=list)

    @property
    def kinds(self) -> dict:
        return {s: k for s, (k, _) in self.classification.items()}

    def show(self, state: str) -> str:
        return dsl_str(self.updates[state], self.subscripts, limit=10 ** 6)


def build_symbolic(chk: Checked) -> Symbolic:
    """Sympy expressions for every local and update; every state classified (structurally,
    staged) with its reason and, where sympy sees further, a hint."""
    symbols = {}
    for table in (chk.params, chk.inputs, chk.states):
        for n in table:
            symbols[n] = sp.Symbol(n)
    symbols["t"] = sp.Symbol("t")
    b = Builder(chk, symbols)
    for name, expr in chk.locals.items():
        b.local_exprs[name] = b.build(expr)
    updates = {s: b.build(e) for s, e in chk.updates.items()}
    reads, stages, verdicts = classify_states(chk)
    order = list(chk.states)
    cls = {}
    for s in chk.states:
        v = verdicts[s]
        reason = describe(s, v, order, chk)
        hint = simplification_hint(s, v.kind, updates[s], v.stage, b.subscripts)
        cls[s] = (v.kind, reason + hint)
    return Symbolic(symbols=symbols, locals=dict(b.local_exprs), updates=updates,
                    classification=cls, reads=reads, stages=stages, verdicts=verdicts,
                    output_classification=classify_outputs(chk), subscripts=b.subscripts)
