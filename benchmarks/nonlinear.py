"""Nonlinear workloads of BENCHMARKS.md: ``gru``, ``lstm``, ``lorenz96``, ``logistic``.

    python -m benchmarks.nonlinear [--quick] [--out results.json]

Every recur method on the same data in the same run, plus hand-written ``lax.scan``:
median of 5 jitted calls after compilation (compile time separately), iterations,
converged / fell back, residual, max abs error against ``lax.scan``.  The GRU rows use the
DEER reference problem: hidden D, input width D, inputs ~ N(0, 1), weights ~ N(0, 1/D),
zero biases, h0 = 0, float32, converged = residual <= 1e-5 (rtol = atol = 1e-5).
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

METHODS = ("sequential", "deer", "quasi-deer", "jacobi", "auto")


def gru_problem(D: int, T: int, batch_seed: int = 0):
    rng = np.random.default_rng(batch_seed)
    W = [jnp.asarray(rng.standard_normal((D, D)) / np.sqrt(D), jnp.float32) for _ in range(6)]

    def step(h, x):
        z = jax.nn.sigmoid(W[0] @ h + W[1] @ x)
        r = jax.nn.sigmoid(W[2] @ h + W[3] @ x)
        n = jnp.tanh(W[4] @ (r * h) + W[5] @ x)
        return (1 - z) * h + z * n
    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    return step, jnp.zeros(D, jnp.float32), xs


def lstm_problem(D: int, T: int):
    rng = np.random.default_rng(1)
    W = jnp.asarray(rng.standard_normal((4 * D, 2 * D)) / np.sqrt(2 * D), jnp.float32)

    def step(h, x):
        hh, c = h
        i, f, o, g = jnp.split(W @ jnp.concatenate([hh, x]), 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jnp.tanh(c) * jax.nn.sigmoid(o), c
    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    return step, (jnp.zeros(D, jnp.float32), jnp.zeros(D, jnp.float32)), xs


def lorenz96_problem(T: int, D: int = 5, F: float = 8.0, dt: float = 0.01):
    def step(h, x):
        dh = (jnp.roll(h, -1) - jnp.roll(h, 2)) * jnp.roll(h, 1) - h + F
        return h + dt * dh
    h0 = jnp.asarray(F + np.random.default_rng(2).standard_normal(D) * 0.1, jnp.float32)
    return step, h0, None


def logistic_problem(T: int, r: float):
    def step(h, x):
        return r * h * (1 - h)
    return step, jnp.full((1,), 0.3, jnp.float32), None


def run_one(name, step, h0, xs, T, method, reps, tol):
    opts = dict(rtol=tol, atol=tol)
    fn = jax.jit(lambda h0, xs: recur.scan(step, h0, xs, length=T, method=method,
                                           return_info=True, **opts))
    start = time.perf_counter()
    hs, info = jax.block_until_ready(fn(h0, xs))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(h0, xs))
        times.append(time.perf_counter() - start)
    return hs, info, compile_s, times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    T_gru = 512 if args.quick else 4096
    problems = [(f"gru D={D}", *gru_problem(D, T_gru), T_gru, 1e-5)
                for D in ((8,) if args.quick else (8, 16, 32))]
    problems.append(("lstm D=8", *lstm_problem(8, T_gru), T_gru, 1e-5))
    problems.append(("lorenz96", *lorenz96_problem(1000), 1000, 1e-5))
    problems += [(f"logistic r={r}", *logistic_problem(1000, r), 1000, 1e-5) for r in (2.5, 3.9)]
    records = []
    for name, step, h0, xs, T, tol in problems:
        loop = jax.jit(lambda h0, xs, step=step, T=T: jax.lax.scan(
            lambda h, x: (step(h, x),) * 2, h0, xs, length=T)[1])
        ref = jax.block_until_ready(loop(h0, xs))
        t_loop = statistics.median(
            [_timed(loop, h0, xs) for _ in range(args.reps)])
        for method in METHODS:
            hs, info, compile_s, times = run_one(name, step, h0, xs, T, method, args.reps, tol)
            err = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                      for a, b in zip(jax.tree_util.tree_leaves(hs),
                                      jax.tree_util.tree_leaves(ref)))
            rec = {"workload": name, "T": T, "method": method, "ran": info.method,
                   "iterations": int(np.max(info.iterations)),
                   "converged": bool(np.all(info.converged)),
                   "fell_back": bool(np.any(info.fell_back)),
                   "residual": float(np.max(info.residual)),
                   "lyapunov": float(np.nanmax(np.atleast_1d(info.lyapunov)))
                   if np.any(np.isfinite(info.lyapunov)) else None,
                   "median_s": statistics.median(times), "min_s": min(times),
                   "max_s": max(times), "compile_s": compile_s, "max_abs_err": err,
                   "lax_scan_s": t_loop}
            records.append(rec)
            print(f"{name:16s} {method:11s} ran {rec['ran']:11s} it {rec['iterations']:3d} "
                  f"conv {rec['converged']!s:5s} fb {rec['fell_back']!s:5s} "
                  f"res {rec['residual']:.1e} err {err:.1e} "
                  f"{rec['median_s'] * 1e3:8.2f} ms (lax.scan {t_loop * 1e3:.2f} ms, "
                  f"ratio {t_loop / rec['median_s']:.2f}x) compile {compile_s:.2f}s", flush=True)
    print("auto / fastest of recur's methods (same run; target <= 1.1 on CPU):")
    for name in dict.fromkeys(r["workload"] for r in records):
        ours = {r["method"]: r["median_s"] for r in records if r["workload"] == name}
        print(f"  {name:16s} {ours['auto'] / min(ours.values()):.2f}")
    if args.out:
        dev = jax.devices()[0]
        with open(args.out, "w") as fh:
            json.dump({"device": dev.device_kind, "platform": dev.platform,
                       "jax": jax.__version__, "records": records}, fh, indent=1)
    return records


def _timed(fn, *a):
    start = time.perf_counter()
    jax.block_until_ready(fn(*a))
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
