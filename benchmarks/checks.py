"""What recur's checks cost, next to the parallel solves they guard.

    python -m benchmarks.checks [--quick] [--out results.json]

Two checks added so that no result is silently wrong:

* the **forward-error certification** of the Newton family: an iterate is accepted only when
  its next correction (one more scan with the method's coefficients) is within tolerance,
  which costs one scan per solve beyond the iterations themselves.  Measured as the time of
  one such scan against the whole deer solve (GRU reference problem, float32);
* the **whole-step check** of a staged plan: one batched evaluation of the full step on the
  assembled trajectory.  Measured on the Kalman filter's staged plan as a GPU would run it
  (covariance by deer, mean by scan), forced on this machine, against the whole plan.

Every time is the median of interleaved calls of jitted functions (``_common``).
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import recur
from recur._coefficients import jacobian_form
from recur.runtime import _linear, _stages
from recur._ir import jaxpr_step

from ._common import _prepare, _time_interleaved, device_info, loadavg, write_json


def _median_times(pairs, rounds: int) -> list[float]:
    """Median seconds of each ``(fn, args)``, timed round-robin (``_common``)."""
    prepared = [_prepare(fn, args, rounds) for fn, args in pairs]
    _time_interleaved(prepared)
    return [statistics.median(p["times"]) for p in prepared]


def gru_problem(D: int, T: int):
    rng = np.random.default_rng(0)
    p = {k: jnp.asarray(rng.standard_normal((D, D)) / np.sqrt(D), jnp.float32)
         for k in ("Wz", "Uz", "Wr", "Ur", "Wn", "Un")}

    def gru(h, x, p):
        z = jax.nn.sigmoid(p["Wz"] @ h + p["Uz"] @ x)
        r = jax.nn.sigmoid(p["Wr"] @ h + p["Ur"] @ x)
        n = jnp.tanh(p["Wn"] @ (r * h) + p["Un"] @ x)
        return (1 - z) * h + z * n
    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    return gru, jnp.zeros(D, jnp.float32), xs, p


def certification(D: int, T: int, rounds: int) -> dict:
    gru, h0, xs, p = gru_problem(D, T)
    plan = recur.plan(gru, h0, xs, p, method="deer")
    form = jacobian_form(plan.stage_data[0].structure, D)
    solve = jax.jit(lambda h0, xs, p: recur.scan(gru, h0, xs, p, method="deer",
                                                 return_info=True))
    hs, info = solve(h0, xs, p)
    a = jnp.ones((T, 1, D, D), jnp.float32) * 0.1 if form.kind == "block" else \
        jnp.full((T, D), 0.5, jnp.float32)
    r = jnp.ones((T, D), jnp.float32)
    scan = jax.jit(lambda a, r: _linear.solve(form, a, r, jnp.zeros(D, jnp.float32)))
    t_solve, t_scan = _median_times([(solve, (h0, xs, p)), (scan, (a, r))], rounds)
    return {"workload": "gru-certification", "D": D, "T": T,
            "iterations": int(info.iterations), "solve_s": t_solve, "one_scan_s": t_scan,
            "fraction": t_scan / t_solve}


def kalman_problem(T: int):
    dt, N, M = 0.1, 4, 2
    F = jnp.asarray(np.eye(N) + np.diag([dt, dt], 2)[:N, :N], jnp.float32)
    H = jnp.asarray(np.eye(M, N), jnp.float32)
    Q, R = 0.01 * jnp.eye(N, dtype=jnp.float32), 0.25 * jnp.eye(M, dtype=jnp.float32)

    def step(h, y):
        m, P = h
        Pp = F @ P @ F.T + Q
        S = H @ Pp @ H.T + R
        K = Pp @ H.T @ jnp.linalg.inv(S)
        return (F @ m + K @ (y - H @ F @ m), Pp - K @ S @ K.T)
    ys = jnp.asarray(np.random.default_rng(1).standard_normal((T, M)), jnp.float32)
    return step, (jnp.zeros(N, jnp.float32), jnp.eye(N, dtype=jnp.float32)), ys


def whole_step(T: int, rounds: int) -> dict:
    step, h0, ys = kalman_problem(T)
    gpu = recur.plan(step, h0, ys, backend="gpu", method={"[1]": "deer", "[0]": "scan"})
    methods = {st.states[0]: st.method for st in gpu.stages}
    run = jax.jit(lambda h0, ys: recur.scan(step, h0, ys, method=methods, return_info=True))
    hs, info = run(h0, ys)
    ir = gpu.ir
    check = jax.jit(lambda hs, h0, ys: _stages.whole_step_check(
        ir, jaxpr_step(ir, ir.jaxpr.consts), jax.tree.leaves(hs), jax.tree.leaves(h0),
        jax.tree.leaves(ys), [], {}))
    t_plan, t_check = _median_times([(run, (h0, ys)), (check, (hs, h0, ys))], rounds)
    return {"workload": "kalman-whole-step-check", "T": T, "methods": methods,
            "converged": np.asarray(info.converged).tolist(), "plan_s": t_plan,
            "check_s": t_check, "fraction": t_check / t_plan}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    start = loadavg()
    T, rounds = (512, 5) if args.quick else (4096, 15)
    records = [certification(D, T, rounds) for D in ((8,) if args.quick else (8, 16, 32))]
    records.append(whole_step(T, rounds))
    for rec in records:
        print(rec)
    write_json(args.out, "checks", records, start, **device_info())
    return records


if __name__ == "__main__":
    main()
