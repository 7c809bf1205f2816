"""A Mamba-2 (SSD) selective state-space layer through ``recur.lax.scan``.

Per head ``h`` (H heads of P channels, state size N), with ``u_t`` the layer's input:

    x_t = W_x u_t (H, P),  B_t = W_B u_t (N),  C_t = W_C u_t (N),
    dt_t = softplus(W_dt u_t + b_dt) (H),     A_h = -exp(a_h) < 0,
    S_t[h] = exp(dt_t[h] A_h) S_{t-1}[h] + dt_t[h] x_t[h] B_tᵀ      (P x N per head)
    y_t[h] = S_t[h] C_t + D_h x_t[h],          o_t = W_o y_t

-- the decay is one scalar per head (SSD's "scalar times identity" A).  The body below is
written for ``jax.lax.scan``; recur's chunkwise pass finds the scalar decay per head, the
rank-1 input term ``(dt x) Bᵀ`` and the readout ``S C``, and method ``chunked`` runs the
chunkwise (SSD) form: masked C x C products inside chunks, one state per chunk.  Checked
against the user's own ``jax.lax.scan``, timed, and plotted.

    python examples/mamba2_ssd.py [--quick] [--out DIR]
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
NAME = "mamba2_ssd"


def ssd_body(p):
    """The scan body of the layer, as a user writes it for ``jax.lax.scan``."""
    H, P = p["D"].shape
    A = -jnp.exp(p["a"])

    def body(S, u):
        x = (p["Wx"] @ u).reshape(H, P)
        B, C = p["WB"] @ u, p["WC"] @ u
        dt = jax.nn.softplus(p["Wdt"] @ u + p["bdt"])
        decay = jnp.exp(dt * A)
        S = decay[:, None, None] * S + jnp.einsum("hp,n->hpn", dt[:, None] * x, B)
        y = jnp.einsum("hpn,n->hp", S, C) + p["D"] * x
        return S, p["Wo"] @ y.reshape(-1)

    return body


def layer(scan, S0, us, p, **kw):
    return scan(ssd_body(p), S0, us, **kw)[1]


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
    T, Dm, H, P, N = (1024, 32, 2, 16, 16) if args.quick else (8192, 64, 4, 32, 64)
    platform = jax.devices()[0].platform
    ks = jax.random.split(jax.random.key(1), 9)
    n = lambda k, *s: jax.random.normal(k, s) / jnp.sqrt(s[-1])  # noqa: E731
    p = {"Wx": n(ks[0], H * P, Dm), "WB": n(ks[1], N, Dm), "WC": n(ks[2], N, Dm),
         "Wdt": n(ks[3], H, Dm), "bdt": jnp.full((H,), -2.0),
         "a": jnp.log(jnp.linspace(0.5, 4.0, H)), "D": jnp.ones((H, P)),
         "Wo": n(ks[4], Dm, H * P)}
    us = jax.random.normal(ks[5], (T, Dm))
    S0 = jnp.zeros((H, P, N))

    print(recur.lax.plan(ssd_body(p), S0, us).explain())
    print()
    chunk = recur.lax.plan(ssd_body(p), S0, us, method="chunked")
    print(chunk.explain_passes().split("== chunkwise ==")[1].split("==")[0].strip())
    print()
    par = jax.jit(lambda us, p: layer(recur.lax.scan, S0, us, p, method="chunked"))
    auto = jax.jit(lambda us, p: layer(recur.lax.scan, S0, us, p))
    seq = jax.jit(lambda us, p: layer(jax.lax.scan, S0, us, p))
    o_par, o_auto, o_seq = par(us, p), auto(us, p), seq(us, p)
    diff = float(max(jnp.max(jnp.abs(o_par - o_seq)), jnp.max(jnp.abs(o_auto - o_seq))))
    print(f"T={T}, {H} heads of a {P}x{N} state: max |recur.lax.scan - jax.lax.scan| over the "
          f"outputs (chunked and auto) = {diff:.3e} (outputs up to "
          f"{float(jnp.max(jnp.abs(o_seq))):.2f})")
    t_par, t_auto, t_seq = timeit(par, us, p), timeit(auto, us, p), timeit(seq, us, p)
    print(f"timing on {platform} (median of 7, compiled): recur chunked {t_par:.2f} ms, "
          f"recur auto {t_auto:.2f} ms, the user's jax.lax.scan {t_seq:.2f} ms")

    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, NAME + ".png")
    m = min(T, 200)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j in range(3):
        ax.plot(o_seq[:m, j], lw=2, alpha=0.4, color=f"C{j}", label=f"o[{j}] jax.lax.scan")
        ax.plot(o_par[:m, j], lw=0.8, ls="--", color="k",
                label="recur.lax.scan (chunked)" if j == 0 else None)
    ax.set_xlabel("t")
    ax.set_ylabel("layer output")
    ax.set_title(f"Mamba-2 / SSD layer, {H} heads, {P}x{N} state each (max diff {diff:.1e})",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {os.path.relpath(out)}")
    print(f"AGREEMENT {NAME} {diff:.3e}")


if __name__ == "__main__":
    main()
