"""An LRU / S5-style layer: a complex diagonal linear recurrence, method="scan".

    h_t = lambda * h_{t-1} + B x_t        (lambda complex, |lambda| < 1, diagonal)
    y_t = Re(C h_t) + D x_t

recur finds the step affine with a diagonal Jacobian and solves all T steps with its
associative scan; the script checks the result against a sequential ``jax.lax.scan``
loop, times both and plots the layer's outputs.  Then the whole layer as one
``jax.lax.scan`` body ``(h, x) -> (h, y)`` through ``recur.lax.scan``: the chunkwise pass
finds the decay (per row, complex) and the readout ``C h`` (one query per output), and
method="chunked" computes the outputs without storing the states, checked against the
same body in ``jax.lax.scan`` (for a vector state like this one the associative scan is
faster; the chunkwise form pays off for matrix states, as in linear attention).

    python examples/lru_layer.py [--quick] [--out DIR]
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
NAME = "lru_layer"


def init_params(key, N, I, O, r_min=0.9, r_max=0.999):
    """LRU initialisation (Orvieto et al. 2023): eigenvalues uniform on a ring."""
    k = jax.random.split(key, 6)
    u1, u2 = jax.random.uniform(k[0], (N,)), jax.random.uniform(k[1], (N,))
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
    theta_log = jnp.log(u2 * jnp.pi / 4)           # slow-ish rotations, visible in a plot
    lam = jnp.exp(-jnp.exp(nu_log) + 1j * jnp.exp(theta_log))
    gamma = jnp.sqrt(1 - jnp.abs(lam) ** 2)         # normalisation of the input
    B = (jax.random.normal(k[2], (N, I)) + 1j * jax.random.normal(k[3], (N, I))) / jnp.sqrt(2 * I)
    C = (jax.random.normal(k[4], (O, N)) + 1j * jax.random.normal(k[5], (O, N))) / jnp.sqrt(N)
    return {"lam": lam.astype(jnp.complex64), "B": (gamma[:, None] * B).astype(jnp.complex64),
            "C": C.astype(jnp.complex64), "D": jnp.ones((O,)) * 0.5}


def lru_step(h, x, p):
    return p["lam"] * h + p["B"] @ x.astype(jnp.complex64)


def readout(hs, xs, p):
    return (hs @ p["C"].T).real + xs[:, : p["D"].shape[0]] * p["D"]


def layer(h, x, p):
    """The whole layer as one ``jax.lax.scan`` body: ``(h, x) -> (h, y)``."""
    h = lru_step(h, x, p)
    return h, (p["C"] @ h).real + x[: p["D"].shape[0]] * p["D"]


def loop_scan(h0, xs, p):
    def body(h, x):
        h = lru_step(h, x, p)
        return h, h
    return jax.lax.scan(body, h0, xs)[1]


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
    T, N, I, O = (2048, 32, 4, 4) if args.quick else (65536, 64, 8, 8)
    platform = jax.devices()[0].platform

    p = init_params(jax.random.key(0), N, I, O)
    t = jnp.arange(T)[:, None]
    # a few inputs: a square wave, a chirp-ish sine and noise
    xs = jnp.concatenate([
        jnp.sign(jnp.sin(2 * jnp.pi * t / 400.0)),
        jnp.sin(2 * jnp.pi * t * (1 + t / T) / 150.0),
        0.3 * jax.random.normal(jax.random.key(1), (T, I - 2)),
    ], axis=1).astype(jnp.float32)
    h0 = jnp.zeros(N, jnp.complex64)

    print(recur.plan(lru_step, h0, xs, p, method="scan").explain())
    print()

    par = jax.jit(lambda h0, xs, p: readout(recur.scan(lru_step, h0, xs, p, method="scan"), xs, p))
    seq = jax.jit(lambda h0, xs, p: readout(loop_scan(h0, xs, p), xs, p))
    y_par, y_seq = par(h0, xs, p), seq(h0, xs, p)
    hs, info = jax.jit(lambda h0, xs, p: recur.scan(lru_step, h0, xs, p, method="scan",
                                                    return_info=True))(h0, xs, p)
    hdiff = float(jnp.max(jnp.abs(hs - jax.jit(loop_scan)(h0, xs, p))))
    diff = float(jnp.max(jnp.abs(y_par - y_seq)))
    print(f"|lambda| in [{float(jnp.abs(p['lam']).min()):.4f}, {float(jnp.abs(p['lam']).max()):.4f}]"
          f", T={T}, N={N} complex states")
    print(f"info: method={info.method} residual={float(info.residual):.2e} "
          f"converged={bool(info.converged)} fell_back={bool(info.fell_back)}")
    print(f"states:  max |scan - loop| = {hdiff:.3e}")
    print(f"outputs: max |scan - loop| = {diff:.3e}  (outputs up to {float(jnp.max(jnp.abs(y_seq))):.2f})")
    t_par, t_seq = timeit(par, h0, xs, p), timeit(seq, h0, xs, p)
    print(f"timing on {platform} (median of 7, compiled): recur scan {t_par:.2f} ms, "
          f"lax.scan loop {t_seq:.2f} ms ({t_seq / t_par:.2f}x)")

    # the layer as one body: recur.lax.scan(method="chunked") against jax.lax.scan
    def body(h, x):
        return layer(h, x, p)
    print(dict(recur.lax.plan(body, h0, xs, method="chunked").passes)["chunkwise"])
    chunked = jax.jit(lambda h0, xs: recur.lax.scan(body, h0, xs, method="chunked"))
    loop = jax.jit(lambda h0, xs: jax.lax.scan(body, h0, xs))
    (hT_c, y_c), (hT_l, y_l) = chunked(h0, xs), loop(h0, xs)
    cdiff = max(float(jnp.max(jnp.abs(y_c - y_l))), float(jnp.max(jnp.abs(hT_c - hT_l))))
    print(f"recur.lax.scan(method='chunked'): max |chunked - lax.scan| = {cdiff:.3e} "
          f"(outputs and final state)")

    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, NAME + ".png")
    n = min(T, 2048)
    fig, axs = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    axs[0].plot(xs[:n, 0], lw=0.8, label="x[0] square wave")
    axs[0].plot(xs[:n, 1], lw=0.8, label="x[1] chirp")
    axs[0].set_ylabel("input")
    axs[0].legend(loc="upper right", fontsize=8)
    for j in range(min(O, 3)):
        axs[1].plot(y_seq[:n, j], lw=1.5, color=f"C{j}", alpha=0.5, label=f"y[{j}] loop" if j == 0 else None)
        axs[1].plot(y_par[:n, j], lw=0.8, ls="--", color="k", label="recur scan" if j == 0 else None)
    axs[1].set_ylabel("Re(C h) + D x")
    axs[1].set_xlabel("t")
    axs[1].legend(loc="upper right", fontsize=8)
    axs[0].set_title(f"LRU layer, {N} complex modes: recur.scan(method='scan') vs loop "
                     f"(max diff {diff:.1e})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {os.path.relpath(out)}")
    print(f"AGREEMENT {NAME} {max(diff, cdiff):.3e}")


if __name__ == "__main__":
    main()
