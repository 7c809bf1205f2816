r"""A stage's step read in one semiring: the claim, and the step evaluated in its modes.

``analyse`` walks the step's jaxpr (``Interpreter``, with the levels of
``recur._semiring_rules``) from the stage's state leaves as ``Lin`` and says whether every
new state of the stage is linear, affine or normalised linear in the algebra (a ``Claim``),
or why not.

Coefficients are read off values, exactly
-----------------------------------------
``evaluator`` runs the jaxpr in two modes besides the plain one:

* ``"linear"``: every offset point gets ``0̄`` instead of its free value and every
  normalisation ``⊘ c`` gets ``1̄`` -- the step's linear part ``h ↦ A ⊗ h``;
* ``"offset"``: every read of a purely linear value gives ``0̄`` -- the offset ``b``.

``recur._semiring_coefficients`` evaluates them into ``A`` and ``b``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp

from . import _jax_adapter as jx
from ._semiring_algebra import ALGEBRAS, Algebra
from ._semiring_rules import Lin, Norm, Other, Rules, is_partial


class Interpreter:
    """Levels (and, given values, the values in a mode) of a jaxpr in one algebra."""

    def __init__(self, algebra: Algebra, mode: str | None = None):
        self.alg = algebra
        self.mode = mode  # None (levels only), "plain", "linear", "offset"
        self.rules = Rules(algebra)

    def run(self, closed, levels: Sequence[Any], values: Sequence[Any] | None = None):
        """``(out levels, out values or None)``."""
        jaxpr = closed.jaxpr
        env: dict[Any, Any] = {}
        vals: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, closed.consts):
            env[v] = None
            vals[v] = c
        for v, lv in zip(jaxpr.invars, levels):
            env[v] = lv
        if values is not None:
            vals.update(zip(jaxpr.invars, values))

        def level(atom):
            return None if jx.is_literal(atom) else env.get(atom)

        def value(atom):
            if jx.is_literal(atom):
                return jx.literal_value(atom)
            v = vals[atom]
            if self.mode == "offset" and isinstance(env.get(atom), Lin) and \
                    not env[atom].affine:
                return self.alg.zeros(atom.aval.shape, atom.aval.dtype)
            return v

        for eqn in jaxpr.eqns:
            ins = [level(a) for a in eqn.invars]
            if all(lv is None for lv in ins):
                outs, action = [None] * len(eqn.outvars), None
            else:
                outs, action = self.rules.rule(eqn, ins)
            if action is not None and action[0] == "call":
                sub_vals = None if values is None else [value(a) for a in eqn.invars]
                outs, out_vals = self.run(action[1], ins, sub_vals)
                if out_vals is None:
                    out_vals = [None] * len(eqn.outvars)
            elif values is not None:
                invals = [value(a) for a in eqn.invars]
                if self.mode == "linear" and action is not None:
                    kind, i = action
                    atom = eqn.invars[i]
                    fill = self.alg.zero if kind == "zero" else self.alg.one
                    invals[i] = jnp.full(atom.aval.shape, fill, atom.aval.dtype)
                out_vals = jx.bind_eqn(eqn, invals)
                nonneg = self.rules.nonneg
                if self.mode is not None and nonneg and nonneg[-1][0] is eqn:
                    _, i = nonneg[-1]
                    coef = invals[i]
                    nonneg[-1] = (eqn, coef if eqn.primitive.name == "mul" else 1 / coef)
            else:
                out_vals = [None] * len(eqn.outvars)
            for v, lv, val in zip(eqn.outvars, outs, out_vals):
                if not isinstance(v, jx.DropVar):
                    env[v] = lv
                    vals[v] = val
        out_levels = [level(a) for a in jaxpr.outvars]
        if values is None:
            return out_levels, None
        out_values = []
        for a in jaxpr.outvars:
            if jx.is_literal(a):
                out_values.append(jx.literal_value(a))
            else:
                out_values.append(value(a) if self.mode == "offset" else vals[a])
        return out_levels, out_values


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a stage is in its algebra: ``affine`` (an offset ``b``), ``normalised``
    (projective)."""

    algebra: str
    affine: bool = False
    normalised: bool = False

    @property
    def alg(self) -> Algebra:
        return ALGEBRAS[self.algebra]

    def describe(self) -> str:
        kind = ("normalised linear" if self.normalised else
                "affine" if self.affine else "linear")
        alg = self.alg
        if self.algebra == "plus-times":
            return "linear up to a per-step normalisation (+/×)"
        return f"{kind} over the {alg.name} semiring (⊕ = {_PLUS[alg.plus]}, ⊗ = " \
               f"{'+' if alg.times == 'add' else '×'})"


_PLUS = {"lse": "log-sum-exp", "max": "max", "min": "min", "sum": "+"}


def seeds(n_state: int, stage_leaves: Sequence[int], n_other: int) -> list:
    chosen = set(stage_leaves)
    return [Lin() if i in chosen else None for i in range(n_state)] + [None] * n_other


def analyse(closed, n_state: int, stage_leaves: Sequence[int], n_other: int,
            algebra: Algebra) -> tuple[Claim | None, str, tuple]:
    """``(claim or None, why not, progress)`` of the stage's leaves in ``algebra``;
    ``progress``: ``(⊕ applied to linear values, ⊕-like operations on the state)``, how
    close it came."""
    interp = Interpreter(algebra)
    outs, _ = interp.run(closed, seeds(n_state, stage_leaves, n_other))
    mine = [outs[i] for i in stage_leaves]
    rules = interp.rules
    progress = (rules.progress, rules.touched)
    if any(isinstance(lv, Other) for lv in mine):
        why = next(lv.reason for lv in mine if isinstance(lv, Other))
        return None, why, progress
    if any(is_partial(lv) for lv in mine):
        return None, "an incomplete log-sum-exp", progress
    if rules.progress == 0 and rules.normalisations == 0:
        return None, f"no {_PLUS[algebra.plus]} of the state", (0, 0)
    norm = [isinstance(lv, Norm) for lv in mine]
    if any(norm) and not all(norm):
        return None, "some new states are normalised and others not", progress
    if algebra.plus == "sum" and not all(norm):
        return None, "not normalised (an affine +/× stage is the ordinary scan's)", (0, 0)
    affine = any(isinstance(lv, Lin) and lv.affine for lv in mine)
    return Claim(algebra.key, affine=affine, normalised=all(norm) and bool(norm)), "", \
        progress


def evaluator(closed, n_state: int, stage_leaves: Sequence[int], n_other: int,
              claim: Claim, mode: str):
    """``(h leaves, x leaves, p leaves) -> (h' leaves, coefficients that must be ≥ 0)`` with
    the step evaluated in ``mode`` (the list is empty but for the ``×`` algebras)."""
    levels = seeds(n_state, stage_leaves, n_other)

    def call(h_leaves, x_leaves, p_leaves):
        interp = Interpreter(claim.alg, mode)
        _, out = interp.run(closed, levels, [*h_leaves, *x_leaves, *p_leaves])
        return out, [c for _, c in interp.rules.nonneg]

    return call


__all__ = ["Claim", "Interpreter", "analyse", "evaluator", "seeds"]
