"""The method of each stage: the one requested where it applies, else (``auto``) the
cheapest by the cost model.

Every method is an entry of ``recur/_methods.py``.  A forced method applies where it can:
a forced iterative method leaves affine stages to the exact scan; exact stages always run
the loop; a step that forward-mode autodiff cannot go through (a ``custom_vjp`` function)
runs only the loop.  ``auto`` takes, per stage, the candidate (``sequential``; ``scan`` for
affine stages; ``deer`` and ``quasi-deer`` otherwise, and ``semiring`` where the semiring
pass, ``_semiring.py``, finds and probes a stage linear over a semiring) with the smallest
time predicted by the cost model of ``_cost.py`` for the plan's backend -- the reverse pass
included when the plan is made for differentiation -- among those within the memory
budget; and when the values are known and say the system is chaotic
(``_contractivity.py``), ``auto`` keeps the loop where it would have chosen an iterative
method.  ``chunked`` is decided after this, by the chunkwise pass (``_chunkwise.py``).
"""

from __future__ import annotations

from .. import _methods
from .._dtypes import is_inexact
from .._errors import PlanError
from .._ir import StepIR, Structure
from . import _contractivity, _cost, _report
from ._cost import fmt_seconds
from ._facts import _Facts, _leaves_of


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


def stage_choice(method, facts: _Facts, ir: StepIR, cost: _StageCost,
                 boundary_chunk: int | None = None):
    """``(method, why, rejected)`` for one stage, given the user's ``method`` (a name, or a
    dict by state name); ``chunked`` counts as ``auto`` here (the chunkwise pass decides
    it later).  ``boundary_chunk``: ``scan`` would run the outputs path that holds one
    state per chunk of that many steps (its memory is that of a scan over ``T / C``
    chunk maps), else None (all ``T`` states)."""
    requested = _requested_for(method, facts.names)
    requested = "auto" if requested == "chunked" else requested
    if facts.exact:
        return _exact_choice(method, requested, facts, ir)
    steps = ir.length if boundary_chunk is None else -(-ir.length // boundary_chunk)
    return _choose(requested, facts, ir, cost,
                   need=scan_bytes(facts.structure, steps, cost.n, cost.itemsize))


def _exact_choice(method, requested: str, facts: _Facts, ir: StepIR):
    """A stage of integer, boolean or key state runs the loop (or, where it reads none of
    its own elements, a parallel map over the steps): only that computes it exactly."""
    if isinstance(method, dict) and requested not in ("auto", "sequential"):
        raise PlanError(f"the stage of {', '.join(facts.names)} holds integer, boolean "
                        f"or key state, which only the loop computes exactly; it "
                        f"cannot run {requested!r}.")
    why = "integer, boolean or key state: the loop computes it exactly"
    if facts.structure.jacobian == "zero" and ir.length > 0:
        why = ("integer, boolean or key state that reads none of its own elements: "
               "computed exactly by a parallel map over the steps from the earlier "
               "stages' states")
    return ("sequential", why, (("scan", f"{', '.join(facts.names)} is integer, "
                                         "boolean or key, not float/complex (a scan "
                                         "would round it)"),))


def stage_candidates(facts: _Facts, ir: StepIR) -> list[str]:
    """The methods whose predicted time the cost pass reports for a stage."""
    candidates = ["sequential"] + ([] if facts.exact or not ir.has_jvp else
                                   ["scan"] if facts.affine else ["deer", "quasi-deer"])
    if facts.semiring is not None and facts.semiring.usable and ir.has_jvp:
        candidates.append("semiring")
    return candidates


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


__all__ = ["memory_budget", "scan_bytes", "stage_choice", "stage_candidates", "_StageCost",
           "_requested_for", "_check_method", "_check_windows", "_chaos_policy"]
