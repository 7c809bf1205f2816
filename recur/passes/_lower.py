"""Lowering: run the analysis passes on a ``StepIR`` and pick a method -> ``Plan``.

Methods available in this version:

* ``scan`` — exact associative (chunked) scan, for affine recurrences with inexact
  (float/complex) states: one pass, work ``O(T n)`` (diagonal), ``O(T m k^3)`` (``m``
  blocks of ``k``), ``O(T n^3)`` (dense), depth ``O(log T)`` on parallel hardware;
* ``sequential`` — the ``lax.scan`` loop: work ``T`` steps, depth ``T``.

``auto`` picks ``scan`` for affine recurrences on GPU/TPU, where it is parallel over time,
and ``sequential`` on CPU, where the loop is the fastest exact method (the chunked kernel
runs as a sequential loop there too, plus coefficient extraction and the residual check:
see ``benchmarks/affine.py``); nonlinear recurrences run ``sequential`` (the DEER-family
solvers are not part of this version).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dtypes import is_inexact
from .._errors import PlanError
from .._plan import KIND_ORDER, Plan, Stage
from ..runtime._flat import compute_dtype
from ._dependency import Sparsity, jacobian_sparsity
from ._linearity import Linearity, analyse_linearity
from ._structure import Structure, analyse_structure
from ._trace import StepIR
from ._verify import Verification, verify

METHODS = ("auto", "sequential", "scan")
ITERATIVE = ("deer", "quasi-deer", "picard", "jacobi", "elk")
ON_FAILURE = ("sequential", "raise", "ignore")
OPTIONS = ("rtol", "atol", "max_iters", "on_failure", "init", "jacobian", "check", "verify",
           "chunk")


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
    if "chunk" in out and out["chunk"] is not None and int(out["chunk"]) < 1:
        raise PlanError(f"chunk must be a positive integer, got {out['chunk']!r}.")
    return out


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


def _jacobian_name(structure: Structure, linearity: Linearity, checked: Verification,
                   pattern: np.ndarray) -> str:
    if structure.jacobian == "diagonal":
        full = bool(np.all(np.diag(pattern)))
        if linearity.affine and full and all(linearity.unit):
            return "identity"
        if (linearity.affine and checked.scalar) or pattern.shape[0] == 1:
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


def _kind(structure: Structure, linearity: Linearity) -> str:
    if linearity.affine:
        return "linear" if linearity.linear else "affine"
    if structure.jacobian in ("zero", "diagonal"):
        return "diagonal"
    if structure.jacobian.startswith("block"):
        return "block-diagonal"
    return "nonlinear"


def _evidence(ir: StepIR, kind: str, linearity: Linearity, checked: Verification) -> str:
    probe = {True: ", confirmed by a value probe", False: ", but a value probe disagreed",
             None: ""}[checked.affine_ok if linearity.affine else None]
    if kind == "linear":
        return ("the new state is M(x) h with no offset (structural, on the jaxpr)"
                + probe)
    if kind == "affine":
        return ("the Jacobian does not depend on h (structural, on the jaxpr)" + probe)
    reasons = [f"{leaf.name} through {r}" for leaf, r in zip(ir.state, linearity.reasons) if r]
    return f"not affine in h: {'; '.join(reasons)}"


def _estimates(method: str, structure: Structure, T: int, n: int, itemsize: int):
    if method == "sequential":
        return (("work", T * max(n, 1)), ("depth", T), ("memory", T * n * itemsize))
    m, k = structure.blocks.shape if structure.blocks.size else (n, 1)
    if structure.jacobian in ("zero",):
        coeff = 0
    elif structure.jacobian == "diagonal":
        coeff = n
    else:
        coeff = m * k * k
    work = 2 * T * (coeff * max(k, 1) + n)
    depth = int(np.ceil(np.log2(max(T, 2)))) * 2
    return (("work", work), ("depth", depth), ("memory", T * (coeff + 2 * n) * itemsize))


def _choose(requested: str, kind: str, ir: StepIR, linearity: Linearity,
            checked: Verification, backend: str):
    inexact = all(is_inexact(leaf.dtype) for leaf in ir.state)
    scan_ok = linearity.affine and inexact and checked.affine_ok is not False
    if not scan_ok:
        if not linearity.affine:
            offenders = [f"{leaf.name} is nonlinear in the state through {r}"
                         for leaf, r in zip(ir.state, linearity.reasons) if r]
            scan_no = "; ".join(offenders)
        elif not inexact:
            bad = [leaf.name for leaf in ir.state if not is_inexact(leaf.dtype)]
            scan_no = f"state {', '.join(bad)} is not float/complex (a scan would round)"
        else:
            scan_no = "the value probe found the step not affine"
    if requested == "scan":
        if not scan_ok:
            raise PlanError(f"method='scan' needs an affine recurrence, but {scan_no}. Use "
                            "method='sequential' (or 'auto').")
        return "scan", "requested; exact for this affine recurrence", \
            (("sequential", "not requested"),)
    if requested == "sequential":
        rejected = (("scan", "not requested") if scan_ok else ("scan", scan_no),)
        return "sequential", "requested", rejected
    # auto
    if scan_ok and backend == "cpu":
        return "sequential", ("affine, but on CPU the sequential loop is the fastest exact "
                              "method: the scan kernel runs as a sequential loop there too, and "
                              "adds coefficient extraction and the residual check (measured "
                              "in benchmarks/affine.py)"), \
            (("scan", "exact and parallel over time, but slower than the loop on CPU"),)
    if scan_ok:
        return "scan", ("affine: an exact associative scan, one pass, parallel over time "
                        f"on {backend}"), \
            (("sequential", "same result, but no parallelism over time"),)
    why = "the step is not affine: the DEER-family solvers are not part of this version, " \
          "and the sequential loop is exact" if not linearity.affine else scan_no
    return "sequential", why, (("scan", scan_no),)


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


def make_plan(ir: StepIR, *, method: str = "auto", backend: str | None = None,
              options: dict[str, Any] | None = None) -> Plan:
    options = check_options(options or {})
    if isinstance(method, dict):
        raise PlanError("a per-stage method dict needs a staged plan; this version plans "
                        "one stage: pass one method name.")
    if method in ITERATIVE:
        raise PlanError(f"method={method!r} (an iterative DEER-family solver) is not available "
                        f"in this version; use one of {', '.join(METHODS)}.")
    if method not in METHODS:
        raise PlanError(f"unknown method {method!r}; use one of {', '.join(METHODS)}.")
    if backend is None:
        import jax
        backend = jax.default_backend()
    if backend not in ("cpu", "gpu", "tpu", "cuda", "rocm"):
        raise PlanError(f"backend={backend!r}; use 'cpu', 'gpu', 'tpu' or None.")
    backend = "gpu" if backend in ("cuda", "rocm") else backend

    sparsity = jacobian_sparsity(ir)
    structure = analyse_structure(sparsity.pattern)
    linearity = analyse_linearity(ir)
    if options.get("verify", True):
        checked = verify(ir, structure, linearity.affine)
    else:
        checked = Verification(None, None, False, ("verification turned off (verify=False)",))
    notes = list(checked.notes)
    if checked.structure_ok is False:
        structure = analyse_structure(np.ones_like(sparsity.pattern))
        notes.append("using the dense structure instead; this is a bug in recur's dependency "
                     "pass, please report it")
    kind = _kind(structure, linearity)
    jac = _jacobian_name(structure, linearity, checked, sparsity.pattern)
    chosen, why, rejected = _choose(method, kind, ir, linearity, checked, backend)
    dtype = compute_dtype([leaf.dtype for leaf in ir.state])
    reads, edges = _leaf_reads(ir, sparsity.pattern)
    stage = Stage(
        states=tuple(leaf.name for leaf in ir.state), kind=kind, jacobian=jac, method=chosen,
        reads=reads, evidence=_evidence(ir, kind, linearity, checked), why=why,
        blocks=structure.block_sizes if structure.jacobian.startswith("block") else (),
        estimates=_estimates(chosen, structure, ir.length, ir.n_state, dtype.itemsize),
        rejected=rejected)
    passes = (
        ("trace", str(ir.jaxpr)),
        ("dependency", _print_pattern(ir, sparsity)),
        ("structure", f"jacobian {structure.jacobian}, {structure.n_blocks} weak components "
                      f"(blocks) of sizes {sorted(set(structure.block_sizes))}, "
                      f"{structure.n_scc} strongly connected components"),
        ("linearity", "\n".join(f"{leaf.name}: {lv}" + (f" ({r})" if r else "")
                                for leaf, lv, r in zip(ir.state, linearity.levels,
                                                       linearity.reasons))),
        ("verification", f"structure {checked.structure_ok}, affine {checked.affine_ok}, "
                         f"scalar {checked.scalar}" +
         "".join(f"\n{n}" for n in checked.notes)),
        ("lowering", f"{chosen}: {why}"),
    )
    return Plan(
        kind=max((kind,), key=KIND_ORDER.index), method=chosen, stages=(stage,),
        backend=backend, length=ir.length, reverse=ir.reverse, n_state=ir.n_state,
        dtype=dtype.name, notes=tuple(notes), passes=passes, edges=edges,
        state_sizes=tuple((leaf.name, leaf.size) for leaf in ir.state),
        state_kinds=state_kinds(ir, sparsity.pattern, linearity),
        options=tuple(sorted((k, v) for k, v in options.items()
                             if k not in ("init", "jacobian"))),
        _ir=ir, _structure=structure)


__all__ = ["make_plan", "check_options", "METHODS", "OPTIONS"]
