"""Optional peer baselines, each run in a child process of the suite that asks for it.

    python -m benchmarks._peers NAME IN.npz OUT.json

Same data, same run, same timing method as the suites, but a separate process, so that a
peer can neither hang the suite nor change its process (torch's thread pools next to
XLA's): the parent passes the inputs and the references in ``IN.npz`` and gets records
back in ``OUT.json``; a peer that does not answer within the timeout is killed and
recorded as such (see ``run``).

* ``dynamax``: ``parallel_lgssm_filter`` and ``lgssm_filter`` on the ``kalman`` workload.
  Run with ``jax_cpu_enable_async_dispatch=False``: with jax 0.10.2 on this CPU the second
  call of the compiled ``parallel_lgssm_filter`` at T = 10^4 never returned (every thread
  waiting on a futex) with asynchronous dispatch on, and ran in ~0.1 s with it off.
* ``dynamax-hmm``: ``hmm_filter``, ``parallel_hmm_filter``, ``hmm_smoother`` and
  ``hmm_posterior_mode`` on the ``hmm`` workload.
* ``pararnn``: ``pararnn-torch`` (ParaRNN's Newton + scan, CPU torch) on the ``gru``
  reference problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from ._baselines import peer_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(name: str, arrays: dict, options: dict, *, timeout: float,
        labels: tuple[str, ...]) -> list[dict]:
    """Run peer ``name`` in a child process; records (``error`` on failure or timeout)."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.json")
        np.savez(inp, __options__=np.asarray(json.dumps(options)),
                 **{k: np.asarray(v) for k, v in arrays.items()})
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks._peers", name, inp, out],
                                  cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [{"method": m, "candidate": "peer",
                     "error": f"no answer within {timeout:.0f} s (child process killed)"}
                    for m in labels]
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            return [{"method": m, "candidate": "peer",
                     "error": f"child process exited {proc.returncode}: {' / '.join(tail)}"}
                    for m in labels]
        with open(out) as fh:
            return json.load(fh)


def _errors(out, ref) -> float:
    return float(np.max(np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))))


def _dynamax(a: dict, opts: dict) -> list[dict]:
    import jax
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    import jax.numpy as jnp
    from dynamax.linear_gaussian_ssm import (ParamsLGSSM, ParamsLGSSMDynamics,
                                             ParamsLGSSMEmissions, ParamsLGSSMInitial,
                                             lgssm_filter, parallel_lgssm_filter)

    from ._common import time_jitted, timing_fields
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    F, H, Q, R, m0, P0 = (a[k] for k in ("F", "H", "Q", "R", "m0", "P0"))
    n, m = F.shape[0], H.shape[0]
    # dynamax's initial distribution is the prior of the first state: one predict from (m0, P0)
    params = ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=f32(F @ m0), cov=f32(F @ P0 @ F.T + Q)),
        dynamics=ParamsLGSSMDynamics(weights=f32(F), bias=f32(np.zeros(n)),
                                     input_weights=f32(np.zeros((n, 0))), cov=f32(Q)),
        emissions=ParamsLGSSMEmissions(weights=f32(H), bias=f32(np.zeros(m)),
                                       input_weights=f32(np.zeros((m, 0))), cov=f32(R)))
    ys = f32(a["ys"])
    _, why = peer_status("dynamax")
    recs = []
    for label, filt in (("dynamax parallel_lgssm_filter", parallel_lgssm_filter),
                        ("dynamax lgssm_filter", lgssm_filter)):
        post, compile_s, times = time_jitted(lambda p, y, filt=filt: filt(p, y), (params, ys),
                                             opts["reps"])
        mf, Pf = np.asarray(post.filtered_means), np.asarray(post.filtered_covariances)
        recs.append({"method": label, "candidate": "peer", "ran": why, "iterations": None,
                     "converged": True, "fell_back": False,
                     "max_abs_err": max(_errors(mf, a["ref_m"]), _errors(Pf, a["ref_P"])),
                     "max_abs_err_numpy": max(_errors(mf, a["np_m"]), _errors(Pf, a["np_P"])),
                     "note": "child process, jax_cpu_enable_async_dispatch=False",
                     **timing_fields(times, compile_s)})
    return recs


def _pararnn(a: dict, opts: dict) -> list[dict]:
    from ._baselines import pararnn_gru
    from ._common import time_python, timing_fields
    W = [a[f"W{i}"] for i in range(6)]
    fn, stats = pararnn_gru(W, a["xs"], tol=opts["tol"], max_iters=opts["max_iters"])
    out, first_s, times = time_python(fn, opts["reps"])
    st = stats()
    _, why = peer_status("pararnn-torch")
    return [{"method": "pararnn-torch deer", "candidate": "peer",
             "ran": f"{why}, backend {st['backend']}", "iterations": st["iterations"],
             "converged": st["residual"] <= opts["tol"], "fell_back": False,
             "residual": st["residual"], "history": st["history"],
             "max_abs_err": _errors(out, a["ref"]),
             "note": "child process, torch eager on CPU; first call (no compile) in "
                     "compile_s; iterations = linear solves (its residual evaluations minus "
                     "the initial guess)", **timing_fields(times, first_s)}]


def _dynamax_hmm(a: dict, opts: dict) -> list[dict]:
    """dynamax's HMM inference (``hmm`` workload): filters, smoother, posterior mode.  Only
    its HMM inference modules are loaded (``examples/hmm.py: load_dynamax``: dynamax's
    package ``__init__`` imports TensorFlow Probability and sets a global matmul
    precision)."""
    import jax
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    import jax.numpy as jnp
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from hmm import load_dynamax

    from ._common import time_jitted, timing_fields
    dyn, why = load_dynamax()
    if dyn is None:
        return [{"method": m, "candidate": "peer", "skipped": why} for m in opts["labels"]]
    inference, parallel = dyn
    pi1, A, logB = (jnp.asarray(a[k], jnp.float32) for k in ("pi1", "A", "logB"))
    tasks = {
        "dynamax hmm_filter": (lambda b: inference.hmm_filter(pi1, A, b).marginal_loglik,
                               "ref_ll"),
        "dynamax parallel_hmm_filter": (
            lambda b: parallel.hmm_filter(pi1, A, b).marginal_loglik, "ref_ll"),
        "dynamax hmm_smoother": (lambda b: inference.hmm_smoother(pi1, A, b).smoothed_probs,
                                 "ref_post"),
        "dynamax hmm_posterior_mode": (lambda b: inference.hmm_posterior_mode(pi1, A, b),
                                       "ref_path"),
    }
    out = []
    for label in opts["labels"]:
        fn, ref = tasks[label]
        if ref not in a:
            continue
        try:
            res, compile_s, times = time_jitted(fn, (logB,), opts["reps"])
        except Exception as e:  # noqa: BLE001 - report and go on
            out.append({"method": label, "candidate": "peer",
                        "error": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        rec = {"method": label, "candidate": "peer", "ran": why, "task": opts["task"],
               **timing_fields(times, compile_s)}
        if ref == "ref_path":
            rec["paths_equal"] = bool(np.all(np.asarray(res) == a[ref]))
        else:
            rec["max_abs_err"] = _errors(res, a[ref])
        out.append(rec)
    return out


def main(argv=None) -> None:
    name, inp, out = (argv or sys.argv[1:])[:3]
    with np.load(inp) as data:
        arrays = {k: data[k] for k in data.files if k != "__options__"}
        opts = json.loads(str(data["__options__"]))
    recs = {"dynamax": _dynamax, "pararnn": _pararnn,
            "dynamax-hmm": _dynamax_hmm}[name](arrays, opts)
    with open(out, "w") as fh:
        json.dump(recs, fh)


if __name__ == "__main__":
    main()
