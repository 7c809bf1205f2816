r"""Parallel-in-time solvers for nonlinear recurrences: the DEER family.

The problem
-----------
For ``t = 0, ..., T-1``, ``z_t = f(z_{t-1}, x_t)`` with ``z_{-1} = z_0`` on a stage's flat
state ``z ∈ K^n``.  The whole trajectory ``Z = (z_0, ..., z_{T-1})`` is the root of

.. math::  F(Z) = Z - f(\mathrm{shift}(Z), X), \qquad \mathrm{shift}(Z)_t = z_{t-1},\;
           \mathrm{shift}(Z)_0 = z_0 .

One scheme
----------
Every iteration linearises ``f`` around the current iterate ``Z̃`` and solves the *linear*
recurrence for the correction ``e = Z - Z̃``,

.. math::  e_t = \tilde A_t\, e_{t-1} + r_t, \qquad r_t = f(\tilde z_{t-1}, x_t) - \tilde z_t,
           \quad e_{-1} = 0,

exactly, with one scan (``_linear.solve``), and moves to ``Z̃ + e``.  The methods differ in
``Ã_t`` (``recur/_methods.py``, ``_jacobian.py``): ``deer`` the true Jacobian ``J_t``
(Newton), ``quasi-deer`` ``diag(J_t)``, ``picard`` ``I``, ``jacobi`` ``0``; ``elk`` and
``quasi-elk`` damp the step (``_elk.py``); ``window=W`` runs the same steps on sliding
windows (``_windows.py``).  After ``k`` iterations the first ``k`` steps are exact
whatever ``Ã`` is (undamped), so ``T`` iterations always suffice; the default
``max_iters`` never exceeds ``T``.

Stopping test: residual and forward error
-----------------------------------------
An iterate is accepted when it passes the step test of ``_checks.py`` (``|z_t - f(z_{t-1})|``
within tolerance, non-finite values only where ``f`` gives the same) **and** its estimated
error is within tolerance everywhere: ``|e| · c <= atol + rtol |z|``.  The correction ``e``
is the residuals propagated through the linearised recurrence -- for ``Ã = J`` (``deer``,
``quasi-deer`` on a diagonal stage) exactly the first-order error of ``Z̃`` (Newton's
next step), so slowly contracting steps, whose per-step residuals add up to
``r / (1 - ρ)``, are not accepted early.  For the other linearisations ``e`` is the
method's next correction, and an iteration that converges linearly with rate ``q`` has
error about ``|e| / (1 - q)``: ``c = 1 / (1 - q)`` with ``q`` the ratio of the last two
corrections (at most 0.9).  ``info.error`` reports ``max |e|``: a first-order estimate of
the distance of the accepted trajectory to the exact solution of the recurrence (which the
sequential loop approximates to its own rounding).

Certifying an iterate costs its correction, which is the next iteration's scan: an
iteration is one batched evaluation of ``f`` (with the JVPs of ``Ã``) and one scan, and
``iterations`` counts the corrections applied to reach the accepted iterate (0: the initial
guess ``z̃_t = f(z_0, x_t)``, or ``init``, passed).

Non-finite values
-----------------
``Ã_t`` entries that are not finite are replaced by 0, and where the new iterate is not
finite although ``f(z̃_{t-1}, x_t)`` is (an overflowing product, a wild Newton step), the
iterate is reset to ``f(z̃_{t-1}, x_t)``.  So a non-finite value survives only where ``f``
itself produced it from the previous iterate, and the step test accepts it only where the
loop produces it too.

Early stop on chaos
-------------------
The largest Lyapunov exponent along the iterate (``_lyapunov.py``) is estimated every
iteration; when it is above ``_methods.CHAOTIC_LYAPUNOV`` after at least 3 iterations and
the residual did not decrease in the last iteration, the solver stops (reason ``CHAOTIC``)
and the caller falls back to the loop.

Fallback, and exact derivatives
-------------------------------
The solve is wrapped in ``jax.lax.custom_root(F, guess, solve, tangent_solve)``: ``solve``
is the iteration above (a ``lax.while_loop``, never differentiated) **followed by the
fallback** -- when the iteration did not converge, the sequential loop's trajectory --
so the root that the derivatives are taken at is always the trajectory returned: a rejected
iterate (which may hold inf/NaN) never enters a derivative (a zero cotangent times a NaN
Jacobian would be NaN).  By the implicit function theorem the tangent ``dZ`` solves
``(∂F/∂Z) dZ = -∂F/∂θ dθ`` for every input ``θ`` of ``F`` (``z_0``, ``xs`` and every array
``f`` closes over, which ``custom_root`` hoists).  ``∂F/∂Z · V = V_t - J_t V_{t-1}`` is lower
bidiagonal, so ``tangent_solve(g, y)`` is the linear recurrence ``x_t = J_t x_{t-1} + y_t``
with the TRUE Jacobians at the solution (structured per the stage's structure, whatever
the method's ``Ã``), read off the linearised ``g`` itself: for a colour ``u`` put ``u`` on
the even (odd) time steps only, then ``g(V)_t = -J_t u`` on the odd (even) steps -- ``2k``
applications of ``g`` and no cancellation.  The scans are ``custom_linear_solve``s, so the
tangent solve is linear and transposable; its transpose is the adjoint reverse scan.  Both
``jax.jvp`` and ``jax.grad`` are the derivatives of the sequential recurrence.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from .. import _methods
from .._coefficients import DiagForm, ZeroForm, jacobian_form, structure_tangents
from .._errors import PlanError, StepFunctionError
from .._ir import Structure
from . import _checks, _linear, _sharding
from ._jacobian import Linearisation, linearise, map_steps
from ._lyapunov import LyapunovEstimate
from ._result import Reason, StageStats
from ._sequential import sequential_scan

Flat = Callable[[jax.Array, Any], jax.Array]

MIN_ITERS_BEFORE_STOP = 3
# Largest contraction rate assumed when scaling a linearly converging method's correction
# into an error estimate (c = 1 / (1 - q) <= 10).
_MAX_RATE = 0.9


def default_max_iters(method: str, length: int) -> int:
    """The registry's cap for ``method``, never above ``T``."""
    return int(max(0, min(int(length), _methods.get(method).default_max_iters)))


def _real(dtype):
    return jnp.finfo(dtype).dtype


def iterate(f: Flat, z0, xs, guess, *, lin: Linearisation, lyapunov: LyapunovEstimate,
            tol: _checks.Tolerances, max_iters: int, chunk=None):
    """The undamped iteration: ``(z, iterations, residual, error, converged, reason, λ,
    history)``."""
    T, n = guess.shape
    dtype = guess.dtype
    rdt = _real(dtype)
    form = lin.form
    zero = jnp.zeros((n,), dtype)

    def correction(z, fz, a):
        """``e_t = Ã_t e_{t-1} + r_t``, ``e_{-1} = 0`` (non-finite residuals count as 0: the
        reset above handles those steps)."""
        r = fz - z
        r = jnp.where(jnp.isfinite(r), r, jnp.zeros((), dtype))
        return _linear.solve(form, a, r, zero, chunk=chunk)

    # The loop starts at k = -1 with e = 0 and f := guess, so that its first pass evaluates
    # at the guess: the evaluation, Jacobians, correction and Lyapunov estimate are traced
    # (and compiled) once.
    state0 = dict(k=jnp.asarray(-1, jnp.int32), z=guess, fz=guess, e=jnp.zeros_like(guess),
                  res=jnp.asarray(jnp.inf, rdt), err=jnp.asarray(jnp.inf, rdt),
                  size=jnp.asarray(jnp.inf, rdt), ok=jnp.asarray(False),
                  lam=jnp.asarray(jnp.nan, rdt), V=lyapunov.V0,
                  hist=jnp.full((max_iters + 1,), jnp.nan, rdt), stop=jnp.asarray(False))

    def cond(s):
        return (s["k"] < 0) | (~s["ok"] & ~s["stop"] & (s["k"] < max_iters))

    def body(s):
        z = s["z"] + s["e"]
        # reset: a non-finite value only where f itself produced one (and then f's value)
        z = jnp.where(jnp.isfinite(s["fz"]) & jnp.isfinite(z), z, s["fz"])
        fz, raw, jvp_all = lin.evaluate(_sharding.shift(z, z0), xs)
        a = form.sanitize(raw)
        res, ok_step = _checks.check(z, fz, tol.rtol, tol.atol)
        e = correction(z, fz, a)
        size = _sharding.reduce_max(jnp.max(jnp.abs(e).astype(rdt), initial=0.0))
        if lin.exact:
            scale = jnp.asarray(1, rdt)
        else:
            rate = jnp.where((s["k"] >= 0) & jnp.isfinite(s["size"]) & (s["size"] > 0),
                             size / jnp.where(s["size"] > 0, s["size"], 1), 0.0)
            scale = 1 / (1 - jnp.clip(rate, 0.0, _MAX_RATE))
        err, ok_err = _checks.error_test(e * scale.astype(dtype), z, tol.error_rtol,
                                         tol.error_atol)
        lam, V = lyapunov.update(raw, jvp_all, s["V"], s["k"] < 0)
        k = s["k"] + 1
        ok = ok_step & ok_err
        stalled = ~(res < s["res"])
        stop = (k >= MIN_ITERS_BEFORE_STOP) & (lam > _methods.CHAOTIC_LYAPUNOV) & stalled & ~ok
        return dict(k=k, z=z, fz=fz, e=e, res=res, err=err, size=size, ok=ok, lam=lam, V=V,
                    hist=s["hist"].at[k].set(res), stop=stop)

    s = _sharding.while_loop(cond, body, state0)
    reason = jnp.where(s["ok"], Reason.CONVERGED,
                       jnp.where(s["stop"], Reason.CHAOTIC,
                                 jnp.where(jnp.isfinite(s["res"]), Reason.MAX_ITERATIONS,
                                           Reason.NON_FINITE)))
    return (s["z"], s["k"], s["res"], s["err"], s["ok"], reason.astype(jnp.int32), s["lam"],
            s["hist"][1:])


# ----------------------------------------------------------------------------- tangent solve

def _shift_per_step(g: Callable, T: int, n: int) -> Callable:
    """From ``g(V)_t = V_t - J_t V_{t-1}`` (``V_{-1} = 0``): ``U -> (T, n, B)`` with ``J_t u``
    (row ``t = 0`` is 0: ``J_0`` never multiplies an unknown).  A colour is put on every
    other time step so that ``g`` returns ``-J_t u`` exactly, without cancellation."""
    index = _sharding.step_index(T)  # global step indices when split across devices
    if index is None:
        index = jnp.arange(T, dtype=jnp.int32)
    odd = (index % 2 == 1)[:, None]
    first = (index == 0)[:, None]

    def one(u):
        on_even = jnp.where(odd, jnp.zeros_like(u), u)  # u at even t
        on_odd = jnp.where(odd, u, jnp.zeros_like(u))   # u at odd t
        ge, go = g(on_even), g(on_odd)
        ju = -jnp.where(odd, ge, go)  # odd t: previous step even; even t: previous odd
        return jnp.where(first, jnp.zeros_like(ju), ju)

    return lambda U: jax.vmap(one, out_axes=-1)(U)  # (T, n, B)


def tangent_solve(g: Callable, y: jax.Array, structure: Structure, chunk=None) -> jax.Array:
    """Solve ``g(x) = y`` for ``g(V)_t = V_t - J_t V_{t-1}``: ``x_t = J_t x_{t-1} + y_t``,
    with the true Jacobians in the structure's form."""
    T, n = y.shape
    form = jacobian_form(structure, n)
    if isinstance(form, ZeroForm):
        return y
    cols = _shift_per_step(g, T, n)(jnp.asarray(structure_tangents(structure, n, y.dtype)))
    a = cols[:, :, 0] if isinstance(form, DiagForm) else form.from_columns(cols)
    # A_0 = 0 (row 0 of the extraction), so h_{-1} does not matter (y_0 is as good as any:
    # the kernel folds A_0 h_{-1} into its right-hand side).
    return _linear.solve(form, a, y, _sharding.from_first_step(y[0]), chunk=chunk)


# ----------------------------------------------------------------------------- the solve

def _stats_aux(st: StageStats):
    """``custom_root``'s aux travels through a ``custom_jvp``: keep every value inexact."""
    return {k: v.astype(jnp.float32) if v.dtype.kind in "bi" else v
            for k, v in st.__dict__.items()}


def _from_aux(aux) -> StageStats:
    kinds = {"iterations": jnp.int32, "converged": bool, "fell_back": bool,
             "reason": jnp.int32, "evaluations": jnp.int32}
    return StageStats(**{k: (v > 0.5 if kinds.get(k) is bool else v.astype(kinds[k]))
                         if k in kinds else v for k, v in aux.items()})


def solve_nonlinear(f: Flat, z0, xs, *, method: str, structure: Structure, length: int,
                    rtol=None, atol=None, max_iters=None, init=None, jacobian=None,
                    window=None, lyapunov: bool = True, chunk=None, fallback: bool = False,
                    tolerances: _checks.Tolerances | None = None):
    """All ``T = length`` states of ``z_t = f(z_{t-1}, x_t)``, ``z_{-1} = z0``, in parallel.

    Args:
      f: ``f(z, x) -> z'`` on the flat state (``x``: this step's pytree of inputs, or
        ``None`` when ``xs is None``).  May close over arrays (they get exact derivatives).
      z0: ``(n,)`` initial state (float or complex).
      xs: pytree of arrays with leading axis ``length``, or ``None``.
      method: an iterative method of the registry (``recur/_methods.py``).
      structure: the (sound) Jacobian structure from ``passes._structure``.
      rtol, atol: tolerances of both tests (scalars or ``(n,)``, ``_checks.py``), or
        ``tolerances``: a ``_checks.Tolerances`` with the step and error tests' own.
      max_iters: most corrections (window sweeps); default from the registry, never above
        ``T`` (windows: ``_windows.default_sweeps``).
      init: optional ``(length, n)`` initial guess; default ``z̃_t = f(z0, x_t)``.
      jacobian: optional ``jacobian(z, x) -> (n,)`` diagonal approximation of ``∂f/∂z``
        used as ``Ã`` by the diagonal methods; derivatives always use the true Jacobians.
      window: ``None`` or ``W >= 1``: sliding windows of ``W`` steps.
      lyapunov: estimate the largest Lyapunov exponent and stop early on chaos.
      chunk: chunk length of the scans (``None``: the backend's default).
      fallback: run the sequential loop inside the solve when it does not converge.

    Returns:
      ``(zs, stats, history)``: ``zs`` of shape ``(length, n)``; ``stats`` a ``StageStats``;
      ``history`` the residual after each iteration (window: the window's residual per
      sweep), NaN past the last.
    """
    tol = tolerances if tolerances is not None else _checks.Tolerances.uniform(rtol, atol)
    m = _methods.get(method)
    if not m.iterative:
        raise PlanError(f"{method!r} is not an iterative method")
    z0 = jnp.asarray(z0)
    if z0.ndim != 1:
        raise StepFunctionError(f"solve_nonlinear: z0 must be a flat (n,) state, got {z0.shape}")
    n, dtype = z0.shape[0], z0.dtype
    T = int(length)
    T_all = _sharding.global_length(T)
    if _sharding.current() is not None and not m.sharded:
        raise PlanError(f"method {method!r} is not available across devices; use one of "
                        f"{', '.join(_methods.sharded())}.")
    window = _window(m, method, window, T_all)
    max_iters = _max_iters(method, max_iters, window, T_all)
    rdt = _real(dtype)
    if T == 0:
        return jnp.zeros((0, n), dtype), StageStats.make(real_dtype=rdt), \
            jnp.full((max_iters,), jnp.nan, rdt)
    guess = _initial_guess(f, z0, xs, init, T)
    lin = linearise(f, m, structure, n, dtype, jacobian=jacobian, want_jvp=window is None)

    def F(zs):
        return zs - map_steps(f, _sharding.shift(zs, z0), xs)

    def solve(_F, guess):
        zs, its, res, err, ok, reason, lam, hist = _iterate_method(
            m, f, z0, xs, guess, lin=lin, tol=tol, max_iters=max_iters, chunk=chunk,
            window=window, lyapunov=lyapunov)
        fell_back = jnp.asarray(False)
        if fallback:
            zs = _checks.with_fallback(zs, ok, lambda: sequential_scan(f, z0, xs, length=T))
            fell_back = ~ok
        evals = _evaluations(its, ok, fell_back, T_all, window, init is None)
        st = StageStats.make(iterations=its, residual=res, error=err, converged=ok,
                             fell_back=fell_back, reason=reason, lyapunov=lam,
                             evaluations=evals, real_dtype=rdt)
        return zs, (_stats_aux(st), hist)

    def tangent(g, y):
        return tangent_solve(g, y, structure, chunk)

    zs, (aux, hist) = lax.custom_root(F, guess, solve, tangent, has_aux=True)
    aux, hist = lax.stop_gradient((aux, hist))
    return zs, _from_aux(aux), hist


def _window(m, method: str, window, T_all: int) -> int | None:
    """The window length, checked; ``None`` when it covers the whole sequence."""
    if window is None:
        return None
    if int(window) < 1:
        raise PlanError(f"window must be >= 1, got {window!r}")
    if not m.windows:
        raise PlanError(f"window= works with {', '.join(_methods.with_windows())}, not "
                        f"{method!r}.")
    return None if int(window) >= T_all else int(window)


def _max_iters(method: str, max_iters, window: int | None, T_all: int) -> int:
    """The most corrections (window sweeps): the given number, or the registry's default
    (``_windows.default_sweeps`` for windows)."""
    if max_iters is None:
        from ._windows import default_sweeps
        max_iters = default_max_iters(method, T_all) if window is None \
            else default_sweeps(T_all, window)
    max_iters = int(max_iters)
    if max_iters < 0:
        raise PlanError(f"max_iters must be >= 0, got {max_iters}")
    return max_iters


def _initial_guess(f: Flat, z0, xs, init, T: int):
    """``init`` (checked), or ``z̃_t = f(z0, x_t)``; no gradient flows through it."""
    n, dtype = z0.shape[0], z0.dtype
    if init is None:
        guess = map_steps(f, jnp.broadcast_to(z0, (T, n)), xs)
    else:
        guess = jnp.asarray(init)
        if guess.shape != (T, n):
            raise StepFunctionError(
                f"solve_nonlinear: init must have shape {(T, n)}, got {guess.shape}")
    return lax.stop_gradient(guess.astype(dtype))


def _iterate_method(m, f: Flat, z0, xs, guess, *, lin: Linearisation, tol, max_iters: int,
                    chunk, window: int | None, lyapunov: bool):
    """``(zs, iterations, residual, error, converged, reason, lyapunov, history)`` of the
    method's iteration: sliding windows, damped (ELK), or the plain Newton family."""
    kw = dict(lin=lin, tol=tol, max_iters=max_iters, chunk=chunk)
    if window is not None:
        from ._windows import iterate_windowed
        zs, its, res, err, ok, reason, hist = iterate_windowed(f, z0, xs, guess,
                                                               window=window, **kw)
        return zs, its, res, err, ok, reason, jnp.asarray(jnp.nan, _real(z0.dtype)), hist
    T, n = guess.shape
    estimate = LyapunovEstimate(n, T, z0.dtype, lin.lyapunov_exact, lyapunov)
    if m.damped:
        from ._elk import iterate_elk
        return iterate_elk(f, z0, xs, guess, lyapunov=estimate, **kw)
    return iterate(f, z0, xs, guess, lyapunov=estimate, **kw)


def _evaluations(its, ok, fell_back, T_all: int, window: int | None, guessed: bool):
    """Evaluations of ``f`` over the whole sequence: the initial guess (when recur made
    it), one per step per iteration and one more for the final residual (windows: ``W``
    per sweep, and a full residual when they did not converge), and the loop's when it
    fell back."""
    evals = (T_all if guessed else 0) + (
        (its + 1) * T_all if window is None else its * window + jnp.where(ok, 0, T_all))
    return evals + jnp.where(fell_back, T_all, 0)


__all__ = ["solve_nonlinear", "iterate", "tangent_solve", "default_max_iters",
           "MIN_ITERS_BEFORE_STOP"]
