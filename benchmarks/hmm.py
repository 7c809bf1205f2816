"""The ``hmm`` workload of BENCHMARKS.md: a Gaussian-emission HMM, recur's semiring scans.

    python -m benchmarks.hmm [--quick] [--out results.json] [--reps 5] [--no-peers]
        [--max-work 3e9]

The model and steps are ``examples/hmm.py``'s (sticky transitions, 1-D Gaussian emissions,
float32).  Three tasks per ``(K, T)``, K ∈ {4, 32, 128}, T ∈ {1e3, 1e4, 1e5} (``--quick``:
K = 4, T = 1e3):

* ``filter`` -- the forward filter in log space through ``recur.scan``: ``sequential``,
  ``semiring`` (the backend's default chunking: on CPU the loop over the extracted maps),
  ``semiring chunk=64`` (the parallel form, chunks of 64 combined by log-matmuls), ``deer``,
  ``auto``; the hand-written ``lax.scan``; dynamax's ``hmm_filter`` and
  ``parallel_hmm_filter`` (a child process, ``benchmarks/_peers.py``);
* ``posteriors`` -- ``jax.grad`` of ``log p(y)`` with respect to ``log B`` (forward-backward):
  recur ``semiring`` and the loop, against dynamax's ``hmm_smoother``;
* ``viterbi`` -- scores and back-pointers by recur (``semiring``: scores by the max/+ scan,
  pointers a map) and the loop, the backtrack, against dynamax's ``hmm_posterior_mode``.

Candidates whose work exceeds ``--max-work`` (the semiring scan's coefficients are one
evaluation of the step per state: ``≈ K^3 T`` exponentials; ``deer``'s dense Jacobians the
same) are recorded as skipped with that reason, so a full run fits on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from . import _peers
from ._common import (compare, finish_workload, loadavg, max_abs_err, print_records,
                      time_jitted, timing_fields, write_json)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import hmm as H  # noqa: E402

KS, TS = (4, 32, 128), (1000, 10_000, 100_000)
_GRAD_WORK = 2e8  # posteriors and Viterbi only where K^2 T stays below this (memory)
FILTER = [("sequential", "sequential", {}), ("semiring", "semiring", {}),
          ("semiring chunk=64", "semiring", {"chunk": 64}), ("deer", "deer", {}),
          ("auto", "auto", {})]


def _work(label: str, K: int, T: int) -> float:
    """Rough exponentials (or flops) a candidate spends: what ``--max-work`` bounds."""
    if label.startswith("semiring"):
        return float(K) ** 3 * T
    if label == "deer":
        return 5.0 * K ** 3 * T
    return float(K) ** 2 * T


def filter_records(K, T, reps, max_work, peers):
    log_pi0, logA, logB, _, _ = H.gaussian_hmm(K, T)
    a0 = H.first_state(log_pi0, logB, logA)
    xs = logB[1:]
    cands = [c for c in FILTER if _work(c[0], K, T) <= max_work]
    recs, ref = compare(H.forward, a0, xs, logA, T=T - 1, candidates=cands, reps=reps)
    recs += [{"method": c[0], "candidate": "recur",
              "skipped": f"work ≈ {_work(c[0], K, T):.2g} over --max-work {max_work:.2g}"}
             for c in FILTER if c not in cands]
    ref_ll = float(jax.nn.logsumexp(ref[-1]))
    exact = _loglik_f64(np.asarray(a0), np.asarray(xs), np.asarray(logA))
    for r in recs:
        if "_hs" in r:
            ll = float(jax.nn.logsumexp(r["_hs"][-1]))
            r["loglik_err"] = abs(ll - ref_ll)          # against the float32 loop
            r["loglik_err_f64"] = abs(ll - exact)        # against a float64 forward filter
        elif r["method"] == "lax.scan":
            r["loglik_err_f64"] = abs(ref_ll - exact)
    for label, work in (("dynamax hmm_filter", float(K) ** 2 * T),
                        ("dynamax parallel_hmm_filter", float(K) ** 3 * T)):
        recs += dynamax(K, T, logA, logB, log_pi0, reps, peers, "filter", (label,),
                        ref_ll=np.asarray(ref_ll), work=work, max_work=max_work)
    return finish_workload(recs, "hmm", {"task": "filter", "K": K, "n": K, "T": T,
                                         "dtype": "float32"})


def _loglik_f64(a0, xs, logA):
    """``log p(y)`` by a scaled forward filter in float64 numpy: the exact reference."""
    A, a = np.exp(logA.astype(np.float64)), a0.astype(np.float64)
    c = a.max()
    p, ll = np.exp(a - c), c
    for lb in xs.astype(np.float64):
        m = lb.max()
        p = (p @ A) * np.exp(lb - m)
        s = p.sum()
        p, ll = p / s, ll + m + np.log(s)
    return ll + np.log(p.sum())


def dynamax(K, T, logA, logB, log_pi0, reps, peers, task, labels, work, max_work, **refs):
    if not peers:
        return [{"method": m, "candidate": "peer", "skipped": "--no-peers"} for m in labels]
    if work > max_work:
        return [{"method": m, "candidate": "peer",
                 "skipped": f"work ≈ {work:.2g} over --max-work {max_work:.2g}"}
                for m in labels]
    arrays = dict(pi1=np.exp(np.asarray(log_pi0)) @ np.exp(np.asarray(logA)),
                  A=np.exp(np.asarray(logA)), logB=np.asarray(logB), **refs)
    return _peers.run("dynamax-hmm", arrays, {"reps": reps, "labels": list(labels),
                                              "task": task},
                      timeout=600, labels=labels)


def _timed(label, fn, args, reps, ref, task, compare_fn):
    rec = {"method": label, "candidate": "recur" if "recur" in label else "hand-written",
           "task": task}
    try:
        out, compile_s, times = time_jitted(fn, args, reps)
    except Exception as e:  # noqa: BLE001 - report and go on
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        return rec, None
    rec.update(timing_fields(times, compile_s))
    if ref is not None:
        rec.update(compare_fn(out, ref))
    return rec, out


def smoother_and_viterbi(K, T, reps, max_work, peers):
    log_pi0, logA, logB, _, _ = H.gaussian_hmm(K, T)
    out = []

    def post(method):
        return jax.grad(lambda b: H.log_likelihood(b, log_pi0, logA, method))

    loop_rec, ref_post = _timed("loop: jax.grad of log p(y)", post("sequential"), (logB,),
                                reps, None, "posteriors", None)
    out.append(loop_rec)
    if _work("semiring", K, T) <= max_work:
        rec, _ = _timed("recur semiring: jax.grad of log p(y)", post("semiring"), (logB,),
                        reps, ref_post, "posteriors",
                        lambda o, r: {"max_abs_err": max_abs_err(o, r)})
        out.append(rec)
    out += dynamax(K, T, logA, logB, log_pi0, reps, peers, "posteriors",
                   ("dynamax hmm_smoother",), ref_post=np.asarray(ref_post),
                   work=float(K) ** 2 * T, max_work=max_work)

    def path(method):
        return lambda b: H.decode(log_pi0, b, logA, method)

    loop_rec, ref_path = _timed("loop: Viterbi", path("sequential"), (logB,), reps, None,
                                "viterbi", None)
    out.append(loop_rec)
    if _work("semiring", K, T) <= max_work:
        rec, _ = _timed("recur semiring: Viterbi", path("semiring"), (logB,), reps, ref_path,
                        "viterbi", lambda o, r: {"paths_equal": bool(jnp.all(o == r))})
        out.append(rec)
    out += dynamax(K, T, logA, logB, log_pi0, reps, peers, "viterbi",
                   ("dynamax hmm_posterior_mode",), ref_path=np.asarray(ref_path),
                   work=float(K) ** 2 * T, max_work=max_work)
    return finish_workload(out, "hmm", {"K": K, "n": K, "T": T, "dtype": "float32"})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--max-work", type=float, default=3e9)
    ap.add_argument("--sizes", help="K:T pairs, e.g. 4:1000,32:10000 (default: the grid)")
    args = ap.parse_args(argv)
    reps = max(args.reps, 5)
    load_start = loadavg()
    dyn, why = H.load_dynamax()
    print(f"peer dynamax: {'available, ' if dyn else 'skipped: '}{why}")
    peers = dyn is not None and not args.no_peers
    if args.sizes:
        sizes = [tuple(int(float(v)) for v in s.split(":")) for s in args.sizes.split(",")]
    else:
        sizes = [(4, 1000)] if args.quick else [(K, T) for K in KS for T in TS]
    records = []
    for K, T in sizes:
        recs = filter_records(K, T, reps, args.max_work, peers)
        if K * K * T <= _GRAD_WORK:
            recs += smoother_and_viterbi(K, T, reps, args.max_work, peers)
        else:
            recs += [{"workload": "hmm", "K": K, "T": T, "task": task, "method": "all",
                      "skipped": f"K^2 T = {K * K * T:.2g} over {_GRAD_WORK:.0e}: reverse mode "
                                 "through the loop stores a K x K residual per step"}
                     for task in ("posteriors", "viterbi")]
        print_records(recs, extra=("task", "loglik_err", "loglik_err_f64", "paths_equal"))
        records += recs
    write_json(args.out, "hmm", records, load_start,
               peers={"dynamax": {"available": dyn is not None, "why": why}})
    return records


if __name__ == "__main__":
    main()
