"""Eager (un-jitted) calls: what a user who follows the README quickstart literally pays.

    python -m benchmarks.eager [--quick] [--out results.json] [--calls 20]

BENCHMARKS.md target: an eager repeat call costs at most 2 ms more than the jitted call.
For each model -- the README quickstart (``a * sigmoid(x) * h + b * x``, T = 10^4, D = 64)
and an LSTM (``(h, c)`` state, H = 32, input width 32, T = 10^4), float32 -- three
candidates on the same arrays:

* ``eager``: ``step.scan(h0, xs, params)`` called from Python every time (recur's trace
  cache, plan cache and compiled-program cache serve the repeats);
* ``jit``: ``jax.jit(lambda h0, xs, p: step.scan(h0, xs, p))``, compiled once;
* ``lax.scan``: the user's own jitted ``lax.scan`` loop.

Each is called once to warm up (the eager first call -- trace, plan, compile -- is reported
as ``first_s``), then ``calls`` (>= 20) times round-robin (one call of each per round, so
that the load of the other jobs on the shared cores falls on all alike); min and median are
reported, and ``eager_over_jit_s`` is the eager median (and min) minus the jitted one.
Every output is compared with the loop's.

``recur.plan(step, h0, xs, params)`` with concrete values is timed too: the first call with
recur's trace and plan caches empty (the analysis passes, the probes at the values and, for
a nonlinear step, one run of the loop for the Lyapunov note) and the repeated call (cache
hits), median over ``calls``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import recur

from ._common import loadavg, max_abs_err, write_json

TARGET_S = 2e-3


def quickstart(T: int, D: int = 64):
    """The README quickstart: ``(step, h0, xs, params)``."""
    @recur.recurrence
    def step(h, x, params):
        a, b = params
        return a * jax.nn.sigmoid(x) * h + b * x

    xs = jax.random.normal(jax.random.key(0), (T, D))
    params = (jnp.full(D, 0.99), jnp.full(D, 0.1))
    return step, jnp.zeros(D), xs, params


def lstm(T: int, H: int = 32):
    """An LSTM cell with an ``(h, c)`` tuple state: ``(step, h0, xs, params)``."""
    rng = np.random.default_rng(0)
    params = {"W": jnp.asarray(rng.standard_normal((4 * H, H)) / np.sqrt(H), jnp.float32),
              "U": jnp.asarray(rng.standard_normal((4 * H, H)) / np.sqrt(H), jnp.float32),
              "b": jnp.zeros(4 * H, jnp.float32)}

    @recur.recurrence
    def step(state, x, p):
        h, c = state
        i, f, g, o = jnp.split(p["W"] @ h + p["U"] @ x + p["b"], 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    xs = jnp.asarray(rng.standard_normal((T, H)), jnp.float32)
    h0 = (jnp.zeros(H, jnp.float32), jnp.zeros(H, jnp.float32))
    return step, h0, xs, params


def _clear_caches() -> None:
    from recur import _api, _trace_cache
    _api._plans.clear()
    _trace_cache.clear()


def _timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "reps": len(times)}


def plan_times(step, h0, xs, params, calls: int) -> dict:
    """``recur.plan`` with concrete values: first call (caches empty), then repeated."""
    _clear_caches()
    the_plan, first = _timed(lambda: step.plan(h0, xs, params))
    repeat = [_timed(lambda: step.plan(h0, xs, params))[1] for _ in range(calls)]
    return {"method": "recur.plan (concrete values)", "candidate": "plan", "first_s": first,
            "ran": the_plan.method, **_stats(repeat)}


def workload(name: str, step, h0, xs, params, calls: int) -> list[dict]:
    T = xs.shape[0]
    records = [plan_times(step, h0, xs, params, calls)]
    _clear_caches()

    def loop(h0, xs, p):
        return jax.lax.scan(lambda h, x: (step.fn(h, x, p),) * 2, h0, xs)[1]

    candidates = {
        "eager": lambda: step.scan(h0, xs, params),
        "jit": (lambda f: lambda: f(h0, xs, params))(
            jax.jit(lambda h0, xs, p: step.scan(h0, xs, p))),
        "lax.scan": (lambda f: lambda: f(h0, xs, params))(jax.jit(loop)),
    }
    outs, firsts = {}, {}
    for label, call in candidates.items():
        outs[label], firsts[label] = _timed(call)
    times = {label: [] for label in candidates}
    for _ in range(calls):
        for label, call in candidates.items():
            times[label].append(_timed(call)[1])
    _, info = step.scan(h0, xs, params, return_info=True)
    for label in candidates:
        rec = {"method": label, "candidate": "recur" if label != "lax.scan" else "hand-written",
               "first_s": firsts[label], **_stats(times[label]),
               "max_abs_err": max_abs_err(outs[label], outs["lax.scan"])}
        if label != "lax.scan":
            rec["ran"] = info.method
        records.append(rec)
    jit_t, eager_t = times["jit"], times["eager"]
    over = statistics.median(eager_t) - statistics.median(jit_t)
    over_min = min(eager_t) - min(jit_t)
    for rec in records:
        if rec["method"] == "eager":
            rec.update(eager_over_jit_s=over, eager_over_jit_min_s=over_min,
                       target_s=TARGET_S, within_target=bool(over <= TARGET_S))
    return [{"workload": name, "T": T, "dtype": "float32", **r} for r in records]


def print_records(records: list[dict]) -> None:
    for r in records:
        line = (f"{r['workload']:12s} {r['method']:30s} median {r['median_s'] * 1e3:8.3f} ms  "
                f"min {r['min_s'] * 1e3:8.3f} ms  first {r['first_s'] * 1e3:8.1f} ms")
        if "ran" in r:
            line += f"  ran {r['ran']}"
        if "max_abs_err" in r:
            line += f"  err {r['max_abs_err']:.1e}"
        print(line, flush=True)
        if "eager_over_jit_s" in r:
            print(f"{'':12s} eager - jit: median {r['eager_over_jit_s'] * 1e3:.3f} ms, min "
                  f"{r['eager_over_jit_min_s'] * 1e3:.3f} ms (target <= "
                  f"{TARGET_S * 1e3:.0f} ms: {'met' if r['within_target'] else 'MISSED'})",
                  flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    p.add_argument("--calls", type=int, default=50)
    args = p.parse_args(argv)
    calls = max(args.calls, 20) if not args.quick else 20
    load_start = loadavg()
    T = 10_000
    records = []
    for name, make in (("quickstart", quickstart), ("lstm", lstm)):
        recs = workload(name, *make(T), calls)
        print_records(recs)
        records += recs
    write_json(args.out, "eager", records, load_start)
    return records


if __name__ == "__main__":
    main()
