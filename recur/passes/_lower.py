"""Lowering: run the analysis passes on a ``StepIR`` and pick a method -> ``Plan``.

The element graph is cut into stages (``_stages.py``); each stage is classified on its
own (linearity with the earlier stages' states as inputs, the Jacobian structure of its
own block of the pattern, a verification probe) and gets its own method.  Adjacent stages
of the same class are merged, so a stage boundary appears only where the class changes
(a Kalman filter: the covariance, nonlinear; then the mean, affine given it).

Methods:

* ``deer``, ``quasi-deer``, ``picard``, ``jacobi``, ``elk``, ``quasi-elk`` — the iterative
  solvers of ``runtime/_newton.py`` for stages that are not affine;
* ``scan`` — exact associative (chunked) scan, for affine recurrences with inexact
  (float/complex) states: one pass, work ``O(T n)`` (diagonal), ``O(T m k^3)`` (``m``
  blocks of ``k``), ``O(T n^3)`` (dense), depth ``O(log T)`` on parallel hardware;
* ``sequential`` — the ``lax.scan`` loop: work ``T`` steps, depth ``T``.

``auto`` takes, per stage, the candidate (``sequential``; ``scan`` for affine stages;
``deer`` and ``quasi-deer`` otherwise) with the smallest time predicted by the cost model
of ``_cost.py`` for the plan's backend, among those within the memory budget.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._dtypes import is_inexact
from .._errors import PlanError
from .._plan import KIND_ORDER, Plan, Stage
from ..runtime._flat import compute_dtype
from . import _cost
from ._cost import EXPECTED_ITERATIONS, fmt_seconds
from ._dependency import Sparsity, jacobian_sparsity
from ._linearity import Linearity, analyse_linearity
from ._stages import stage_elements
from ._structure import Structure, analyse_structure
from ._trace import StepIR
from ._verify import Verification, verify

ITERATIVE = ("deer", "quasi-deer", "picard", "jacobi", "elk", "quasi-elk")
METHODS = ("auto", "sequential", "scan") + ITERATIVE
NOT_YET: tuple[str, ...] = ()
WINDOW_METHODS = ("deer", "quasi-deer", "picard", "jacobi")
ON_FAILURE = ("sequential", "raise", "ignore")
OPTIONS = ("rtol", "atol", "max_iters", "on_failure", "init", "jacobian", "check", "verify",
           "chunk", "memory_limit", "window", "diagonal", "probes", "lyapunov")
# quasi-DEER's diag(J_t): "exact" (from the structure's colouring) or "hutchinson" (an
# unbiased estimate from ``probes`` Rademacher probes; the solver only).
DIAGONALS = ("exact", "hutchinson")
DEFAULT_PROBES = 8


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PlanError(f"unknown option(s) {', '.join(unknown)}; recur accepts "
                        f"{', '.join(OPTIONS)}.")
    out = dict(options)
    of = out.get("on_failure", "sequential")
    if of not in ON_FAILURE:
        raise PlanError(f"on_failure={of!r}; use one of {', '.join(map(repr, ON_FAILURE))}.")
    for key in ("rtol", "atol"):
        if key in out and out[key] is not None and not (float(out[key]) >= 0):
            raise PlanError(f"{key} must be a non-negative number, got {out[key]!r}.")
    if "max_iters" in out and out["max_iters"] is not None and int(out["max_iters"]) < 0:
        raise PlanError(f"max_iters must be non-negative, got {out['max_iters']!r}.")
    if out.get("window") is not None and int(out["window"]) < 1:
        raise PlanError(f"window must be a positive integer, got {out['window']!r}.")
    if "chunk" in out and out["chunk"] is not None and int(out["chunk"]) < 1:
        raise PlanError(f"chunk must be a positive integer, got {out['chunk']!r}.")
    if not isinstance(out.get("lyapunov", True), bool):
        raise PlanError(f"lyapunov must be True or False, got {out['lyapunov']!r}.")
    diagonal = out.get("diagonal", "exact")
    if diagonal not in DIAGONALS:
        raise PlanError(f"diagonal={diagonal!r}; use one of {', '.join(map(repr, DIAGONALS))}.")
    if out.get("probes") is not None:
        probes = out["probes"]
        if isinstance(probes, bool) or int(probes) != probes or int(probes) < 1:
            raise PlanError(f"probes must be a positive integer, got {probes!r}.")
        if diagonal != "hutchinson":
            raise PlanError("probes= sets the number of Hutchinson probes; it needs "
                            "diagonal='hutchinson'.")
    return out


def _hutchinson_probes(options: dict[str, Any]) -> int:
    if options.get("diagonal", "exact") != "hutchinson":
        return 0
    probes = options.get("probes")
    return DEFAULT_PROBES if probes is None else int(probes)


def _diagonal_jvps(structure: Structure) -> int:
    """JVPs per step of the exact diagonal of the Jacobian in this structure."""
    if structure.jacobian == "zero":
        return 0
    if structure.jacobian == "diagonal":
        return 1
    return structure.jvps_per_step


def _jacobian_note(structure: Structure, n: int) -> str:
    if structure.colours is None:
        return ""
    c = structure.n_colours
    return (f"sparse pattern, {c} colour{'s' if c != 1 else ''}: {c} JVP{'s' if c != 1 else ''}"
            f" per step instead of {n}")


def _leaf_reads(ir: StepIR, pattern: np.ndarray):
    offs = ir.offsets
    reads, edges = [], []
    for v, (lv, ov) in enumerate(zip(ir.state, offs)):
        names = []
        for u, (lu, ou) in enumerate(zip(ir.state, offs)):
            w = int(pattern[ov:ov + lv.size, ou:ou + lu.size].sum())
            if w:
                names.append(lu.name)
                edges.append((lu.name, lv.name, w))
        reads.append((lv.name, tuple(names)))
    return tuple(reads), tuple(edges)



@dataclasses.dataclass(frozen=True)
class StageData:
    """What the runtime needs of a stage: its flat state elements and Jacobian structure
    (in the stage's own element order)."""

    elements: np.ndarray
    structure: Structure


def _jacobian_name(structure: Structure, affine: bool, unit: bool, checked: Verification,
                   sub_pattern: np.ndarray) -> str:
    if structure.jacobian == "diagonal":
        full = bool(np.all(np.diag(sub_pattern)))
        if affine and full and unit:
            return "identity"
        if (affine and checked.scalar) or sub_pattern.shape[0] == 1:
            return "scalar"
    return structure.jacobian


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
    offs = ir.offsets
    return [i for i, (leaf, o) in enumerate(zip(ir.state, offs))
            if np.any((elements >= o) & (elements < o + leaf.size))]


def _stage_names(ir: StepIR, elements: np.ndarray) -> tuple[str, ...]:
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


def _stage_linearity(ir: StepIR, elements: np.ndarray) -> tuple[bool, bool, bool, list]:
    """(affine, linear, unit, reasons) of a stage in its own state (leaf granularity: a
    leaf shared with another stage counts as this stage's state, which is conservative)."""
    leaves = _leaves_of(ir, elements)
    lin = analyse_linearity(ir, leaves)
    levels = [lin.levels[i] for i in leaves]
    reasons = [(ir.state[i].name, lin.reasons[i]) for i in leaves if lin.reasons[i]]
    affine = all(lv != "nonlinear" for lv in levels)
    linear = all(lv == "linear" for lv in levels)
    unit = all(lin.unit[i] for i in leaves)
    return affine, linear, unit, reasons


def _merge_stages(ir: StepIR, raw: list[np.ndarray]) -> list[np.ndarray]:
    """Merge adjacent stages of the same class (affine or not) when the union keeps it."""
    merged: list[np.ndarray] = []
    flags: list[bool] = []
    for elements in raw:
        affine = _stage_linearity(ir, elements)[0]
        if merged and flags[-1] == affine:
            union = np.sort(np.concatenate([merged[-1], elements]))
            if _stage_linearity(ir, union)[0] == affine:
                merged[-1] = union
                continue
        merged.append(elements)
        flags.append(affine)
    return merged


def _kind(structure: Structure, affine: bool, linear: bool) -> str:
    if affine:
        return "linear" if linear else "affine"
    if structure.jacobian in ("zero", "diagonal"):
        return "diagonal"
    if structure.jacobian.startswith("block"):
        return "block-diagonal"
    return "nonlinear"


def _evidence(kind: str, reasons, checked: Verification, staged: bool) -> str:
    probe = {True: ", confirmed by a value probe", False: ", but a value probe disagreed",
             None: ""}[checked.affine_ok if kind in ("linear", "affine") else None]
    given = " given the earlier stages" if staged else ""
    if kind == "linear":
        return f"the new state is M(x) h with no offset{given} (structural, on the jaxpr)" + probe
    if kind == "affine":
        return f"the Jacobian does not depend on h{given} (structural, on the jaxpr)" + probe
    return "not affine in h: " + "; ".join(f"{name} through {r}" for name, r in reasons)



_A_TILDE = {"deer": "the true Jacobian", "quasi-deer": "diag of the Jacobian",
            "picard": "identity", "jacobi": "zero", "elk": "the true Jacobian, damped",
            "quasi-elk": "diag of the Jacobian, damped"}


def _estimates(method: str, structure: Structure, T: int, n: int, itemsize: int,
               user_jacobian: bool = False):
    if method == "sequential":
        return (("work", T * max(n, 1)), ("depth", T), ("memory", T * n * itemsize))
    if method in ITERATIVE:
        base = dict(_estimates("scan", structure, T, n, itemsize))
        iters = min(EXPECTED_ITERATIONS[method], max(T, 1))
        if method not in ("deer", "elk"):
            base["memory"] = T * 3 * n * itemsize
        a_tilde, jvps = _A_TILDE[method], base["JVPs per step"]
        if method in ("picard", "jacobi"):
            jvps = 0
        elif method in ("quasi-deer", "quasi-elk"):
            jvps = 0 if user_jacobian else _diagonal_jvps(structure)
            if structure.hutchinson and method == "quasi-deer" and not user_jacobian:
                a_tilde = (f"Hutchinson estimate of the diagonal of the Jacobian "
                           f"({structure.hutchinson} Rademacher probes)")
                jvps = structure.hutchinson
        return (("Ã", a_tilde), ("expected iterations", iters), ("JVPs per step", jvps),
                ("work", iters * base["work"]), ("depth", iters * base["depth"]),
                ("memory", base["memory"]))
    k = structure.blocks.shape[1] if structure.blocks.size else 1
    coeff = coefficient_elements(structure, n)
    work = 2 * T * (coeff * max(k, 1) + n)
    depth = int(np.ceil(np.log2(max(T, 2)))) * 2
    return (("JVPs per step", structure.jvps_per_step), ("work", work), ("depth", depth),
            ("memory", T * (coeff + 2 * n) * itemsize))


def coefficient_elements(structure: Structure, n: int) -> int:
    """Numbers per step of the structure's ``A_t``: 0 (zero), ``n`` (diagonal), ``m k^2``."""
    if structure.jacobian == "zero":
        return 0
    if structure.jacobian == "diagonal":
        return n
    m, k = structure.blocks.shape if structure.blocks.size else (n, 1)
    return m * k * k


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
    coeff = coefficient_elements(structure, n)
    return float(T) * (2 * coeff + 3 * n) * itemsize


def _gb(x: float) -> str:
    return f"{x / 1e9:.3g} GB"


_ITERATIVE_WHY = {
    "deer": "Newton iterations, each an exact scan with the true (structured) Jacobians",
    "quasi-deer": "quasi-Newton iterations with the exact diagonal of the Jacobian",
    "picard": "Picard sweeps (Ã = I), for steps of the form h + g(h, x)",
    "jacobi": "Jacobi sweeps (Ã = 0), one parallel evaluation of the step each",
    "elk": "damped Newton (Levenberg-Marquardt via a parallel Kalman smoother) with the "
           "true Jacobians",
    "quasi-elk": "damped quasi-Newton (Kalman smoother) with the diagonal of the Jacobian",
}
def _choose(requested: str, names, affine: bool, reasons, inexact: bool, bad_dtype,
            checked: Verification, backend: str, need: float = 0.0, budget: float = np.inf,
            structure_name: str = "dense", n: int = 0, cost=None):
    scan_ok = affine and inexact and checked.affine_ok is not False
    scan_no = ""
    if scan_ok and need > budget:
        if requested == "scan":
            raise PlanError(
                f"method='scan' for the stage of {', '.join(names)} needs about {_gb(need)} "
                f"for its coefficients, right-hand sides and result, but the budget is {_gb(budget)}; use method='sequential', a shorter sequence, or "
                "raise memory_limit.")
        scan_ok = False
        scan_no = f"needs about {_gb(need)}, over the memory budget of {_gb(budget)}"
    if not scan_ok and not scan_no:
        if not affine:
            scan_no = "; ".join(f"{name} is nonlinear in the state through {r}"
                                for name, r in reasons)
        elif not inexact:
            scan_no = f"state {', '.join(bad_dtype)} is not float/complex (a scan would round)"
        else:
            scan_no = "the value probe found the step not affine"
    if requested == "scan":
        if not scan_ok:
            raise PlanError(f"method='scan' needs an affine recurrence, but in the stage of "
                            f"{', '.join(names)}: {scan_no}. Use method='sequential' "
                            "(or 'auto').")
        return "scan", "requested; exact for this affine stage", \
            (("sequential", "not requested"),)
    if requested == "sequential":
        rejected = (("scan", "not requested") if scan_ok else ("scan", scan_no),)
        return "sequential", "requested", rejected
    if requested in ITERATIVE:
        if scan_ok:  # a forced iterative method leaves affine stages to the exact scan
            return "scan", (f"{requested} was requested, but this stage is affine: the exact "
                            "scan solves it in one pass"), ((requested, "the stage is affine"),)
        return requested, f"requested; {_ITERATIVE_WHY[requested]}", \
            (("scan", scan_no),)
    return _choose_by_cost(affine, inexact, scan_ok, scan_no, backend, structure_name, n,
                           cost)


def _choose_by_cost(affine, inexact, scan_ok, scan_no, backend, structure_name, n, cost):
    """``auto``: the candidate with the smallest predicted time (``_cost.py``)."""
    predicted = {"sequential": cost("sequential")}
    excluded = []
    if scan_ok:
        predicted["scan"] = cost("scan")
    else:
        excluded.append(("scan", scan_no))
    if not affine and inexact:
        predicted["quasi-deer"] = cost("quasi-deer")
        deer_bytes = cost.deer_bytes()
        if deer_bytes > cost.budget:
            excluded.append(("deer", f"its Jacobians need about {_gb(deer_bytes)}, over the "
                                     f"memory budget of {_gb(cost.budget)}"))
        else:
            predicted["deer"] = cost("deer")
    best = min(predicted, key=predicted.get)
    t_best = predicted[best]
    rejected = tuple((m, f"predicted {fmt_seconds(t)} against {fmt_seconds(t_best)}")
                     for m, t in sorted(predicted.items(), key=lambda kv: kv[1]) if m != best)
    rejected += tuple(excluded)
    head = {"sequential": "the sequential loop", "scan": "an exact associative scan",
            "deer": f"Newton (DEER) with {structure_name} Jacobians",
            "quasi-deer": "quasi-Newton with the exact diagonal of the Jacobian"}[best]
    why = (f"{'affine' if affine else 'not affine'}; {head} is predicted fastest on {backend} "
           f"({fmt_seconds(t_best)}; cost model: {cost.source_short})")
    if best in ITERATIVE:
        why += "; falls back to the loop if it does not converge"
    return best, why, rejected


class _StageCost:
    """Predicted seconds of each method on one stage (``_cost.predict``)."""

    def __init__(self, backend, T, n, flops, jacobian, structure, budget, itemsize):
        self.backend, self.T, self.n, self.flops = backend, T, n, flops
        self.jacobian, self.structure, self.budget = jacobian, structure, budget
        self.itemsize = itemsize
        src = _cost.constants(backend).source
        self.source_short = "measured" if src.startswith("measured") else "assumed"
        self.source_short += f" constants for {backend}, see `recur.passes._cost`"

    def __call__(self, method):
        st = self.structure
        blocks = st.blocks.shape if st.blocks.size else None
        return _cost.predict(method, backend=self.backend, T=self.T, n=self.n,
                             flops=self.flops, jacobian=self.jacobian, blocks_shape=blocks,
                             colours=st.n_colours if getattr(st, "colours", None) is not None
                             else 0)

    def deer_bytes(self) -> float:
        st = self.structure
        coeff = coefficient_elements(st, self.n)
        return float(self.T) * (3 * coeff + 4 * self.n) * self.itemsize


def _print_pattern(ir: StepIR, sp: Sparsity) -> str:
    n = ir.n_state
    lines = [f"{n} state elements, {sp.nnz} nonzeros in the Jacobian pattern"
             + ("" if sp.tangent is None else
                f" (values read {int(sp.primal.sum())}, JVP reads {int(sp.tangent.sum())})")]
    if n <= 32:
        for i in range(n):
            row = "".join("x" if sp.pattern[i, j] else "." for j in range(n))
            lines.append(f"  {row}  {ir.element_name(i)}")
    return "\n".join(lines)


def _requested_for(method, names) -> str:
    if not isinstance(method, dict):
        return method
    for name in names:
        base = name.split("[")[0] if not name.startswith("[") else name
        for key in (name, base):
            if key in method:
                return method[key]
    return "auto"


def _check_method(method) -> None:
    values = method.values() if isinstance(method, dict) else [method]
    for m in values:
        if m == "autotune":
            raise PlanError("method='autotune' is resolved by recur.scan/recur.plan before "
                            "planning; it cannot be a stage's method.")
        if m in NOT_YET:
            raise PlanError(f"method={m!r} is not available in this version; use one of "
                            f"{', '.join(METHODS)}.")
        if m not in METHODS:
            raise PlanError(f"unknown method {m!r}; use one of {', '.join(METHODS)}.")


def make_plan(ir: StepIR, *, method: str | dict = "auto", backend: str | None = None,
              options: dict[str, Any] | None = None) -> Plan:
    options = check_options(options or {})
    _check_method(method)
    if options.get("window") is not None:
        for m in (method.values() if isinstance(method, dict) else [method]):
            if m in ITERATIVE and m not in WINDOW_METHODS:
                raise PlanError(f"window= works with {', '.join(WINDOW_METHODS)}, not {m!r}.")
    if backend is None:
        import jax
        backend = jax.default_backend()
    if backend not in ("cpu", "gpu", "tpu", "cuda", "rocm"):
        raise PlanError(f"backend={backend!r}; use 'cpu', 'gpu', 'tpu' or None.")
    backend = "gpu" if backend in ("cuda", "rocm") else backend

    sparsity = jacobian_sparsity(ir)
    step_flops = _cost.jaxpr_flops(ir.jaxpr)
    pattern = sparsity.pattern
    whole = analyse_linearity(ir)
    dtype = compute_dtype([leaf.dtype for leaf in ir.state])
    inexact = all(is_inexact(leaf.dtype) for leaf in ir.state)
    bad_dtype = [leaf.name for leaf in ir.state if not is_inexact(leaf.dtype)]
    groups = _merge_stages(ir, stage_elements(pattern)) if ir.n_state else \
        [np.zeros(0, np.int64)]
    if isinstance(method, dict):
        known = {n for g in groups for n in _stage_names(ir, g)}
        known |= {n.split("[")[0] for n in known}
        unknown = sorted(set(method) - known)
        if unknown:
            raise PlanError(f"method dict names {', '.join(unknown)}, which is no stage's "
                            f"state; the stages hold {', '.join(sorted(known))}.")
    staged = len(groups) > 1
    leaf_reads, edges = _leaf_reads(ir, pattern)
    stages, data, notes, verification_text, cost_text = [], [], [], [], []
    for index, elements in enumerate(groups):
        sub = pattern[np.ix_(elements, elements)]
        structure = analyse_structure(sub)
        affine, linear, unit, reasons = _stage_linearity(ir, elements)
        names = _stage_names(ir, elements)
        if options.get("verify", True) and len(elements):
            checked = verify(ir, structure, affine,
                             elements=None if len(elements) == ir.n_state else elements)
        else:
            checked = Verification(None, None, False, ("not probed",))
        notes += [f"stage {index}: {n}" for n in checked.notes]
        if checked.structure_ok is False:
            structure = analyse_structure(np.ones_like(sub))
            notes.append(f"stage {index}: using the dense structure instead; this is a bug in "
                         "recur's dependency pass, please report it")
        if structure.colours is not None:
            notes.append(f"stage {index}: the dense Jacobian has a sparse pattern; a column "
                         f"colouring extracts it from {structure.n_colours} JVPs per step "
                         f"instead of {len(elements)}")
        kind = _kind(structure, affine, linear)
        jac = _jacobian_name(structure, affine, unit, checked, sub)
        budget = memory_budget(backend, options.get("memory_limit"))
        cost = _StageCost(backend, ir.length, len(elements), step_flops, jac, structure,
                          budget, dtype.itemsize)
        chosen, why, rejected = _choose(
            _requested_for(method, names), names, affine, reasons, inexact, bad_dtype,
            checked, backend, need=scan_bytes(structure, ir.length, len(elements),
                                              dtype.itemsize),
            budget=budget, structure_name=jac, n=len(elements), cost=cost)
        candidates = ["sequential"] + (["scan"] if affine else ["deer", "quasi-deer"])
        cost_text.append(f"stage {index}: " + ", ".join(
            f"{m} {fmt_seconds(cost(m))}" for m in candidates))
        probes = _hutchinson_probes(options)
        if probes and chosen in ITERATIVE and chosen != "quasi-deer":
            notes.append(f"stage {index}: diagonal='hutchinson' applies to quasi-deer only; "
                         f"this stage runs {chosen}")
        if probes and chosen == "quasi-deer" and options.get("jacobian") is None:
            exact = _diagonal_jvps(structure)
            if probes < exact:
                structure = dataclasses.replace(structure, hutchinson=probes)
                why += (f" (diagonal='hutchinson': diag(J) estimated from {probes} Rademacher "
                        f"probes instead of {exact} JVPs; derivatives stay exact)")
            else:
                notes.append(f"stage {index}: diagonal='hutchinson' not used: the exact "
                             f"diagonal costs {exact} JVP{'s' if exact != 1 else ''} per step, "
                             f"no more than {probes} probes")
        reads = tuple((leaf_name, tuple(r)) for leaf_name, r in leaf_reads
                      if any(leaf_name == n.split("[")[0] or leaf_name == n for n in names))
        stages.append(Stage(
            states=names, kind=kind, jacobian=jac, method=chosen, reads=reads,
            evidence=_evidence(kind, reasons, checked, staged and index > 0), why=why,
            blocks=structure.block_sizes if structure.jacobian.startswith("block") else (),
            estimates=_estimates(chosen, structure, ir.length, len(elements), dtype.itemsize,
                                 user_jacobian=options.get("jacobian") is not None)
            + (("predicted time", fmt_seconds(cost(chosen))),),
            rejected=rejected, colours=structure.n_colours,
            jacobian_note=_jacobian_note(structure, len(elements))))
        data.append(StageData(elements=elements, structure=structure))
        verification_text.append(
            f"stage {index}: structure {checked.structure_ok}, affine {checked.affine_ok}, "
            f"scalar {checked.scalar}" + "".join(f"\n  {n}" for n in checked.notes))
    methods = {st.method for st in stages}
    passes = (
        ("trace", str(ir.jaxpr)),
        ("dependency", _print_pattern(ir, sparsity)),
        ("structure", "\n".join(
            f"stage {i}: {len(d.elements)} elements, jacobian {d.structure.jacobian}, "
            f"{d.structure.n_blocks} blocks of sizes {sorted(set(d.structure.block_sizes))}, "
            f"{d.structure.n_scc} strongly connected components"
            + (f", column colouring of the sparse pattern: {d.structure.n_colours} colours "
               f"(JVPs per step) instead of {len(d.elements)}"
               if d.structure.colours is not None else "")
            for i, d in enumerate(data))),
        ("linearity", "\n".join(f"{leaf.name}: {lv}" + (f" ({r})" if r else "")
                                for leaf, lv, r in zip(ir.state, whole.levels, whole.reasons))),
        ("verification", "\n".join(verification_text)),
        ("cost", f"predicted times ({_cost.constants(backend).source}; "
                 f"{step_flops:.0f} flops per step)\n" + "\n".join(cost_text)),
        ("lowering", "\n".join(f"stage {i} ({', '.join(st.states)}): {st.method}: {st.why}"
                               for i, st in enumerate(stages))),
    )
    return Plan(
        kind=max((st.kind for st in stages), key=KIND_ORDER.index),
        method=methods.pop() if len(methods) == 1 else "staged", stages=tuple(stages),
        backend=backend, length=ir.length, reverse=ir.reverse, n_state=ir.n_state,
        dtype=dtype.name, notes=tuple(notes), passes=passes, edges=edges,
        state_sizes=tuple((leaf.name, leaf.size) for leaf in ir.state),
        state_kinds=state_kinds(ir, pattern, whole),
        options=tuple(sorted((k, v) for k, v in options.items()
                             if k not in ("init", "jacobian"))),
        _ir=ir, _stages=tuple(data))


__all__ = ["make_plan", "check_options", "StageData", "METHODS", "OPTIONS", "DIAGONALS"]
