"""The stages of a ``StepIR`` and what the analysis passes find about each (``_Facts``).

The element graph is cut into stages (``_stages.py``: topological levels of its
condensation).  A level that holds both exact elements (integer, boolean, key) and inexact
ones is split, exact first: an MCMC chain's key, or a counter, that reads no float state
is a stage of its own that the loop runs (cheaply, and exactly), after which the float
stages still run in parallel.  Adjacent stages of the same class (affine or not, exact or
not) are merged when the union keeps the class, so a boundary appears only where the class
changes (a Kalman filter: the covariance, nonlinear; then the mean, affine given it).

Each stage is classified on its own: linearity with the earlier stages' states as inputs,
the Jacobian structure of its own block of the pattern, and a verification probe
(``_verify.py``) -- at the actual values when they are known.  A claim no probe could
confirm is not used: an unconfirmed structure becomes dense, an unconfirmed affinity
"not affine".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._ir import StepIR, Structure
from ._linearity import Linearity, analyse_linearity
from ._semiring import SemiringFacts, analyse_semiring, verify_semiring
from ._stages import stage_elements
from ._structure import analyse_structure
from ._verify import Verification, verify


def state_kinds(ir: StepIR, pattern: np.ndarray, linearity: Linearity):
    """Per state leaf: ``affine`` (in all states jointly), ``diagonal`` (nonlinear, each new
    element reads only its own old element) or ``nonlinear``."""
    out = []
    pattern = sp.csr_matrix(pattern)
    for leaf, off, level in zip(ir.state, ir.offsets, linearity.levels):
        rows, cols = pattern[off:off + leaf.size].nonzero()
        if level != "nonlinear":
            kind = "affine"
        elif np.all(cols == off + rows):
            kind = "diagonal"
        else:
            kind = "nonlinear"
        out.append((leaf.name, kind))
    return tuple(out)


def _leaves_of(ir: StepIR, elements: np.ndarray) -> list[int]:
    return [i for i, (leaf, o) in enumerate(zip(ir.state, ir.offsets))
            if np.any((elements >= o) & (elements < o + leaf.size))]


def stage_names(ir: StepIR, elements: np.ndarray) -> tuple[str, ...]:
    """Leaf names, with flat index ranges where the stage holds only part of a leaf."""
    names = []
    for i in _leaves_of(ir, elements):
        leaf, o = ir.state[i], ir.offsets[i]
        local = np.sort(elements[(elements >= o) & (elements < o + leaf.size)] - o)
        if len(local) == leaf.size:
            names.append(leaf.name)
            continue
        breaks = np.flatnonzero(np.diff(local) != 1)
        starts = np.concatenate([[local[0]], local[breaks + 1]])
        stops = np.concatenate([local[breaks], [local[-1]]]) + 1
        names += [f"{leaf.name}[{a}:{b}]" for a, b in zip(starts, stops)]
    return tuple(names)


_stage_names = stage_names  # the name the tests know


def _stage_linearity(ir: StepIR, elements: np.ndarray):
    """(affine, linear, unit, scalar, reasons) of a stage in its own state (leaf
    granularity: a leaf shared with another stage counts as this stage's state, which is
    conservative).  ``scalar``: the Jacobian is exactly ``c I`` -- one leaf whose Jacobian
    the linearity pass proves to be ``c I`` (``c`` may differ between leaves)."""
    leaves = _leaves_of(ir, elements)
    lin = analyse_linearity(ir, leaves)
    levels = [lin.levels[i] for i in leaves]
    reasons = [(ir.state[i].name, lin.reasons[i]) for i in leaves if lin.reasons[i]]
    scalar = len(leaves) == 1 and bool(lin.scalar) and bool(lin.scalar[leaves[0]])
    return (all(lv != "nonlinear" for lv in levels), all(lv == "linear" for lv in levels),
            all(lin.unit[i] for i in leaves), scalar, reasons)


def stage_groups(ir: StepIR, pattern: np.ndarray) -> list[tuple[np.ndarray, bool]]:
    """``(elements, exact)`` per stage, in execution order (module docstring)."""
    if not ir.n_state:
        return [(np.zeros(0, np.int64), False)]
    exact_el = ir.exact_elements
    raw = []
    for elements in stage_elements(pattern):
        ex = elements[exact_el[elements]]
        fl = elements[~exact_el[elements]]
        raw += [(part, flag) for part, flag in ((ex, True), (fl, False)) if len(part)]
    merged: list[tuple[np.ndarray, bool]] = []
    classes: list[tuple[bool, bool]] = []
    for elements, exact in raw:
        cls = (_stage_linearity(ir, elements)[0], exact)
        if merged and classes[-1] == cls:
            union = np.sort(np.concatenate([merged[-1][0], elements]))
            if _stage_linearity(ir, union)[0] == cls[0]:
                merged[-1] = (union, exact)
                continue
        merged.append((elements, exact))
        classes.append(cls)
    return merged


def _kind(structure: Structure, affine: bool, linear: bool) -> str:
    if affine:
        return "linear" if linear else "affine"
    if structure.jacobian in ("zero", "diagonal"):
        return "diagonal"
    if structure.jacobian.startswith("block"):
        return "block-diagonal"
    return "nonlinear"


def _jacobian_name(structure: Structure, affine: bool, unit: bool, scalar: bool,
                   sub_pattern) -> str:
    """``identity``/``scalar`` only where the linearity pass proves it (never from a probe:
    ``diag(x > 0.4)`` looks like ``c I`` at a few random points)."""
    if structure.jacobian == "diagonal":
        full = bool(np.all(sub_pattern.diagonal()))
        if affine and full and unit:
            return "identity"
        if (affine and scalar) or sub_pattern.shape[0] == 1:
            return "scalar"
    return structure.jacobian


@dataclasses.dataclass(frozen=True)
class _Facts:
    """What the passes found about one stage."""

    index: int
    elements: np.ndarray
    exact: bool
    names: tuple[str, ...]
    structure: Structure
    affine: bool
    linear: bool
    reasons: list
    checked: Verification
    kind: str
    jacobian: str
    sub: Any  # the stage's block of the pattern (scipy sparse)
    unconfirmed: str = ""
    semiring: SemiringFacts | None = None  # stages that are not affine (the semiring pass)


def _classify(ir: StepIR, pattern, index, elements, exact, options, values) -> tuple[_Facts, list]:
    pattern = sp.csr_matrix(pattern)
    sub = pattern if len(elements) == pattern.shape[0] and np.array_equal(
        elements, np.arange(len(elements))) else pattern[elements][:, elements]
    structure = analyse_structure(sub)
    affine, linear, unit, scalar, reasons = _stage_linearity(ir, elements)
    names = stage_names(ir, elements)
    notes: list[str] = []
    unconfirmed = ""
    if exact:
        checked = Verification(None, None, False, ("not probed: exact state",))
    elif not options.get("verify", True):
        checked = Verification(None, None, False, ("not probed: verify=False",))
    else:
        whole = len(elements) == int((~ir.exact_elements).sum())
        checked = verify(ir, structure, affine, elements=None if whole else elements,
                         values=values)
        notes += [f"stage {index}: {n}" for n in checked.notes]
        if checked.structure_ok is not True and structure.jacobian != "dense":
            notes.append(f"stage {index}: using the dense structure instead"
                         + ("; this is a bug in recur's dependency pass, please report it"
                            if checked.structure_ok is False else
                            " of the unconfirmed one"))
            structure = analyse_structure(np.ones(sub.shape, bool))
        elif checked.structure_ok is not True and structure.colours is not None:
            structure = dataclasses.replace(structure, colours=None, pattern=None)
        if affine and checked.affine_ok is not True:
            unconfirmed = (
                "affine by the jaxpr analysis, but "
                + ("a value probe disagreed" if checked.affine_ok is False else
                   "no value probe could confirm it (non-finite values at every probe)")
                + ", so it is treated as not affine")
            affine = linear = False
    if structure.colours is not None:
        notes.append(f"stage {index}: the dense Jacobian has a sparse pattern; a column "
                     f"colouring extracts it from {structure.n_colours} JVPs per step "
                     f"instead of {len(elements)}")
    kind = _kind(structure, affine, linear)
    jac = _jacobian_name(structure, affine, unit, scalar, sub)
    semiring = None
    if not exact and not affine:
        semiring = analyse_semiring(ir, elements, structure)
        if semiring.claim is not None:
            if options.get("verify", True):
                ok, sr_notes = verify_semiring(ir, elements, structure, semiring.claim,
                                               values=values)
            else:
                ok, sr_notes = True, ("not probed: verify=False",)
            semiring = dataclasses.replace(semiring, checked=ok, notes=sr_notes)
            notes += [f"stage {index}: {n}" for n in sr_notes if ok is not True]
    return _Facts(index, elements, exact, names, structure, affine, linear, reasons, checked,
                  kind, jac, sub, unconfirmed, semiring), notes


__all__ = ["state_kinds", "stage_names", "stage_groups", "_leaves_of", "_stage_names",
           "_Facts", "_classify"]
