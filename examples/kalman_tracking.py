"""Kalman filter and RTS smoother for a 4-D constant-velocity tracker, as recurrences.

State (px, py, vx, vy), dt = 0.1, observations of the position with R = 0.25 I.
The filter step updates a dict {m, P}. recur finds that P never reads m, so the plan
has two stages: P (nonlinear: the gain inverts S), then m, which is *affine* given P's
trajectory; ``method={"['m']": "scan"}`` runs m with the exact associative scan.
The Rauch-Tung-Striebel smoother is then a reverse-time affine recurrence over the
filter's outputs (``reverse=True``, ``method="scan"``). Both are checked against an
independent numpy implementation (float64 throughout) and a sequential lax.scan loop.

    python examples/kalman_tracking.py [--quick] [--out DIR]
"""
import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)   # compare with numpy in float64

import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import recur

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(HERE, "figures")
NAME = "kalman_tracking"
DT = 0.1
F = np.array([[1, 0, DT, 0], [0, 1, 0, DT], [0, 0, 1, 0], [0, 0, 0, 1]], float)
Hm = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], float)
q = 0.5                                             # white-acceleration intensity
Q = q * np.block([[DT ** 3 / 3 * np.eye(2), DT ** 2 / 2 * np.eye(2)],
                  [DT ** 2 / 2 * np.eye(2), DT * np.eye(2)]])
R = 0.25 * np.eye(2)
PARAMS = {k: jnp.asarray(v) for k, v in dict(F=F, H=Hm, Q=Q, R=R).items()}


def kf_step(s, y, p):
    """One predict + update step of the Kalman filter."""
    m, P = s["m"], s["P"]
    F, H, Q, R = p["F"], p["H"], p["Q"], p["R"]
    Pp = F @ P @ F.T + Q
    S = H @ Pp @ H.T + R
    K = jnp.linalg.solve(S, H @ Pp).T            # Pp H^T S^{-1}  (S, Pp symmetric)
    mp = F @ m
    return {"m": mp + K @ (y - H @ mp), "P": Pp - K @ S @ K.T}


def rts_step(s, x, p):
    """One backward RTS step: s = smoothed (m, P) at t+1, x = filter outputs at t."""
    F, Q = p["F"], p["Q"]
    mf, Pf = x["m"], x["P"]
    Pp = F @ Pf @ F.T + Q
    G = jnp.linalg.solve(Pp, F @ Pf).T            # Pf F^T Pp^{-1}
    return {"m": mf + G @ (s["m"] - F @ mf), "P": Pf + G @ (s["P"] - Pp) @ G.T}


def loop(step, h0, xs, p, reverse=False):
    def body(h, x):
        h = step(h, x, p)
        return h, h
    return jax.lax.scan(body, h0, xs, reverse=reverse)[1]


def numpy_filter(ys, m0, P0):
    ms, Ps = [], []
    m, P = m0, P0
    for y in ys:
        mp, Pp = F @ m, F @ P @ F.T + Q
        S = Hm @ Pp @ Hm.T + R
        K = Pp @ Hm.T @ np.linalg.inv(S)
        m, P = mp + K @ (y - Hm @ mp), (np.eye(4) - K @ Hm) @ Pp
        ms.append(m)
        Ps.append(P)
    return np.array(ms), np.array(Ps)


def numpy_rts(ms, Ps):
    T = len(ms)
    msm, Psm = ms.copy(), Ps.copy()
    for t in range(T - 2, -1, -1):
        Pp = F @ Ps[t] @ F.T + Q
        G = Ps[t] @ F.T @ np.linalg.inv(Pp)
        msm[t] = ms[t] + G @ (msm[t + 1] - F @ ms[t])
        Psm[t] = Ps[t] + G @ (Psm[t + 1] - Pp) @ G.T
    return msm, Psm


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
    T = 500 if args.quick else 20000
    platform = jax.devices()[0].platform

    # simulate a target (white-noise acceleration) and noisy position observations
    rng = np.random.default_rng(0)
    x = np.array([0.0, 0.0, 1.0, 0.5])
    truth = []
    for _ in range(T):
        x = F @ x + rng.multivariate_normal(np.zeros(4), Q)
        truth.append(x)
    truth = np.array(truth)
    ys = truth[:, :2] + rng.multivariate_normal(np.zeros(2), R, size=T)
    m0, P0 = np.zeros(4), 10.0 * np.eye(4)
    s0 = {"m": jnp.asarray(m0), "P": jnp.asarray(P0)}
    yj = jnp.asarray(ys)

    # ---- filter: a staged plan, P (nonlinear) then m (affine given P) ----
    method = {"['m']": "scan"}
    print(recur.plan(kf_step, s0, yj, PARAMS, method=method).explain())
    print()
    filt = jax.jit(lambda s0, ys, p: recur.scan(kf_step, s0, ys, p, method=method, return_info=True))
    filt_loop = jax.jit(lambda s0, ys, p: loop(kf_step, s0, ys, p))
    out, info = filt(s0, yj, PARAMS)
    out_loop = filt_loop(s0, yj, PARAMS)
    print(f"filter info: method={info.method} iterations={info.iterations} "
          f"converged={info.converged} fell_back={info.fell_back}")
    ms_np, Ps_np = numpy_filter(ys, m0, P0)
    d_f_np = max(np.abs(np.asarray(out["m"]) - ms_np).max(), np.abs(np.asarray(out["P"]) - Ps_np).max())
    d_f_loop = max(float(jnp.max(jnp.abs(out[k] - out_loop[k]))) for k in "mP")
    print(f"filter:   max |recur - numpy| = {d_f_np:.3e}   max |recur - lax.scan loop| = {d_f_loop:.3e}")

    # ---- RTS smoother: reverse-time affine recurrence over the filter's outputs ----
    # hs[T-2] = step(filter[T-1], filter outputs at T-2), ... ; smoothed[T-1] = filter[T-1]
    last = {k: out[k][-1] for k in "mP"}
    xs_b = {k: out[k][:-1] for k in "mP"}
    print()
    print(recur.plan(rts_step, last, xs_b, PARAMS, reverse=True, method="scan").explain())
    print()
    smooth = jax.jit(lambda last, xs, p: recur.scan(rts_step, last, xs, p, reverse=True, method="scan"))
    smooth_loop = jax.jit(lambda last, xs, p: loop(rts_step, last, xs, p, reverse=True))
    sm = smooth(last, xs_b, PARAMS)
    sm_loop = smooth_loop(last, xs_b, PARAMS)
    sm = {k: jnp.concatenate([sm[k], last[k][None]]) for k in "mP"}
    sm_loop = {k: jnp.concatenate([sm_loop[k], last[k][None]]) for k in "mP"}
    msm_np, Psm_np = numpy_rts(ms_np, Ps_np)
    d_s_np = max(np.abs(np.asarray(sm["m"]) - msm_np).max(), np.abs(np.asarray(sm["P"]) - Psm_np).max())
    d_s_loop = max(float(jnp.max(jnp.abs(sm[k] - sm_loop[k]))) for k in "mP")
    print(f"smoother: max |recur - numpy| = {d_s_np:.3e}   max |recur - lax.scan loop| = {d_s_loop:.3e}")

    rmse = lambda m: float(np.sqrt(np.mean(np.sum((np.asarray(m)[:, :2] - truth[:, :2]) ** 2, 1))))
    print(f"position RMSE: observations {rmse(np.c_[ys, ys]):.3f}, filtered {rmse(out['m']):.3f}, "
          f"smoothed {rmse(sm['m']):.3f}")

    tf, tfl = timeit(filt, s0, yj, PARAMS), timeit(filt_loop, s0, yj, PARAMS)
    ts, tsl = timeit(smooth, last, xs_b, PARAMS), timeit(smooth_loop, last, xs_b, PARAMS)
    print(f"timing on {platform} (T={T}, float64, median of 7): filter recur {tf:.2f} ms vs loop "
          f"{tfl:.2f} ms ({tfl / tf:.2f}x); smoother recur {ts:.2f} ms vs loop {tsl:.2f} ms ({tsl / ts:.2f}x)")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, NAME + ".png")
    n = min(T, 120)
    mf, ms_ = np.asarray(out["m"]), np.asarray(sm["m"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.plot(ys[:n, 0], ys[:n, 1], ".", ms=4, color="0.6", label="observations (R = 0.25 I)")
    ax.plot(truth[:n, 0], truth[:n, 1], "k-", lw=2.5, label="truth")
    ax.plot(mf[:n, 0], mf[:n, 1], "C0-", lw=1.2, label="filtered (recur, staged plan)")
    ax.plot(ms_[:n, 0], ms_[:n, 1], "C3--", lw=1.5, label="RTS smoothed (recur, reverse scan)")
    ax.set_xlabel("x position")
    ax.set_ylabel("y position")
    ax.set_title(f"Constant-velocity tracking, first {n} steps (dt = {DT})", fontsize=10)
    ax.legend(fontsize=8)
    t = np.arange(T) * DT
    err = lambda m: np.sqrt(np.sum((m[:, :2] - truth[:, :2]) ** 2, 1))
    ax2.plot(t, err(np.c_[ys, ys]), color="0.7", lw=0.6, label=f"observations (RMSE {rmse(np.c_[ys, ys]):.2f})")
    ax2.plot(t, err(mf), "C0-", lw=0.9, label=f"filtered (RMSE {rmse(mf):.2f})")
    ax2.plot(t, err(ms_), "C3-", lw=0.9, label=f"smoothed (RMSE {rmse(ms_):.2f})")
    ax2.set_xlabel("time")
    ax2.set_ylabel("position error")
    ax2.set_title(f"Position error over all T = {T} steps", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {os.path.relpath(path)}")
    diff = max(d_f_np, d_s_np, d_f_loop, d_s_loop)
    print(f"AGREEMENT {NAME} {diff:.3e}")


if __name__ == "__main__":
    main()
