r"""The lattice of the linearity pass, and the algebra of selections.

Every jaxpr value gets a level in the lattice

    free  <  linear  <  affine  <  nonlinear

meaning: does not depend on ``h``; ``= M h`` for a state-free ``M``; ``= M h + c``;
anything else.  A nonlinear level carries the reason, which names what the user wrote.

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
at unknown indices gives none.  Data movement applies the primitive to ``σ`` itself (a
state-free operand's ``σ`` is all ``-1``); a sum keeps the ``σ`` of its one state-dependent
term, the state-free terms being offsets.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .. import _jax_adapter as jx
from ._numpy_primitives import bind_indices

FREE, LINEAR, AFFINE, NONLINEAR = 0, 1, 2, 3
LEVEL_NAMES = ("free", "linear", "affine", "nonlinear")

SELECTION_SIZE_LIMIT = 1 << 22
ONE, SCALAR = "one", "scalar"  # coefficient kinds of a selection


@dataclasses.dataclass(frozen=True, eq=False)
class Level:
    """A value's level in the lattice, with its selection and coefficient kind where known."""

    level: int
    sel: np.ndarray | None = None  # the selection σ, or None
    coef: str | None = None  # ONE or SCALAR where ``sel`` is known
    reason: str | None = None
    uniform: bool = False  # a state-free value whose elements are all equal (a shared scalar)


def source_note(eqn) -> str:
    """`` (at file:line (function))`` of the user code that emitted ``eqn``, or ``""``."""
    src = jx.eqn_source(eqn)
    return f" (at {src})" if src else ""


def nonlinear(eqn, ins: Sequence[Level], why: str) -> Level:
    """Nonlinear: as the first nonlinear operand is (its reason came first), else for ``why``."""
    for lv in ins:
        if lv.level == NONLINEAR:
            return lv
    return Level(NONLINEAR, reason=f"{why}{source_note(eqn)}")


def join(levels: Sequence[Level]) -> int:
    return max((lv.level for lv in levels), default=FREE)


def shape_of(atom) -> tuple[int, ...]:
    return tuple(atom.aval.shape)


def is_literal_value(atom, value) -> bool:
    return jx.is_literal(atom) and bool(np.all(np.asarray(jx.literal_value(atom)) == value))


# --- selections ---------------------------------------------------------------------------

def _sel(shape, lv: Level) -> np.ndarray | None:
    """``σ`` of a value of ``shape`` (all ``-1`` for a state-free one)."""
    if lv.level == FREE:
        return np.full(shape, -1, np.int32)
    return lv.sel


def _fits(sel, shape) -> np.ndarray | None:
    """``sel`` broadcast to ``shape`` (lax broadcasts scalars), or None."""
    if sel is None or np.prod(shape, dtype=np.int64) > SELECTION_SIZE_LIMIT:
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


def selected(sel, coef) -> tuple:
    return (sel, coef) if sel is not None and coef is not None else (None, None)


def times(lv: Level, shape, factor: str) -> Level:
    """``lv`` times a state-free factor: exactly 1 (``ONE``) or a rank-0 value (``SCALAR``)."""
    coef = ONE if lv.coef == ONE and factor == ONE else SCALAR
    return Level(lv.level, *selected(_fits(lv.sel, shape), coef if lv.coef else None))


def _coef_of_parts(parts: Sequence[Level]) -> str | None:
    """Pieces put side by side share one coefficient if all have ``c = 1`` or one piece
    carries the state."""
    dep = [lv for lv in parts if lv.level > FREE]
    if any(lv.coef is None for lv in dep):
        return None
    if all(lv.coef == ONE for lv in dep):
        return ONE
    return dep[0].coef if len(dep) == 1 else None


def choice(cases: Sequence[Level], out_shape, uniform: bool) -> tuple:
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


def moved(eqn, ins: Sequence[Level]) -> list[Level]:
    """Data movement applied to the operands' selections."""
    level = join(ins)
    none = [Level(level)] * len(eqn.outvars)
    sels = [_sel(shape_of(a), lv) for a, lv in zip(eqn.invars, ins)]
    coef = _coef_of_parts(ins)
    if coef is None or any(s is None for s in sels) or any(
            np.prod(shape_of(v), dtype=np.int64) > SELECTION_SIZE_LIMIT for v in eqn.outvars):
        return none
    try:
        outs = bind_indices(eqn, sels)
    except Exception:  # noqa: BLE001 - no selection is a safe answer
        return none
    return [Level(level, np.asarray(o, np.int32), coef) if np.shape(o) == shape_of(v)
            else Level(level) for o, v in zip(outs, eqn.outvars)]


def offset(eqn, ins: Sequence[Level], carrier: int | None, negated=False) -> Level:
    """A sum: state-free terms are offsets; the selection of the ``carrier`` term (the one
    state-dependent term) survives, with its coefficient (times -1 when ``negated``)."""
    level = join(ins)
    if any(lv.level == FREE for lv in ins):
        level = max(level, AFFINE)
    if carrier is None:
        return Level(level)
    lv = times(ins[carrier], shape_of(eqn.outvars[0]), SCALAR if negated else ONE)
    return Level(level, lv.sel, lv.coef)


__all__ = ["FREE", "LINEAR", "AFFINE", "NONLINEAR", "LEVEL_NAMES", "SELECTION_SIZE_LIMIT", "ONE",
           "SCALAR", "Level", "source_note", "nonlinear", "join", "shape_of", "is_literal_value",
           "selected", "times", "choice", "moved", "offset"]
