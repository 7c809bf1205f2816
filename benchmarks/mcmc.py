"""The ``mala`` / ``hmc`` workloads of BENCHMARKS.md: a whole MCMC chain as one recurrence.

    python -m benchmarks.mcmc [--quick] [--out results.json] [--reps 5]

Target: the 2-D banana ``x0 ~ N(0, 2^2)``, ``x1 | x0 ~ N(x0^2 / 2 - 1, 0.5^2)``.  The noise
is taped (pre-drawn Gaussian proposals / momenta and uniforms are the per-step inputs) and
the accept is a ``jnp.where``, so a chain of T steps is ``x_t = f(x_{t-1}, inputs_t)``:
nonlinear and only piecewise smooth (an accept decision can flip between iterates).

* ``mala``: Metropolis-adjusted Langevin, step 0.35 (as ``examples/mala_banana.py``);
* ``hmc``: Hamiltonian Monte Carlo, 5 leapfrog steps of 0.15, unit mass.

Every recur method (deer, quasi-deer, picard, jacobi, sequential, auto) on the same chain,
float32, tolerance 1e-5, against the ``lax.scan`` loop (a fallback returns the loop's chain,
so ``max_abs_err`` is 0 there; ``converged``/``fell_back`` say what happened).  T = 1e3,
1e4 (``--quick``: 256).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from ._common import (compare, evaluations, finish_workload, loadavg, print_records,
                      write_json)

MALA_EPS = 0.35
HMC_EPS, HMC_L = 0.15, 5
TOL = 1e-5
CANDIDATES = [(m, m, {}) for m in ("sequential", "deer", "quasi-deer", "picard", "jacobi",
                                   "auto")]


def logp(x):
    return -0.5 * (x[0] / 2.0) ** 2 - 0.5 * ((x[1] - 0.5 * x[0] ** 2 + 1.0) / 0.5) ** 2


grad_logp = jax.grad(logp)


def mala_step(x, inp):
    def log_q(x_to, x_from):
        mu = x_from + 0.5 * MALA_EPS ** 2 * grad_logp(x_from)
        return -jnp.sum((x_to - mu) ** 2) / (2 * MALA_EPS ** 2)

    prop = x + 0.5 * MALA_EPS ** 2 * grad_logp(x) + MALA_EPS * inp["xi"]
    log_alpha = logp(prop) - logp(x) + log_q(x, prop) - log_q(prop, x)
    return jnp.where(jnp.log(inp["u"]) < log_alpha, prop, x)


def hmc_step(x, inp):
    p = inp["xi"]
    q = x
    p = p + 0.5 * HMC_EPS * grad_logp(q)
    for i in range(HMC_L):
        q = q + HMC_EPS * p
        if i < HMC_L - 1:
            p = p + HMC_EPS * grad_logp(q)
    p = p + 0.5 * HMC_EPS * grad_logp(q)
    log_alpha = (logp(q) - 0.5 * jnp.sum(p ** 2)) - (logp(x) - 0.5 * jnp.sum(inp["xi"] ** 2))
    return jnp.where(jnp.log(inp["u"]) < log_alpha, q, x)


def tape(T: int, seed: int = 0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"xi": jax.random.normal(k1, (T, 2)), "u": jax.random.uniform(k2, (T,))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    reps = max(args.reps, 5)
    load_start = loadavg()
    x0 = jnp.array([0.0, -1.0], jnp.float32)
    records = []
    for name, step in (("mala", mala_step), ("hmc", hmc_step)):
        for T in ((256,) if args.quick else (1000, 10000)):
            xs = tape(T)
            recs, ref = compare(step, x0, xs, None, T=T, candidates=CANDIDATES, reps=reps,
                                tol=TOL)
            acc = float(jnp.mean(jnp.any(ref[1:] != ref[:-1], axis=1)))
            for r in recs:
                r["evaluations"] = evaluations(r, T)
            recs = finish_workload(recs, name, {"T": T, "dtype": "float32", "tol": TOL,
                                                "acceptance": acc})
            print_records(recs, extra=("evaluations",))
            records += recs
    write_json(args.out, "mcmc", records, load_start)
    return records


if __name__ == "__main__":
    main()
