"""Lowering: run the analysis passes on a ``StepIR`` and pick a method per stage -> ``Plan``.

``make_plan`` joins the passes in order: the dependency pattern (``_dependency.py``), the
stages and what each is (``_facts.py``), a method per stage (``_choice.py``), the chunkwise
pass for ``recur.lax.scan`` bodies (``_chunkwise.py``), and the report of every pass
(``_report.py``).  ``recur.plan`` and ``recur.scan`` both lower through ``make_plan``, so a
plan shows what ``scan`` runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import _methods
from .._errors import PlanError
from .._ir import StageData, StepIR, compute_dtype
from .._plan import KIND_ORDER, Plan, Stage, boundary_chunk_length
from . import _chunkwise, _cost, _report
from ._choice import (_chaos_policy, _check_method, _check_windows, _requested_for,
                      _StageCost, memory_budget, scan_bytes, stage_candidates, stage_choice)
from ._cost import fmt_seconds
from ._dependency import jacobian_sparsity
from ._facts import (_classify, _Facts, _leaves_of, _stage_names, stage_groups, stage_names,
                     state_kinds)
from ._linearity import analyse_linearity
from ._options import check_options, decisions, requested_probes
from ._semiring import print_semiring
from ._verify import Values

# Re-exported for the command line and the tests: every method name a user may pass.
METHODS = _methods.names()


@dataclasses.dataclass
class _Lowering:
    """What the steps of ``make_plan`` share: the IR (with its JVP blockers), its
    dependency pattern, the backend and options, and the notes they add to the plan."""

    ir: StepIR
    sparsity: Any
    backend: str
    options: dict[str, Any]
    values: Values | None
    step_flops: float
    budget: float
    backward: bool
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def pattern(self):
        return self.sparsity.pattern


def make_plan(ir: StepIR, *, method: str | dict = "auto", backend: str | None = None,
              options: dict[str, Any] | None = None, values: Values | None = None,
              lyapunov_note: bool = False, outputs=None, sharded: bool = False) -> Plan:
    """The plan for ``ir``: stages (``_facts``), a method per stage (``_choice``), the
    chunkwise decision, and every pass's report.  ``values``: the concrete
    ``h0``/``xs``/params when known (probes at the actual values; the chaos policy);
    ``lyapunov_note``: estimate the Lyapunov exponent for the plan's notes even where no
    decision needs it; ``outputs``: the ``recur.lax.scan`` body (then the chunkwise pass
    runs, and ``chunked`` is a candidate unless the plan is ``sharded`` across devices)."""
    options = check_options(options or {})
    backend = _backend(backend)
    _check_windows(method, options)
    low = _analyse(ir, backend, options, values)
    ir = low.ir
    groups = stage_groups(ir, low.pattern)
    _check_method(method, [n for el, _ in groups for n in stage_names(ir, el)])
    dtype = compute_dtype([leaf.dtype for leaf in ir.state])
    lean = outputs is not None and len(groups) == 1 and not sharded
    decided = [_decide(low, index, elements, exact, method, lean)
               for index, (elements, exact) in enumerate(groups)]
    facts_list = [d[0] for d in decided]
    choices = [d[1] for d in decided]
    costs = [d[2] for d in decided]
    choices = _chaos_policy(ir, method, facts_list, choices, values, low.notes, lyapunov_note)
    wanted = [_requested_for(method, f.names) for f in facts_list]
    chunk, text = None, None
    if outputs is not None or "chunked" in wanted:
        chunk, choices, text = _chunkwise.decide(
            ir, outputs, values, wanted, choices, costs, backend=backend,
            backward=low.backward, sharded=sharded, verify=options.get("verify", True),
            chunk=options.get("chunk"))
    reads, edges = _report.leaf_reads(ir, low.pattern)
    staged = len(groups) > 1
    built = [_stage(low, facts, choice, cost, chunk, reads, staged)
             for facts, choice, cost in zip(facts_list, choices, costs)]
    stages = tuple(b[0] for b in built)
    data = tuple(b[1] for b in built)
    whole = analyse_linearity(ir)
    cost_rows = [(f.index, [(m, c(m)) for m in stage_candidates(f, ir)])
                 for f, c in zip(facts_list, costs)]
    passes = _passes(low, whole, facts_list, stages, data, cost_rows,
                     text if outputs is not None else None)
    methods = {st.method for st in stages}
    return Plan(
        kind=max((st.kind for st in stages), key=KIND_ORDER.index),
        method=methods.pop() if len(methods) == 1 else "staged", stages=stages,
        backend=backend, length=ir.length, reverse=ir.reverse, n_state=ir.n_state,
        dtype=dtype.name, notes=tuple(low.notes),
        passes=passes, edges=edges,
        state_sizes=tuple((leaf.name, leaf.size) for leaf in ir.state),
        state_kinds=state_kinds(ir, low.pattern, whole), options=decisions(options),
        ir=ir, stage_data=data, chunked=None if chunk is None else chunk.form)


def _analyse(ir: StepIR, backend: str, options, values) -> _Lowering:
    """The dependency pattern, and an IR that names the JVP blocker the dependency pass
    found (an operation without a forward-mode rule) when tracing found none."""
    sparsity = jacobian_sparsity(ir)
    if not sparsity.has_jvp and ir.has_jvp:
        ir = dataclasses.replace(ir, jvp_blockers=(
            "an operation without a forward-mode rule (such as `.at[].apply`)",))
    return _Lowering(ir, sparsity, backend, options, values,
                     step_flops=_cost.jaxpr_flops(ir.jaxpr),
                     budget=memory_budget(backend, options.get("memory_limit")),
                     backward=bool(options.get("for_grad", False)))


def _decide(low: _Lowering, index: int, elements, exact: bool, method, lean: bool = False):
    """``(facts, (method, why, rejected), cost)`` of one stage; ``lean``: the stage is the
    whole recurrence of a ``recur.lax.scan`` on one device, so ``scan`` runs the
    boundary-state outputs path where it applies and holds ``T / C`` states."""
    ir = low.ir
    facts, stage_notes = _classify(ir, low.pattern, index, elements, exact, low.options,
                                   low.values)
    low.notes += stage_notes
    stage_dtype = compute_dtype([ir.state[i].dtype for i in _leaves_of(ir, elements)])
    cost = _StageCost(low.backend, ir.length, len(elements), low.step_flops, facts.jacobian,
                      facts.structure, low.budget, stage_dtype.itemsize, low.backward)
    C = boundary_chunk_length(ir.length, facts.structure, facts.exact,
                              low.options.get("chunk")) if lean else None
    return facts, stage_choice(method, facts, ir, cost, boundary_chunk=C), cost


def _stage(low: _Lowering, facts: _Facts, choice, cost: _StageCost, chunk, reads,
           staged: bool) -> tuple[Stage, StageData]:
    """The plan's ``Stage`` (what it reports) and the runtime's ``StageData`` of one
    stage."""
    chosen, why, rejected = choice
    options = low.options
    structure, why = _hutchinson(facts.structure, chosen, options, facts.index, low.notes,
                                 why)
    n = cost.n
    stage = Stage(
        states=facts.names, kind=facts.kind, jacobian=facts.jacobian, method=chosen,
        reads=tuple((leaf, tuple(r)) for leaf, r in reads
                    if any(leaf == nm.split("[")[0] or leaf == nm for nm in facts.names)),
        evidence=_report.evidence(facts.kind, facts.reasons, facts.checked,
                                  staged and facts.index > 0, facts.exact, facts.unconfirmed)
        + (f"; {facts.semiring.text()}" if facts.semiring is not None
           and facts.semiring.claim is not None else ""),
        why=why, blocks=structure.block_sizes if structure.jacobian.startswith("block")
        else (),
        estimates=(chunk.estimates if chosen == "chunked" else
                   _report.estimates(chosen, structure, low.ir.length, n, cost.itemsize,
                                     user_jacobian=options.get("jacobian") is not None)
                   + (("predicted time", fmt_seconds(cost(chosen))),)),
        rejected=rejected, colours=structure.n_colours,
        jacobian_note=_report.jacobian_note(structure, n))
    data = StageData(elements=facts.elements, structure=structure, exact=facts.exact,
                     semiring=facts.semiring.claim if chosen == "semiring" else None)
    return stage, data


def _passes(low: _Lowering, whole, facts_list, stages, data, cost_rows, chunk_text):
    """``(name, text)`` of every pass, in order, for ``Plan.explain_passes``."""
    ir = low.ir
    return (
        ("trace", str(ir.jaxpr)),
        ("dependency", _report.print_pattern(ir, low.sparsity)),
        ("structure", _report.print_structures(data)),
        ("linearity", "\n".join(f"{leaf.name}: {lv}" + (f" ({r})" if r else "")
                                for leaf, lv, r in zip(ir.state, whole.levels, whole.reasons))),
        ("verification", "\n".join(
            f"stage {f.index}: structure {f.checked.structure_ok}, affine "
            f"{f.checked.affine_ok}, scalar {f.checked.scalar}"
            + "".join(f"\n  {n}" for n in f.checked.notes) for f in facts_list)),
        ("semiring", print_semiring((f.index, f.semiring) for f in facts_list)),
        ("cost", _report.print_costs(_cost.constants(low.backend).source, low.step_flops,
                                     cost_rows)),
    ) + ((("chunkwise", chunk_text),) if chunk_text is not None else ()) + (
        ("lowering", "\n".join(f"stage {i} ({', '.join(st.states)}): {st.method}: {st.why}"
                               for i, st in enumerate(stages))),
    )


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


__all__ = ["make_plan", "stage_groups", "stage_names", "state_kinds", "memory_budget",
           "scan_bytes", "METHODS", "_stage_names"]
