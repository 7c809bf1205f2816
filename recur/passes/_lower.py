"""Lowering: run the analysis passes on a ``StepIR`` and pick a method per stage -> ``Plan``.

Stages
------
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

Methods
-------
Every method is an entry of ``recur/_methods.py``.  A forced method applies where it can:
a forced iterative method leaves affine stages to the exact scan; exact stages always run
the loop; a step that forward-mode autodiff cannot go through (a ``custom_vjp`` function)
runs only the loop.  ``auto`` takes, per stage, the candidate (``sequential``; ``scan`` for
affine stages; ``deer`` and ``quasi-deer`` otherwise, and ``semiring`` where the semiring
pass, ``_semiring.py``, finds and probes a stage linear over a semiring) with the smallest
time predicted by
the cost model of ``_cost.py`` for the plan's backend -- the reverse pass included when
the plan is made for differentiation -- among those within the memory budget; and when the
values are known and say the system is chaotic (``_contractivity.py``), ``auto`` keeps the
loop where it would have chosen an iterative method.  ``recur.plan`` and ``recur.scan``
both lower through ``make_plan``, so a plan shows what ``scan`` runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import _methods
from .._dtypes import is_inexact
from .._errors import PlanError
from .._ir import StageData, StepIR, Structure, compute_dtype
from .._plan import KIND_ORDER, Plan, Stage
from . import _chunkwise, _contractivity, _cost, _report
from ._cost import fmt_seconds
from ._dependency import jacobian_sparsity
from ._linearity import Linearity, analyse_linearity
from ._options import check_options, decisions, requested_probes
from ._semiring import SemiringFacts, analyse_semiring, print_semiring, verify_semiring
from ._stages import stage_elements
from ._structure import analyse_structure
from ._verify import Values, Verification, verify

# Re-exported for the command line and the tests: every method name a user may pass.
METHODS = _methods.names()


def state_kinds(ir: StepIR, pattern: np.ndarray, linearity: Linearity):
    """Per state leaf: ``affine`` (in all states jointly), ``diagonal`` (nonlinear, each new
    element reads only its own old element) or ``nonlinear``."""
    out = []
    for leaf, off, level in zip(ir.state, ir.offsets, linearity.levels):
        rows = pattern[off:off + leaf.size]
        own = np.zeros_like(rows)
        own[np.arange(leaf.size), off + np.arange(leaf.size)] = True
        if level != "nonlinear":
            kind = "affine"
        elif not np.any(rows & ~own):
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
                   sub_pattern: np.ndarray) -> str:
    """``identity``/``scalar`` only where the linearity pass proves it (never from a probe:
    ``diag(x > 0.4)`` looks like ``c I`` at a few random points)."""
    if structure.jacobian == "diagonal":
        full = bool(np.all(np.diag(sub_pattern)))
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
    sub: np.ndarray
    unconfirmed: str = ""
    semiring: SemiringFacts | None = None  # stages that are not affine (the semiring pass)


def _classify(ir: StepIR, pattern, index, elements, exact, options, values) -> tuple[_Facts, list]:
    sub = pattern[np.ix_(elements, elements)]
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
            structure = analyse_structure(np.ones_like(sub))
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


def _gb(x: float) -> str:
    return f"{x / 1e9:.3g} GB"


def memory_budget(backend: str, limit: float | None = None) -> float:
    """Bytes a plan may use: ``memory_limit`` if given, else 80% of the device's memory
    (the local device's when it matches ``backend``; 80 GB, an H100, for a GPU plan made on
    a machine without one; physical memory for CPU)."""
    if limit is not None:
        return float(limit)
    import jax
    try:
        if jax.default_backend() == backend:
            stats = jax.devices()[0].memory_stats() or {}
            if stats.get("bytes_limit"):
                return 0.8 * float(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - memory statistics are optional in JAX backends
        pass
    if backend == "cpu":
        import os
        try:
            return 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 8e9
    return 0.8 * 80e9


def scan_bytes(structure: Structure, T: int, n: int, itemsize: int) -> float:
    """Peak bytes of ``scan``: the coefficients ``A_t``, the right-hand sides and the result,
    and a second copy of the coefficients for the adjoint when differentiated."""
    coeff = _report.coefficient_elements(structure, n)
    return float(T) * (2 * coeff + 3 * n) * itemsize


class _StageCost:
    """Predicted seconds of each method on one stage (``_cost.predict``)."""

    def __init__(self, backend, T, n, flops, jacobian, structure, budget, itemsize, backward):
        self.backend, self.T, self.n, self.flops = backend, T, n, flops
        self.jacobian, self.structure, self.budget = jacobian, structure, budget
        self.itemsize, self.backward = itemsize, backward
        src = _cost.constants(backend).source
        self.source_short = "measured" if src.startswith("measured") else "assumed"
        self.source_short += f" constants for {backend}, see `recur.passes._cost`"
        if backward:
            self.source_short += "; forward and reverse pass (for_grad)"

    def __call__(self, method):
        st = self.structure
        blocks = st.blocks.shape if st.blocks.size else None
        return _cost.predict(method, backend=self.backend, T=self.T, n=self.n,
                             flops=self.flops, jacobian=self.jacobian, blocks_shape=blocks,
                             colours=st.n_colours, backward=self.backward)

    def deer_bytes(self) -> float:
        coeff = _report.coefficient_elements(self.structure, self.n)
        return float(self.T) * (3 * coeff + 4 * self.n) * self.itemsize


_AUTO_HEAD = {"sequential": "the sequential loop", "scan": "an exact associative scan",
              "quasi-deer": "quasi-Newton with the exact diagonal of the Jacobian"}


def _choose(requested: str, facts: _Facts, ir: StepIR, cost: _StageCost, need: float):
    """``(method, why, rejected)`` for one float stage."""
    names = ", ".join(facts.names)
    budget = cost.budget
    inexact = all(is_inexact(ir.state[i].dtype) for i in _leaves_of(ir, facts.elements))
    scan_ok = facts.affine and inexact
    scan_no = ""
    no_jvp = ""
    if not ir.has_jvp:
        no_jvp = (f"it needs forward-mode derivatives (JVPs) of the step, and forward-mode "
                  f"autodiff cannot go through {', '.join(ir.jvp_blockers)} in it")
    if scan_ok and need > budget:
        if requested == "scan":
            raise PlanError(
                f"method='scan' for the stage of {names} needs about {_gb(need)} for its "
                f"coefficients, right-hand sides and result, but the budget is {_gb(budget)}; "
                "use method='sequential', a shorter sequence, or raise memory_limit.")
        scan_ok, scan_no = False, f"needs about {_gb(need)}, over the memory budget of " \
                                  f"{_gb(budget)}"
    if scan_ok and no_jvp:
        scan_ok, scan_no = False, no_jvp
    if not scan_ok and not scan_no:
        scan_no = facts.unconfirmed or "; ".join(
            f"{name} is nonlinear in the state through {r}" for name, r in facts.reasons)
    if requested == "scan":
        if not scan_ok:
            raise PlanError(f"method='scan' needs an affine recurrence, but in the stage of "
                            f"{names}: {scan_no}. Use method='sequential' (or 'auto').")
        return "scan", "requested; exact for this affine stage", \
            (("sequential", "not requested"),)
    semiring_ok, semiring_no = _semiring_candidate(facts, no_jvp)
    if requested == "semiring":
        if scan_ok:
            return "scan", ("semiring was requested, but this stage is affine: the ordinary "
                            "exact scan solves it"), (("semiring", "the stage is affine"),)
        if not semiring_ok:
            raise PlanError(f"method='semiring' needs a recurrence that is linear over a "
                            f"semiring, but in the stage of {names}: {semiring_no}. Use "
                            "method='sequential' (or 'auto').")
        return "semiring", f"requested; exact: {_semiring_why(facts)}", \
            (("sequential", "not requested"),)
    if requested == "sequential":
        return "sequential", "requested", \
            ((("scan", "not requested") if scan_ok else ("scan", scan_no)),)
    m = _methods.get(requested) if requested != "auto" else None
    if m is not None and m.iterative:
        if scan_ok:  # a forced iterative method leaves affine stages to the exact scan
            return "scan", (f"{requested} was requested, but this stage is affine: the exact "
                            "scan solves it in one pass"), ((requested, "the stage is affine"),)
        if no_jvp:
            raise PlanError(f"method={requested!r} cannot run the stage of {names}: {no_jvp}. "
                            "Use method='sequential' (or 'auto').")
        return requested, f"requested; {m.why}", (("scan", scan_no),)
    return _choose_by_cost(facts, scan_ok, scan_no, no_jvp, cost, semiring_ok, semiring_no)


def _semiring_candidate(facts: _Facts, no_jvp: str) -> tuple[bool, str]:
    """Whether the stage may run ``semiring`` (its claim confirmed), else why not."""
    sr = facts.semiring
    if facts.affine or sr is None:
        return False, "the stage is affine" if facts.affine else "not analysed"
    if not sr.usable:
        return False, sr.text() if sr.claim is None else \
            f"{sr.claim.describe()}, but {'; '.join(sr.notes) or 'unconfirmed'}"
    if no_jvp:
        return False, no_jvp
    return True, ""


def _semiring_why(facts: _Facts) -> str:
    claim = facts.semiring.claim
    head = "one associative scan in that algebra"
    if claim.normalised:
        head = "one associative scan of its linear part, normalised as it goes"
    return f"{claim.describe()}: {head}"


def _choose_by_cost(facts: _Facts, scan_ok, scan_no, no_jvp, cost: _StageCost,
                    semiring_ok=False, semiring_no=""):
    """``auto``: the candidate with the smallest predicted time (``_cost.py``)."""
    predicted = {"sequential": cost("sequential")}
    excluded = []
    if scan_ok:
        predicted["scan"] = cost("scan")
    else:
        excluded.append(("scan", scan_no))
    if semiring_ok:
        predicted["semiring"] = cost("semiring")
    elif not facts.affine and facts.semiring is not None:
        excluded.append(("semiring", semiring_no))
    if not facts.affine:
        if no_jvp:
            excluded += [("deer", no_jvp), ("quasi-deer", no_jvp)]
        else:
            predicted["quasi-deer"] = cost("quasi-deer")
            deer_bytes = cost.deer_bytes()
            if deer_bytes > cost.budget:
                excluded.append(("deer", f"its Jacobians need about {_gb(deer_bytes)}, over "
                                         f"the memory budget of {_gb(cost.budget)}"))
            else:
                predicted["deer"] = cost("deer")
    best = min(predicted, key=predicted.get)
    t_best = predicted[best]
    rejected = tuple((m, f"predicted {fmt_seconds(t)} against {fmt_seconds(t_best)}")
                     for m, t in sorted(predicted.items(), key=lambda kv: kv[1]) if m != best)
    rejected += tuple(excluded)
    head = _AUTO_HEAD.get(best) or f"Newton (DEER) with {facts.jacobian} Jacobians"
    if best == "semiring":
        head = f"the exact scan over {facts.semiring.claim.alg.name}"
    why = (f"{'affine' if facts.affine else 'not affine'}; {head} is predicted fastest on "
           f"{cost.backend} ({fmt_seconds(t_best)}; cost model: {cost.source_short})")
    if _methods.is_iterative(best):
        why += "; falls back to the loop if it does not converge"
    return best, why, rejected


def _requested_for(method, names) -> str:
    if not isinstance(method, dict):
        return method
    for name in names:
        base = name.split("[")[0] if not name.startswith("[") else name
        for key in (name, base):
            if key in method:
                return method[key]
    return "auto"


def _check_method(method, groups_names) -> None:
    values = method.values() if isinstance(method, dict) else [method]
    for m in values:
        if m == "autotune":
            raise PlanError("method='autotune' is resolved by recur.scan/recur.plan before "
                            "planning; it cannot be a stage's method.")
        if m != "auto":
            _methods.get(m)
    if isinstance(method, dict):
        known = set(groups_names)
        known |= {n.split("[")[0] for n in groups_names if not n.startswith("[")}
        known.discard("")
        unknown = sorted(set(method) - known)
        if unknown:
            raise PlanError(f"method dict names {', '.join(unknown)}, which is no stage's "
                            f"state; the stages hold {', '.join(sorted(known))}.")


def _check_windows(method, options) -> None:
    if options.get("window") is None:
        return
    for m in (method.values() if isinstance(method, dict) else [method]):
        if m not in ("auto", "sequential", "scan") and not _methods.get(m).windows:
            raise PlanError(f"window= works with {', '.join(_methods.with_windows())}, not "
                            f"{m!r}.")


def _backend(backend: str | None) -> str:
    if backend is None:
        import jax
        backend = jax.default_backend()
    if backend not in ("cpu", "gpu", "tpu", "cuda", "rocm"):
        raise PlanError(f"backend={backend!r}; use 'cpu', 'gpu', 'tpu' or None.")
    return "gpu" if backend in ("cuda", "rocm") else backend


def _hutchinson(structure, chosen, options, index, notes, why):
    """The Hutchinson hint on a quasi-deer stage (the ``diagonal='hutchinson'`` option)."""
    probes = requested_probes(options)
    if not probes:
        return structure, why
    if _methods.is_iterative(chosen) and chosen != "quasi-deer":
        notes.append(f"stage {index}: diagonal='hutchinson' applies to quasi-deer only; this "
                     f"stage runs {chosen}")
    if chosen == "quasi-deer" and options.get("jacobian") is None:
        exact = _report.diagonal_jvps(structure)
        if probes < exact:
            return dataclasses.replace(structure, hutchinson=probes), why + (
                f" (diagonal='hutchinson': diag(J) estimated from {probes} Rademacher probes "
                f"instead of {exact} JVPs; derivatives stay exact)")
        notes.append(f"stage {index}: diagonal='hutchinson' not used: the exact diagonal "
                     f"costs {exact} JVP{'s' if exact != 1 else ''} per step, no more than "
                     f"{probes} probes")
    return structure, why


def _chaos_policy(ir, method, facts_list, choices, values, notes, want_note):
    """With known values: the Lyapunov exponent along the loop; ``auto`` keeps the loop for
    stages it gave an iterative method when the system is chaotic."""
    auto_iterative = [i for i, (chosen, _, _) in enumerate(choices)
                      if _methods.is_iterative(chosen)
                      and _requested_for(method, facts_list[i].names) == "auto"]
    nonaffine = any(not f.affine and not f.exact for f in facts_list)
    if values is None or not (auto_iterative or (want_note and nonaffine)):
        return choices
    lam = _contractivity.lyapunov_along_loop(ir, values.h0_tree, values.xs_tree,
                                             values.params_tree)
    if lam is None:
        return choices
    growth = lam * ir.length
    chaotic = lam > _methods.CHAOTIC_LYAPUNOV or growth > _methods.CHAOTIC_GROWTH
    verdict = _contractivity.describe(lam, ir.length, _contractivity.nonsmooth_operations(ir),
                                      chaotic)
    if chaotic and auto_iterative:
        why = (f"chaotic along these values (largest Lyapunov exponent {lam:.3g} per step, "
               f"e^{growth:.3g} over the sequence): a parallel solve would most likely fall "
               "back, so auto keeps the loop")
        choices = [("sequential", why, ((chosen, "chaotic along these values"),) + rejected)
                   if i in auto_iterative else (chosen, w, rejected)
                   for i, (chosen, w, rejected) in enumerate(choices)]
        verdict += "; auto keeps the loop for " + ", ".join(
            n for i in auto_iterative for n in facts_list[i].names)
    notes.append(f"largest Lyapunov exponent along the sequential trajectory of these values: "
                 f"{lam:.3g} per step ({verdict})")
    return choices


def make_plan(ir: StepIR, *, method: str | dict = "auto", backend: str | None = None,
              options: dict[str, Any] | None = None, values: Values | None = None,
              lyapunov_note: bool = False, outputs=None, sharded: bool = False) -> Plan:
    """The plan for ``ir`` (module docstring).  ``values``: the concrete ``h0``/``xs``/params
    when known (probes at the actual values; the chaos policy); ``lyapunov_note``: estimate
    the Lyapunov exponent for the plan's notes even where no decision needs it;
    ``outputs``: the ``recur.lax.scan`` body (then the chunkwise pass runs, and ``chunked``
    is a candidate unless the plan is ``sharded`` across devices)."""
    options = check_options(options or {})
    backend = _backend(backend)
    _check_windows(method, options)
    sparsity = jacobian_sparsity(ir)
    if not sparsity.has_jvp and ir.has_jvp:
        ir = dataclasses.replace(ir, jvp_blockers=(
            "an operation without a forward-mode rule (such as `.at[].apply`)",))
    pattern = sparsity.pattern
    groups = stage_groups(ir, pattern)
    _check_method(method, [n for el, _ in groups for n in stage_names(ir, el)])
    step_flops = _cost.jaxpr_flops(ir.jaxpr)
    dtype = compute_dtype([leaf.dtype for leaf in ir.state])
    budget = memory_budget(backend, options.get("memory_limit"))
    backward = bool(options.get("for_grad", False))
    notes: list[str] = []
    facts_list, choices, costs, cost_rows = [], [], [], []
    for index, (elements, exact) in enumerate(groups):
        facts, stage_notes = _classify(ir, pattern, index, elements, exact, options, values)
        notes += stage_notes
        n = len(elements)
        stage_dtype = compute_dtype([ir.state[i].dtype for i in _leaves_of(ir, elements)])
        cost = _StageCost(backend, ir.length, n, step_flops, facts.jacobian, facts.structure,
                          budget, stage_dtype.itemsize, backward)
        requested = _requested_for(method, facts.names)
        requested = "auto" if requested == "chunked" else requested  # decided below
        if exact:
            if isinstance(method, dict) and requested not in ("auto", "sequential"):
                raise PlanError(f"the stage of {', '.join(facts.names)} holds integer, boolean "
                                f"or key state, which only the loop computes exactly; it "
                                f"cannot run {requested!r}.")
            why = "integer, boolean or key state: the loop computes it exactly"
            if facts.structure.jacobian == "zero" and ir.length > 0:
                why = ("integer, boolean or key state that reads none of its own elements: "
                       "computed exactly by a parallel map over the steps from the earlier "
                       "stages' states")
            choice = ("sequential", why, (("scan", f"{', '.join(facts.names)} is integer, "
                                                   "boolean or key, not float/complex (a scan "
                                                   "would round it)"),))
        else:
            choice = _choose(requested, facts, ir, cost,
                             need=scan_bytes(facts.structure, ir.length, n,
                                             stage_dtype.itemsize))
        candidates = ["sequential"] + ([] if exact or not ir.has_jvp else
                                       ["scan"] if facts.affine else ["deer", "quasi-deer"])
        if facts.semiring is not None and facts.semiring.usable and ir.has_jvp:
            candidates.append("semiring")
        cost_rows.append((index, [(m, cost(m)) for m in candidates]))
        facts_list.append(facts)
        choices.append(choice)
        costs.append(cost)
    choices = _chaos_policy(ir, method, facts_list, choices, values, notes, lyapunov_note)
    wanted = [_requested_for(method, f.names) for f in facts_list]
    chunk = None
    if outputs is not None or "chunked" in wanted:
        chunk, choices, text = _chunkwise.decide(
            ir, outputs, values, wanted, choices, costs, backend=backend, backward=backward,
            sharded=sharded, verify=options.get("verify", True), chunk=options.get("chunk"))
    staged = len(groups) > 1
    reads, edges = _report.leaf_reads(ir, pattern)
    stages, data = [], []
    for facts, (chosen, why, rejected), cost in zip(facts_list, choices, costs):
        structure, why = _hutchinson(facts.structure, chosen, options, facts.index, notes, why)
        n = len(facts.elements)
        stage_dtype = compute_dtype([ir.state[i].dtype for i in _leaves_of(ir, facts.elements)])
        stages.append(Stage(
            states=facts.names, kind=facts.kind, jacobian=facts.jacobian, method=chosen,
            reads=tuple((leaf, tuple(r)) for leaf, r in reads
                        if any(leaf == nm.split("[")[0] or leaf == nm for nm in facts.names)),
            evidence=_report.evidence(facts.kind, facts.reasons, facts.checked,
                                      staged and facts.index > 0, facts.exact,
                                      facts.unconfirmed)
            + (f"; {facts.semiring.text()}" if facts.semiring is not None
               and facts.semiring.claim is not None else ""),
            why=why, blocks=structure.block_sizes if structure.jacobian.startswith("block")
            else (),
            estimates=(chunk.estimates if chosen == "chunked" else
                       _report.estimates(chosen, structure, ir.length, n, stage_dtype.itemsize,
                                         user_jacobian=options.get("jacobian") is not None)
                       + (("predicted time", fmt_seconds(cost(chosen))),)),
            rejected=rejected, colours=structure.n_colours,
            jacobian_note=_report.jacobian_note(structure, n)))
        data.append(StageData(elements=facts.elements, structure=structure, exact=facts.exact,
                              semiring=facts.semiring.claim if chosen == "semiring" else None))
    whole = analyse_linearity(ir)
    passes = (
        ("trace", str(ir.jaxpr)),
        ("dependency", _report.print_pattern(ir, sparsity)),
        ("structure", _report.print_structures(data)),
        ("linearity", "\n".join(f"{leaf.name}: {lv}" + (f" ({r})" if r else "")
                                for leaf, lv, r in zip(ir.state, whole.levels, whole.reasons))),
        ("verification", "\n".join(
            f"stage {f.index}: structure {f.checked.structure_ok}, affine "
            f"{f.checked.affine_ok}, scalar {f.checked.scalar}"
            + "".join(f"\n  {n}" for n in f.checked.notes) for f in facts_list)),
        ("semiring", print_semiring((f.index, f.semiring) for f in facts_list)),
        ("cost", _report.print_costs(_cost.constants(backend).source, step_flops, cost_rows)),
    ) + ((("chunkwise", text),) if outputs is not None else ()) + (
        ("lowering", "\n".join(f"stage {i} ({', '.join(st.states)}): {st.method}: {st.why}"
                               for i, st in enumerate(stages))),
    )
    methods = {st.method for st in stages}
    return Plan(
        kind=max((st.kind for st in stages), key=KIND_ORDER.index),
        method=methods.pop() if len(methods) == 1 else "staged", stages=tuple(stages),
        backend=backend, length=ir.length, reverse=ir.reverse, n_state=ir.n_state,
        dtype=dtype.name, notes=tuple(notes), passes=passes, edges=edges,
        state_sizes=tuple((leaf.name, leaf.size) for leaf in ir.state),
        state_kinds=state_kinds(ir, pattern, whole), options=decisions(options),
        ir=ir, stage_data=tuple(data), chunked=None if chunk is None else chunk.form)


__all__ = ["make_plan", "stage_groups", "stage_names", "state_kinds", "memory_budget",
           "scan_bytes", "METHODS"]
