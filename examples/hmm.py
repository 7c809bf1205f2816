"""A Gaussian-emission hidden Markov model: filtering, posteriors by ``jax.grad``, Viterbi.

    python examples/hmm.py [--quick] [--out DIR] [--K 4] [--T 2000]

The three classical HMM recurrences are nonlinear in ordinary arithmetic and linear over a
semiring, so recur runs each as one exact associative scan in that algebra
(``method="semiring"``; ``auto`` picks the loop where it is faster, as on a 2-core CPU):

* forward filtering in log space, ``α' = logsumexp(α[:, None] + log A, 0) + log B_t``:
  linear over log-sum-exp/+;
* ``log p(y_{1:T}) = logsumexp(α_T)``, and its gradient with respect to ``log B`` is the
  matrix of posterior marginals ``p(z_t | y_{1:T})`` -- forward-backward by ``jax.grad``;
* Viterbi, ``δ' = max(δ[:, None] + log A, 0) + log B_t`` with ``argmax`` back-pointers:
  the scores over max/+, the pointers a parallel map given the scores, then a backtrack.

Compared with dynamax's ``hmm_filter`` / ``parallel_hmm_filter`` / ``hmm_smoother`` /
``hmm_posterior_mode`` when dynamax can be imported (an optional peer: its package
``__init__`` imports TensorFlow Probability and sets a global matmul precision, so only its
HMM inference modules are loaded, see ``load_dynamax``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import recur  # noqa: E402

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
NAME = "hmm"


def gaussian_hmm(K: int, T: int, seed: int = 0):
    """A sticky K-state HMM with 1-D Gaussian emissions; ``(log π0, log A, log B, y, z)``."""
    rng = np.random.default_rng(seed)
    A = np.full((K, K), 0.1 / max(K - 1, 1)) + np.eye(K) * (0.9 - 0.1 / max(K - 1, 1))
    A = A if K > 1 else np.ones((1, 1))
    mu, sigma = np.linspace(-2.0, 2.0, K), np.full(K, 0.7)
    z = np.zeros(T, int)
    state = rng.integers(K)
    for t in range(T):
        state = rng.choice(K, p=A[state])
        z[t] = state
    y = mu[z] + sigma[z] * rng.standard_normal(T)
    logB = -0.5 * ((y[:, None] - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return f32(np.full(K, -np.log(K))), f32(np.log(A)), f32(logB), y, z


def forward(alpha, logB_t, logA):
    """One step of the forward filter in log space (log-sum-exp/+ linear)."""
    return jax.nn.logsumexp(alpha[:, None] + logA, axis=0) + logB_t


def viterbi(s, logB_t, logA):
    """One Viterbi step: max/+ scores and the argmax back-pointers."""
    scores = s["delta"][:, None] + logA
    return {"delta": jnp.max(scores, axis=0) + logB_t,
            "psi": jnp.argmax(scores, axis=0).astype(jnp.int32)}


def first_state(log_pi0, logB, logA):
    """``log p(z_0, y_0)``: the prior of the first state (one transition from ``π0``, as
    dynamax's ``initial_probs``) times its emission; the scans start from here."""
    return jax.nn.logsumexp(log_pi0[:, None] + logA, axis=0) + logB[0]


def log_likelihood(logB, log_pi0, logA, method="semiring"):
    alphas = recur.scan(forward, first_state(log_pi0, logB, logA), logB[1:], logA,
                        method=method)
    return jax.nn.logsumexp(alphas[-1])


def decode(log_pi0, logB, logA, method="semiring"):
    """The most probable state path: Viterbi scores and pointers by recur, then the
    backtrack (a reverse ``lax.scan`` over the pointers)."""
    K = log_pi0.shape[0]
    h0 = {"delta": first_state(log_pi0, logB, logA), "psi": jnp.zeros(K, jnp.int32)}
    out = recur.scan(viterbi, h0, logB[1:], logA, method=method)
    last = jnp.argmax(out["delta"][-1]).astype(jnp.int32)

    def back(z, psi_t):  # z_t -> z_{t-1} = psi_t[z_t]
        return psi_t[z], z

    first, path = jax.lax.scan(back, last, out["psi"], reverse=True)
    return jnp.concatenate([first[None], path])


def load_dynamax():
    """dynamax's HMM inference modules, or None with the reason (``RECUR_PEERS``: an extra
    directory with ``pip install --no-deps --target DIR dynamax jaxtyping wadler_lindig``)."""
    extra = os.environ.get("RECUR_PEERS", os.path.expanduser("~/.cache/recur-peers"))
    if os.path.isdir(extra) and extra not in sys.path:
        sys.path.append(extra)
    try:
        import importlib.util
        spec = importlib.util.find_spec("dynamax")
        if spec is None:
            return None, "dynamax is not installed"
        root = os.path.dirname(spec.origin)
        for name, path in (("dynamax", root), ("dynamax.hidden_markov_model",
                                                os.path.join(root, "hidden_markov_model"))):
            if name not in sys.modules:  # a bare package: skip dynamax's __init__ side effects
                module = types.ModuleType(name)
                module.__path__ = [path]
                sys.modules[name] = module
        from dynamax.hidden_markov_model import inference, parallel_inference
        return (inference, parallel_inference), "dynamax"
    except Exception as exc:  # noqa: BLE001 - an optional peer
        return None, f"dynamax could not be imported: {type(exc).__name__}: {exc}"


def timed(fn, *args, reps=5):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", metavar="DIR",
                        default=os.environ.get("RECUR_FIGURES") or FIGURES,
                        help="folder for the figure (default: $RECUR_FIGURES, else "
                             "examples/figures)")
    parser.add_argument("--K", type=int, default=4)
    parser.add_argument("--T", type=int, default=2000)
    args = parser.parse_args()
    K, T = args.K, (500 if args.quick else args.T)
    log_pi0, logA, logB, y, z = gaussian_hmm(K, T)

    print(recur.plan(forward, log_pi0, logB, logA).explain())
    print()

    # filtering: the semiring scan, the loop, and what auto runs
    ll = {m: jax.jit(lambda b, m=m: log_likelihood(b, log_pi0, logA, m))
          for m in ("semiring", "sequential", "auto")}
    parallel = jax.jit(lambda b: jax.nn.logsumexp(recur.scan(
        forward, first_state(log_pi0, b, logA), b[1:], logA, method="semiring", chunk=64)[-1]))
    values = {m: float(f(logB)) for m, f in ll.items()}
    print(f"log p(y) = {values['semiring']:.4f} (semiring), {values['sequential']:.4f} "
          f"(loop), {values['auto']:.4f} (auto)")

    # forward-backward: posterior marginals as the gradient of log p(y) w.r.t. log B
    post = jax.jit(jax.grad(lambda b: log_likelihood(b, log_pi0, logA)))(logB)
    print(f"posteriors sum to 1: max |Σ_k p - 1| = "
          f"{float(jnp.max(jnp.abs(post.sum(1) - 1))):.2e}; accuracy of argmax posterior "
          f"vs the true states: {float(np.mean(np.argmax(post, 1) == z)):.3f}")

    post_loop = jax.jit(jax.grad(lambda b: log_likelihood(b, log_pi0, logA, "sequential")))(
        logB)

    # Viterbi
    path = jax.jit(lambda b: decode(log_pi0, b, logA))(logB)
    loop_path = jax.jit(lambda b: decode(log_pi0, b, logA, "sequential"))(logB)
    print(f"Viterbi path equals the loop's: {bool(jnp.all(path == loop_path))}; accuracy "
          f"vs the true states: {float(np.mean(np.asarray(path) == z)):.3f}")

    rows = [("recur semiring: log p(y)", timed(ll["semiring"], logB)),
            ("recur semiring chunk=64: log p(y)", timed(parallel, logB)),
            ("recur loop: log p(y)", timed(ll["sequential"], logB)),
            ("recur semiring: posteriors (grad)",
             timed(jax.jit(jax.grad(lambda b: log_likelihood(b, log_pi0, logA))), logB)),
            ("recur semiring: Viterbi path",
             timed(jax.jit(lambda b: decode(log_pi0, b, logA)), logB))]

    dyn, why = load_dynamax()
    if dyn is None:
        print(f"\ndynamax: skipped ({why})")
    else:
        inference, par = dyn
        pi1 = jnp.exp(log_pi0) @ jnp.exp(logA)  # p(z_0), as first_state uses
        A = jnp.exp(logA)
        f_seq = jax.jit(lambda b: inference.hmm_filter(pi1, A, b).marginal_loglik)
        f_par = jax.jit(lambda b: par.hmm_filter(pi1, A, b).marginal_loglik)
        smooth = jax.jit(lambda b: inference.hmm_smoother(pi1, A, b).smoothed_probs)
        mode = jax.jit(lambda b: inference.hmm_posterior_mode(pi1, A, b))
        print(f"\ndynamax: log p(y) = {float(f_seq(logB)):.4f} (hmm_filter), "
              f"{float(f_par(logB)):.4f} (parallel_hmm_filter); max |posterior - recur's| = "
              f"{float(jnp.max(jnp.abs(smooth(logB) - post))):.2e}; Viterbi paths equal: "
              f"{bool(jnp.all(mode(logB) == path))}")
        rows += [("dynamax hmm_filter", timed(f_seq, logB)),
                 ("dynamax parallel_hmm_filter", timed(f_par, logB)),
                 ("dynamax hmm_smoother", timed(smooth, logB)),
                 ("dynamax hmm_posterior_mode", timed(mode, logB))]
    print(f"\ntiming on {jax.devices()[0].platform} (median of 5, compiled), K={K}, T={T}:")
    for name, t in rows:
        print(f"  {name:36s} {t * 1e3:9.2f} ms")

    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    shown = slice(0, min(T, 300))
    axes[0].plot(y[shown], ".", ms=3, color="0.5", label="observations")
    mu = np.linspace(-2.0, 2.0, K)
    axes[0].plot(mu[z[shown]], lw=1.5, label="true state mean")
    axes[0].plot(mu[np.asarray(path)[shown]], "--", lw=1.2, label="Viterbi (semiring scan)")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].imshow(np.asarray(post)[shown].T, aspect="auto", origin="lower",
                   interpolation="nearest", cmap="Greys")
    axes[1].set_ylabel("state")
    axes[1].set_xlabel("t")
    axes[1].set_title("posterior marginals p(z_t | y) = ∂ log p(y) / ∂ log B (jax.grad)",
                      fontsize=9)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    fig.savefig(os.path.join(args.out, f"{NAME}.png"), dpi=100)
    diffs = [abs(values["semiring"] - values["sequential"]) / (1 + abs(values["sequential"])),
             float(jnp.max(jnp.abs(post - post_loop))),
             float(jnp.mean(path != loop_path))]
    print(f"AGREEMENT {NAME} {max(diffs):.3e}")


if __name__ == "__main__":
    main()
