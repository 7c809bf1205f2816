"""The logistic map x' = r x (1 - x): when parallel-in-time Newton cannot work.

With r = 2.5 the map is contractive near its fixed point (Lyapunov exponent
log|2 - r| < 0): DEER converges in a few iterations. With r = 3.9 it is chaotic
(largest Lyapunov exponent about +0.5): errors grow exponentially along the
trajectory, so a parallel solve of a long chain is ill-posed in float32. recur
estimates the Lyapunov exponent along the iterate, stops early when it is clearly
positive, reports it (info.lyapunov > 0, converged = False, fell_back = True) and
returns the sequential loop's trajectory.

    python examples/chaos.py [--quick] [--out DIR]
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
NAME = "chaos"
X0 = 0.3   # (from 0.2, undamped Newton overshoots for r = 2.5 too and recur falls back)


def logistic(x, _, r):
    return r * x * (1 - x)


def loop(x0, r, T):
    def body(x, _):
        x = logistic(x, None, r)
        return x, x
    return jax.lax.scan(body, x0, None, length=T)[1]


_ITER_CACHE = {}


def _iterate(k):
    if k not in _ITER_CACHE:
        _ITER_CACHE[k] = jax.jit(lambda x0, r: recur.scan(
            logistic, x0, None, r, length=_ITER_CACHE["T"], method="deer", max_iters=k,
            on_failure="ignore", return_info=True))
    return _ITER_CACHE[k]


def deer_iterates(x0, r, T, iters):
    """DEER's iterate after k = 1..iters Newton iterations (max_iters=k, on_failure='ignore')."""
    out = []
    for k in range(1, iters + 1):
        hs, info = _iterate(k)(x0, r)
        out.append((np.asarray(hs), float(info.residual)))
    return out


def timeit(f, *args, n=7):
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
    T = 200 if args.quick else 10000
    platform = jax.devices()[0].platform
    x0 = jnp.float32(X0)

    print(recur.plan(logistic, x0, None, jnp.float32(3.9), length=T, method="deer").explain())
    print()
    diffs, trajs, infos = {}, {}, {}
    f = jax.jit(lambda x0, r: recur.scan(logistic, x0, None, r, length=T, method="deer", return_info=True))
    floop = jax.jit(loop, static_argnums=2)
    for r in (2.5, 3.9):
        rr = jnp.float32(r)
        hs, info = f(x0, rr)                      # one compiled program serves both r
        ref = floop(x0, rr, T)
        diffs[r] = float(jnp.max(jnp.abs(hs - ref)))
        trajs[r], infos[r] = np.asarray(hs), info
        print(f"r = {r}: {info}")
        print(f"        exact Lyapunov exponent along the loop's trajectory: "
              f"{float(np.mean(np.log(np.abs(r * (1 - 2 * np.asarray(ref)))))):+.3f}; "
              f"max |deer - loop| = {diffs[r]:.3e}")
        verdict = ("chaotic: detected (lyapunov > 0), fell back to the sequential loop"
                   if bool(info.fell_back) else "contractive: DEER converged, no fallback")
        print(f"        -> {verdict}")
        t_par, t_seq = timeit(f, x0, rr), timeit(floop, x0, rr, T)
        print(f"        timing on {platform} (T={T}, median of 7): deer {t_par:.3f} ms, "
              f"loop {t_seq:.3f} ms ({t_seq / t_par:.2f}x)")
    assert bool(infos[3.9].fell_back) and float(infos[3.9].lyapunov) > 0
    assert bool(infos[2.5].converged) and not bool(infos[2.5].fell_back)

    n_it = 3
    _ITER_CACHE["T"] = T
    its = {r: deer_iterates(x0, jnp.float32(r), T, n_it) for r in (2.5, 3.9)}
    for r in its:
        print(f"r = {r}: DEER residual after 1..{n_it} iterations: "
              + " ".join(f"{res:.1e}" for _, res in its[r]))

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, NAME + ".png")
    fig, axs = plt.subplots(1, 3, figsize=(15, 4))
    n = min(T, 60)
    for r, c in ((2.5, "C0"), (3.9, "C3")):
        axs[0].plot(trajs[r][:n], "-o", ms=2.5, lw=0.8, color=c,
                    label=f"r = {r}: lyapunov est. {float(infos[r].lyapunov):+.2f}, "
                          f"{'fell back to loop' if bool(infos[r].fell_back) else 'DEER converged'}")
    axs[0].set_xlabel("t")
    axs[0].set_ylabel("x_t")
    axs[0].set_ylim(0, 1.35)
    axs[0].set_title(f"Logistic map, returned trajectories (first {n} of T = {T})", fontsize=10)
    axs[0].legend(fontsize=8, loc="upper right")
    for ax, r in zip(axs[1:], (2.5, 3.9)):
        for k, (h, res) in enumerate(its[r], 1):
            err = np.abs(h[:n] - trajs[r][:n])
            err = np.where(np.isfinite(err), err, np.nan)
            ax.semilogy(np.maximum(err, 1e-9), "-", lw=1, label=f"iterate {k} (residual {res:.1e})")
        ax.set_xlabel("t")
        ax.set_ylabel("|DEER iterate - loop| (floored at 1e-9)")
        ax.set_title(f"r = {r}: error of the Newton iterates along t", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {os.path.relpath(path)}")
    print(f"AGREEMENT {NAME} {max(diffs.values()):.3e}")


if __name__ == "__main__":
    main()
