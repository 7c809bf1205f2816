"""recur's ``deer`` / ``quasi-deer`` against a hand-written minimal DEER, on the ``gru``
reference problem of BENCHMARKS.md; speed-up over the loop vs ``T``; where the time goes.

    python -m benchmarks.baselines [--quick] [--out results.json] [--reps 5] [--no-profile]
                                   [--profile] [--no-peers]

Reference problem: GRU, hidden D, input width D, inputs ~ N(0, 1), weights ~ N(0, 1/D), zero
biases, h0 = 0, T = 4096, float32, tolerance 1e-5.  All candidates use the same stopping
rule, ``max_t |h_t - f(h_{t-1}, x_t)| <= 1e-5`` (recur: ``atol=1e-5, rtol=0``), the same
initial guess ``f(h0, x_t)``, and count an iteration as one linear solve; every result is
compared with the ``lax.scan`` loop; candidates are compiled first and timed round-robin
(``_common.compare``).  Candidates (``benchmarks/_baselines.py``):

* ``minimal deer`` -- Newton, dense ``vmap(jacfwd)`` Jacobians, ``associative_scan`` over
  ``(A_t, b_t)`` with matrix products, ``while_loop`` (the published algorithm);
* ``minimal deer (loop solve)`` -- the same with a sequential ``lax.scan`` for the linear
  solve: recur's CPU kernel, so recur / this is the framework overhead alone;
* ``minimal quasi-deer`` (and ``(loop solve)``) -- ``diag(J_t)`` and an elementwise scan;
* ``recur deer`` / ``recur quasi-deer`` -- ``recur.scan(..., method=...)``, everything
  included (planning happens at trace time under ``jit``; residual check, fallback);
* ``pararnn-torch`` (optional peer, in a child process: ``benchmarks/_peers.py``):
  ``ParaGRU(mix="head", n_heads=1)`` holds exactly these weights; Newton with
  ``residual_atol=1e-5``, CPU torch, eager scan.

``gru-T`` records: D = 8, T from 256 to 16384, every recur method and the minimal DEER,
speed-up over the loop.  ``gru-profile`` records (unless ``--no-profile``): recur's pieces
timed on their own and ablations made by patching recur's module constants *in this
process only* (recur's files are not changed): Lyapunov power-iteration sweeps off, and the
block ``Ã_t P_t`` product as a broadcast-multiply-sum instead of the shipped ``einsum``.
"""

from __future__ import annotations

import argparse
import contextlib

import jax
import jax.numpy as jnp
import numpy as np

import recur

from . import _baselines as B
from . import _peers
from ._common import (compare, finish_workload, info_fields, loadavg, max_abs_err,
                      print_records, run_loop, time_jitted, timing_fields, write_json)

TOL = 1e-5


def gru_reference(D: int, T: int, seed: int = 0):
    """``(step, h0, xs, W)``: the same data as ``benchmarks.nonlinear.gru_problem``."""
    rng = np.random.default_rng(seed)
    W = [(rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32) for _ in range(6)]
    Wj = [jnp.asarray(w) for w in W]

    def step(h, x):
        z = jax.nn.sigmoid(Wj[0] @ h + Wj[1] @ x)
        r = jax.nn.sigmoid(Wj[2] @ h + Wj[3] @ x)
        n = jnp.tanh(Wj[4] @ (r * h) + Wj[5] @ x)
        return (1 - z) * h + z * n

    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    return step, jnp.zeros(D, jnp.float32), xs, W


def _residual(step, h0, hs, xs) -> float:
    prev = jnp.concatenate([h0[None], hs[:-1]])
    return float(jnp.max(jnp.abs(hs - jax.vmap(step)(prev, xs))))


def minimal_candidate(step, h0, *, quasi: bool, solver: str):
    """``(label, fn, fields)`` for ``_common.compare``'s ``extra``: the minimal DEER."""
    max_iters = 200 if quasi else 50
    name = f"minimal {'quasi-deer' if quasi else 'deer'}" + \
        (" (loop solve)" if solver == "loop" else "")

    def fn(h0, xs):
        return B.minimal_deer(step, h0, xs, tol=TOL, max_iters=max_iters, quasi=quasi,
                              solver=solver)

    def fields(out, ref):
        hs, st = out
        its = int(st["iterations"])
        return {"candidate": "minimal", "ran": name, "iterations": its,
                "converged": bool(st["converged"]), "fell_back": False,
                "residual": float(st["residual"]),
                "history": [float(v) for v in np.asarray(st["history"])[:its + 1]],
                "max_abs_err": max_abs_err(hs, ref)}

    return name, fn, fields


def recur_history(step, h0, xs, method: str, T: int) -> list[float]:
    """Residual of the initial guess, then after every iteration, from recur's own solver
    (``recur.runtime._iterative.solve_nonlinear``: its ``history`` is not in ``Info``)."""
    from recur.runtime._iterative import solve_nonlinear
    structure = recur.plan(step, h0, xs, method=method).stage_data[0].structure
    zs, st, hist = jax.jit(lambda h0, xs: solve_nonlinear(
        step, h0, xs, method=method, structure=structure, length=T, rtol=0.0,
        atol=TOL))(h0, xs)
    guess = jax.vmap(step)(jnp.broadcast_to(h0, (T,) + h0.shape), xs)
    its = int(st.iterations)
    return [_residual(step, h0, guess, xs)] + [float(v) for v in np.asarray(hist)[:its]]


def run_pararnn(W, xs, *, reps: int, ref) -> dict:
    """pararnn-torch in a child process (``benchmarks/_peers.py``)."""
    ok, why = B.peer_status("pararnn-torch")
    if not ok:
        return {"method": "pararnn-torch deer", "candidate": "peer", "skipped": why}
    arrays = {f"W{i}": w for i, w in enumerate(W)}
    arrays.update(xs=np.asarray(xs), ref=np.asarray(ref))
    return _peers.run("pararnn", arrays, {"reps": reps, "tol": TOL, "max_iters": 50},
                      timeout=600, labels=("pararnn-torch deer",))[0]


def gru_workload(D: int, T: int, reps: int, peers: bool) -> list[dict]:
    step, h0, xs, W = gru_reference(D, T)
    cands = [(f"recur {m}", m, {"atol": TOL, "rtol": 0.0}) for m in ("deer", "quasi-deer")]
    # without the chaos detection (Lyapunov sweeps), for models known to be contractive
    cands += [(f"recur {m} lyapunov=False", m, {"atol": TOL, "rtol": 0.0, "lyapunov": False})
              for m in ("deer", "quasi-deer")]
    extra = [minimal_candidate(step, h0, quasi=q, solver=s) for q in (False, True)
             for s in ("assoc", "loop")]
    recs, ref = compare(step, h0, xs, None, T=T, candidates=cands, reps=reps, extra=extra)
    for r in recs:
        if r.get("candidate") == "recur" and "error" not in r:
            r["history"] = recur_history(step, h0, xs, r["ran"], T)
    if peers:
        recs.append(run_pararnn(W, xs, reps=reps, ref=ref))
    t = {r["method"]: r.get("median_s") for r in recs}
    it = {r["method"]: r.get("iterations") for r in recs}
    for r in recs:
        base = {"recur deer": "minimal deer", "recur quasi-deer": "minimal quasi-deer",
                "recur deer lyapunov=False": "minimal deer",
                "recur quasi-deer lyapunov=False": "minimal quasi-deer"}.get(r["method"])
        if base and t.get(r["method"]) and t.get(base):
            r["over_minimal"] = t[r["method"]] / t[base]
            r["over_minimal_loop_solve"] = t[r["method"]] / t[base + " (loop solve)"]
            r["minimal_iterations"] = it[base]
    return finish_workload(recs, "gru", {"D": D, "T": T, "dtype": "float32", "tol": TOL})


def scaling_workload(D: int, Ts, reps: int, quick: bool = False) -> list[dict]:
    out = []
    methods = ("sequential", "deer", "auto") if quick else \
        ("sequential", "deer", "quasi-deer", "jacobi", "auto")
    for T in Ts:
        step, h0, xs, _ = gru_reference(D, T)
        extra = [minimal_candidate(step, h0, quasi=False, solver="assoc")]
        if not quick:
            extra.append(minimal_candidate(step, h0, quasi=True, solver="assoc"))
        recs, _ = compare(step, h0, xs, None, T=T, reps=reps, extra=extra,
                          candidates=[(m, m, {"atol": TOL, "rtol": 0.0}) for m in methods])
        for r in recs:
            r.pop("history", None)
        out += finish_workload(recs, "gru-T", {"D": D, "T": T, "dtype": "float32",
                                               "tol": TOL})
    return out


# ----------------------------------------------------------------------------- profile

@contextlib.contextmanager
def _patched(changes):
    """Temporarily set ``(object, attribute, value)`` triples of recur's modules and classes
    (this process only) and empty recur's program cache so that the change is traced."""
    from recur.runtime import _program
    old = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            setattr(obj, name, value)
        _program._programs.clear()
        yield
    finally:
        for obj, name, value in old:
            setattr(obj, name, value)
        _program._programs.clear()


def _broadcast_apply(self, a, v):
    """``BlockForm.apply`` as a broadcast-multiply-sum (materialises ``T x m x k x k``
    products) instead of the shipped batched ``einsum``: the alternative the profile
    measures."""
    from recur._coefficients import permute_in, permute_out
    vb = permute_in(v, self.blocks)
    return permute_out(jnp.sum(a * vb[..., None, :], axis=-1), self.blocks, self.n)


def _ablations():
    from recur._coefficients import BlockForm
    from recur.runtime import _lyapunov
    no_lyap = [(_lyapunov, "SWEEPS_FIRST", 0), (_lyapunov, "SWEEPS", 0)]
    broadcast = [(BlockForm, "apply", _broadcast_apply)]
    return [("deer", "recur deer (as shipped)", []),
            ("deer", "recur deer, no Lyapunov sweeps", no_lyap),
            ("deer", "recur deer, broadcast-multiply-sum apply", broadcast),
            ("quasi-deer", "recur quasi-deer (as shipped)", []),
            ("quasi-deer", "recur quasi-deer, no Lyapunov sweeps", no_lyap)]


def profile_workload(D: int, T: int, reps: int) -> list[dict]:
    """Where recur's deer spends its time, measured two ways: the whole call with one piece
    changed (ablations: each compiled under its patch, then all timed round-robin with the
    minimal DEER), and the pieces of one iteration timed on their own."""
    from ._common import _prepare, _time_interleaved
    step, h0, xs, _ = gru_reference(D, T)
    loop_rec, ref = run_loop(step, h0, xs, None, T=T, reps=reps)
    opts = {"atol": TOL, "rtol": 0.0}
    recs, prepared = [], []
    for method, label, patch in _ablations():
        def fn(h0, xs, method=method):
            return recur.scan(step, h0, xs, method=method, return_info=True, **opts)
        rec = {"method": label, "candidate": "recur", "kind": "ablation"}
        try:
            with _patched(patch):
                prepared.append(_prepare(fn, (h0, xs), reps))
        except Exception as e:  # noqa: BLE001 - recur's internals moved: report, go on
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            prepared.append(None)
        recs.append(rec)
    fields_of = {}
    for quasi, solver in ((False, "assoc"), (False, "loop"), (True, "assoc")):
        label, fn, fields = minimal_candidate(step, h0, quasi=quasi, solver=solver)
        fields_of[label] = fields
        recs.append({"method": label, "candidate": "minimal", "kind": "ablation"})
        prepared.append(_prepare(fn, (h0, xs), reps))
    _time_interleaved([p for p in prepared if p is not None])
    for rec, p in zip(recs, prepared):
        if p is None:
            continue
        if rec["method"] in fields_of:
            rec.update(fields_of[rec["method"]](p["out"], ref))
        else:
            hs, info = p["out"]
            rec.update(info_fields(info), max_abs_err=max_abs_err(hs, ref))
        rec.update(timing_fields(p["times"], p["compile_s"]), timing="interleaved")

    try:
        recs += _pieces(step, h0, xs, D, T, reps)
    except Exception as e:  # noqa: BLE001 - recur's internals moved: report, go on
        recs.append({"method": "pieces", "candidate": "piece",
                     "error": f"{type(e).__name__}: {str(e)[:300]}"})
    recs.append(loop_rec)
    return finish_workload(recs, "gru-profile", {"D": D, "T": T, "dtype": "float32",
                                                 "tol": TOL})


def _pieces(step, h0, xs, D: int, T: int, reps: int) -> list[dict]:
    """The pieces of one iteration at a realistic point (the initial guess), each jitted
    alone (uses recur's private modules: the records say when they moved)."""
    from recur import _methods
    from recur.runtime import _linear, _lyapunov
    from recur.runtime._jacobian import linearise
    recs = []
    structure = recur.plan(step, h0, xs, method="deer").stage_data[0].structure
    P = jax.vmap(step)(jnp.broadcast_to(h0, (T, D)), xs)

    def evaluate_fn(method):
        lin = linearise(step, _methods.get(method), structure, D, jnp.float32)
        return lin.form, (lambda P, xs: lin.evaluate(P, xs)[:2])

    form, ev_deer = evaluate_fn("deer")
    _, ev_quasi = evaluate_fn("quasi-deer")
    (fz, a), _, _ = time_jitted(ev_deer, (P, xs), 1)

    def with_aux(h, x):
        y = step(h, x)
        return y, y

    jac = jax.vmap(jax.jacfwd(with_aux, has_aux=True))
    J = a[:, 0]
    lyap = _lyapunov.LyapunovEstimate(D, T, jnp.float32, exact=False)

    def one_sweep(P, xs, V):
        _, jvp_all = jax.linearize(lambda Z: jax.vmap(step)(Z, xs), P)
        return _lyapunov.sweep(jvp_all, V, lyap.u0)

    pieces = [
        ("recur linearise deer: f + J blocks (k JVPs)", ev_deer, (P, xs)),
        ("recur linearise quasi-deer: f + diag(J) (n JVPs, colour sum)", ev_quasi, (P, xs)),
        ("minimal: vmap(jacfwd(f)) (J and f)", jac, (P, xs)),
        ("minimal: diag of vmap(jacfwd(f))",
         lambda P, xs: jnp.diagonal(jac(P, xs)[0], axis1=-2, axis2=-1), (P, xs)),
        ("recur BlockForm.apply (A_t P_t, batched einsum)", form.apply, (a, P)),
        ("A_t P_t as a broadcast-multiply-sum",
         lambda a, P: _broadcast_apply(form, a, P), (a, P)),
        ("recur _linear.solve (block_scan, CPU: sequential loop)",
         lambda a, b: _linear.solve(form, a, b, h0), (a, fz)),
        ("minimal: associative_scan dense solve",
         lambda J, b: B._solve_dense_assoc(J, b, h0), (J, fz)),
        ("minimal: lax.scan dense solve", lambda J, b: B._solve_loop(J, b, h0, False),
         (J, fz)),
        ("one Lyapunov power-iteration sweep (linearize + 1 JVP)", one_sweep,
         (P, xs, lyap.V0)),
        ("f alone (vmap over T)", jax.vmap(step), (P, xs)),
    ]
    for label, fn, args in pieces:
        try:
            _, compile_s, times = time_jitted(fn, args, reps)
        except Exception as e:  # noqa: BLE001
            recs.append({"method": label, "kind": "piece", "candidate": "piece",
                         "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        recs.append({"method": label, "kind": "piece", "candidate": "piece",
                     **timing_fields(times, compile_s)})
    return recs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile with --quick too")
    p.add_argument("--no-peers", action="store_true")
    args = p.parse_args(argv)
    reps = max(args.reps, 5)
    load_start = loadavg()
    peers = {name: B.peer_status(name) for name in ("pararnn-torch",)}
    for name, (ok, why) in peers.items():
        print(f"peer {name}: {'available, ' if ok else 'skipped: '}{why}")
    if args.quick:  # a smoke test: no profile unless asked for
        Ds, T, Ts = (8,), 1024, (256, 1024)
        prof = ((8, 1024),) if args.profile else ()
    else:
        Ds, T, Ts, prof = (8, 16, 32), 4096, (256, 1024, 4096, 16384), ((8, 4096), (32, 4096))
    records = []
    for D in Ds:
        recs = gru_workload(D, T, reps, peers=not args.no_peers)
        print_records(recs, extra=("over_minimal",))
        records += recs
    recs = scaling_workload(8, Ts, reps, quick=args.quick)
    print_records(recs)
    records += recs
    if not args.no_profile:
        for D, Tp in prof:
            recs = profile_workload(D, Tp, reps)
            print_records(recs)
            records += recs
    print("recur / minimal DEER (same run; target <= 1.10):")
    for r in records:
        if "over_minimal" in r:
            print(f"  D={r['D']:3d} {r['method']:32s} it {r['iterations']} (minimal "
                  f"{r['minimal_iterations']})  recur/minimal(assoc) {r['over_minimal']:.2f}  "
                  f"recur/minimal(loop solve) {r['over_minimal_loop_solve']:.2f}")
    write_json(args.out, "baselines", records, load_start,
               peers={k: {"available": ok, "why": why} for k, (ok, why) in peers.items()})
    return records


if __name__ == "__main__":
    main()
