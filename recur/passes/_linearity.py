r"""Linearity pass: is the step affine in the state?  Decided structurally on the primal jaxpr.

Every jaxpr value gets a level, ``free < linear < affine < nonlinear`` in the state ``h``,
and possibly a selection ``σ`` (``_linearity_levels``), propagated equation by equation: by
the primitive's rule (``_linearity_rules``), and through calls, ``cond`` branches and loop
bodies (to a fixed point of the carry) by recursion.  A ``cond`` on a state-dependent
predicate and a loop whose trip count depends on the state are nonlinear.  A reason names
what the user wrote: inside a named call (``jnp.linalg.inv``, a jitted helper) it is the
outermost call and its source line, not the implementation inside.

A new state leaf whose ``σ`` is its own element indices has the Jacobian ``identity`` (flag
``unit``, ``c = 1``) or ``c I`` (flag ``scalar``), whatever the dependency pattern says.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .. import _jax_adapter as jx
from ._linearity_levels import (AFFINE, FREE, LEVEL_NAMES, LINEAR, NONLINEAR, ONE, SCALAR,
                                SELECTION_SIZE_LIMIT, Level, choice, join, nonlinear, selected,
                                shape_of, source_note)
from ._linearity_rules import nonlinear_rule, primitive_rule
from ._trace import StepIR

_FREE = Level(FREE)
_UNIFORM = Level(FREE, uniform=True)
# State-free results that are uniform when every operand is: a broadcast of a one-element
# value (``A * h`` with ``A`` of shape (1,)), its reshapes, and elementwise arithmetic of such.
_KEEPS_UNIFORM = frozenset(
    "broadcast_in_dim reshape squeeze expand_dims convert_element_type copy copy_p neg abs "
    "sign add sub mul div max min pow integer_pow exp exp2 log log1p expm1 tanh logistic sin "
    "cos sqrt rsqrt square real imag conj".split())


@dataclasses.dataclass(frozen=True)
class Linearity:
    """Per state leaf: level name, unit flag (Jacobian exactly the identity), why it is
    nonlinear (or None), and scalar flag (Jacobian exactly ``c I``; ``c`` may differ between
    leaves)."""

    levels: tuple[str, ...]
    unit: tuple[bool, ...]
    reasons: tuple[str | None, ...]
    scalar: tuple[bool, ...] = ()  # Jacobian exactly c I, c state-free (shared by the leaf)

    @property
    def affine(self) -> bool:
        return all(lv != "nonlinear" for lv in self.levels)

    @property
    def linear(self) -> bool:
        return all(lv == "linear" for lv in self.levels)


def _rule(eqn, ins: list[Level]) -> list[Level]:
    """Control flow and calls: their bodies; any other primitive: its rule."""
    name = eqn.primitive.name
    if name == "cond":
        return _cond(eqn, ins)
    if name == "scan":
        return _scan(eqn, ins)
    if name == "while":
        return _while(eqn, ins)
    outs = primitive_rule(eqn, ins)
    if outs is not None:
        return outs
    body = jx.call_body(eqn)
    if body is not None:
        return _call(eqn, body, ins)
    return nonlinear_rule(eqn, ins)


def _call(eqn, body, ins) -> list[Level]:
    """Recurse into a call; a nonlinear result of a named call (``inv``, a jitted helper) is
    reported as the call the user wrote, not as the implementation inside it."""
    outs = analyse_levels(body, ins)
    fname = eqn.params.get("name")
    if not fname:
        return outs
    return [Level(NONLINEAR, reason=f"`{fname}`{source_note(eqn)}")
            if lv.level == NONLINEAR else lv for lv in outs]


def _cond(eqn, ins):
    if ins[0].level > FREE:
        return [nonlinear(eqn, ins, "lax.cond/switch on a state-dependent predicate")] * \
            len(eqn.outvars)
    branches = [analyse_levels(jx.as_closed(br), ins[1:]) for br in eqn.params["branches"]]
    outs = []
    for v, cases in zip(eqn.outvars, zip(*branches)):
        merged = _merge(cases)
        if merged.level in (LINEAR, AFFINE):  # one branch runs for the whole value
            sel, coef = choice(cases, shape_of(v), uniform=True)
            merged = Level(merged.level, sel, coef)
        outs.append(merged)
    return outs


def _merge(levels: Sequence[Level]) -> Level:
    """Any of several values (branches, loop iterations): the worst level, no selection."""
    for lv in levels:
        if lv.level == NONLINEAR:
            return lv
    return Level(join(levels))


def _fixpoint(body, consts, carry, extra, n_carry):
    for _ in range(8):
        res = analyse_levels(body, list(consts) + list(carry) + list(extra))
        new = [_merge([c, r]) for c, r in zip(carry, res[:n_carry])]
        if [lv.level for lv in new] == [lv.level for lv in carry]:
            return new, res[n_carry:]
        carry = new
    return [Level(NONLINEAR, reason="a loop whose carry did not settle")] * len(carry), \
        [Level(NONLINEAR, reason="a loop whose carry did not settle")] * (len(res) - n_carry)


def _scan(eqn, ins):
    p = eqn.params
    nc, nk = p["num_consts"], p["num_carry"]
    carry, ys = _fixpoint(jx.as_closed(p["jaxpr"]), ins[:nc], ins[nc:nc + nk], ins[nc + nk:], nk)
    return carry + [Level(y.level, reason=y.reason) for y in ys]


def _while(eqn, ins):
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    carry_in = ins[nc + nb:]
    carry, _ = _fixpoint(jx.as_closed(p["body_jaxpr"]), ins[nc:nc + nb], carry_in, [],
                         len(carry_in))
    (pred,) = analyse_levels(jx.as_closed(p["cond_jaxpr"]), ins[:nc] + carry)
    if pred.level > FREE:
        return [nonlinear(eqn, [pred], "a while_loop whose trip count depends on the state")] * \
            len(carry)
    return carry


def analyse_levels(closed, in_levels: Sequence[Level]) -> list[Level]:
    jaxpr = closed.jaxpr
    env: dict[Any, Level] = {v: _FREE for v in jaxpr.constvars}
    env.update(zip(jaxpr.invars, in_levels))

    def read(atom) -> Level:
        lv = _FREE if jx.is_literal(atom) else env.get(atom, _FREE)
        if lv.level == FREE and not lv.uniform and int(np.prod(shape_of(atom))) <= 1:
            return _UNIFORM
        return lv

    def free(eqn, ins) -> list[Level]:
        uniform = eqn.primitive.name in _KEEPS_UNIFORM and all(lv.uniform for lv in ins)
        return [_UNIFORM if uniform else _FREE] * len(eqn.outvars)

    for eqn in jaxpr.eqns:
        ins = [read(a) for a in eqn.invars]
        outs = free(eqn, ins) if all(lv.level == FREE for lv in ins) else _rule(eqn, ins)
        for v, lv in zip(eqn.outvars, outs):
            if not isinstance(v, jx.DropVar):
                env[v] = lv
    return [read(a) for a in jaxpr.outvars]


def _own_indices(ir: StepIR, i: int) -> np.ndarray:
    leaf = ir.state[i]
    return (ir.offsets[i] + np.arange(leaf.size, dtype=np.int32)).reshape(leaf.shape)


def analyse_linearity(ir: StepIR, state_leaves=None) -> Linearity:
    """Classify every new state leaf as free / linear / affine / nonlinear in the state.

    ``state_leaves`` (indices of state leaves) restricts "the state" to those leaves: the
    others count as inputs, as for a stage whose earlier stages are already known."""
    chosen = range(len(ir.state)) if state_leaves is None else set(state_leaves)
    seeds = [Level(LINEAR, *selected(_own_indices(ir, i), ONE))
             if i in chosen and ir.state[i].size <= SELECTION_SIZE_LIMIT
             else Level(LINEAR) if i in chosen else _FREE for i in range(len(ir.state))]
    seeds += [_FREE] * (len(ir.inputs) + len(ir.params))
    outs = analyse_levels(ir.jaxpr, seeds)
    levels, unit, scalar = [], [], []
    for i, lv in enumerate(outs):
        # A new state that does not read the old one is affine with a zero Jacobian.
        levels.append(LEVEL_NAMES[AFFINE] if lv.level == FREE else LEVEL_NAMES[lv.level])
        own = lv.level in (LINEAR, AFFINE) and lv.sel is not None and \
            np.array_equal(lv.sel, _own_indices(ir, i))
        unit.append(own and lv.coef == ONE)
        scalar.append(own and lv.coef in (ONE, SCALAR))
    return Linearity(levels=tuple(levels), unit=tuple(unit),
                     reasons=tuple(lv.reason for lv in outs), scalar=tuple(scalar))


__all__ = ["Linearity", "analyse_linearity"]
