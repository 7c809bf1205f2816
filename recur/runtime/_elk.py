r"""ELK: damped Newton (Levenberg--Marquardt) as a Kalman smoother.

``elk`` and ``quasi-elk`` (Gonzalez et al. 2024, "Towards scalable and stable
parallelization of nonlinear RNNs") replace the Newton step by the trust-region step

.. math::  \min_Z \sum_t \|z_t - f(\tilde z_{t-1}, x_t) - \tilde A_t (z_{t-1} - \tilde z_{t-1})\|^2
           + \tfrac{1}{\lambda} \|z_t - \tilde z_t\|^2 ,

with ``Ã_t`` as for ``deer`` (``elk``: the structure's true Jacobians -- diagonal, blocks,
or dense ``n × n``) or ``quasi-deer`` (``quasi-elk``: ``diag(J_t)``, or the user's
``jacobian``).  It is the posterior mean (MAP) of the linear-Gaussian state-space model
``z_t = Ã_t z_{t-1} + c_t + w_t``, ``c_t = f(z̃_{t-1}) - Ã_t z̃_{t-1}``, ``w_t ~ N(0, I)``
(``z_{-1} = z_0`` known, so ``z_0``'s prior is ``N(f(z_0, x_0), I)``), observed through the
pseudo-observations ``y_t = z̃_t = z_t + v_t``, ``v_t ~ N(0, λ I)``.  It is computed per
block (the model decouples over the structure's blocks; diagonal: ``n`` scalar models, a
dense state one ``n × n`` model) by the parallel Kalman filter of Särkkä & García-Fernández
(a parallel prefix scan over the elements ``(A, b, C, η, J)`` -- recursive doubling in a
``fori_loop``, ``log2 T`` rounds, so the combine compiles once: with
``lax.associative_scan`` the GRU test compiled in 9 s instead of 4 s; with ``H = Q = I`` and
``R = λ I`` they are ``A = ωÃ``, ``b = ωc + κy``, ``C = ωI``, ``η = κÃ^H(y - c)``,
``J = κÃ^H Ã``, ``κ = 1/(1+λ)``, ``ω = λκ``) and an RTS smoother (``s_t = E_t s_{t+1} + g_t``,
a reverse ``block_scan``).  ``λ → ∞`` is DEER/quasi-DEER, ``λ → 0`` does not move.

``λ`` adapts as in Levenberg--Marquardt on the merit ``φ(Z) = Σ_t |z_t - f(z_{t-1})|²``:
with ``ρ`` = actual / predicted decrease (predicted: ``φ(Z̃)`` minus the linear model's
residual at the new ``Z``), a step is accepted when ``φ`` decreases (or the new iterate
passes the stopping test), ``λ`` is multiplied by 4 when ``ρ > 3/4``, halved when
``ρ < 1/4`` and divided by 4 on a rejected step; it starts at (and never exceeds) ``1e8``
(float64) / ``1e4`` (float32), so contractive problems take Newton's iterations.  A
rejected step costs an iteration (one evaluation and one solve).  The stopping test,
non-finite handling, Lyapunov estimate and derivatives are the other methods'; the early
stop is: trust region below ``1e-10``, or ``λ_Lyapunov > 0.05`` after 3 iterations with
the merit falling by less than 1 % in each of the last 5.  ELK loses the "first ``k`` steps
exact after ``k`` iterations" guarantee (a damped step does not reach ``f(z̃_{t-1})``).

Measured: on the GRU reference problem of BENCHMARKS.md (D=8, T=4096, float32,
``atol = 1e-5``, ``rtol = 0``, seeds 0 and 1) elk 3 iterations and quasi-elk 11, the same
as deer (3) and quasi-deer (11).  Float64, ``rtol = atol = 1e-13``: GRU (hidden 5, T=64)
elk 4, quasi-elk 21; Lorenz-96 (D=5, F=8, dt=0.01, T=200 from the attractor, default guess):
neither elk nor quasi-elk converges -- the damped steps make the merit decrease but the
max residual stalls near 0.1 (elk, 100 iterations) with the trajectory wrong from step 0
(plain LM on this ill-conditioned least-squares problem; fixed ``λ`` in 1e-2..1e2 did no
better in 200 iterations); sliding windows (below) do converge there.

The trust-region subproblem is solved by ``_kalman.smooth``.  The stopping test is the
undamped family's (``_iterative.py``): the step test and the forward error estimated with
the undamped correction ``e = (I - Ã shift)^{-1} r`` (computed only for iterates that pass
the step test).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .. import _methods
from .._coefficients import DiagForm, ZeroForm, permute_in, permute_out
from . import _checks, _linear, _sharding
from ._iterative import MIN_ITERS_BEFORE_STOP
from ._jacobian import Linearisation
from ._kalman import smooth
from ._lyapunov import LyapunovEstimate
from ._result import Reason

# The trust region λ (variance of the pseudo-observations): starts at the largest value (a
# step within ~1/λ of Newton's), is multiplied by _GROW after a step whose actual decrease
# of the merit is > 3/4 of the predicted one, halved below 1/4, multiplied by _SHRINK
# after a rejected step; the solver stops when it falls below _LAMBDA_MIN.
_LAMBDA_MAX = {False: 1e4, True: 1e8}  # keyed by "double precision"
_LAMBDA_MIN = 1e-10
_GROW = 4.0
_SHRINK = 0.25
# Early stop: Lyapunov exponent above _methods.CHAOTIC_LYAPUNOV and the merit fell by
# less than _STALL (relative) in each of the last _STALL_ITERS iterations.
_STALL = 0.01
_STALL_ITERS = 5


def _step(form, a, fz, P, z, lam):
    """The trust-region subproblem at ``z̃ = z`` with the linearisation ``(fz, a)`` at
    ``P = shift(z)``: the smoothed mean of the linear-Gaussian model."""
    T, n = z.shape
    # z_{-1} = z0 is known: the first global step's prior mean is f(z0, x_0), F_0 = 0
    first = (_sharding.global_steps(T) == 0)[:, None]
    b = jnp.where(first, fz, fz - form.apply(a, P))
    if isinstance(form, (ZeroForm, DiagForm)):
        a = jnp.zeros((T, n), z.dtype) if isinstance(form, ZeroForm) else a
        F = jnp.where(first, 0, jnp.broadcast_to(a, (T, n)))[..., None, None]
        return smooth(F, b[..., None], z[..., None], lam)[..., 0]
    F = jnp.where(first[..., None, None], 0, a)
    blocks = form.blocks
    zs = smooth(F, permute_in(b, blocks), permute_in(z, blocks), lam)
    return permute_out(zs, blocks, n)


def _merit(z, fz):
    """``Σ |z_t - f(z_{t-1})|²`` over the real steps of all devices (``inf`` when a
    difference is non-finite and not an agreement of equal non-finite values)."""
    rdt = jnp.finfo(z.dtype).dtype
    d = z - fz
    fin = jnp.isfinite(d)
    sq = jnp.where(fin, jnp.abs(d).astype(rdt) ** 2, 0)
    bad = ~fin & ~_checks.same_nonfinite(z, fz)
    valid = _sharding.valid_steps(z.shape[0])
    if valid is not None:  # padded steps (across devices) never count
        sq = jnp.where(valid[:, None], sq, 0)
        bad = bad & valid[:, None]
    val = _sharding.reduce_sum(jnp.sum(sq))
    return jnp.where(_sharding.reduce_any(jnp.any(bad)), jnp.inf, val).astype(rdt)


def iterate_elk(f, z0, xs, guess, *, lin: Linearisation, lyapunov: LyapunovEstimate,
                tol: _checks.Tolerances, max_iters: int, chunk=None):
    """ELK: ``(z, iterations, residual, error, converged, reason, λ, history)``."""
    T, n = guess.shape
    dtype = guess.dtype
    rdt = jnp.finfo(dtype).dtype
    form = lin.form
    lam_max = _LAMBDA_MAX[jnp.dtype(rdt).itemsize >= 8]
    zero = jnp.zeros((n,), dtype)

    def certify(z, fz, a, ok_step):
        """The forward-error test, only for an iterate that passes the step test."""
        def estimate(_):
            r = jnp.where(jnp.isfinite(fz - z), fz - z, jnp.zeros((), dtype))
            return _checks.error_test(_linear.solve(form, a, r, zero, chunk=chunk), z,
                                      tol.error_rtol, tol.error_atol)
        return lax.cond(ok_step, estimate,
                        lambda _: (jnp.asarray(jnp.inf, rdt), jnp.asarray(False)), None)

    # As in ``_iterative.iterate``, the loop starts at k = -1 with a pass that keeps
    # z = guess and evaluates there (one trace of the evaluation).
    state0 = dict(k=jnp.asarray(-1, jnp.int32), z=guess, P=jnp.broadcast_to(z0, (T, n)),
                  fz=guess, a=form.zeros(T, dtype), phi=jnp.asarray(jnp.inf, rdt),
                  tr=jnp.asarray(lam_max, rdt), res=jnp.asarray(jnp.inf, rdt),
                  err=jnp.asarray(jnp.inf, rdt), ok=jnp.asarray(False),
                  lam=jnp.asarray(jnp.nan, rdt), V=lyapunov.V0,
                  hist=jnp.full((max_iters + 1,), jnp.nan, rdt), stop=jnp.asarray(False),
                  collapsed=jnp.asarray(False), stalls=jnp.asarray(0, jnp.int32))

    def cond(s):
        return (s["k"] < 0) | (~s["ok"] & ~s["stop"] & (s["k"] < max_iters))

    def body(s):
        z, P, fz, a, tr = s["z"], s["P"], s["fz"], s["a"], s["tr"]
        first = s["k"] < 0
        z_new = jnp.where(first, z, _step(form, a, fz, P, z, tr))
        z_new = jnp.where(jnp.isfinite(z_new) | ~jnp.isfinite(fz), z_new, fz)
        # the model's residual at z_new: what the linearisation predicts
        Pn = _sharding.shift(z_new, z0)
        model = _merit(z_new, fz + form.apply(a, Pn - P))
        fz2, raw2, jvp2 = lin.evaluate(Pn, xs)
        a2 = form.sanitize(raw2)
        phi2 = _merit(z_new, fz2)
        res2, ok_step = _checks.check(z_new, fz2, tol.rtol, tol.atol)
        err2, ok_err = certify(z_new, fz2, a2, ok_step)
        ok2 = ok_step & ok_err
        lam2, V2 = lyapunov.update(raw2, jvp2, s["V"], first)
        phi = s["phi"]
        pred = phi - model
        actual = phi - phi2
        rho = jnp.where(pred > 0, actual / jnp.where(pred > 0, pred, 1), -1)
        accept = first | ok2 | (jnp.isfinite(phi2) & (phi2 < phi))
        tr_new = jnp.where(first, tr, jnp.where(~accept, tr * _SHRINK,
                           jnp.where(rho > 0.75, tr * _GROW,
                                     jnp.where(rho < 0.25, tr * 0.5, tr))))
        tr_new = jnp.clip(tr_new, 0, lam_max).astype(rdt)
        pick = lambda new, old: jax.tree.map(  # noqa: E731
            lambda x, y: jnp.where(accept, x, y), new, old)
        z, P, fz, a, phi, res, err, ok, lam, V = pick(
            (z_new, Pn, fz2, a2, phi2, res2, err2, ok2, lam2, V2),
            (z, P, fz, a, phi, s["res"], s["err"], s["ok"], s["lam"], s["V"]))
        k = s["k"] + 1
        stalled = ~first & ~(phi < (1 - _STALL) * s["phi"])
        stalls = jnp.where(stalled, s["stalls"] + 1, 0).astype(jnp.int32)
        collapsed = ~ok & (tr_new < _LAMBDA_MIN)
        chaotic = ~ok & (k >= MIN_ITERS_BEFORE_STOP) & (lam > _methods.CHAOTIC_LYAPUNOV) \
            & (stalls >= _STALL_ITERS)
        return dict(k=k, z=z, P=P, fz=fz, a=a, phi=phi, tr=tr_new, res=res, err=err, ok=ok,
                    lam=lam, V=V, hist=s["hist"].at[k].set(res), stop=collapsed | chaotic,
                    collapsed=collapsed, stalls=stalls)

    s = _sharding.while_loop(cond, body, state0)
    reason = jnp.where(s["ok"], Reason.CONVERGED,
                       jnp.where(s["collapsed"], Reason.TRUST_REGION,
                                 jnp.where(s["stop"], Reason.CHAOTIC,
                                           jnp.where(jnp.isfinite(s["res"]),
                                                     Reason.MAX_ITERATIONS,
                                                     Reason.NON_FINITE))))
    return (s["z"], s["k"], s["res"], s["err"], s["ok"], reason.astype(jnp.int32), s["lam"],
            s["hist"][1:])


__all__ = ["iterate_elk"]
