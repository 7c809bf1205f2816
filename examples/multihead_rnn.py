"""A multi-head nonlinear RNN in the ParaRNN style: block-diagonal Newton, method="deer".

    h_t^{(j)} = tanh(W_j h_{t-1}^{(j)} + U_j x_t),   j = 1..H heads of size k

The heads do not read each other, so recur finds the Jacobian block-diagonal,
``block(k)`` after its own permutation of the state, and each Newton iteration is a
block scan with k x k blocks (k JVPs per step, not H*k).  The script checks the
trajectory and the gradients against a sequential ``jax.lax.scan`` loop, reports the
iterations, and plots a few hidden units.

    python examples/multihead_rnn.py [--quick] [--out DIR]
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import recur

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(HERE, "figures")
NAME = "multihead_rnn"
H, K, I = 8, 4, 4  # heads, head size, input width


def step(h, x, p):
    hh = h.reshape(H, K)
    pre = jnp.einsum("hij,hj->hi", p["W"], hh) + jnp.einsum("hij,j->hi", p["U"], x)
    return jnp.tanh(pre).reshape(H * K)


def loop(h0, xs, p):
    return jax.lax.scan(lambda h, x: (step(h, x, p),) * 2, h0, xs)[1]


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
    T = 512 if args.quick else 8192
    platform = jax.devices()[0].platform
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    p = {"W": 0.8 * jax.random.normal(k1, (H, K, K)) / jnp.sqrt(K),
         "U": jax.random.normal(k2, (H, K, I)) / jnp.sqrt(I)}
    xs = jax.random.normal(k3, (T, I))
    h0 = jnp.zeros(H * K)

    plan = recur.plan(step, h0, xs, p, method="deer")
    print(plan.explain())
    print()
    run = jax.jit(lambda xs, p: recur.scan(step, h0, xs, p, method="deer", return_info=True))
    hs, info = run(xs, p)
    ref = jax.jit(loop)(h0, xs, p)
    diff = float(jnp.max(jnp.abs(hs - ref)))
    print(f"T={T}, {H} heads of {K}: deer iterations {int(info.iterations)}, "
          f"converged {bool(info.converged)}, fell back {bool(info.fell_back)}, "
          f"lyapunov {float(info.lyapunov):.3f}; max |deer - loop| = {diff:.3e}")

    def loss(p, run_fn):
        return jnp.sum(run_fn(p) ** 2)
    g_par = jax.jit(jax.grad(lambda p: loss(p, lambda p: recur.scan(step, h0, xs, p,
                                                                    method="deer"))))(p)
    g_seq = jax.jit(jax.grad(lambda p: loss(p, lambda p: loop(h0, xs, p))))(p)
    gdiff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree_util.tree_leaves(g_par), jax.tree_util.tree_leaves(g_seq)))
    gmax = max(float(jnp.max(jnp.abs(b))) for b in jax.tree_util.tree_leaves(g_seq))
    gdiff = gdiff / gmax
    print(f"gradients w.r.t. W and U: max |deer - loop| / max |grad| = {gdiff:.3e} "
          f"(largest gradient entry {gmax:.3g})")

    seq = jax.jit(loop)
    t_par = timeit(lambda xs, p: run(xs, p)[0], xs, p)
    t_seq = timeit(seq, h0, xs, p)
    print(f"timing on {platform} (median of 7, compiled): recur deer {t_par:.2f} ms, "
          f"lax.scan loop {t_seq:.2f} ms ({t_seq / t_par:.2f}x)")

    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, NAME + ".png")
    n = min(T, 60)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, unit in enumerate((0, K, 2 * K + 1)):
        ax.plot(ref[:n, unit], lw=2, alpha=0.4, color=f"C{j}", label=f"h[{unit}] loop")
        ax.plot(hs[:n, unit], lw=0.8, ls="--", color="k", label="recur deer" if j == 0 else None)
    ax.set_xlabel("t")
    ax.set_ylabel("hidden unit")
    ax.set_title(f"{H}-head RNN, block({K}) Newton: {int(info.iterations)} iterations "
                 f"(max diff {diff:.1e})", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {os.path.relpath(out)}")
    print(f"AGREEMENT {NAME} {max(diff, gdiff):.3e}")


if __name__ == "__main__":
    main()
