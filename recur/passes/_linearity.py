r"""Linearity pass: is the step affine in the state?  Decided structurally on the primal jaxpr.

Every jaxpr value gets a level in the lattice

    free  <  linear  <  affine  <  nonlinear

meaning: does not depend on ``h``; ``= M h`` for a state-free ``M``; ``= M h + c``;
anything else.  Levels propagate through primitives that preserve affinity
(``add``/``sub``/``neg``, products and quotients with one state-free side, ``dot_general``
with one state-free side, data movement, ``select_n`` with a state-free predicate, sums
and cumulative sums, ``gather`` and scatters with state-free indices) and recurse into
calls, ``cond`` branches and loop bodies (to a fixed point of the carry).  Everything else
that touches a state-dependent value — nonlinear functions, products of two
state-dependent values, ``stop_gradient``, ``custom_jvp``/``custom_vjp`` calls (their JVP is
a user's rule, not the function's), a scatter that applies a function, callbacks, loops
whose trip count depends on the state — is *nonlinear*, with the reason recorded.  A
reason names what the user wrote: inside a named call (``jnp.linalg.inv``, a jitted
helper) it is the outermost call and its source line, not the implementation inside.

The JVP alone is never trusted: ``h + stop_gradient(h**2)`` has the state-free JVP ``I`` and
is not affine; here it is nonlinear because ``stop_gradient`` receives a state-dependent
value.  A complex-conjugate, real or imaginary part of a state-dependent complex value is
only real-linear, so it counts as nonlinear (the scans are complex-linear).

A linear or affine value may also carry a **selection** ``σ``, an integer array of its shape,
and a coefficient kind, ``one`` or ``scalar``:

    σ[k] = j ≥ 0  ⇒  ∂v_k/∂h = c e_j      for every input, params and state,
    σ[k] = -1     ⇒  ∂v_k/∂h = 0,

with ``c = 1`` exactly (``one``) or ``c`` one state-free scalar shared by every element of
``v`` (``scalar``: a product with a rank-0 value, a negation, a choice between such values
on a rank-0 predicate).  No selection is claimed where it could vary with the inputs
element by element: ``where(x > 0, h, 0)`` has the derivative ``diag(x > 0)``, so an
elementwise ``select_n`` keeps ``σ`` only when every case has the same one with ``c = 1``;
a pad, a fill or an overwrite by a state-free value gives ``-1``; a dynamic slice or update
at unknown indices gives none.  Data movement applies the primitive to ``σ`` itself.  A new
state leaf whose ``σ`` is its own element indices has the Jacobian ``identity`` (flag
``unit``, ``c = 1``) or ``c I`` (flag ``scalar``), whatever the dependency pattern says.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .. import _jax_adapter as jx
from .._dtypes import is_complex, is_inexact
from ._dependency_movement import GATHERING, MOVEMENT, PASS_THROUGH
from ._dependency_reductions import CUMULATIVE
from ._numpy_primitives import bind_indices
from ._trace import StepIR

FREE, LINEAR, AFFINE, NONLINEAR = 0, 1, 2, 3
LEVEL_NAMES = ("free", "linear", "affine", "nonlinear")

_SELECTION_SIZE_LIMIT = 1 << 22


ONE, SCALAR = "one", "scalar"  # coefficient kinds of a selection


@dataclasses.dataclass(frozen=True, eq=False)
class Level:
    level: int
    sel: np.ndarray | None = None  # the selection σ (see the module docstring), or None
    coef: str | None = None  # ONE or SCALAR where ``sel`` is known
    reason: str | None = None
    uniform: bool = False  # a state-free value whose elements are all equal (a shared scalar)


_FREE = Level(FREE)
_UNIFORM = Level(FREE, uniform=True)
# State-free results that are uniform when every operand is: a broadcast of a one-element
# value (``A * h`` with ``A`` of shape (1,)), its reshapes, and elementwise arithmetic of such.
_KEEPS_UNIFORM = frozenset(
    "broadcast_in_dim reshape squeeze expand_dims convert_element_type copy copy_p neg abs "
    "sign add sub mul div max min pow integer_pow exp exp2 log log1p expm1 tanh logistic sin "
    "cos sqrt rsqrt square real imag conj".split())

_KEEP = MOVEMENT | GATHERING | {"copy", "copy_p", "pad"}
_SUMS = frozenset({"reduce_sum", "cumsum"})
_COMPARISONS = frozenset("lt le gt ge eq ne".split())


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


def _shape(atom) -> tuple[int, ...]:
    return tuple(atom.aval.shape)


def _is_literal_value(atom, value) -> bool:
    return jx.is_literal(atom) and bool(np.all(np.asarray(jx.literal_value(atom)) == value))


# --- selections ---------------------------------------------------------------------------

def _sel(shape, lv: Level) -> np.ndarray | None:
    """``σ`` of a value of ``shape`` (all ``-1`` for a state-free one)."""
    if lv.level == FREE:
        return np.full(shape, -1, np.int32)
    return lv.sel


def _fits(sel, shape) -> np.ndarray | None:
    """``sel`` broadcast to ``shape`` (lax broadcasts scalars), or None."""
    if sel is None or np.prod(shape, dtype=np.int64) > _SELECTION_SIZE_LIMIT:
        return None
    try:
        return np.broadcast_to(sel, shape).copy()
    except ValueError:
        return None


def _common(sels, shape) -> np.ndarray | None:
    """The one selection all of ``sels`` agree on, or None."""
    fitted = [_fits(s, shape) for s in sels]
    if any(s is None for s in fitted):
        return None
    return fitted[0] if all(np.array_equal(fitted[0], s) for s in fitted[1:]) else None


def _selected(sel, coef) -> tuple:
    return (sel, coef) if sel is not None and coef is not None else (None, None)


def _times(lv: Level, shape, factor: str) -> Level:
    """``lv`` times a state-free factor: exactly 1 (``ONE``) or a rank-0 value (``SCALAR``)."""
    coef = ONE if lv.coef == ONE and factor == ONE else SCALAR
    return Level(lv.level, *_selected(_fits(lv.sel, shape), coef if lv.coef else None))


def _coef_of_parts(parts: Sequence[Level]) -> str | None:
    """Pieces put side by side share one coefficient if all have ``c = 1`` or one piece
    carries the state."""
    dep = [lv for lv in parts if lv.level > FREE]
    if any(lv.coef is None for lv in dep):
        return None
    if all(lv.coef == ONE for lv in dep):
        return ONE
    return dep[0].coef if len(dep) == 1 else None


def _choice(cases: Sequence[Level], out_shape, uniform: bool) -> tuple:
    """``(σ, coef)`` of a choice between ``cases``: elementwise only between equal
    selections with ``c = 1``; a ``uniform`` choice (rank-0 predicate, ``cond``) between
    equal selections and state-free cases makes ``c`` one of theirs, or 0: ``scalar``."""
    dep = [lv for lv in cases if lv.level > FREE]
    sel = _common([lv.sel for lv in dep], out_shape) if dep else None
    if sel is None or any(lv.coef is None for lv in dep):
        return None, None
    if len(dep) == len(cases) and all(lv.coef == ONE for lv in dep):
        return sel, ONE
    return (sel, SCALAR) if uniform else (None, None)


def _moved(eqn, ins: Sequence[Level]) -> list[Level]:
    """Data movement applied to the operands' selections."""
    level = _join(ins)
    none = [Level(level)] * len(eqn.outvars)
    sels = [_sel(_shape(a), lv) for a, lv in zip(eqn.invars, ins)]
    coef = _coef_of_parts(ins)
    if coef is None or any(s is None for s in sels) or any(
            np.prod(_shape(v), dtype=np.int64) > _SELECTION_SIZE_LIMIT for v in eqn.outvars):
        return none
    try:
        outs = bind_indices(eqn, sels)
    except Exception:  # noqa: BLE001 - no selection is a safe answer
        return none
    return [Level(level, np.asarray(o, np.int32), coef) if np.shape(o) == _shape(v)
            else Level(level) for o, v in zip(outs, eqn.outvars)]


def _offset(eqn, ins: Sequence[Level], carrier: int | None, negated=False) -> Level:
    """A sum: state-free terms are offsets; the selection of the ``carrier`` term (the one
    state-dependent term) survives, with its coefficient (times -1 when ``negated``)."""
    level = _join(ins)
    if any(lv.level == FREE for lv in ins):
        level = max(level, AFFINE)
    if carrier is None:
        return Level(level)
    lv = _times(ins[carrier], _shape(eqn.outvars[0]), SCALAR if negated else ONE)
    return Level(level, lv.sel, lv.coef)


def _mode_name(eqn) -> str:
    mode = eqn.params.get("mode")
    return getattr(mode, "name", str(mode))


# --- rules --------------------------------------------------------------------------------

def _rule(eqn, ins: list[Level]) -> list[Level]:
    name = eqn.primitive.name
    dep = [i for i, lv in enumerate(ins) if lv.level > FREE]
    n_out = len(eqn.outvars)
    out_shape = _shape(eqn.outvars[0]) if eqn.outvars else ()
    if any(lv.level == NONLINEAR for lv in ins) and name not in ("cond", "scan", "while"):
        return [_nonlinear(eqn, ins, name)] * n_out

    if name in ("add", "add_any"):
        return [_offset(eqn, ins, dep[0] if len(dep) == 1 else None)]
    if name == "sub":
        return [_offset(eqn, ins, dep[0] if len(dep) == 1 else None, negated=dep == [1])]
    if name == "neg":
        return [_times(ins[0], out_shape, SCALAR)]
    if name in ("mul", "div"):
        if len(dep) == 2 or (name == "div" and dep != [0]):
            return [_nonlinear(eqn, ins, "a product of two state-dependent values"
                               if name == "mul" else "a division by a state-dependent value")]
        return [_product(eqn, ins[dep[0]], eqn.invars[1 - dep[0]], ins[1 - dep[0]], out_shape)]
    if name == "dot_general":
        if len(dep) == 2:
            return [_nonlinear(eqn, ins, "a product of two state-dependent arrays (dot_general)")]
        return [Level(ins[dep[0]].level)]
    if name == "convert_element_type":
        return [_convert(eqn, ins)]
    if name == "integer_pow" and eqn.params["y"] == 1:
        return [ins[0]]
    if name in PASS_THROUGH:
        return list(ins)
    if name in _KEEP:
        return _keep(eqn, ins)
    if name in _SUMS:
        return [Level(ins[0].level)]
    if name == "select_n":
        if ins[0].level > FREE:
            return [_nonlinear(eqn, ins, "a choice on a state-dependent predicate (where/select)")]
        sel, coef = _choice(ins[1:], out_shape,
                            uniform=_shape(eqn.invars[0]) == () or ins[0].uniform)
        return [Level(_offset(eqn, ins[1:], None).level, sel, coef)]
    if name in ("gather", "dynamic_slice", "dynamic_update_slice") or name.startswith("scatter"):
        return [_indexed(eqn, ins, dep)]
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
    body = jx.call_body(eqn)
    if body is not None:
        return _call(eqn, body, ins)
    if name in CUMULATIVE or name.startswith("reduce") or name in ("argmax", "argmin"):
        return [_nonlinear(eqn, ins, f"{name} of a state-dependent value")] * n_out
    if name in _COMPARISONS:
        return [_nonlinear(eqn, ins, f"a comparison ({name}) of a state-dependent value")] * n_out
    return [_nonlinear(eqn, ins, f"the nonlinear primitive `{name}`")] * n_out


def _product(eqn, lv: Level, other, other_level: Level, out_shape) -> Level:
    """A state-dependent value times (or over) a state-free one: the selection survives a
    literal 1 (``ONE``) or a rank-0 or uniform factor (``SCALAR``), not an elementwise one."""
    if eqn.primitive.name == "mul" and _is_literal_value(other, 1):
        return _times(lv, out_shape, ONE)
    if _shape(other) == () or other_level.uniform:
        return _times(lv, out_shape, SCALAR)
    return Level(lv.level)


def _convert(eqn, ins) -> Level:
    src_dt = np.dtype(eqn.invars[0].aval.dtype)
    dst_dt = np.dtype(eqn.params["new_dtype"])
    if is_complex(src_dt) and not is_complex(dst_dt):
        return _nonlinear(eqn, ins, "a complex-to-real conversion")
    if not is_inexact(dst_dt):
        return _nonlinear(eqn, ins, f"a conversion to {dst_dt}")
    return ins[0]


def _keep(eqn, ins) -> list[Level]:
    """Data movement (and pad): affine unless a state-free pad value makes an offset."""
    level = _join(ins)
    if eqn.primitive.name == "pad" and ins[1].level == FREE and \
            not _is_literal_value(eqn.invars[1], 0):
        level = max(level, AFFINE)
    return [Level(level, lv.sel, lv.coef) for lv in _moved(eqn, ins)]


def _indexed(eqn, ins, dep) -> Level:
    """Gathers, dynamic slices and updates, scatters: affine at state-free indices."""
    name = eqn.primitive.name
    n_data = {"gather": 1, "dynamic_slice": 1, "dynamic_update_slice": 2}.get(name)
    if n_data is None:  # scatters: operand, indices, updates
        if 1 in dep:
            return _nonlinear(eqn, ins, f"{name} at state-dependent indices")
        return _scatter(eqn, ins, dep)
    if any(i >= n_data for i in dep):
        return _nonlinear(eqn, ins, f"{name} at state-dependent indices")
    op_shape = _shape(eqn.invars[0])
    if name == "gather":  # a fill for out-of-bounds indices is an offset
        level = max(ins[0].level, AFFINE) if _mode_name(eqn) == "FILL_OR_DROP" else ins[0].level
        return Level(level)
    if name == "dynamic_slice":  # start indices are clamped: a full-size slice is the operand
        whole = tuple(eqn.params["slice_sizes"]) == op_shape
        return ins[0] if whole else Level(ins[0].level)
    level = _offset(eqn, ins[:2], None).level
    if _shape(eqn.invars[1]) == op_shape and ins[1].level > FREE:  # replaces it all
        return Level(level, ins[1].sel, ins[1].coef)
    return Level(level)


def _scatter(eqn, ins, dep) -> Level:
    name = eqn.primitive.name
    operand, updates = ins[0], ins[2]
    if name == "scatter" and eqn.params.get("update_jaxpr") is not None:
        return _nonlinear(eqn, ins, "a scatter that applies a function (.at[].apply)")
    if name in ("scatter-add", "scatter_add", "scatter-sub", "scatter_sub"):
        # state-free updates are offsets: every element keeps its operand element
        return _offset(eqn, [operand, updates], 0 if updates.level == FREE else None)
    if name == "scatter":
        return Level(_offset(eqn, [operand, updates], None).level)
    if name in ("scatter-mul", "scatter_mul") and dep == [0]:
        return Level(operand.level)
    return _nonlinear(eqn, ins, f"{name} of a state-dependent value")


def _call(eqn, body, ins) -> list[Level]:
    """Recurse into a call; a nonlinear result of a named call (``inv``, a jitted helper) is
    reported as the call the user wrote, not as the implementation inside it."""
    outs = analyse_levels(body, ins)
    fname = eqn.params.get("name")
    if not fname:
        return outs
    return [Level(NONLINEAR, reason=f"`{fname}`{_where(eqn)}") if lv.level == NONLINEAR else lv
            for lv in outs]


def _cond(eqn, ins):
    if ins[0].level > FREE:
        return [_nonlinear(eqn, ins, "lax.cond/switch on a state-dependent predicate")] * \
            len(eqn.outvars)
    branches = [analyse_levels(jx.as_closed(br), ins[1:]) for br in eqn.params["branches"]]
    outs = []
    for v, cases in zip(eqn.outvars, zip(*branches)):
        merged = _merge(cases)
        if merged.level in (LINEAR, AFFINE):  # one branch runs for the whole value
            sel, coef = _choice(cases, _shape(v), uniform=True)
            merged = Level(merged.level, sel, coef)
        outs.append(merged)
    return outs


def _merge(levels: Sequence[Level]) -> Level:
    """Any of several values (branches, loop iterations): the worst level, no selection."""
    for lv in levels:
        if lv.level == NONLINEAR:
            return lv
    return Level(_join(levels))


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
        return [_nonlinear(eqn, [pred], "a while_loop whose trip count depends on the state")] * \
            len(carry)
    return carry


def analyse_levels(closed, in_levels: Sequence[Level]) -> list[Level]:
    jaxpr = closed.jaxpr
    env: dict[Any, Level] = {v: _FREE for v in jaxpr.constvars}
    env.update(zip(jaxpr.invars, in_levels))

    def read(atom) -> Level:
        lv = _FREE if jx.is_literal(atom) else env.get(atom, _FREE)
        if lv.level == FREE and not lv.uniform and int(np.prod(_shape(atom))) <= 1:
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
    seeds = [Level(LINEAR, *_selected(_own_indices(ir, i), ONE))
             if i in chosen and ir.state[i].size <= _SELECTION_SIZE_LIMIT
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


__all__ = ["Linearity", "analyse_linearity", "LEVEL_NAMES"]
