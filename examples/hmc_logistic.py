"""HMC and MALA chains as recurrences: Bayesian logistic regression and a 2-D banana.

A Markov chain with its random numbers drawn in advance is a deterministic recurrence
q_t = f(q_{t-1}, (p_t, u_t)) over the chain length, so recur can try to evaluate all T
transitions at once (DEER-style Newton, quasi-Newton, Picard), falling back to the
sequential loop when that does not converge.

* Target 1, Bayesian logistic regression: synthetic data, n = 100 points, P = 4
  coefficients (intercept + 3 features), y_i ~ Bernoulli(sigmoid(x_i . w)), prior
  w ~ N(0, 2^2 I):  log p(w | y) = sum_i [y_i x_i.w - log(1 + exp(x_i.w))] - |w|^2 / 8.
* Target 2, the banana: q0 ~ N(0, 2^2), q1 | q0 ~ N(q0^2 / 2 - 1, 0.5^2).

HMC transition (L leapfrog steps of size eps, momentum p_t ~ N(0, I) drawn in advance):

    p <- p + eps/2 grad log p(q);  L times: q <- q + eps p, p <- p + eps grad log p(q)
    (the last momentum update a half step);  log a = log p(q') - |p'|^2/2 - log p(q) + |p|^2/2
    q_t = where(log u_t < log a, q', q_{t-1})

MALA transition (as in mala_banana.py):  q' = q + eps^2/2 grad log p(q) + eps xi_t,
accepted with the Metropolis-Hastings ratio including the Langevin proposal densities.

The accept test is a ``jnp.where``: the step is only piecewise smooth, and Newton's
linearisation (which differentiates through the selected branch, straight-through style)
cannot see a decision flip between iterates. recur reports what happened
(info.converged, info.fell_back, info.lyapunov) and returns the sequential loop's chain
when the parallel iterate did not converge. Float64 throughout (x64), so the converged
chains can be compared with a ``jax.lax.scan`` loop to ~1e-9.

    python examples/hmc_logistic.py [--quick] [--out DIR]
"""
import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)   # tight comparison with the loop

import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import recur

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(HERE, "figures")
NAME = "hmc_logistic"
N_DATA, P = 100, 4
W_TRUE = np.array([0.5, -1.0, 1.5, 0.75])
L_HMC = 5                       # leapfrog steps per HMC transition
EPS = {"hmc-logreg": 0.15, "mala-logreg": 0.15, "hmc-banana": 0.3}


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N_DATA, P))
    X[:, 0] = 1.0
    y = (rng.uniform(size=N_DATA) < 1 / (1 + np.exp(-X @ W_TRUE))).astype(float)
    return jnp.asarray(X), jnp.asarray(y)


X, Y = make_data()


def logp_logreg(w):
    z = X @ w
    return jnp.sum(Y * z - jax.nn.softplus(z)) - 0.5 * jnp.sum(w ** 2) / 2.0 ** 2


def logp_banana(q):
    return -0.5 * (q[0] / 2.0) ** 2 - 0.5 * ((q[1] - 0.5 * q[0] ** 2 + 1.0) / 0.5) ** 2


def make_hmc(logp, eps, L=L_HMC):
    grad = jax.grad(logp)

    def hmc_step(q, inp):
        p = inp["p"]

        def leapfrog(_, c):
            qq, pp = c
            qq = qq + eps * pp
            return qq, pp + eps * grad(qq)

        qn, pn = jax.lax.fori_loop(0, L - 1, leapfrog, (q, p + 0.5 * eps * grad(q)))
        qn = qn + eps * pn
        pn = pn + 0.5 * eps * grad(qn)
        log_a = logp(qn) - 0.5 * jnp.sum(pn ** 2) - logp(q) + 0.5 * jnp.sum(p ** 2)
        return jnp.where(jnp.log(inp["u"]) < log_a, qn, q)

    return hmc_step


def make_mala(logp, eps):
    grad = jax.grad(logp)

    def log_q(to, frm):
        return -jnp.sum((to - frm - 0.5 * eps ** 2 * grad(frm)) ** 2) / (2 * eps ** 2)

    def mala_step(q, inp):
        prop = q + 0.5 * eps ** 2 * grad(q) + eps * inp["p"]
        log_a = logp(prop) - logp(q) + log_q(q, prop) - log_q(prop, q)
        return jnp.where(jnp.log(inp["u"]) < log_a, prop, q)

    return mala_step


CHAINS = {   # name -> (step, q0)
    "hmc-logreg": (make_hmc(logp_logreg, EPS["hmc-logreg"]), jnp.zeros(P)),
    "mala-logreg": (make_mala(logp_logreg, EPS["mala-logreg"]), jnp.zeros(P)),
    "hmc-banana": (make_hmc(logp_banana, EPS["hmc-banana"]), jnp.array([0.0, -1.0])),
}


def loop(step, q0, xs):
    def body(q, inp):
        q = step(q, inp)
        return q, q
    return jax.lax.scan(body, q0, xs)[1]


def timeit(f, *args, n=3):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3


def accepted(chain, q0):
    prev = np.concatenate([np.asarray(q0)[None], chain[:-1]])
    return np.any(chain != prev, axis=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", metavar="DIR", default=os.environ.get("RECUR_FIGURES") or FIGURES,
                    help="folder for the figure (default: $RECUR_FIGURES, else examples/figures)")
    args = ap.parse_args()
    T = 200 if args.quick else 1000
    platform = jax.devices()[0].platform
    if args.quick:   # (each recur program compiles in a few seconds on this CPU)
        runs = {"hmc-logreg": [("deer", 32)], "mala-logreg": [("deer", None)],
                "hmc-banana": [("deer", None)]}
    else:
        every = [(m, w) for m in ("deer", "quasi-deer", "picard") for w in (None, 32)]
        runs = {name: every for name in CHAINS}

    inputs = {}
    for i, (name, (step, q0)) in enumerate(CHAINS.items()):
        k1, k2 = jax.random.split(jax.random.key(i))
        inputs[name] = {"p": jax.random.normal(k1, (T, q0.shape[0]), jnp.float64),
                        "u": jax.random.uniform(k2, (T,), jnp.float64)}

    # planned from shapes only (a plan from concrete values adds a Lyapunov estimate along
    # the loop's trajectory, but costs seconds here); info.lyapunov below reports it anyway
    step, q0 = CHAINS["hmc-logreg"]
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (q0, inputs["hmc-logreg"]))
    print(recur.plan(step, *shapes).explain())
    print(f"(the same plan for a GPU would run: {recur.plan(step, *shapes, backend='gpu').method}; "
          "below the methods are forced, and the loop is the fallback)")
    print()

    refs, results, diffs, times, summary = {}, {}, {}, {}, {}
    for name, (step, q0) in CHAINS.items():
        xs = inputs[name]
        f_loop = jax.jit(lambda q0, xs, step=step: loop(step, q0, xs))
        ref = refs[name] = np.asarray(f_loop(q0, xs))
        times[name, "loop"] = timeit(f_loop, q0, xs)
        acc = accepted(ref, q0)
        burn = T // 4
        print(f"{name}: T = {T} transitions, eps = {EPS[name]}"
              + (f", L = {L_HMC} leapfrog steps" if name.startswith("hmc") else "")
              + f"; loop: acceptance {acc.mean():.2f}, posterior mean {ref[burn:].mean(0).round(2)} "
              f"sd {ref[burn:].std(0).round(2)}" + (f" (w_true {W_TRUE})" if "logreg" in name else ""))
        for m, w in runs[name]:
            label = m if w is None else f"{m} W={w}"
            f = jax.jit(lambda q0, xs, step=step, m=m, w=w: recur.scan(
                step, q0, xs, method=m, window=w, return_info=True))
            hs, info = f(q0, xs)
            hs = np.asarray(hs)
            diffs[name, label] = float(np.max(np.abs(hs - ref)))
            results[name, label] = hs
            times[name, label] = timeit(f, q0, xs, n=1 if args.quick else 3)
            flips = int(np.sum(accepted(hs, q0) != acc))
            fb = bool(info.fell_back)
            summary[name, label] = "fell back" if fb else f"converged ({int(info.iterations)} it.)"
            print(f"  {label:>14}: iterations {int(info.iterations)}, residual {float(info.residual):.1e}, "
                  f"converged {bool(info.converged)}, fell_back {fb}, lyapunov {float(info.lyapunov):+.3f}; "
                  f"max |chain - loop| = {diffs[name, label]:.1e}, "
                  f"accept decisions unlike the loop's: {flips}")
            if w is not None and int(info.iterations) >= T:
                print(f"{'':>18}-> one step accepted per sweep: {int(info.iterations)} sweeps for T = {T}, "
                      "no fewer sequential rounds than the loop")
            if fb:
                print(f"{'':>18}-> did NOT converge; the returned chain is the sequential loop's "
                      "(computed in the same compiled program); the Lyapunov estimate is taken "
                      "along the last, unconverged iterate")
    print(f"timing on {platform} (compiled, median of {1 if args.quick else 3}; T = {T}): "
          + "; ".join(f"{n} loop {times[n, 'loop']:.2f} ms, "
                      + ", ".join(f"{lab} {times[n, lab]:.1f} ms" for (nn, lab) in results if nn == n)
                      for n in CHAINS)
          + " (fallbacks include the failed iterations and the loop)")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, NAME + ".png")
    fig, axs = plt.subplots(2, 2, figsize=(13, 9))
    for ax, name in zip(axs[0], ("hmc-logreg", "mala-logreg")):
        ref = refs[name]
        for j in range(P):
            ax.plot(ref[:, j], "-", lw=0.8, color=f"C{j}", label=f"w[{j}] loop (true {W_TRUE[j]})")
            ax.axhline(W_TRUE[j], color=f"C{j}", ls=":", lw=0.8)
        mine = [lab for (nn, lab) in results if nn == name]
        lab = ([la for la in mine if summary[name, la].startswith("converged")] or mine)[0]
        for j in range(P):
            ax.plot(results[name, lab][:, j], ".", ms=2, color="k",
                    label=f"recur {lab}: {summary[name, lab]}, max diff {diffs[name, lab]:.0e}"
                    if j == 0 else None)
        ax.set_xlabel("transition t")
        ax.set_title(f"{name.upper()}: trace of the coefficients (T = {T})", fontsize=10)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax = axs[1, 0]
    burn = T // 4
    for name, c, mk in (("hmc-logreg", "C0", "o"), ("mala-logreg", "C3", "x")):
        r = refs[name][burn:]
        ax.plot(r[:, 1], r[:, 2], mk, ms=3, color=c, alpha=0.6,
                label=f"{name} (after {burn} burn-in)")
    ax.plot(W_TRUE[1], W_TRUE[2], "k*", ms=12, label="w_true")
    ax.set_xlabel("w[1]")
    ax.set_ylabel("w[2]")
    ax.set_title("Logistic regression posterior: (w[1], w[2]) samples", fontsize=10)
    ax.legend(fontsize=8)
    ax = axs[1, 1]
    g0, g1 = np.meshgrid(np.linspace(-5, 5, 200), np.linspace(-3, 8, 200))
    lp = np.asarray(jax.vmap(jax.vmap(lambda a, b: logp_banana(jnp.array([a, b]))))(g0, g1))
    ax.contour(g0, g1, np.exp(lp), levels=8, cmap="Greys")
    r = refs["hmc-banana"]
    ax.plot(r[:, 0], r[:, 1], "-", color="0.75", lw=0.4)
    ax.plot(r[:, 0], r[:, 1], "o", ms=5, mfc="none", color="k", label="sequential lax.scan loop")
    for k, ((nn, lab), hs) in enumerate((k, v) for k, v in results.items() if k[0] == "hmc-banana"):
        ax.plot(hs[:, 0], hs[:, 1], ".", ms=3, color=f"C{k}",
                label=f"recur {lab}: {summary[nn, lab]}, max diff {diffs[nn, lab]:.0e}")
    ax.set_xlabel("q[0]")
    ax.set_ylabel("q[1]")
    ax.set_title(f"HMC on the banana (eps = {EPS['hmc-banana']}, L = {L_HMC}, T = {T})", fontsize=10)
    ax.legend(fontsize=7, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {os.path.relpath(path)}")
    print(f"AGREEMENT {NAME} {max(diffs.values()):.3e}")


if __name__ == "__main__":
    main()
