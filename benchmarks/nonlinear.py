"""Nonlinear workloads of BENCHMARKS.md: ``gru``, ``lstm``, ``lorenz96``, ``logistic``.

    python -m benchmarks.nonlinear [--quick] [--out results.json]

Every recur method on the same data in the same run, plus hand-written ``lax.scan``: all
compiled first (compile time separately), then timed round-robin, median of >= 5 calls
(``benchmarks/_common.py``); iterations, converged / fell back, residual, max abs error
against ``lax.scan``.  The GRU rows use the DEER reference problem: hidden D, input width
D, inputs ~ N(0, 1), weights ~ N(0, 1/D), zero biases, h0 = 0, float32, converged =
residual <= 1e-5 (rtol = atol = 1e-5; ``benchmarks/baselines.py`` uses rtol = 0, the
minimal DEER's absolute test).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from ._common import compare, finish_workload, loadavg, write_json

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    reps = max(args.reps, 5)
    load_start = loadavg()
    T_gru = 512 if args.quick else 4096
    problems = [(f"gru D={D}", *gru_problem(D, T_gru), T_gru, 1e-5)
                for D in ((8,) if args.quick else (8, 16, 32))]
    problems.append(("lstm D=8", *lstm_problem(8, T_gru), T_gru, 1e-5))
    problems.append(("lorenz96", *lorenz96_problem(1000), 1000, 1e-5))
    problems += [(f"logistic r={r}", *logistic_problem(1000, r), 1000, 1e-5) for r in (2.5, 3.9)]
    records = []
    for name, step, h0, xs, T, tol in problems:
        # every candidate compiled first, then timed round-robin (benchmarks/_common.py)
        recs, _ = compare(step, h0, xs, None, T=T, candidates=[(m, m, {}) for m in METHODS],
                          reps=reps, tol=tol)
        t_loop = recs[0]["median_s"]
        recs = finish_workload(recs[1:] + recs[:1], name, {"T": T, "tol": tol})
        for rec in recs:
            rec["lax_scan_s"] = t_loop
            if rec["method"] == "lax.scan":
                continue
            if "error" in rec:
                print(f"{name:16s} {rec['method']:11s} ERROR {rec['error'][:100]}", flush=True)
                continue
            print(f"{name:16s} {rec['method']:11s} ran {rec['ran']:11s} it {rec['iterations']:3d} "
                  f"conv {rec['converged']!s:5s} fb {rec['fell_back']!s:5s} "
                  f"res {rec['residual']:.1e} err {rec['max_abs_err']:.1e} "
                  f"{rec['median_s'] * 1e3:8.2f} ms (lax.scan {t_loop * 1e3:.2f} ms, "
                  f"ratio {t_loop / rec['median_s']:.2f}x) compile {rec['compile_s']:.2f}s",
                  flush=True)
        records += [r for r in recs if r["method"] != "lax.scan"]
    print("auto / fastest of recur's methods (same run; target <= 1.1 on CPU):")
    for r in records:
        if "auto_over_fastest" in r:
            print(f"  {r['workload']:16s} {r['auto_over_fastest']:.2f} "
                  f"(by min time {r['auto_over_fastest_min']:.2f})")
    write_json(args.out, "nonlinear", records, load_start)
    return records


if __name__ == "__main__":
    main()
