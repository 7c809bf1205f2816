"""DDIM and DDPM sampling as recurrences over the denoising steps, solved with Picard windows.

The data distribution is a mixture of K isotropic Gaussians in D = 2 dimensions,
p(x0) = sum_j w_j N(mu_j, s_j^2 I). Under the variance-preserving forward process
x = sqrt(abar) x0 + sqrt(1 - abar) eps every noised marginal is again a mixture,
N(sqrt(abar) mu_j, v_j I) with v_j = abar s_j^2 + 1 - abar, so the ideal denoiser (the
"model") is closed-form, no weights:

    x0_hat(x, abar) = E[x0 | x] = sum_j r_j(x) (mu_j + sqrt(abar) s_j^2 / v_j (x - sqrt(abar) mu_j)),
    r_j(x) ∝ w_j v_j^(-D/2) exp(-|x - sqrt(abar) mu_j|^2 / (2 v_j)),

(equivalently eps_hat = (x - sqrt(abar) x0_hat) / sqrt(1 - abar), or the score
-eps_hat / sqrt(1 - abar)). With a cosine schedule abar_T < ... < abar_0 = 1 and
t = 0..T-1 running from noise to data (k = T - t, abar = abar_k, abar' = abar_{k-1}):

    DDIM (eta = 0):  x' = sqrt(abar') x0_hat + sqrt((1 - abar') / (1 - abar)) (x - sqrt(abar) x0_hat)
    DDPM:            x' = sqrt(abar') beta / (1 - abar) x0_hat
                          + sqrt(alpha) (1 - abar') / (1 - abar) x + sigma z_t,
                     alpha = abar / abar', beta = 1 - alpha, sigma^2 = (1 - abar') / (1 - abar) beta,

with the Gaussian noise z_t drawn in advance (an input of the recurrence). Both steps are
x + g(x, t) with g = O(1/T), the form Picard iteration (A = I: one cumulative sum of g
per sweep) is made for. ParaDiGMS (Shih et al. 2023) runs Picard on a sliding window of
W steps; here that is ``recur.scan(step, x_T, inputs, method="picard", window=W)``, each
sample (state of shape (D,)) a recurrence of its own, ``jax.vmap``-ed over N samples
(one (N, D) state works too, but recur's dependency pass then reports a dense 2N x 2N
Jacobian -- it does not yet follow the implicit size-1 broadcasts that jax emits for
``x[:, None] - mu`` --, which makes deer's Jacobians N^2 times too large; per-sample
states keep them 2 x 2).
A sweep evaluates the denoiser on W steps at once (one parallel "round"), so the number
of sequential rounds drops from T to the number of sweeps, at the price of more
denoiser evaluations (T for the initial guess + W per sweep). A step is accepted when
|x_t - f(x_{t-1})| <= atol + rtol |x_t| (here 1e-6, float32), and the result is
compared with the sequential sampler (a ``jax.lax.scan`` loop). deer and quasi-deer
windows (Newton / diagonal quasi-Newton instead of A = I) are compared too.

    python examples/diffusion_sampling.py [--quick] [--out DIR]
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
NAME = "diffusion_sampling"
MU = jnp.array([[-2.0, -1.5], [2.0, -1.0], [0.0, 2.2], [1.8, 2.0]])   # component means
SIG = jnp.array([0.35, 0.5, 0.3, 0.4])                                # component std devs
WTS = jnp.array([0.3, 0.25, 0.25, 0.2])                               # mixture weights
TOL = 1e-6                                                            # rtol = atol


def cosine_abar(T, s=0.008):
    """abar_k for k = 0..T (Nichol & Dhariwal), abar_0 = 1, clipped to >= 1e-4."""
    u = np.linspace(0.0, 1.0, T + 1)
    f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    return np.clip(f / f[0], 1e-4, 1.0)


def denoiser(x, abar):
    """E[x0 | x] under the mixture, for one sample x of shape (D,): the 'model'."""
    m = jnp.sqrt(abar) * MU                                   # (K, D)
    v = abar * SIG ** 2 + (1 - abar)                          # (K,)
    d = x - m
    logr = jnp.log(WTS) - 0.5 * jnp.sum(d ** 2, -1) / v - 0.5 * x.shape[-1] * jnp.log(v)
    r = jax.nn.softmax(logr)
    return jnp.sum(r[:, None] * (MU + (jnp.sqrt(abar) * SIG ** 2 / v)[:, None] * d), axis=0)


def ddim_step(x, inp):
    ab, abp = inp["ab"], inp["abp"]
    x0 = denoiser(x, ab)
    return jnp.sqrt(abp) * x0 + jnp.sqrt((1 - abp) / (1 - ab)) * (x - jnp.sqrt(ab) * x0)


def ddpm_step(x, inp):
    ab, abp = inp["ab"], inp["abp"]
    alpha = ab / abp
    beta = 1 - alpha
    x0 = denoiser(x, ab)
    mean = jnp.sqrt(abp) * beta / (1 - ab) * x0 + jnp.sqrt(alpha) * (1 - abp) / (1 - ab) * x
    return mean + jnp.sqrt((1 - abp) / (1 - ab) * beta) * inp["z"]


def loop(step, x0, inp):
    """The sequential sampler for one sample: T denoiser evaluations, T rounds."""
    def body(x, i):
        x = step(x, i)
        return x, x
    return jax.lax.scan(body, x0, inp)[1]


def timeit(f, *args, n=3):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3


def log_density(g0, g1):
    x = np.stack([g0, g1], -1)[..., None, :]
    mu, s, w = np.asarray(MU), np.asarray(SIG), np.asarray(WTS)
    q = -0.5 * np.sum((x - mu) ** 2, -1) / s ** 2 - 2 * np.log(s) + np.log(w)
    return np.log(np.sum(np.exp(q), -1))


def occupancy(samples):
    """Fraction of samples whose nearest component mean is j (a crude check of the weights)."""
    d = np.sum((np.asarray(samples)[:, None, :] - np.asarray(MU)) ** 2, -1)
    return np.bincount(np.argmin(d, 1), minlength=len(WTS)) / len(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", metavar="DIR", default=os.environ.get("RECUR_FIGURES") or FIGURES,
                    help="folder for the figure (default: $RECUR_FIGURES, else examples/figures)")
    args = ap.parse_args()
    T, N, W = (100, 256, 16) if args.quick else (1000, 512, 64)
    platform = jax.devices()[0].platform

    abar = cosine_abar(T)
    ab = jnp.asarray(abar[1:][::-1], jnp.float32)     # t = 0 is the noisiest step (k = T)
    abp = jnp.asarray(abar[:-1][::-1], jnp.float32)
    k1, k2 = jax.random.split(jax.random.key(0))
    xT = jax.random.normal(k1, (N, 2))                   # the N starting points x_T
    z = jax.random.normal(k2, (N, T, 2))                 # DDPM noise, drawn in advance
    samplers = {
        "DDIM": (ddim_step, lambda zi: {"ab": ab, "abp": abp}),
        "DDPM": (ddpm_step, lambda zi: {"ab": ab, "abp": abp, "z": zi}),
    }

    print(recur.plan(ddim_step, xT[0], samplers["DDIM"][1](None), method="picard",
                     window=W, rtol=TOL, atol=TOL).explain())
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          (xT[0], samplers["DDIM"][1](None)))
    print(f"(method='auto' would run: {recur.plan(ddim_step, *shapes).method} on {platform}; "
          f"on a GPU: {recur.plan(ddim_step, *shapes, backend='gpu').method})")
    print()

    # (--quick: two methods, each program compiles in a few seconds on a 2-core CPU)
    methods = ("picard", "deer") if args.quick else ("picard", "deer", "quasi-deer")
    refs, results, diffs, times, sweeps = {}, {}, {}, {}, {}
    for sname, (step, inputs) in samplers.items():
        f_loop = jax.jit(jax.vmap(lambda x0, zi, step=step, inputs=inputs: loop(step, x0, inputs(zi))))
        refs[sname] = f_loop(xT, z)
        times[sname, "loop"] = timeit(f_loop, xT, z)
        print(f"{sname}: T = {T} steps, N = {N} samples (vmap), window W = {W}, rtol = atol = {TOL:g}; "
              f"sequential loop: {T} rounds, {T} denoiser evaluations per sample")
        for m in methods:
            f = jax.jit(jax.vmap(lambda x0, zi, step=step, inputs=inputs, m=m: recur.scan(
                step, x0, inputs(zi), method=m, window=W, rtol=TOL, atol=TOL, return_info=True)))
            hs, info = f(xT, z)
            its = np.asarray(info.iterations)
            conv = np.asarray(info.converged)
            # evaluations of the denoiser per sample: T (initial guess x~_t = f(x_T, t)) + W per
            # sweep (+ T for the final residual of a sample that did not converge)
            evals = T + W * its + np.where(conv, 0, T)
            diffs[sname, m] = float(jnp.max(jnp.abs(hs - refs[sname])))
            results[sname, m], sweeps[sname, m] = np.asarray(hs), its
            times[sname, m] = timeit(f, xT, z)
            print(f"  {m + ' W=' + str(W):>15}: sweeps (sequential rounds) max {its.max()} "
                  f"mean {its.mean():.1f} "
                  f"(batched: {its.max()} rounds for all N); converged {int(conv.sum())}/{N}, "
                  f"fell back {int(np.asarray(info.fell_back).sum())}/{N}; residual max "
                  f"{float(jnp.max(info.residual)):.1e}; denoiser evaluations per sample mean "
                  f"{evals.mean():.0f} ({evals.mean() / T:.1f}x the loop's); "
                  f"max |samples - loop| over all t = {diffs[sname, m]:.2e}")
            if np.any(np.asarray(info.fell_back)):
                print(f"{'':>19}-> {int(np.asarray(info.fell_back).sum())} samples did not converge: "
                      "their trajectories are the sequential loop's")
        print(f"  final-sample occupancy of the components: loop {occupancy(refs[sname][:, -1]).round(2)}, "
              f"picard {occupancy(results[sname, 'picard'][:, -1]).round(2)} (weights {np.asarray(WTS)})")

    print(f"(windows accept each step once its residual passes, so the per-step errors, up to "
          f"{TOL:g} (1 + |x|), add up along the T = {T} steps: that, not a failure, is the difference "
          "to the loop above; whole-sequence iterations stop later and end closer, see below)")

    # convergence per iteration: whole-sequence Picard (no window), one iteration per call
    # continued from the previous iterate (init=...), the residual and the error after each
    n_it = 20 if args.quick else 32
    curves = {}
    for sname, (step, inputs) in samplers.items():
        one = jax.jit(jax.vmap(lambda x0, zi, init, step=step, inputs=inputs: recur.scan(
            step, x0, inputs(zi), method="picard", rtol=TOL, atol=TOL, max_iters=1, init=init,
            on_failure="ignore", return_info=True)))
        guess = jax.vmap(lambda x0, zi: jax.vmap(lambda i: step(x0, i))(inputs(zi)))(xT, z)
        res, err = [], []
        for _ in range(n_it):
            guess, info = one(xT, z, guess)
            res.append(float(jnp.max(info.residual)))
            err.append(float(jnp.max(jnp.abs(guess - refs[sname]))))
        curves[sname] = (np.array(res), np.array(err))
        print(f"{sname} whole-sequence picard (no window), residual after 1..{n_it} iterations: "
              + " ".join(f"{r:.0e}" for r in res))

    print(f"timing on {platform} (median of 3, compiled, N = {N} samples, T = {T}): "
          + "; ".join(f"{s} loop {times[s, 'loop']:.1f} ms, "
                      + ", ".join(f"{m} {times[s, m]:.1f} ms" for m in methods)
                      for s in samplers)
          + " (a CPU runs the W steps of a sweep one after another: the rounds saved pay on a GPU)")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, NAME + ".png")
    fig, axs = plt.subplots(1, 3, figsize=(16, 5))
    g0, g1 = np.meshgrid(np.linspace(-4, 4, 200), np.linspace(-3.5, 4, 200))
    dens = np.exp(log_density(g0, g1))
    for ax, sname in zip(axs[:2], samplers):
        ax.contourf(g0, g1, dens, levels=12, cmap="Greys")
        r = refs[sname][:, -1]
        h = results[sname, "picard"][:, -1]
        ax.plot(r[:, 0], r[:, 1], "o", ms=6, mfc="none", color="C1", mew=0.8,
                label="sequential sampler (lax.scan loop)")
        ax.plot(h[:, 0], h[:, 1], ".", ms=3, color="C0",
                label=f"recur picard W={W}: {sweeps[sname, 'picard'].max()} rounds, "
                      f"max diff {diffs[sname, 'picard']:.1e}")
        for i in range(min(N, 6)):
            tr = refs[sname][i]
            ax.plot(tr[:, 0], tr[:, 1], "-", lw=0.6, color="C3", alpha=0.7,
                    label="a few sample paths (loop)" if i == 0 else None)
        ax.set_xlim(-4, 4)
        ax.set_ylim(-3.5, 4)
        ax.set_title(f"{sname}: {N} samples, T = {T} steps, over the mixture density", fontsize=10)
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.legend(fontsize=7, loc="lower center")
    ax = axs[2]
    for sname, c in (("DDIM", "C0"), ("DDPM", "C3")):
        res, err = curves[sname]
        k = np.arange(1, len(res) + 1)
        ax.semilogy(k, np.maximum(res, 1e-9), "-o", ms=3, color=c,
                    label=f"{sname}: residual max_t |x_t - f(x_t-1)|")
        ax.semilogy(k, np.maximum(err, 1e-9), "--", color=c, label=f"{sname}: max |iterate - loop|")
    ax.axhline(TOL, color="k", lw=0.6, ls=":", label=f"atol = rtol = {TOL:g} (test: atol + rtol |x|)")
    ax.set_xlabel("Picard iteration (whole sequence, no window)")
    ax.set_ylabel("largest over the N samples")
    ax.set_title(f"Picard on the whole sequence, per iteration\n(the W = {W} windows needed "
                 f"{sweeps['DDIM', 'picard'].max()} (DDIM) / {sweeps['DDPM', 'picard'].max()} (DDPM) sweeps)",
                 fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {os.path.relpath(path)}")
    print(f"AGREEMENT {NAME} {max(diffs.values()):.3e}")


if __name__ == "__main__":
    main()
