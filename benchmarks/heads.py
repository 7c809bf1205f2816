"""The ``heads`` workload of BENCHMARKS.md: a multi-head RNN, 8 heads, D = 256.

    python -m benchmarks.heads [--quick] [--out results.json] [--reps 5]

``h^(j) = tanh(W_j h^(j) + U_j x_t)`` for 8 heads of size k = D / 8 (heads never read each
other), ``W_j ~ 0.8 N(0, 1/k)``, ``U_j ~ N(0, 1/I)``, input width I = 32, h0 = 0, float32,
tolerance 1e-5.  recur finds the Jacobian ``block(k)`` and runs block-diagonal Newton
(ParaRNN-style): k JVPs per step, not D.  Every recur method on the same data, against the
``lax.scan`` loop.  CPU sizes: D = 256 with T = 1024, and D = 64 (8 heads of 8) with
T = 4096 (``--quick``: D = 64, T = 256).
No hand-written DEER here: a dense minimal DEER at D = 256 would hold ``T × 256 × 256``
Jacobians and multiply 256 × 256 matrices in its scan (the block structure is the point).
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

from ._common import compare, finish_workload, loadavg, print_records, write_json

HEADS, INPUT = 8, 32
TOL = 1e-5
CANDIDATES = [(m, m, {}) for m in ("sequential", "deer", "quasi-deer", "jacobi", "auto")]


def heads_problem(D: int, T: int, seed: int = 0):
    k = D // HEADS
    rng = np.random.default_rng(seed)
    p = {"W": jnp.asarray(0.8 * rng.standard_normal((HEADS, k, k)) / np.sqrt(k), jnp.float32),
         "U": jnp.asarray(rng.standard_normal((HEADS, k, INPUT)) / np.sqrt(INPUT),
                          jnp.float32)}

    def step(h, x, p):
        hh = h.reshape(HEADS, -1)
        pre = jnp.einsum("hij,hj->hi", p["W"], hh) + jnp.einsum("hij,j->hi", p["U"], x)
        return jnp.tanh(pre).reshape(-1)

    xs = jnp.asarray(rng.standard_normal((T, INPUT)), jnp.float32)
    return step, jnp.zeros(D, jnp.float32), xs, p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    reps = max(args.reps, 5)
    load_start = loadavg()
    # D = 256 at T = 4096 would take minutes per call for quasi-deer on 2 cores (about 52 s
    # measured: 25 iterations of n = 256 diagonal JVPs plus the Lyapunov sweeps)
    sizes = [(64, 256)] if args.quick else [(256, 1024), (64, 4096)]
    records = []
    for D, T in sizes:
        step, h0, xs, p = heads_problem(D, T)
        recs, _ = compare(step, h0, xs, p, T=T, candidates=CANDIDATES, reps=reps, tol=TOL)
        recs = finish_workload(recs, "heads", {"D": D, "heads": HEADS, "block": D // HEADS,
                                               "T": T, "dtype": "float32", "tol": TOL})
        print_records(recs)
        records += recs
    write_json(args.out, "heads", records, load_start)
    return records


if __name__ == "__main__":
    main()
