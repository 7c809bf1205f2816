r"""Linearity pass: is the step affine in the state?  Decided structurally on the primal jaxpr.

Every jaxpr value gets a level in the lattice

    free  <  linear  <  affine  <  nonlinear

meaning: does not depend on ``h``; ``= M h`` for a state-free ``M``; ``= M h + c``;
anything else.  Levels propagate through primitives that preserve affinity
(``add``/``sub``/``neg``, products and quotients with one state-free side, ``dot_general``
with one state-free side, data movement, ``select_n`` with a state-free predicate, sums
and cumulative sums, ``gather`` with state-free indices) and recurse into calls, ``cond``
branches and loop bodies (to a fixed point of the carry).  Everything else that touches a
state-dependent value — nonlinear functions, products of two state-dependent values,
``stop_gradient``, ``custom_jvp``/``custom_vjp`` calls (their JVP is a user's rule, not the
function's), callbacks, loops whose trip count depends on the state — is *nonlinear*,
with the reason recorded.

The JVP alone is never trusted: ``h + stop_gradient(h**2)`` has the state-free JVP ``I`` and
is not affine; here it is nonlinear because ``stop_gradient`` receives a state-dependent
value.  A complex-conjugate, real or imaginary part of a state-dependent complex value is
only real-linear, so it counts as nonlinear (the scans are complex-linear).

A ``unit`` flag marks values whose derivative is a 0/1 selection of state elements; an
affine step with a unit output whose sparsity is the identity has Jacobian ``identity``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .. import _jax_adapter as jx
from ._dependency import CALL_PARAMS, CUMULATIVE, MOVEMENT
from .._dtypes import is_complex, is_inexact
from ._trace import StepIR

FREE, LINEAR, AFFINE, NONLINEAR = 0, 1, 2, 3
LEVEL_NAMES = ("free", "linear", "affine", "nonlinear")


@dataclasses.dataclass(frozen=True)
class Level:
    level: int
    unit: bool = False
    reason: str | None = None


_FREE = Level(FREE)

_KEEP = MOVEMENT | {"copy", "copy_p", "concatenate", "stack", "split"}
_SUMS = frozenset({"reduce_sum", "cumsum"})


@dataclasses.dataclass(frozen=True)
class Linearity:
    """Per state leaf: level name, unit flag, and why it is nonlinear (or None)."""

    levels: tuple[str, ...]
    unit: tuple[bool, ...]
    reasons: tuple[str | None, ...]

    @property
    def affine(self) -> bool:
        return all(lv != "nonlinear" for lv in self.levels)

    @property
    def linear(self) -> bool:
        return all(lv == "linear" for lv in self.levels)


def _where(eqn) -> str:
    src = jx.eqn_source(eqn)
    return f" (at {src})" if src else ""


def _nonlinear(eqn, ins: Sequence[Level], why: str) -> Level:
    for lv in ins:
        if lv.level == NONLINEAR:
            return lv
    return Level(NONLINEAR, reason=f"{why}{_where(eqn)}")


def _join(levels: Sequence[Level]) -> int:
    return max((lv.level for lv in levels), default=FREE)


def _sum_like(eqn, ins, *, unit_ok: bool) -> Level:
    dep = [lv for lv in ins if lv.level > FREE]
    level = _join(ins)
    if len(dep) < len(ins):  # a state-free term is an offset
        level = max(level, AFFINE)
    return Level(level, unit=unit_ok and all(lv.unit for lv in dep))


def _is_literal_value(atom, value) -> bool:
    return jx.is_literal(atom) and np.all(np.asarray(jx.literal_value(atom)) == value)


def _rule(eqn, ins: list[Level]) -> list[Level]:
    name = eqn.primitive.name
    dep = [i for i, lv in enumerate(ins) if lv.level > FREE]
    n_out = len(eqn.outvars)
    if any(lv.level == NONLINEAR for lv in ins) and name not in ("cond", "scan", "while"):
        return [_nonlinear(eqn, ins, name)] * n_out

    if name in ("add", "add_any"):
        return [_sum_like(eqn, ins, unit_ok=len(dep) == 1)]
    if name == "sub":
        return [_sum_like(eqn, ins, unit_ok=dep == [0])]
    if name == "neg":
        return [Level(ins[0].level)]
    if name == "mul":
        if len(dep) == 2:
            return [_nonlinear(eqn, ins, "a product of two state-dependent values")]
        other = eqn.invars[1 - dep[0]]
        return [Level(ins[dep[0]].level, unit=ins[dep[0]].unit and _is_literal_value(other, 1))]
    if name == "div":
        if dep != [0]:
            return [_nonlinear(eqn, ins, "a division by a state-dependent value")]
        return [Level(ins[0].level)]
    if name == "dot_general":
        if len(dep) == 2:
            return [_nonlinear(eqn, ins, "a product of two state-dependent arrays (dot_general)")]
        return [Level(ins[dep[0]].level)]
    if name == "convert_element_type":
        src_dt = np.dtype(eqn.invars[0].aval.dtype)
        dst_dt = np.dtype(eqn.params["new_dtype"])
        if is_complex(src_dt) and not is_complex(dst_dt):
            return [_nonlinear(eqn, ins, "a complex-to-real conversion")]
        if not is_inexact(dst_dt):
            return [_nonlinear(eqn, ins, f"a conversion to {dst_dt}")]
        return [ins[0]]
    if name == "integer_pow" and eqn.params["y"] == 1:
        return [ins[0]]
    if name in _KEEP:
        return [Level(_join(ins), unit=bool(all(ins[i].unit for i in dep)))] * n_out
    if name in _SUMS:
        return [Level(ins[0].level)]
    if name == "pad":
        level = ins[0].level if (ins[1].level > FREE or _is_literal_value(eqn.invars[1], 0)) \
            else max(ins[0].level, AFFINE)
        return [Level(max(level, ins[1].level), unit=ins[0].unit and ins[1].level == FREE)]
    if name == "select_n":
        if ins[0].level > FREE:
            return [_nonlinear(eqn, ins, "a choice on a state-dependent predicate (where/select)")]
        return [_sum_like(eqn, ins[1:], unit_ok=True)]
    if name in ("gather", "dynamic_slice"):
        if any(i > 0 for i in dep):
            return [_nonlinear(eqn, ins, f"{name} at state-dependent indices")]
        return [ins[0]]
    if name == "dynamic_update_slice":
        if any(i > 1 for i in dep):
            return [_nonlinear(eqn, ins, f"{name} at state-dependent indices")]
        return [_sum_like(eqn, ins[:2], unit_ok=True)]
    if name in ("scatter", "scatter-add", "scatter_add", "scatter_sub"):
        if 1 in dep:
            return [_nonlinear(eqn, ins, f"{name} at state-dependent indices")]
        return [_sum_like(eqn, [ins[0], ins[2]], unit_ok=False)]
    if name == "cond":
        return _cond(eqn, ins)
    if name == "scan":
        return _scan(eqn, ins)
    if name == "while":
        return _while(eqn, ins)
    if name == "stop_gradient":
        return [_nonlinear(eqn, ins, "stop_gradient of a state-dependent value (its JVP "
                                     "hides the dependence, so affinity cannot be trusted)")]
    if name in ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"):
        fname = eqn.params.get("name", "")
        return [_nonlinear(eqn, ins, f"a {name.replace('_call', '').replace('_jaxpr', '')} "
                                     f"function{' ' + repr(fname) if fname else ''} (its "
                                     "derivative is a user rule, not the function's)")] * n_out
    for key in CALL_PARAMS:
        sub = eqn.params.get(key)
        if sub is not None and jx.is_jaxpr(sub):
            closed = jx.as_closed(sub)
            if len(closed.jaxpr.invars) == len(ins):
                outs = analyse_levels(closed, ins)
                fname = eqn.params.get("name")
                if not fname:
                    return outs
                return [Level(NONLINEAR, reason=f"`{fname}`{_where(eqn)}, inside it {lv.reason}")
                        if lv.level == NONLINEAR and lv.reason and
                        lv.reason not in {i.reason for i in ins} else lv for lv in outs]
    if name in CUMULATIVE or name.startswith("reduce_") or name in ("argmax", "argmin"):
        return [_nonlinear(eqn, ins, f"{name} of a state-dependent value")] * n_out
    if name in _COMPARISONS:
        return [_nonlinear(eqn, ins, f"a comparison ({name}) of a state-dependent value")] * n_out
    return [_nonlinear(eqn, ins, f"the nonlinear primitive `{name}`")] * n_out


_COMPARISONS = frozenset("lt le gt ge eq ne".split())


def _cond(eqn, ins):
    if ins[0].level > FREE:
        return [_nonlinear(eqn, ins, "lax.cond/switch on a state-dependent predicate")] * \
            len(eqn.outvars)
    outs = None
    for br in eqn.params["branches"]:
        res = analyse_levels(jx.as_closed(br), ins[1:])
        outs = res if outs is None else [_merge(a, b) for a, b in zip(outs, res)]
    return outs


def _merge(a: Level, b: Level) -> Level:
    if a.level == NONLINEAR:
        return a
    if b.level == NONLINEAR:
        return b
    return Level(max(a.level, b.level), unit=bool(a.unit and b.unit and a.level == b.level))


def _fixpoint(body, consts, carry, extra, n_carry):
    for _ in range(8):
        res = analyse_levels(body, list(consts) + list(carry) + list(extra))
        new = [_merge(c, r) for c, r in zip(carry, res[:n_carry])]
        new = [Level(lv.level, unit=False, reason=lv.reason) for lv in new]
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
        return [_nonlinear(eqn, [pred], "a while_loop whose trip count depends on the state")] * \
            len(carry)
    return carry


def analyse_levels(closed, in_levels: Sequence[Level]) -> list[Level]:
    jaxpr = closed.jaxpr
    env: dict[Any, Level] = {v: _FREE for v in jaxpr.constvars}
    env.update(zip(jaxpr.invars, in_levels))

    def read(atom) -> Level:
        return _FREE if jx.is_literal(atom) else env.get(atom, _FREE)

    for eqn in jaxpr.eqns:
        ins = [read(a) for a in eqn.invars]
        outs = [_FREE] * len(eqn.outvars) if all(lv.level == FREE for lv in ins) \
            else _rule(eqn, ins)
        for v, lv in zip(eqn.outvars, outs):
            if not isinstance(v, jx.DropVar):
                env[v] = lv
    return [read(a) for a in jaxpr.outvars]


def analyse_linearity(ir: StepIR, state_leaves=None) -> Linearity:
    """Classify every new state leaf as free / linear / affine / nonlinear in the state.

    ``state_leaves`` (indices of state leaves) restricts "the state" to those leaves: the
    others count as inputs, as for a stage whose earlier stages are already known."""
    chosen = range(len(ir.state)) if state_leaves is None else set(state_leaves)
    seeds = [Level(LINEAR, unit=True) if i in chosen else _FREE for i in range(len(ir.state))]
    seeds += [_FREE] * (len(ir.inputs) + len(ir.params))
    outs = analyse_levels(ir.jaxpr, seeds)
    levels = []
    for lv in outs:
        # A new state that does not read the old one is affine with a zero Jacobian.
        levels.append(LEVEL_NAMES[AFFINE] if lv.level == FREE else LEVEL_NAMES[lv.level])
    return Linearity(levels=tuple(levels), unit=tuple(bool(lv.unit) for lv in outs),
                     reasons=tuple(lv.reason for lv in outs))


__all__ = ["Linearity", "analyse_linearity", "LEVEL_NAMES"]
