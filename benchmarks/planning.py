"""Planning time: trace + every analysis pass + lowering, for states up to 1024 elements.

    python -m benchmarks.planning [--out results.json]

BENCHMARKS.md target: under 0.5 s for states up to 1024 elements.  Reports the median of
5 plans (after one warm-up plan, which pays JAX's own one-time costs) per step function,
each made from scratch: recur's trace and plan caches are emptied before every timed plan
(``median_s``).  ``cached_median_s``: the same call served by the caches (what an eager
repeat call pays for planning).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import recur


def clear_caches() -> None:
    """Empty recur's trace and plan caches (a no-op for a recur without them)."""
    from recur import _api
    getattr(_api, "_plans", {}).clear()
    try:
        from recur import _trace_cache
    except ImportError:
        return
    _trace_cache.clear()


def _times(fn, reps: int = 5, fresh: bool = True) -> list[float]:
    times = []
    for _ in range(reps):
        if fresh:
            clear_caches()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def workloads(n: int):
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n), jnp.float32)
    a = jnp.asarray(rng.uniform(0.5, 0.9, n), jnp.float32)
    heads = max(n // 8, 1)
    Wh = jnp.asarray(rng.standard_normal((heads, n // heads, n // heads)) * 0.3, jnp.float32)

    def dense_tanh(h, x):
        return jnp.tanh(W @ h + x)

    def diagonal_affine(h, x):
        return a * h + x

    def multihead(h, x):
        hh = h.reshape(heads, -1)
        return jnp.tanh(jnp.einsum("hij,hj->hi", Wh, hh)).reshape(-1) + x

    def gru(h, x):
        z = jax.nn.sigmoid(W @ h + x)
        r = jax.nn.sigmoid(W @ h - x)
        c = jnp.tanh(W @ (r * h) + x)
        return (1 - z) * h + z * c

    return {"dense tanh": dense_tanh, "diagonal affine": diagonal_affine,
            "multi-head (8 per head)": multihead, "gru": gru}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out")
    p.add_argument("--sizes", default="64,256,1024")
    args = p.parse_args(argv)
    records = []
    for n in map(int, args.sizes.split(",")):
        for name, fn in workloads(n).items():
            h0 = jax.ShapeDtypeStruct((n,), jnp.float32)
            xs = jax.ShapeDtypeStruct((1000, n), jnp.float32)
            plan = recur.plan(fn, h0, xs)
            times = _times(lambda: recur.plan(fn, h0, xs))
            cached = _times(lambda: recur.plan(fn, h0, xs), fresh=False)
            rec = {"workload": name, "n": n, "median_s": statistics.median(times),
                   "min_s": min(times), "max_s": max(times),
                   "cached_median_s": statistics.median(cached), "kind": plan.kind,
                   "jacobian": [st.jacobian for st in plan.stages]}
            records.append(rec)
            print(f"{name:26s} n={n:5d}  median {rec['median_s'] * 1e3:8.1f} ms  "
                  f"(min {rec['min_s'] * 1e3:.1f}, max {rec['max_s'] * 1e3:.1f}; cached "
                  f"{rec['cached_median_s'] * 1e3:.2f} ms)  "
                  f"{plan.kind} {rec['jacobian']}")
    if args.out:
        dev = jax.devices()[0]
        with open(args.out, "w") as fh:
            json.dump({"device": dev.device_kind, "platform": dev.platform,
                       "jax": jax.__version__, "records": records}, fh, indent=1)
    return records


if __name__ == "__main__":
    main()
