"""Gated linear attention through ``recur.lax.scan``: the user's ``jax.lax.scan`` body,
ported by changing one name.

    S_t = diag(a_t) S_{t-1} + k_t v_t^T,     o_t = S_t^T q_t,
    a_t = sigmoid(W_a x_t + b_a),  k_t = W_k x_t / sqrt(d_k),  v_t = W_v x_t,  q_t = W_q x_t

The state S is a d_k x d_v matrix.  recur's chunkwise pass finds the body's form (a decay
per row of S, a rank-1 input term k vᵀ, the readout Sᵀ q) and method ``chunked`` computes
the outputs with masked C x C products per chunk and a scan over the chunk-boundary states,
never storing the T states; ``auto`` picks whatever the cost model predicts fastest here.
The script checks both against the user's own ``jax.lax.scan`` and against the same model
loaded from ``examples/gated_linear_attention.rec``, times them, and plots the outputs.

    python examples/gated_linear_attention.py [--quick] [--out DIR]
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
NAME = "gated_linear_attention"


def gla_step(S, x, p):
    k = p["Wk"] @ x / jnp.sqrt(jnp.float32(p["Wk"].shape[0]))
    v = p["Wv"] @ x
    a = jax.nn.sigmoid(p["Wa"] @ x + p["ba"])
    return a[:, None] * S + jnp.outer(k, v)


def gla_body(p):
    """The body as a user writes it for ``jax.lax.scan``: new state, and ``o_t``."""
    def body(S, x):
        S = gla_step(S, x, p)
        return S, S.T @ (p["Wq"] @ x)
    return body


def gla_layer(scan, S0, xs, p, **kw):
    return scan(gla_body(p), S0, xs, **kw)[1]


def loop(S0, xs, p):
    return jax.lax.scan(lambda S, x: (gla_step(S, x, p),) * 2, S0, xs)[1]


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
    T, Dm, Dk, Dv = (1024, 16, 8, 8) if args.quick else (16384, 16, 8, 8)
    platform = jax.devices()[0].platform
    ks = jax.random.split(jax.random.key(0), 6)
    p = {"Wq": jax.random.normal(ks[0], (Dk, Dm)) / jnp.sqrt(Dm),
         "Wk": jax.random.normal(ks[1], (Dk, Dm)) / jnp.sqrt(Dm),
         "Wv": jax.random.normal(ks[2], (Dv, Dm)) / jnp.sqrt(Dm),
         "Wa": jax.random.normal(ks[3], (Dk, Dm)) / jnp.sqrt(Dm),
         "ba": jnp.full((Dk,), 3.0)}
    xs = jax.random.normal(ks[4], (T, Dm))
    S0 = jnp.zeros((Dk, Dv))

    body = gla_body(p)
    print(recur.lax.plan(body, S0, xs).explain())
    print()
    print(recur.lax.plan(body, S0, xs, method="chunked").explain_passes().split(
        "== chunkwise ==")[1].split("==")[0].strip())
    print()
    par = jax.jit(lambda xs, p: gla_layer(recur.lax.scan, S0, xs, p, method="chunked"))
    auto = jax.jit(lambda xs, p: gla_layer(recur.lax.scan, S0, xs, p))
    seq = jax.jit(lambda xs, p: gla_layer(jax.lax.scan, S0, xs, p))
    o_par, o_auto, o_seq = par(xs, p), auto(xs, p), seq(xs, p)
    diff = float(max(jnp.max(jnp.abs(o_par - o_seq)), jnp.max(jnp.abs(o_auto - o_seq))))
    print(f"T={T}, state {Dk}x{Dv}: max |recur.lax.scan - jax.lax.scan| over the outputs "
          f"(chunked and auto) = {diff:.3e} (outputs up to {float(jnp.max(jnp.abs(o_seq))):.2f})")

    rec = recur.load(os.path.join(HERE, "gated_linear_attention.rec"), Dm=Dm, Dk=Dk, Dv=Dv)
    hs_rec = rec.scan({"S": S0}, {"x": xs}, {k: p[k] for k in ("Wq", "Wk", "Wv", "Wa", "ba")},
                      method="scan")["S"]
    rec_diff = float(jnp.max(jnp.abs(hs_rec - loop(S0, xs, p))))
    print(f"the same model from gated_linear_attention.rec: max |S_rec - S_loop| = {rec_diff:.3e}")

    t_par, t_auto, t_seq = timeit(par, xs, p), timeit(auto, xs, p), timeit(seq, xs, p)
    print(f"timing on {platform} (median of 7, compiled): recur chunked {t_par:.2f} ms, "
          f"recur auto {t_auto:.2f} ms, the user's jax.lax.scan {t_seq:.2f} ms")

    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, NAME + ".png")
    n = min(T, 150)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j in range(3):
        ax.plot(o_seq[:n, j], lw=2, alpha=0.4, color=f"C{j}", label=f"o[{j}] jax.lax.scan")
        ax.plot(o_par[:n, j], lw=0.8, ls="--", color="k",
                label="recur.lax.scan (chunked)" if j == 0 else None)
    ax.set_xlabel("t")
    ax.set_ylabel("attention output")
    ax.set_title(f"Gated linear attention, {Dk}x{Dv} matrix state (max diff {diff:.1e})",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {os.path.relpath(out)}")
    print(f"AGREEMENT {NAME} {max(diff, rec_diff):.3e}")


if __name__ == "__main__":
    main()
