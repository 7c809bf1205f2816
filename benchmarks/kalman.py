"""The ``kalman`` workload of BENCHMARKS.md: 4-D constant-velocity tracking, 2-D positions.

    python -m benchmarks.kalman [--quick] [--out results.json] [--reps 5] [--no-peers]

State (px, py, vx, vy), dt = 0.1, white-acceleration noise (q = 0.5), observations of the
position with R = 0.25 I, m0 = 0, P0 = 10 I, float32, T = 1e2, 1e3, 1e4 (``--quick``:
T = 1e2, a few candidates, no peers).  The filter step updates ``{m, P}``; recur's plan is
staged: ``P`` (nonlinear: the gain inverts S), then ``m`` (affine given P's trajectory,
run with ``scan``).

Candidates: every recur method (``deer``/``quasi-deer``/``jacobi``/``picard`` on P, each
with ``scan`` on m), ``{"['m']": "scan"}`` (P by the loop, m by the scan), ``sequential``,
``auto``; the ``lax.scan`` loop; and, when installed, dynamax's ``parallel_lgssm_filter``
(Särkkä & García-Fernández) and ``lgssm_filter`` (in a child process: see
``benchmarks/_peers.py``).  Errors: against the loop
(``max_abs_err``) and against an independent float64 numpy Kalman filter
(``max_abs_err_numpy``, m and P).
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

from . import _baselines as B
from . import _peers
from ._common import (compare, finish_workload, loadavg, max_abs_err, print_records,
                      write_json)

DT = 0.1
F = np.array([[1, 0, DT, 0], [0, 1, 0, DT], [0, 0, 1, 0], [0, 0, 0, 1]], float)
Hm = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], float)
Q = 0.5 * np.block([[DT ** 3 / 3 * np.eye(2), DT ** 2 / 2 * np.eye(2)],
                    [DT ** 2 / 2 * np.eye(2), DT * np.eye(2)]])
R = 0.25 * np.eye(2)
M0, P0 = np.zeros(4), 10.0 * np.eye(4)
TOL = 1e-5
CANDIDATES = [("sequential", "sequential", {}), ("deer", "deer", {}),
              ("quasi-deer", "quasi-deer", {}), ("jacobi", "jacobi", {}),
              ("picard", "picard", {}), ("P loop + m scan", {"['m']": "scan"}, {}),
              ("auto", "auto", {})]
QUICK = ("sequential", "deer", "P loop + m scan", "auto")


def kf_step(s, y, p):
    """One predict + update step of the Kalman filter."""
    m, P = s["m"], s["P"]
    Pp = p["F"] @ P @ p["F"].T + p["Q"]
    S = p["H"] @ Pp @ p["H"].T + p["R"]
    K = jnp.linalg.solve(S, p["H"] @ Pp).T
    mp = p["F"] @ m
    return {"m": mp + K @ (y - p["H"] @ mp), "P": Pp - K @ S @ K.T}


def simulate(T: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.array([0.0, 0.0, 1.0, 0.5])
    truth = []
    for _ in range(T):
        x = F @ x + rng.multivariate_normal(np.zeros(4), Q)
        truth.append(x)
    truth = np.array(truth)
    return truth[:, :2] + rng.multivariate_normal(np.zeros(2), R, size=T)


def numpy_filter(ys):
    """The textbook Kalman filter in float64 numpy: the independent reference."""
    ms, Ps = [], []
    m, P = M0, P0
    for y in ys:
        mp, Pp = F @ m, F @ P @ F.T + Q
        S = Hm @ Pp @ Hm.T + R
        K = Pp @ Hm.T @ np.linalg.inv(S)
        m, P = mp + K @ (y - Hm @ mp), (np.eye(4) - K @ Hm) @ Pp
        ms.append(m)
        Ps.append(P)
    return {"m": np.array(ms), "P": np.array(Ps)}


def dynamax_candidates(ys, reps, ref, ref_np, timeout):
    """dynamax's filters in a child process (``benchmarks/_peers.py``)."""
    names = ("dynamax parallel_lgssm_filter", "dynamax lgssm_filter")
    ok, why = B.peer_status("dynamax")
    if not ok:
        return [{"method": n, "candidate": "peer", "skipped": why} for n in names]
    arrays = dict(F=F, H=Hm, Q=Q, R=R, m0=M0, P0=P0, ys=np.asarray(ys),
                  ref_m=np.asarray(ref["m"]), ref_P=np.asarray(ref["P"]),
                  np_m=ref_np["m"], np_P=ref_np["P"])
    return _peers.run("dynamax", arrays, {"reps": reps}, timeout=timeout, labels=names)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args(argv)
    reps = max(args.reps, 5)
    load_start = loadavg()
    ok, why = B.peer_status("dynamax")
    print(f"peer dynamax: {'available, ' if ok else 'skipped: '}{why}")
    params = {k: jnp.asarray(v, jnp.float32) for k, v in dict(F=F, H=Hm, Q=Q, R=R).items()}
    s0 = {"m": jnp.asarray(M0, jnp.float32), "P": jnp.asarray(P0, jnp.float32)}
    records = []
    cands = [c for c in CANDIDATES if not args.quick or c[0] in QUICK]
    for T in ((100,) if args.quick else (100, 1000, 10000)):
        ys_np = simulate(T)
        ys = jnp.asarray(ys_np, jnp.float32)
        ref_np = numpy_filter(ys_np)
        recs, ref = compare(kf_step, s0, ys, params, T=T, candidates=cands, reps=reps,
                            tol=TOL)
        for r in recs:
            if "_hs" in r:
                r["max_abs_err_numpy"] = max_abs_err(r["_hs"], ref_np)
            elif r["method"] == "lax.scan":
                r["max_abs_err_numpy"] = max_abs_err(ref, ref_np)
        if args.quick:  # dynamax's parallel filter alone compiles for 15-25 s here
            recs += [{"method": n, "candidate": "peer", "skipped": "--quick"} for n in
                     ("dynamax parallel_lgssm_filter", "dynamax lgssm_filter")]
        elif not args.no_peers:
            recs += dynamax_candidates(ys, reps, ref, ref_np, timeout=300)
        recs = finish_workload(recs, "kalman", {"T": T, "n_state": 20, "dtype": "float32",
                                                "tol": TOL})
        print_records(recs, extra=("max_abs_err_numpy", "stage_iterations"))
        records += recs
    write_json(args.out, "kalman", records, load_start,
               peers={"dynamax": {"available": ok, "why": why}})
    return records


if __name__ == "__main__":
    main()
