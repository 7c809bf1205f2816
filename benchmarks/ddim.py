"""The ``ddim`` workload of BENCHMARKS.md: a DDIM sampler as a recurrence, Picard windows.

    python -m benchmarks.ddim [--quick] [--out results.json] [--reps 5]

Data: a mixture of 4 isotropic Gaussians in D dimensions (means ~ N(0, 2^2 I) / sqrt(D) * 2,
standard deviation 0.3, equal weights), so the noised marginal at every noise level and its
score are analytic: ``p_t = Σ_k w_k N(sqrt(ā_t) μ_k, (ā_t s² + 1 - ā_t) I)``.  The "model"
is the exact noise prediction ``ε(x, t) = -sqrt(1 - ā_t) ∇ log p_t(x)``.  Schedule: linear
β from 1e-4 to 0.02 over 1000 training steps, sampled at ``steps`` evenly spaced levels;
deterministic DDIM (η = 0):
``x_{t-1} = sqrt(ā_{t-1}) x̂_0 + sqrt(1 - ā_{t-1}) ε``,
``x̂_0 = (x_t - sqrt(1 - ā_t) ε) / sqrt(ā_t)``; x_T ~ N(0, I) (h0), the per-step inputs are
``(ā_t, ā_{t-1})``.

Candidates: the ``lax.scan`` loop, recur ``sequential``, ``picard`` on the whole sequence,
``picard`` with a sliding window of W steps (ParaDiGMS), ``deer``/``quasi-deer`` (whole and
windowed), ``jacobi``, ``auto``; float32, tolerance 1e-5 (atol = rtol; the per-step
residual test does not bound the trajectory error: this sampler amplifies it about 100x,
so tolerance 1e-4 left errors up to 3e-2 against the loop).  Reported per method:
``iterations`` = sequential rounds (Newton/Picard iterations, or window sweeps),
``evaluations`` = model evaluations (``T`` for the loop; recur's ``info.evaluations``, or
the solver's accounting, see ``_common.evaluations``), errors against the loop.  Sizes:
D = 2, 64 and 100, 1000 steps (``--quick``: D = 2, 100 steps).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from ._common import (compare, evaluations, finish_workload, loadavg, print_records,
                      write_json)

COMPONENTS, SIGMA = 4, 0.3
TOL = 1e-5
WINDOW = 32


def ddim_problem(D: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mu = jnp.asarray(2.0 * rng.standard_normal((COMPONENTS, D)) * 2.0 / np.sqrt(D),
                     jnp.float32)
    logw = jnp.full((COMPONENTS,), -np.log(COMPONENTS), jnp.float32)
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    idx = np.linspace(999, 0, steps).round().astype(int)       # noisy -> clean
    a_now = abar[idx]
    a_next = np.concatenate([abar[idx[1:]], [1.0]])             # the last step lands on x0
    xs = {"a": jnp.asarray(a_now, jnp.float32), "a_next": jnp.asarray(a_next, jnp.float32)}

    def eps_model(x, a):
        var = a * SIGMA ** 2 + 1 - a
        centres = jnp.sqrt(a) * mu                                # (K, D)
        logits = logw - jnp.sum((x - centres) ** 2, axis=-1) / (2 * var)
        r = jax.nn.softmax(logits)
        score = (r @ centres - x) / var
        return -jnp.sqrt(1 - a) * score

    def step(x, inp):
        a, a_next = inp["a"], inp["a_next"]
        eps = eps_model(x, a)
        x0 = (x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
        return jnp.sqrt(a_next) * x0 + jnp.sqrt(1 - a_next) * eps

    h0 = jnp.asarray(rng.standard_normal(D), jnp.float32)
    return step, h0, xs


def candidates(steps: int):
    W = min(WINDOW, steps)
    return [("sequential", "sequential", {}), ("picard", "picard", {}),
            (f"picard window={W}", "picard", {"window": W}),
            ("deer", "deer", {}), (f"deer window={W}", "deer", {"window": W}),
            ("quasi-deer", "quasi-deer", {}),
            (f"quasi-deer window={W}", "quasi-deer", {"window": W}),
            ("jacobi", "jacobi", {}), ("auto", "auto", {})], W


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    reps = max(args.reps, 5)
    load_start = loadavg()
    sizes = [(2, 100)] if args.quick else [(2, 100), (2, 1000), (64, 100), (64, 1000)]
    records = []
    for D, steps in sizes:
        step, h0, xs = ddim_problem(D, steps)
        cands, W = candidates(steps)
        recs, ref = compare(step, h0, xs, None, T=steps, candidates=cands, reps=reps, tol=TOL)
        for r, c in zip(recs, [("lax.scan", None, {})] + cands):
            r["evaluations"] = evaluations(r, steps, c[2].get("window"))
            if "window" in c[2]:
                r["window"] = c[2]["window"]
        recs = finish_workload(recs, "ddim", {"D": D, "T": steps, "dtype": "float32",
                                              "tol": TOL})
        print_records(recs, extra=("evaluations",))
        records += recs
    write_json(args.out, "ddim", records, load_start)
    return records


if __name__ == "__main__":
    main()
