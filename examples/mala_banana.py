"""MALA on a 2-D banana target, the whole chain as one recurrence solved with DEER.

The Metropolis-adjusted Langevin step reads pre-drawn Gaussian noise and uniforms as
its per-step inputs and accepts with ``jnp.where``, so a chain of T steps is a
recurrence x_t = f(x_{t-1}, (xi_t, u_t)). It is nonlinear and only piecewise smooth
(an accept decision can flip between Newton iterates), so the parallel solvers may not
converge: recur then reports it (info.converged = False, info.fell_back = True) and
returns the sequential loop's chain, computed inside the same compiled program.
Either way the chain equals the one of a sequential ``jax.lax.scan`` loop.

    python examples/mala_banana.py [--quick] [--out DIR]
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import recur

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(HERE, "figures")
NAME = "mala_banana"
EPS = 0.35                                         # Langevin step size


def logp(x):
    """Banana: x0 ~ N(0, 2^2), x1 | x0 ~ N(x0^2 / 2 - 1, 0.5^2)."""
    return -0.5 * (x[0] / 2.0) ** 2 - 0.5 * ((x[1] - 0.5 * x[0] ** 2 + 1.0) / 0.5) ** 2


grad_logp = jax.grad(logp)


def log_q(x_to, x_from):
    mu = x_from + 0.5 * EPS ** 2 * grad_logp(x_from)
    return -jnp.sum((x_to - mu) ** 2) / (2 * EPS ** 2)


def mala_step(x, inp):
    prop = x + 0.5 * EPS ** 2 * grad_logp(x) + EPS * inp["xi"]
    log_alpha = logp(prop) - logp(x) + log_q(x, prop) - log_q(prop, x)
    return jnp.where(jnp.log(inp["u"]) < log_alpha, prop, x)


def loop(x0, xs):
    def body(x, inp):
        x = mala_step(x, inp)
        return x, x
    return jax.lax.scan(body, x0, xs)[1]


def timeit(f, *args, n=3):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", metavar="DIR", default=os.environ.get("RECUR_FIGURES") or FIGURES,
                    help="folder for the figure (default: $RECUR_FIGURES, else examples/figures)")
    args = ap.parse_args()
    T = 256 if args.quick else 4096
    platform = jax.devices()[0].platform

    k1, k2 = jax.random.split(jax.random.key(0))
    xs = {"xi": jax.random.normal(k1, (T, 2)), "u": jax.random.uniform(k2, (T,))}
    x0 = jnp.array([0.0, -1.0])

    print(recur.plan(mala_step, x0, xs, method="deer").explain())
    print()

    ref = jax.jit(loop)(x0, xs)
    diffs, results, times, fell_back = {}, {}, {}, {}
    t_loop = timeit(jax.jit(loop), x0, xs)
    for method in ("deer", "quasi-deer"):
        f = jax.jit(lambda x0, xs, m=method: recur.scan(mala_step, x0, xs, method=m, return_info=True))
        hs, info = f(x0, xs)
        diffs[method] = float(jnp.max(jnp.abs(hs - ref)))
        results[method] = hs
        fell_back[method] = bool(info.fell_back)
        times[method] = timeit(f, x0, xs)
        print(f"{method:>10}: iterations={int(info.iterations)} residual={float(info.residual):.2e} "
              f"converged={bool(info.converged)} fell_back={bool(info.fell_back)} "
              f"lyapunov={float(info.lyapunov):+.3f}  max |chain - loop| = {diffs[method]:.3e}")
        if bool(info.fell_back):
            print(f"{'':>12}-> the {method} iterate did not converge; the result is the sequential loop's")
    acc = float(jnp.mean(jnp.any(ref[1:] != ref[:-1], axis=1)))
    print(f"chain of T={T} steps, acceptance rate {acc:.2f}, mean {np.asarray(ref.mean(0)).round(2)} "
          f"(target mean [0, 1])")
    print(f"timing on {platform} (median of 3, compiled): loop {t_loop:.2f} ms, "
          + ", ".join(f"{m} {t:.2f} ms ({t_loop / t:.2f}x)" for m, t in times.items())
          + " (including the fallback loop where it ran)")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, NAME + ".png")
    g0, g1 = np.meshgrid(np.linspace(-5, 5, 200), np.linspace(-3, 8, 200))
    lp = np.asarray(jax.vmap(jax.vmap(lambda a, b: logp(jnp.array([a, b]))))(g0, g1))
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.contour(g0, g1, np.exp(lp), levels=8, cmap="Greys")
    r = np.asarray(ref)
    ax.plot(r[:, 0], r[:, 1], "-", color="0.7", lw=0.4)
    ax.plot(r[:, 0], r[:, 1], "o", ms=5, mfc="none", color="k", label="sequential lax.scan loop")
    for m, c in (("deer", "C0"), ("quasi-deer", "C3")):
        h = np.asarray(results[m])
        how = "fell back to the loop" if fell_back[m] else "converged"
        ax.plot(h[:, 0], h[:, 1], ".", ms=3, color=c, label=f"recur {m}: {how}, max diff {diffs[m]:.1e}")
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    ax.set_title(f"MALA on a banana, T = {T}, one chain (eps = {EPS})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {os.path.relpath(path)}")
    print(f"AGREEMENT {NAME} {max(diffs.values()):.3e}")


if __name__ == "__main__":
    main()
