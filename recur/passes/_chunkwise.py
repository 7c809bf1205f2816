r"""Chunkwise pass: is a ``jax.lax.scan`` body a decayed linear-attention recurrence?

The pass looks for the form of ``recur/_chunkform.py``: per state leaf, in a frame
``(b, K, V)``, ``S_t = g_t ⊙ S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ`` with the decay ``g``
constant along ``V``, and outputs that are functions of readouts ``S_τᵀ q_t`` and of ``x_t``,
where ``g, k, v, q`` are functions of ``x_t`` alone.  It runs in three parts:

* the abstract interpretation of the body's jaxpr along the state path
  (``_chunk_state.py``, with free values as sums of products: ``_chunk_free.py``);
* the key and value axes of each leaf and the ``ChunkForm`` (``_chunk_axes.py``);
* value probes: the body rebuilt from the pieces must equal the body (``_chunk_probe.py``).

Here: ``analyse`` (the three parts, and the pass's printable report) and ``decide``
(whether a plan runs ``chunked``: requested, or under ``auto`` where the cost model of
``_cost.py`` predicts it faster than the stages' methods, with its chunk size).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._chunkform import ChunkForm
from .._errors import PlanError
from .._ir import Outputs, StepIR
from . import _cost
from ._chunk_axes import build_form
from ._chunk_free import Refused
from ._chunk_probe import probe
from ._chunk_state import StatePath
from ._verify import Values


def analyse(ir: StepIR, outputs: Outputs | None, values: Values | None = None,
            verify: bool = True) -> tuple[ChunkForm | None, str]:
    """``(form, text)``: the chunkwise form of the body and the pass's printable output, or
    ``(None, why not)``."""
    if outputs is None:
        return None, "no per-step outputs (recur.scan returns every state): not applicable"
    try:
        form = build_form(StatePath(ir, outputs))
    except Refused as exc:
        return None, f"no chunkwise form: {exc}"
    lines = [lf.describe() for lf in form.leaves]
    lines += [f"readout {r.describe(form.leaves[r.leaf])}" for r in form.readouts]
    if not form.readouts:
        lines.append("no readouts: the outputs do not read the state")
    if verify:
        ok, text = probe(form, ir, outputs, values)
        lines.append(text)
        if ok is not True:
            return None, "no chunkwise form used: " + "\n".join(lines)
    return form, "\n".join(lines)


# ----------------------------------------------------------------------------- lowering

@dataclasses.dataclass(frozen=True)
class Decision:
    """The chunkwise form a plan runs (``form.chunk`` set) and its estimates."""

    form: ChunkForm
    estimates: tuple


def dims(form: ChunkForm) -> list:
    """Per leaf ``(b, K, V, R, m, d)`` for the cost model (``m``: its queries; ``R = 1``
    for a vector state, whose input terms the pieces sum)."""
    out = []
    for i, lf in enumerate(form.leaves):
        m = sum(r.M for r in form.readouts if r.leaf == i)
        d = lf.K if lf.kind == "row" else 1
        out.append((lf.b, lf.K, lf.V, lf.R, m, d))
    return out


def _bytes(v: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{int(v)} B"


def decide(ir: StepIR, outputs: Outputs | None, values, wanted, choices, costs, *,
           backend: str, backward: bool, sharded: bool, verify: bool = True,
           chunk: int | None = None):
    """``(Decision or None, choices, text)``: whether the plan runs ``chunked`` -- requested
    (every stage asks for it), or under ``auto`` where the cost model predicts it faster
    than what the stages chose -- with the chunk size the model predicts fastest."""
    requested = "chunked" in wanted
    if outputs is None:
        raise PlanError("method='chunked' computes per-step outputs without storing the "
                        "states, so it needs a recur.lax.scan body f(carry, x) -> (carry, y); "
                        "recur.scan returns every state (use method='scan' there).")
    if requested and not all(w == "chunked" for w in wanted):
        raise PlanError("method='chunked' runs the whole body (every state leaf at once); "
                        "it cannot be given to some stages only.")
    form, text = analyse(ir, outputs, values, verify)
    if form is None:
        if requested:
            raise PlanError(f"method='chunked' cannot run this body: "
                            f"{text.removeprefix('no chunkwise form: ')}. Use method='auto'.")
        why = text.splitlines()[0].removeprefix("no chunkwise form: ")
        return None, [(m, w, r + (("chunked", why),)) for m, w, r in choices], text
    est = _estimate(ir, outputs, form, backend, backward, chunk)
    text += est.text
    decision = Decision(dataclasses.replace(form, chunk=est.C, group=est.group), est.rows)
    kinds = ", ".join(sorted({lf.kind for lf in form.leaves}))
    head = (f"a decayed linear-attention body (decay {kinds}): its chunkwise form, "
            f"C = {est.C}, never stores the T states")
    budget = costs[0].budget if costs else float("inf")
    if requested:
        if est.memory > budget:
            raise PlanError(f"method='chunked' needs about {_bytes(est.memory)}, over the "
                            f"memory budget of {_bytes(budget)}; raise memory_limit or use "
                            "method='sequential'.")
        return decision, [("chunked", f"requested; {head}", (("sequential", "not requested"),))
                          for _ in choices], text
    if sharded:
        note = "no sequence-parallel form yet (one device only)"
    elif est.memory > budget:
        note = f"needs about {_bytes(est.memory)}, over the memory budget of {_bytes(budget)}"
    elif not all(w == "auto" for w in wanted):
        note = "not requested"
    else:
        new, note = _compare(est, choices, costs, head, backend)
        if new is not None:
            return decision, new, text
    return None, [(m, w, r + (("chunked", note),)) for m, w, r in choices], \
        text + f"\nnot used: {note}"


@dataclasses.dataclass(frozen=True)
class _Estimate:
    C: int
    group: int
    seconds: float
    memory: float
    loop_seconds: float
    text: str
    rows: tuple


def _estimate(ir, outputs, form, backend, backward, chunk) -> _Estimate:
    """The chunk size (the cost model's fastest, or the user's ``chunk=``), the predicted
    time and temporary memory of the chunkwise form, and of the loop of the whole body."""
    T = ir.length
    leaves = dims(form)
    body_flops = _cost.jaxpr_flops(outputs.jaxpr)
    C, t = _cost.choose_chunk(backend, T, leaves, body_flops, backward)
    if chunk is not None:  # the user's chunk= (also the scan kernel's chunk length)
        C = int(chunk)
        t = _cost.predict_chunked(backend, T, C, leaves, body_flops, backward)
    N = -(-max(T, 1) // C)
    itemsize = max(np.dtype(lf.dtype).itemsize for lf in form.leaves)
    G = _cost.chunk_group(backend, T, C, leaves, itemsize)
    y_el = sum(leaf.size for leaf in outputs.leaves)
    mem = _cost.chunked_bytes(T, C, leaves, y_el, itemsize, G)
    states = float(T) * sum(leaf.size for leaf in ir.state) * itemsize
    source = "chunk=" if chunk else "the cost model's fastest"
    together = "all at once" if not G else f"{G} at a time"
    text = (f"\nchunk size C = {C} ({source}), {N} chunks ({together}): predicted "
            f"{_cost.fmt_seconds(t)}; temporary memory about {_bytes(mem)} (all T states "
            f"would be {_bytes(states)})")
    rows = (("chunk", C), ("chunks", N), ("chunks together", G or N), ("memory", int(mem)),
            ("predicted time", _cost.fmt_seconds(t)))
    t_loop = _cost.predict_loop_outputs(backend, T, body_flops, backward)
    return _Estimate(C, G, t, mem, t_loop, text, rows)


def _compare(est: _Estimate, choices, costs, head: str, backend: str):
    """Under ``auto``: ``(new choices, None)`` where the chunkwise form is predicted faster
    than the stages' methods and than the loop, else ``(None, why not)``."""
    t, t_loop = est.seconds, est.loop_seconds
    t_now = sum(cost(m) for cost, (m, _, _) in zip(costs, choices))
    if all(m == "sequential" for m, _, _ in choices):
        t_now = min(t_now, t_loop)  # the generic model overrates big states' loops
    if t < t_now and t < t_loop:
        src = costs[0].source_short if costs else "the cost model"
        new = []
        for cost, (m, w, r) in zip(costs, choices):
            rej = ((m, f"predicted {_cost.fmt_seconds(cost(m))} for this stage against "
                       f"{_cost.fmt_seconds(t)} for the chunkwise form of the whole body"),)
            new.append(("chunked", f"{head}; predicted fastest on {backend} "
                                   f"({_cost.fmt_seconds(t)}; cost model: {src})",
                        rej + tuple(x for x in r if x[0] != m)))
        return new, None
    return None, (f"predicted {_cost.fmt_seconds(t)} (C = {est.C}) against "
                  f"{_cost.fmt_seconds(min(t_now, t_loop))}"
                  + (" for the loop of the whole body" if t_loop < t_now else ""))


__all__ = ["analyse", "Refused", "decide", "Decision", "dims"]
