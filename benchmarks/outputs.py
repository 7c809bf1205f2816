"""The ``outputs`` workload of BENCHMARKS.md: GLA and Mamba-2/SSD layers through
``recur.lax.scan``.

    python -m benchmarks.outputs [--quick] [--out results.json] [--reps 5]
                                 [--sizes T:d:heads,...] [--workloads gla,ssd]

Per head a ``d × d`` state, ``S_t = g_t ⊙ S_{t-1} + k_t v_tᵀ``, outputs ``o_t = S_tᵀ q_t``
(``q, k, v ~ N(0, 1/d)``; GLA: a gate per row, ``g = sigmoid(N(0,1) + 3)``; SSD: one gate
per head, ``g = exp(-softplus(N(0, 1) - 1))``), float32.  Candidates, on the same data, all
compiled first and timed round-robin (``_common._time_interleaved``):

* ``lax.scan``: the user's own ``jax.lax.scan`` of the body, with the readout fused;
* ``auto`` and ``chunked``: ``recur.lax.scan`` of the same body;
* ``hand chunkwise``: the chunkwise form written by hand in ``jnp.einsum`` (Mamba-2's
  stable ``segsum`` in log space, masked C × C products, a scan over chunk states), with
  the chunk size recur's plan chose;
* ``associative_scan``: ``lax.associative_scan`` over the ``T`` states, then the readout --
  only where its states fit (``--assoc-limit``, bytes of all states).

Recorded per candidate: median/min/max time, compile time, the largest difference from
the loop's outputs, and the compiled temporary memory (``memory_analysis()``) next to the
bytes of all ``T`` states.  Peers: ``flash-linear-attention`` (fla) is looked up; its chunk
kernels are Triton kernels that need a CUDA/ROCm GPU (and torch), so on a CPU machine it is
recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import recur

from ._common import (_adaptive_reps, _time_interleaved, loadavg, max_abs_err,
                      print_records, timing_fields, write_json)

FULL = [(T, d, H) for T in (1024, 4096, 16384) for d in (64, 128) for H in (1, 4)]
QUICK = [(1024, 64, 1), (1024, 64, 4)]


def problem(workload: str, T: int, d: int, H: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    q, k, v = (f32(rng.standard_normal((T, H, d)) / np.sqrt(d)) for _ in range(3))
    if workload == "gla":
        g = f32(1 / (1 + np.exp(-(rng.standard_normal((T, H, d)) + 3))))

        def body(S, x):
            q, k, v, g = x
            S = g[:, :, None] * S + jnp.einsum("hk,hv->hkv", k, v)
            return S, jnp.einsum("hkv,hk->hv", S, q)
    else:
        g = f32(np.exp(-np.log1p(np.exp(rng.standard_normal((T, H)) - 1))))

        def body(S, x):
            q, k, v, g = x
            S = g[:, None, None] * S + jnp.einsum("hk,hv->hkv", k, v)
            return S, jnp.einsum("hkv,hk->hv", S, q)
    return body, jnp.zeros((H, d, d), jnp.float32), (q, k, v, g)


def hand_chunkwise(S0, xs, C: int):
    """The chunkwise form by hand (per-row or per-head gates from the gate's shape)."""
    q, k, v, g = xs
    T, H, d = q.shape
    N = -(-T // C)
    pad = N * C - T
    if pad:
        z = lambda a, fill=0.0: jnp.concatenate(  # noqa: E731
            [a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)])
        q, k, v, g = z(q), z(k), z(v), z(g, 1.0)
    rs = lambda a: a.reshape((N, C) + a.shape[1:])  # noqa: E731
    q, k, v, g = rs(q), rs(k), rs(v), rs(g)
    logg = jnp.log(g if g.ndim == 4 else g[..., None])          # (N, C, H, 1|d)
    t, s = np.arange(C)[:, None], np.arange(-1, C)[None]
    seg = jnp.cumsum(jnp.where((t > s)[None, :, :, None, None], logg[:, :, None], 0.0), 1)
    P = jnp.exp(jnp.where((t >= s)[None, :, :, None, None], seg, -jnp.inf))  # (N,C,C+1,H,.)
    if P.shape[-1] == 1:
        A = jnp.einsum("nthk,nshk->nhts", q, k) * jnp.moveaxis(P[:, :, 1:, :, 0], 3, 1)
    else:
        A = jnp.einsum("nthk,ntshk,nshk->nhts", q, P[:, :, 1:], k)
    intra = jnp.einsum("nhts,nshv->nthv", A, v)
    k_end = k * P[:, C - 1, 1:]
    U = jnp.einsum("nshk,nshv->nhkv", k_end, v)
    decay = P[:, C - 1, 0]                                       # (N, H, 1|d)

    def step(S, inp):
        u, a = inp
        return a[..., None] * S + u, S

    final, starts = lax.scan(step, S0, (U, decay))
    inter = jnp.einsum("nthk,nhkv->nthv", q * P[:, :, 0], starts)
    return final, (intra + inter).reshape(N * C, H, d)[:T]


def assoc_states(body, S0, xs):
    """``lax.associative_scan`` over the ``(decay, k vᵀ)`` pairs, then the readout."""
    q, k, v, g = xs
    a = g[..., None] if g.ndim == 3 else g[..., None, None]
    b = jnp.einsum("thk,thv->thkv", k, v)
    b = b.at[0].add(a[0] * S0)

    def op(x, y):
        return y[0] * x[0], y[0] * x[1] + y[1]

    _, Ss = lax.associative_scan(op, (jnp.broadcast_to(a, b.shape[:3] + (a.shape[-1],)), b))
    return Ss[-1], jnp.einsum("thkv,thk->thv", Ss, q)


def fla_status() -> tuple[bool, str]:
    try:
        version = importlib.metadata.version("flash-linear-attention")
    except importlib.metadata.PackageNotFoundError:
        return False, ("flash-linear-attention (fla) is not installed; it is on the package "
                       "index (0.6.0 at the time of writing), but its chunk algorithms are "
                       "Triton kernels that need torch and a CUDA/ROCm GPU, so no CPU "
                       "comparison exists (its pure-torch `naive` references are not its "
                       "chunk algorithm)")
    if jax.devices()[0].platform == "cpu":
        return False, (f"flash-linear-attention {version} is installed, but its chunk kernels "
                       "are Triton kernels that need a CUDA/ROCm GPU")
    return False, f"flash-linear-attention {version}: comparison not wired up yet"


def _prepare(fn, args, reps):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = None if mem is None else int(getattr(mem, "temp_size_in_bytes", 0))
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first = time.perf_counter() - t0
    return {"compiled": compiled, "args": args, "out": out, "compile_s": compile_s,
            "first_s": first, "n": _adaptive_reps(reps, first), "times": [], "temp": temp}


def run_workload(workload, T, d, H, reps, assoc_limit):
    body, S0, xs = problem(workload, T, d, H)
    plan = recur.lax.plan(body, S0, xs)
    cplan = recur.lax.plan(body, S0, xs, method="chunked")
    C = cplan.chunked.chunk
    states_bytes = T * H * d * d * 4
    cands = [
        ("lax.scan", "hand-written", lambda S0, xs: lax.scan(body, S0, xs)),
        ("auto", "recur", lambda S0, xs: recur.lax.scan(body, S0, xs)),
        ("chunked", "recur", lambda S0, xs: recur.lax.scan(body, S0, xs, method="chunked")),
        (f"hand chunkwise (C={C})", "hand-written", lambda S0, xs: hand_chunkwise(S0, xs, C)),
    ]
    skipped = []
    if 3 * states_bytes <= assoc_limit:
        cands.append(("associative_scan", "hand-written",
                      lambda S0, xs: assoc_states(body, S0, xs)))
    else:
        skipped.append({"method": "associative_scan", "candidate": "hand-written",
                        "skipped": f"all states are {states_bytes / 1e9:.2g} GB; over the "
                                   f"limit {assoc_limit / 1e9:.2g} GB for three copies"})
    recs, prepared = [], []
    for label, cand, fn in cands:
        rec = {"method": label, "candidate": cand}
        try:
            prepared.append(_prepare(fn, (S0, xs), reps))
        except Exception as e:  # noqa: BLE001 - report and go on
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            prepared.append(None)
        recs.append(rec)
    _time_interleaved([p for p in prepared if p is not None])
    ref = prepared[0]["out"]
    common = {"workload": f"outputs-{workload}", "T": T, "D": d, "heads": H,
              "dtype": "float32", "n": H * d * d, "chunk": C, "auto_method": plan.method,
              "all_states_bytes": states_bytes}
    out = []
    for rec, p in zip(recs, prepared):
        rec = {**common, **rec}
        if p is not None:
            rec.update(timing_fields(p["times"], p["compile_s"]))
            rec["max_abs_err"] = max_abs_err(p["out"], ref)
            rec["temp_bytes"] = p["temp"]
            if p["temp"] is not None:
                rec["temp_over_all_states"] = p["temp"] / states_bytes
            rec["ran"] = plan.method if rec["method"] == "auto" else rec["method"]
        out.append(rec)
    out += [{**common, **s} for s in skipped]
    timed = {r["method"]: r["median_s"] for r in out if "median_s" in r}
    mins = {r["method"]: r["min_s"] for r in out if "min_s" in r}
    hand = next((m for m in timed if m.startswith("hand")), None)
    for r in out:
        if r["method"] == "auto" and "median_s" in r:
            fastest = min(timed, key=timed.get)
            r["auto_over_fastest"] = r["median_s"] / timed[fastest]
            r["auto_over_fastest_min"] = r["min_s"] / min(mins.values())
            r["fastest_recur_method"] = fastest  # here: the fastest of every candidate
        if r["method"] == "chunked" and "median_s" in r and hand:
            r["chunked_over_hand"] = r["median_s"] / timed[hand]
            r["chunked_over_hand_min"] = r["min_s"] / mins[hand]
        if "median_s" in r and "lax.scan" in timed:
            r["speedup_vs_loop"] = timed["lax.scan"] / r["median_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sizes", help="T:d:heads,... (default: the full grid, or --quick's)")
    ap.add_argument("--workloads", default="gla,ssd")
    ap.add_argument("--assoc-limit", type=float, default=3e9,
                    help="bytes: run associative_scan only where 3 copies of the states fit")
    args = ap.parse_args(argv)
    load_start = loadavg()
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")] \
        if args.sizes else (QUICK if args.quick else FULL)
    avail, why = fla_status()
    print(f"peer flash-linear-attention: {'ran' if avail else 'skipped'} ({why})", flush=True)
    records = []
    for T, d, H in sizes:
        for w in args.workloads.split(","):
            recs = run_workload(w, T, d, H, max(args.reps, 5), args.assoc_limit)
            print_records(recs, extra=("temp_bytes", "chunked_over_hand"))
            records += recs
    write_json(args.out, "outputs", records, load_start,
               peers={"flash-linear-attention": {"available": avail, "why": why}},
               sizes=[list(s) for s in sizes])
    return records


if __name__ == "__main__":
    main()
