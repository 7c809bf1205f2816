r"""Parallel-in-time solvers for nonlinear recurrences: DEER, quasi-DEER, Picard, Jacobi,
ELK, quasi-ELK, and sliding windows.

The problem
-----------
For ``t = 0, ..., T-1``, ``z_t = f(z_{t-1}, x_t)`` with ``z_{-1} = z_0`` on the flat state
``z ∈ K^n``.  The whole trajectory ``Z = (z_0, ..., z_{T-1})`` is the root of

.. math::  F(Z) = Z - f(\mathrm{shift}(Z), X), \qquad \mathrm{shift}(Z)_t = z_{t-1},\;
           \mathrm{shift}(Z)_0 = z_0 .

One scheme, four methods (and ELK below)
----------------------------------------
Every iteration linearises ``f`` around the current guess ``Z̃`` and solves the *linear*
recurrence

.. math::  z_t = f(\tilde z_{t-1}, x_t) + \tilde A_t\,(z_{t-1} - \tilde z_{t-1}),

exactly, with the associative scans of ``_scan.py`` (``diagonal_scan`` / ``block_scan``):

============== ============================================================================
method         ``Ã_t``
============== ============================================================================
``deer``       ``J_t = ∂f/∂z(z̃_{t-1}, x_t)`` at the structure's cost: diagonal 1 JVP,
               ``block(k)`` k JVPs, dense n JVPs, or c with the structure's column
               colouring of a sparse pattern (Newton: quadratic convergence)
``quasi-deer`` ``diag(J_t)``, exact, from the structure's column colouring
               ``diag(J) = Σ_c e_c ⊙ (J e_c)``; the colours are processed in groups so that
               at most ``_DIAG_CHUNK_ELEMENTS`` entries ``T × group × n`` exist at once
               (a dense state never materialises ``T × n × n``); or the user's
               ``jacobian(z, x)``; or, with ``structure.hutchinson = p > 0``,
               Hutchinson's estimate ``mean_s v_s ⊙ (J v_s)`` from p Rademacher probes
``picard``     ``I`` (for steps ``z + g(z, x)``: one cumulative sum per sweep)
``jacobi``     ``0`` (``z_t = f(z̃_{t-1}, x_t)``: one parallel evaluation of ``f``)
============== ============================================================================

After ``k`` iterations the first ``k`` steps are exact whatever ``Ã`` is (if ``z̃_{t-1}`` is
already exact, ``z_t = f(z̃_{t-1}, x_t)``), so ``T`` iterations always suffice (``T - 1``
from the default guess, whose step 0 is exact); the default ``max_iters`` never exceeds ``T``.

Stopping test and cost per iteration
------------------------------------
An iterate is accepted when, elementwise, ``|z_t - f(z_{t-1}, x_t)| <= atol + rtol |z_t|``
(positions where both sides are the same non-finite value -- what the sequential loop
produces after a NaN input -- count as agreeing).  The evaluation ``f(shift(Z))`` that the
test needs is the one the next iteration linearises around, so one iteration costs one
batched (linearised) evaluation of ``f``, the JVPs of ``Ã``, one scan, and the Lyapunov
estimate below.  ``iterations`` counts linear solves; ``iterations == 0`` means the initial
guess ``z̃_t = f(z_0, x_t)`` (or ``init``) already passed.

Default ``max_iters`` (each capped at ``T``): ``deer`` 50 (Newton converges in a handful
of iterations on contractive problems, or not at all), ``jacobi`` 100 (linear convergence
at the contraction rate), ``quasi-deer`` and ``picard`` 200 (linear convergence; Picard
needs about ``e · dt · Lip(g) · T`` sweeps).

Non-finite values
-----------------
``Ã_t`` entries that are not finite are replaced by 0 (a Jacobi step for that entry), and
where the new iterate is not finite although ``f(z̃_{t-1}, x_t)`` is (an overflowing
product of gates, a wild Newton step), the iterate is reset to ``f(z̃_{t-1}, x_t)``.  So a
non-finite value survives only where ``f`` itself produced it from the previous iterate,
and convergence (which checks every position) is then only claimed for the trajectory
that the sequential loop also produces.  The returned ``residual`` is ``inf`` whenever a
non-finite difference is not such an agreement.

Lyapunov estimate and early stop
--------------------------------
Convergence is fast when the system is contractive and hopeless when it is chaotic.  Every
iteration estimates the largest Lyapunov exponent ``λ`` (per step, natural log) along the
current iterate from the *true* Jacobians:

* diagonal structure with ``deer``/``quasi-deer`` (where ``Ã_t = J_t`` exactly):
  ``λ = max_i mean_t log|J_t[i, i]|`` -- exact for a diagonal system (the coordinates
  are independent);
* otherwise a power iteration *along time*, one batched product per sweep, no extra scan:
  unit vectors ``V_t`` (all ``t`` at once) are updated by
  ``V_t ← J_t V_{t-1} / |J_t V_{t-1}|`` (``V_{-1}`` a fixed random unit vector ``u``) --
  with the Jacobians the iteration extracted anyway (``deer``/``elk``: an ``einsum``) or a
  JVP of the linearisation of ``f`` (``quasi-deer`` on a non-diagonal stage) -- and
  ``λ = mean_t log|J_t V_{t-1}|`` over the last sweep.  After ``s`` sweeps ``V_t`` has been pushed through the ``s`` Jacobians
  ``J_{t-s+1} .. J_t`` (a finite-time estimate over windows of length ``s`` ending at every
  ``t``), so the transient of the random start fades as sweeps accumulate: 8 sweeps at the
  initial guess and 2 per later iteration, the vectors carried from one iteration to the
  next (14 Jacobians deep when the early stop can first act).  The sweeps are the price of
  the chaos detection: measured on the GRU reference (D = 16, T = 4096), 16 + 4 per
  iteration took 27% of deer's time; 8 + 2 brings deer within 1.01-1.12x of a minimal
  hand-written DEER (``benchmarks/baselines.py``).  Compared with a windowed sequential power iteration (32-step windows, tried first)
  it gave the same estimates on Lorenz-96 and the GRU at a fraction of the compile time.

Steps with ``J_t v = 0`` count as ``log(tiny)``; non-finite steps are skipped.  When
``λ > 0.05`` after at least 3 iterations and the residual did not decrease in the last
iteration, the solver stops with ``converged=False``: the caller falls back to the
sequential loop.  ``λ`` of the final iterate is returned in the stats.

ELK: damped Newton (Levenberg--Marquardt) as a Kalman smoother
---------------------------------------------------------------
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

Sliding windows
---------------
With ``window=W`` (``deer``, ``quasi-deer``, ``picard``, ``jacobi``; ParaDiGMS-style) the
carry is the full trajectory plus the start ``s`` of the first step not yet accepted.  A
sweep takes the window ``[w0, w0 + W)``, ``w0 = min(s, T - W)``, evaluates (and
linearises) ``f`` there from the accepted ``z_{w0-1}`` (``z_0`` at the start), accepts the
leading run of steps that pass the stopping test (each against its accepted predecessor,
so accepted steps are final), and does one method step on the rest of the window with the
accepted prefix held fixed (``Ã = 0``, ``b = z`` there).  The first not-accepted step then
becomes ``f`` of its final predecessor, exact, so every sweep after the first accepts at
least one step and ``T + 1`` sweeps (the default ``max_iters``) always suffice.  A sweep
costs ``W`` evaluations of ``f`` (and the JVPs), memory ``O(W)`` besides the trajectory;
steps beyond the window keep the initial guess until the window reaches them.  Stats:
``sweeps`` and ``evaluations`` (``T`` for the default guess + ``W`` per sweep, + ``T`` for
the final residual when not converged); ``history`` holds the window's residual per
sweep; no Lyapunov estimate (NaN).  Measured (float64, tol 1e-13, W=32): Lorenz-96 above,
deer 33 sweeps (1256 evaluations for T=200); tanh RNN T=256, deer 48 sweeps; Euler step
``h + 0.05 g(h)`` T=256, picard 84 sweeps.  GRU reference (float32, T=4096, W=256,
``atol = 1e-5``): deer 64 sweeps (20480 evaluations), quasi-deer 163 (45824) -- about
4 sweeps per window advance, so windows trade 5-11× the evaluations of the sequential loop
for O(W) memory per sweep and robustness on chaotic problems.

Exact derivatives
-----------------
The solve is wrapped in ``jax.lax.custom_root(F, guess, solve, tangent_solve)``: ``solve``
is the iteration above (a ``lax.while_loop``, never differentiated), and by the implicit
function theorem the tangent ``dZ`` solves ``(∂F/∂Z) dZ = -∂F/∂θ dθ`` for every input
``θ`` of ``F`` (``z_0``, ``xs`` and every array ``f`` closes over, which ``custom_root``
hoists as constants of ``F``).  ``∂F/∂Z · V = V_t - J_t V_{t-1}`` is lower bidiagonal, so
``tangent_solve(g, y)`` is the linear recurrence ``x_t = J_t x_{t-1} + y_t`` with the TRUE
Jacobians at the solution (structured per ``structure`` for every method, quasi-DEER
included), solved with the scans.  ``J_t`` is read off the linearised ``g`` itself with the
structure's colouring: for a colour ``u`` put ``u`` on the even (odd) time steps only, then
``g(V)_t = -J_t u`` on the odd (even) steps -- ``2k`` applications of ``g`` and no
cancellation.  The scans are ``custom_linear_solve``s, so the tangent solve is linear and
transposable; its transpose is the adjoint reverse scan ``λ_t = g_t + J_{t+1}^T λ_{t+1}``.
Both ``jax.jvp`` and ``jax.vjp``/``jax.grad`` are therefore the derivatives of the sequential
recurrence (tests: agreement with ``lax.scan`` to ~1e-12 in float64 and ``check_grads``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._errors import PlanError, StepFunctionError
from ..passes._structure import Structure
from . import _scan, _sharding
from ._jacobian import from_columns, permute_in, permute_out, structure_tangents

Flat = Callable[[jax.Array, Any], jax.Array]

METHODS = ("deer", "quasi-deer", "picard", "jacobi", "elk", "quasi-elk")
_DEFAULT_MAX_ITERS = {"deer": 50, "jacobi": 100, "quasi-deer": 200, "picard": 200,
                      "elk": 100, "quasi-elk": 200}
# Methods that take a sliding window.
WINDOW_METHODS = ("deer", "quasi-deer", "picard", "jacobi")
# ELK trust region λ (variance of the pseudo-observations): starts at the largest value
# (a step within ~1/λ of Newton's), is multiplied by _ELK_GROW after a step whose actual
# decrease of the merit is > 3/4 of the predicted one, halved below 1/4, multiplied by
# _ELK_SHRINK after a rejected step; the solver stops when it falls below _ELK_LAMBDA_MIN.
_ELK_LAMBDA_MAX = {False: 1e4, True: 1e8}  # keyed by "double precision"
_ELK_LAMBDA_MIN = 1e-10
_ELK_GROW = 4.0
_ELK_SHRINK = 0.25
# ELK's early stop: λ_Lyapunov > _DIVERGENCE_LYAPUNOV and the merit fell by less than
# _ELK_STALL (relative) in each of the last _ELK_STALL_ITERS iterations.
_ELK_STALL = 0.01
_ELK_STALL_ITERS = 5
# Early stop: Lyapunov exponent (per step) above which a stalling iteration is abandoned.
_DIVERGENCE_LYAPUNOV = 0.05
_MIN_ITERS_BEFORE_STOP = 3
# Power-iteration sweeps along time per evaluation (the first, at the initial guess, and
# each later one): after k iterations the vectors have been through 8 + 2 k Jacobians.
_LYAP_SWEEPS_FIRST = 8
_LYAP_SWEEPS = 2
# Largest number of Jacobian entries (T x colours x n) materialised at once by quasi-DEER.
_DIAG_CHUNK_ELEMENTS = 1 << 24


def default_max_iters(method: str, length: int) -> int:
    """``min(T, 50)`` for deer, ``min(T, 100)`` for jacobi and elk, ``min(T, 200)``
    otherwise."""
    return int(max(0, min(int(length), _DEFAULT_MAX_ITERS[method])))


# ----------------------------------------------------------------------------- helpers

def _map_steps(fn: Callable, P: jax.Array, xs: Any) -> jax.Array:
    """``fn(P_t, x_t)`` for every ``t`` (``x_t = None`` when ``xs is None``)."""
    if xs is None:
        return jax.vmap(lambda p: fn(p, None))(P)
    return jax.vmap(fn)(P, xs)


def _shift(zs: jax.Array, first: jax.Array) -> jax.Array:
    return _sharding.shift(zs, first)


def _real_dtype(dtype):
    return jnp.finfo(dtype).dtype


def _colouring(structure: Structure, n: int, dtype) -> np.ndarray:
    """The ``(c, n)`` colouring tangents of the structure (``_jacobian.structure_tangents``)."""
    return structure_tangents(structure, n, dtype)


# Columns of Jacobians are handled time-major: ``cols[t, :, c] = J_t e_c`` (``(T, n, B)``),
# the layout in which batched JVPs come out fastest and the blocks need no transpose
# (measured on CPU, GRU D = 32, T = 4096: 6 ms against 17 ms for ``(B, T, n)``).

def _jacobian_from_cols(cols: jax.Array, structure: Structure, n: int) -> jax.Array:
    """``cols[t, :, c] = J_t e_c`` for the tangents of ``_colouring`` -> ``(T, m, k, k)``:
    the blocks, or for a coloured dense structure the ``(T, 1, n, n)`` Jacobians
    (``_jacobian.from_columns``)."""
    return from_columns(cols, structure, n)


def _diag_mask(structure: Structure) -> np.ndarray | None:
    """Where ``diag(J)`` may be nonzero, for a coloured structure (``None``: everywhere).
    With a column colouring ``(J e_{colour(i)})_i = J_ii`` only where ``S[i, i]`` (column
    ``i`` holds row ``i``, so no other column of its colour does); elsewhere ``J_ii = 0``."""
    if structure.colours is None:
        return None
    return np.diagonal(structure.pattern).copy()


# Seed of quasi-DEER's Hutchinson probes (fixed: plans and results are deterministic).
_HUTCHINSON_SEED = 20240607


def _hutchinson_probes(method: str, structure: Structure, kind: str, use_user: bool) -> int:
    """Rademacher probes for ``diag(J_t)`` (0: the exact diagonal): only for quasi-DEER
    (quasi-ELK's damped steps lose the "k steps exact after k iterations" guarantee, and
    did not converge with an estimated diagonal on Lorenz-96), and only where the exact
    diagonal costs more JVPs."""
    p = int(getattr(structure, "hutchinson", 0) or 0)
    if method != "quasi-deer" or kind != "diag" or use_user or p <= 0:
        return 0
    if structure.jacobian in ("zero", "diagonal"):
        return 0
    exact = structure.n_colours if structure.colours is not None else structure.blocks.shape[1]
    return p if p < exact else 0


def _rademacher(s: jax.Array, T: int, n: int, dtype) -> jax.Array:
    """``(len(s), T, n)`` signs ``±1``: bit 31 of a murmur3-finalised hash of ``(seed, s,
    t, i)``.  Deterministic on every backend, and cheap to compile inside the solver's
    loop (threefry's ``jax.random`` doubled quasi-DEER's compile time on CPU)."""
    u32 = jnp.uint32
    x = (s.astype(u32)[:, None, None] * u32(0x9E3779B1)
         + jnp.arange(T, dtype=u32)[None, :, None] * u32(0x85EBCA77)
         + jnp.arange(n, dtype=u32)[None, None, :] * u32(0xC2B2AE3D)
         + u32(_HUTCHINSON_SEED))
    x = x ^ (x >> u32(16))
    x = x * u32(0x85EBCA6B)
    x = x ^ (x >> u32(13))
    x = x * u32(0xC2B2AE35)
    x = x ^ (x >> u32(16))
    sign = 1 - 2 * (x >> u32(31)).astype(jnp.int32)
    return sign.astype(dtype)


def _diag_hutchinson(jvp_all: Callable, probes: int, T: int, n: int, dtype) -> jax.Array:
    """Hutchinson's estimate ``diag(J_t) ≈ (1/p) Σ_s v_{s,t} ⊙ (J_t v_{s,t})`` with ``p``
    Rademacher probes ``v_s`` (``(T, n)``, independent over steps, from a fixed seed), in
    groups of at most ``_DIAG_CHUNK_ELEMENTS`` entries.  Unbiased, not exact: only the
    solver uses it (quasi-DEER converges to the same trajectory; derivatives use the true
    Jacobians)."""
    rdt = _real_dtype(dtype)
    g = max(1, min(probes, _DIAG_CHUNK_ELEMENTS // max(1, T * n)))
    groups = -(-probes // g)

    def group(i):
        s = jnp.asarray(i, jnp.int32) * g + jnp.arange(g, dtype=jnp.int32)
        V = _rademacher(s, T, n, dtype)  # (g, T, n)
        JV = jax.vmap(jvp_all)(V)  # (g, T, n)
        return jnp.sum(jnp.where((s < probes)[:, None, None], V * JV,
                                 jnp.zeros((), dtype)), axis=0)

    if groups == 1:
        total = group(0)
    else:
        total = lax.fori_loop(0, groups, lambda i, acc: acc + group(i),
                              jnp.zeros((T, n), dtype))
    return total / jnp.asarray(probes, rdt).astype(dtype)


def _diag_from_cols(per_step: Callable, E: np.ndarray, T: int, n: int, dtype,
                    mask: np.ndarray | None = None) -> jax.Array:
    """``diag(J_t) = Σ_c e_c ⊙ (J_t e_c)`` with at most ``_DIAG_CHUNK_ELEMENTS`` entries of
    ``J`` alive at once (colours processed in groups by a ``lax.scan``); ``mask`` (``(n,)``
    bool, for a column colouring: ``_diag_mask``) zeroes the elements outside it."""
    k = E.shape[0]
    g = max(1, min(k, _DIAG_CHUNK_ELEMENTS // max(1, T * n)))
    keep = None if mask is None else jnp.asarray(mask)

    def contribution(e):
        cols = per_step(e)  # (T, n, g)
        on = e.T != 0       # (n, g)
        if keep is not None:
            on = on & keep[:, None]
        return jnp.sum(jnp.where(on, cols, 0), axis=-1)

    if g >= k:
        return contribution(jnp.asarray(E, dtype))
    groups = -(-k // g)
    Ep = np.zeros((groups * g, n), dtype=E.dtype)
    Ep[:k] = E

    def body(acc, e):
        return acc + contribution(e), None

    acc, _ = lax.scan(body, jnp.zeros((T, n), dtype), jnp.asarray(Ep.reshape(groups, g, n), dtype))
    return acc


def _tangent_columns(f: Flat, P: jax.Array, xs: Any) -> Callable:
    """``U (B, n) -> (T, n, B)`` with ``J_t u_b``, ``J_t = ∂f/∂z(P_t, x_t)``: forward-mode
    JVPs batched over the tangents at every step, as ``jacfwd`` does (3x faster on CPU than
    applying a ``jax.linearize``-d function to broadcast tangents)."""
    def per_step(U):
        def at(p, x):
            return jax.vmap(lambda u: jax.jvp(lambda z: f(z, x), (p,), (u,))[1],
                            out_axes=1)(U)
        return _map_steps(at, P, xs)
    return per_step


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


def _structured(per_step: Callable, structure: Structure, T: int, n: int, dtype):
    """The true Jacobians in the structure's form: ``("diag", (T, n))`` or
    ``("block", (T, m, k, k))``."""
    E = _colouring(structure, n, dtype)
    if structure.jacobian == "diagonal":
        return "diag", per_step(jnp.asarray(E))[:, :, 0]
    return "block", _jacobian_from_cols(per_step(jnp.asarray(E)), structure, n)


def _linear_recurrence(kind: str, a, b: jax.Array, h0: jax.Array, structure: Structure):
    """``h_t = A_t h_{t-1} + b_t`` with ``A`` given as ``kind``."""
    if kind == "zero":
        return b
    if kind == "diag":
        return _scan.diagonal_scan(a, b, h0)
    n = b.shape[1]
    bb = permute_in(b, structure.blocks)
    hb = _scan.block_scan(a, bb, permute_in(h0, structure.blocks))
    return permute_out(hb, structure.blocks, n)


def _apply(kind: str, a, P: jax.Array, structure: Structure) -> jax.Array:
    """``Ã_t P_t`` for every ``t``."""
    if kind == "zero":
        return jnp.zeros_like(P)
    if kind == "diag":
        return a * P
    n = P.shape[1]
    Pb = permute_in(P, structure.blocks)
    # one batched matrix-vector product (a broadcast-multiply-sum materialised T x m x k x k
    # products first: 70x slower at k = 32, measured in benchmarks/baselines.py)
    out = jnp.einsum("tmij,tmj->tmi", a, Pb, precision=lax.Precision.HIGHEST)
    return permute_out(out, structure.blocks, n)


def _sanitize(a):
    return None if a is None else jnp.where(jnp.isfinite(a), a, jnp.zeros_like(a))


# ----------------------------------------------------------------------------- Lyapunov

def _lyapunov_diag(a: jax.Array) -> jax.Array:
    """``max_i mean_t log|a_ti|`` (NaN entries skipped, ``|a|`` clipped to
    ``[tiny, max]`` so that zeros and overflowed entries count as very negative/positive)."""
    rdt = _real_dtype(a.dtype)
    fi = jnp.finfo(rdt)
    mag = jnp.abs(a).astype(rdt)
    keep = ~jnp.isnan(mag)
    logs = jnp.where(keep, jnp.log(jnp.clip(jnp.where(keep, mag, 1), fi.tiny, fi.max)), 0)
    valid = _sharding.valid_steps(a.shape[0])
    if valid is not None:
        keep = keep & valid.reshape((-1,) + (1,) * (a.ndim - 1))
        logs = jnp.where(keep, logs, 0)
    cnt = _sharding.reduce_sum(jnp.sum(keep, axis=0).astype(rdt))
    per = jnp.where(cnt > 0, _sharding.reduce_sum(jnp.sum(logs, axis=0)) / jnp.maximum(cnt, 1),
                    -jnp.inf)
    return jnp.max(per, initial=-jnp.inf).astype(rdt)


def _lyapunov_sweep(jvp_all: Callable, V: jax.Array, u0: jax.Array):
    """One power-iteration sweep along time (see the module docstring): ``V_t`` are unit
    vectors; returns ``(mean_t log|J_t V_{t-1}|, new V)`` with ``V_{-1} = u0``."""
    rdt = _real_dtype(V.dtype)
    tiny = jnp.finfo(rdt).tiny
    JV = jvp_all(_shift(V, u0))
    nrm = jnp.sqrt(jnp.sum(jnp.abs(JV).astype(rdt) ** 2, axis=-1))
    fin = jnp.isfinite(nrm)
    pos = fin & (nrm > tiny)
    counted = fin
    valid = _sharding.valid_steps(V.shape[0])
    if valid is not None:
        counted = fin & valid
    logs = jnp.where(counted, jnp.log(jnp.maximum(jnp.where(fin, nrm, 1), tiny)), 0)
    cnt = _sharding.reduce_sum(jnp.sum(counted).astype(rdt))
    lam = jnp.where(cnt > 0, _sharding.reduce_sum(jnp.sum(logs)) / jnp.maximum(cnt, 1),
                    jnp.asarray(0, rdt))
    scale = jnp.where(pos, nrm, 1).astype(JV.dtype)
    V = jnp.where(pos[:, None], JV / scale[:, None], u0[None])
    return lam.astype(rdt), V


# ----------------------------------------------------------------------------- the iteration

def _setup(method: str, structure: Structure, jacobian, n: int, dtype):
    """``(kind, use_user, lyap_exact, needs_jvp, E)`` for a method on a structure."""
    sk = structure.jacobian
    base = {"elk": "deer", "quasi-elk": "quasi-deer"}.get(method, method)
    if base == "jacobi" or (base in ("deer", "quasi-deer") and sk == "zero"):
        kind = "zero"
    elif base in ("picard", "quasi-deer") or sk == "diagonal":
        kind = "diag"  # picard: a = 1 of shape (T, 1)
    else:
        kind = "block"
    use_user = jacobian is not None and kind == "diag" and base != "picard"
    lyap_exact = kind == "diag" and sk == "diagonal" and base != "picard" and not use_user
    needs_jvp = kind in ("diag", "block") and base != "picard" and not use_user
    probes = _hutchinson_probes(method, structure, kind, use_user)
    E = _colouring(structure, n, dtype) if needs_jvp and not probes else None
    return kind, use_user, lyap_exact, needs_jvp, E


def _make_evaluate(f: Flat, method, structure, kind, jacobian, lyap_exact, needs_jvp, E,
                   n, dtype, want_jvp=True):
    """``evaluate(P, xs) -> (f(P), raw Ã at P, JVP V -> (J_t V_t)_t or None)``."""
    picard = method == "picard"
    probes = _hutchinson_probes(method, structure, kind, jacobian is not None)
    mask = _diag_mask(structure)

    def evaluate(P, xs):
        L = P.shape[0]
        if not needs_jvp:
            if lyap_exact or not want_jvp:
                fz, jvp_all = _map_steps(f, P, xs), None
            else:
                fz, jvp_all = jax.linearize(lambda Z: _map_steps(f, Z, xs), P)
            if kind == "zero":
                a = jnp.zeros((0,), dtype)
            elif picard:
                a = jnp.ones((L, 1), dtype)
            else:
                a = jnp.broadcast_to(
                    _map_steps(lambda p, x: jnp.asarray(jacobian(p, x)).astype(dtype), P, xs),
                    (L, n))
            return fz, a, jvp_all
        if kind == "block" or (lyap_exact and not probes):
            # Ã is the true Jacobian: the Lyapunov sweeps multiply by it directly (one
            # batched matrix product instead of a JVP through f), so no linearisation
            fz = _map_steps(f, P, xs)
            per_step = _tangent_columns(f, P, xs)
            if kind == "diag":
                return fz, _diag_from_cols(per_step, E, L, n, dtype, mask=mask), None
            a = _jacobian_from_cols(per_step(jnp.asarray(E)), structure, n)
            return fz, a, lambda V: _apply("block", a, V, structure)
        fz, jvp_all = jax.linearize(lambda Z: _map_steps(f, Z, xs), P)
        per_step = _tangent_columns(f, P, xs)
        if kind == "diag" and probes:
            a = _diag_hutchinson(jvp_all, probes, L, n, dtype)
        elif kind == "diag":
            a = _diag_from_cols(per_step, E, L, n, dtype, mask=mask)
        else:
            a = _jacobian_from_cols(per_step(jnp.asarray(E)), structure, n)
        return fz, a, jvp_all

    return evaluate


def _check_steps(z, fz, rtol, atol):
    """Per element: ``bad`` (fails the test) and the finite residual; see ``_check``."""
    rdt = _real_dtype(z.dtype)
    diff = jnp.abs(z - fz).astype(rdt)
    same_nonfinite = (~jnp.isfinite(z)) & (~jnp.isfinite(fz)) & (
        (jnp.isnan(z) & jnp.isnan(fz)) | (z == fz))
    bad = ~((diff <= atol + rtol * jnp.abs(z).astype(rdt)) | same_nonfinite)
    fin = jnp.where(jnp.isfinite(diff), diff, 0)
    valid = _sharding.valid_steps(z.shape[0])
    if valid is not None:  # padded steps (across devices) never count
        bad = bad & valid[:, None]
        fin = jnp.where(valid[:, None], fin, 0)
    return bad, fin, bad & ~jnp.isfinite(diff)


def _check(z, fz, rtol, atol):
    """``(max residual, inf for a non-finite disagreement; all steps pass)``."""
    rdt = _real_dtype(z.dtype)
    bad, fin, bad_nonfinite = _check_steps(z, fz, rtol, atol)
    res = jnp.max(fin, initial=0.0).astype(rdt)
    res = jnp.where(jnp.any(bad_nonfinite), jnp.inf, res).astype(rdt)
    return _sharding.reduce_max(res), ~_sharding.reduce_any(jnp.any(bad))


def _initial_a(kind, method, structure, T, n, dtype):
    if kind == "zero":
        return jnp.zeros((0,), dtype)
    if kind == "diag":
        return jnp.zeros((T, 1) if method == "picard" else (T, n), dtype)
    m, k = structure.blocks.shape
    return jnp.zeros((T, m, k, k), dtype)


def _lyapunov_tools(n, T, dtype, lyap_exact, enabled=True):
    rdt = _real_dtype(dtype)
    u0 = np.random.default_rng(20240531).standard_normal(n)
    u0 = jnp.asarray((u0 / max(float(np.linalg.norm(u0)), 1e-300)).astype(np.dtype(dtype)))
    V0 = jnp.broadcast_to(u0, (T, n))

    def lyapunov(a, jvp_all, V, first):
        if not enabled:  # lyapunov=False: no estimate (NaN never triggers the early stop)
            return jnp.asarray(jnp.nan, rdt), V
        if lyap_exact:
            return _lyapunov_diag(a), V
        sweeps = jnp.where(first, _LYAP_SWEEPS_FIRST, _LYAP_SWEEPS)

        def one(_, carry):
            return _lyapunov_sweep(jvp_all, carry[1], u0)

        return lax.fori_loop(0, sweeps, one, (jnp.asarray(0, rdt), V))

    return V0, lyapunov


def _iterate(f: Flat, z0, xs, guess, *, method, structure, rtol, atol, max_iters, jacobian,
             lyapunov=True):
    T, n = guess.shape
    dtype = guess.dtype
    rdt = _real_dtype(dtype)
    kind, use_user, lyap_exact, needs_jvp, E = _setup(method, structure, jacobian, n, dtype)
    ev = _make_evaluate(f, method, structure, kind, jacobian, lyap_exact, needs_jvp, E, n,
                        dtype)

    def evaluate(z):
        """``P = shift(z)``, ``f(P)``, the raw (unsanitised) ``Ã`` at ``P`` and the JVP
        ``V -> (J_t V_t)_t`` there (for the Lyapunov sweep; None where not needed)."""
        P = _shift(z, z0)
        fz, a, jvp_all = ev(P, xs)
        return P, fz, a, jvp_all

    V0, lyap = _lyapunov_tools(n, T, dtype, lyap_exact, lyapunov)

    # The loop starts at k = -1 with Ã = 0 and f(z̃_{t-1}) := guess, so that its first pass
    # "solves" z = guess exactly and evaluates there: the evaluation, Jacobians and
    # Lyapunov estimate are traced (and compiled) once.
    a0 = _initial_a(kind, method, structure, T, n, dtype)
    state0 = dict(k=jnp.asarray(-1, jnp.int32), z=guess, P=jnp.broadcast_to(z0, (T, n)),
                  fz=guess, a=a0, res=jnp.asarray(jnp.inf, rdt), ok=jnp.asarray(False),
                  lam=jnp.asarray(jnp.nan, rdt), V=V0,
                  hist=jnp.full((max_iters + 1,), jnp.nan, rdt), stop=jnp.asarray(False))

    def cond(s):
        return (s["k"] < 0) | (~s["ok"] & ~s["stop"] & (s["k"] < max_iters))

    def body(s):
        P, fz, a = s["P"], s["fz"], s["a"]
        z_new = _linear_recurrence(kind, a, fz - _apply(kind, a, P, structure), z0, structure)
        # reset: non-finite only where f itself produced a non-finite value
        z_new = jnp.where(jnp.isfinite(z_new) | ~jnp.isfinite(fz), z_new, fz)
        P, fz, a, jvp_all = evaluate(z_new)
        res, ok = _check(z_new, fz, rtol, atol)
        lam, V = lyap(a, jvp_all, s["V"], s["k"] < 0)
        k = s["k"] + 1
        hist = s["hist"].at[k].set(res)
        stalled = ~(res < s["res"])
        stop = (k >= _MIN_ITERS_BEFORE_STOP) & (lam > _DIVERGENCE_LYAPUNOV) & stalled & ~ok
        return dict(k=k, z=z_new, P=P, fz=fz, a=_sanitize(a), res=res, ok=ok, lam=lam, V=V,
                    hist=hist, stop=stop)

    s = lax.while_loop(cond, body, state0)
    stats = dict(iterations=s["k"], residual=s["res"], converged=s["ok"], lyapunov=s["lam"],
                 history=s["hist"][1:])
    return s["z"], stats


# ----------------------------------------------------------------------------- ELK

def _ct(M):
    """Conjugate transpose of the trailing two axes."""
    return jnp.conj(jnp.swapaxes(M, -1, -2))


def _mv(M, v):
    return jnp.einsum("...ij,...j->...i", M, v)


def _binv(M):
    """``M^{-1}`` for a batch of ``(k, k)`` matrices ``M`` (``k = 1``: a reciprocal).

    In-place Gauss--Jordan inversion with partial (row) pivoting, written with ``jnp`` ops
    in a ``fori_loop`` over the ``k`` columns (one trace of the step, whatever ``k``); the
    row interchanges become a column permutation of the result, applied at the end as a
    product with the one-hot permutation matrix.  Backward error at LAPACK's level
    (~1e-16 relative in float64 for k = 2..32 up to condition numbers 3e5).

    NOT ``lax.linalg.lu`` + ``triangular_solve`` (nor ``jnp.linalg.solve`` / ``inv``,
    which use them): on jaxlib 0.10 their LAPACK custom calls (``lapack_?trsm_ffi``, ...)
    split a large batch over XLA:CPU's intra-op thread pool and block the calling pool
    thread until the pieces are done.  When the thunk executor runs as many such calls
    concurrently as the pool has threads (the combine below had 2 independent solves; a
    2-core machine), every pool thread waits for work queued behind it and the program
    deadlocks at 0 % CPU (``benchmarks/repro_elk_hang.py``).  The matrices inverted here
    (``I + C J`` with ``C``, ``J`` Hermitian positive semi-definite, eigenvalues >= 1 but
    not Hermitian; the RTS smoother's ``F P F^H + I``) need the pivoting: a leading
    entry of ``I + C J`` can vanish."""
    k = M.shape[-1]
    if k == 1:
        return 1 / M
    rows = jnp.arange(k)

    def eliminate(j, carry):
        X, perm = carry
        col = lax.dynamic_index_in_dim(X, j, axis=-1, keepdims=False)        # (..., k)
        p = jnp.argmax(jnp.where(rows >= j, jnp.abs(col), -1), axis=-1)     # pivot row
        is_j, is_p = rows == j, rows == p[..., None]                        # (k,), (..., k)
        rj = lax.dynamic_index_in_dim(X, j, axis=-2, keepdims=True)         # (..., 1, k)
        rp = jnp.take_along_axis(X, p[..., None, None], axis=-2)            # (..., 1, k)
        X = jnp.where(is_j[:, None], rp, jnp.where(is_p[..., None], rj, X))  # swap j <-> p
        pj = lax.dynamic_index_in_dim(perm, j, axis=-1, keepdims=True)
        pp = jnp.take_along_axis(perm, p[..., None], -1)
        perm = jnp.where(is_j, pp, jnp.where(is_p, pj, perm))
        piv = lax.dynamic_index_in_dim(rp, j, axis=-1, keepdims=True)       # (..., 1, 1)
        f = jnp.where(is_j[:, None], 0, lax.dynamic_index_in_dim(X, j, axis=-1,
                                                                 keepdims=True))
        # in place: column j of the pivot row becomes 1 / piv, of the other rows -f / piv
        prow = jnp.where(is_j, 1, rp) / piv
        return jnp.where(is_j[:, None], prow, jnp.where(is_j, 0, X) - f * prow), perm

    perm0 = jnp.broadcast_to(rows, M.shape[:-1])
    X, perm = lax.fori_loop(0, k, eliminate, (M, perm0))
    # X = (P M)^{-1} = M^{-1} P^T for the row permutation (P M)_i = M_{perm_i}
    return X @ (perm[..., :, None] == rows).astype(M.dtype)


def _doubling_scan(combine, elems, identity):
    """Inclusive scan of an associative ``combine`` by recursive doubling (Hillis--Steele):
    ``ceil(log2 T)`` rounds of ``x_t <- combine(x_{t - 2^d}, x_t)`` in a ``fori_loop``, so
    ``combine`` is traced (and compiled) once -- unlike ``lax.associative_scan``, which
    unrolls about ``2 log2 T`` differently-shaped copies.  ``O(T log T)`` work."""
    T = jax.tree.leaves(elems)[0].shape[0]
    rounds = max(0, int(np.ceil(np.log2(max(T, 1)))))
    t = jnp.arange(T)

    def one(d, x):
        s = jnp.left_shift(1, d)
        prev = jax.tree.map(
            lambda leaf, e: jnp.where((t >= s).reshape((T,) + (1,) * e.ndim),
                                      jnp.roll(leaf, s, axis=0), e[None]), x, identity)
        new = combine(prev, x)
        return new

    return lax.fori_loop(0, rounds, one, elems)


def _kalman_smooth(F, c, y, lam):
    """Mean of ``p(z | y)`` for ``z_t = F_t z_{t-1} + c_t + w_t``, ``w_t ~ N(0, I)``,
    ``y_t = z_t + v_t``, ``v_t ~ N(0, λ I)``, ``F_0 = 0`` (``z_0``'s prior mean is ``c_0``),
    per block: ``F`` ``(T, m, k, k)``, ``c``, ``y`` ``(T, m, k)``.  Parallel Kalman filter
    (prefix scan of the Särkkä--García-Fernández elements) + RTS smoother (a reverse
    block scan of the means ``s_t = E_t s_{t+1} + g_t``)."""
    T, m, k = c.shape
    dt = c.dtype
    I = jnp.eye(k, dtype=dt)
    om = (lam / (1 + lam)).astype(dt)   # I - K with K = (1 + λ)^{-1} I
    kap = (1 / (1 + lam)).astype(dt)
    FH = _ct(F)
    A = om * F
    b = om * c + kap * y
    C = jnp.broadcast_to(om * I, F.shape)
    eta = kap * _mv(FH, y - c)
    J = kap * (FH @ F)

    def combine(ei, ej):
        Ai, bi, Ci, etai, Ji = ei
        Aj, bj, Cj, etaj, Jj = ej
        # (I + Ci Jj)^{-1}; its conjugate transpose is (I + Jj Ci)^{-1} (Ci, Jj Hermitian)
        Mi = _binv(I + Ci @ Jj)
        Ni = _ct(Mi)
        AjM = Aj @ Mi
        A_ = AjM @ Ai
        b_ = _mv(AjM, bi + _mv(Ci, etaj)) + bj
        C_ = AjM @ Ci @ _ct(Aj) + Cj
        AiHN = _ct(Ai) @ Ni
        eta_ = _mv(AiHN, etaj - _mv(Jj, bi)) + etai
        J_ = AiHN @ Jj @ Ai + Ji
        return A_, b_, 0.5 * (C_ + _ct(C_)), eta_, 0.5 * (J_ + _ct(J_))

    zero_v = jnp.zeros((m, k), dt)
    zero_m = jnp.zeros((m, k, k), dt)
    identity = (jnp.broadcast_to(I, (m, k, k)), zero_v, zero_m, zero_v, zero_m)
    _, mf, P, _, _ = _doubling_scan(combine, (A, b, C, eta, J), identity)
    if T == 1:
        return mf
    Fn, Pp = F[1:], P[:-1]
    G = Fn @ Pp @ _ct(Fn) + I
    Ek = Pp @ _ct(Fn) @ _binv(G)  # P F^H G^{-1}
    g = mf[:-1] - _mv(Ek, _mv(Fn, mf[:-1]) + c[1:])
    Ek = jnp.concatenate([Ek, jnp.zeros((1, m, k, k), dt)], 0)
    g = jnp.concatenate([g, mf[-1:]], 0)
    return _scan.block_scan(Ek, g, jnp.zeros((m, k), dt), reverse=True)


def _elk_step(kind, a, fz, P, z, z0, lam, structure):
    """The trust-region (ELK) subproblem at ``z̃ = z`` with the linearisation ``(fz, a)``
    at ``P = shift(z)``: the smoothed mean of the linear-Gaussian model."""
    T, n = z.shape
    b = fz - _apply(kind, a, P, structure)
    b = b.at[0].set(fz[0])  # z_{-1} = z0 is known: z_0's prior mean is f(z0, x_0)
    if kind == "zero":
        a = jnp.zeros((T, n), z.dtype)
    if kind in ("diag", "zero"):
        F = jnp.broadcast_to(a, (T, n))[..., None, None]
        F = F.at[0].set(0)
        zs = _kalman_smooth(F, b[..., None], z[..., None], lam)
        return zs[..., 0]
    F = a.at[0].set(0)
    blocks = structure.blocks
    zs = _kalman_smooth(F, permute_in(b, blocks), permute_in(z, blocks), lam)
    return permute_out(zs, blocks, n)


def _merit(z, fz):
    """``Σ |z_t - f(z_{t-1})|²`` (``inf`` when a difference is non-finite and not an
    agreement of equal non-finite values)."""
    rdt = _real_dtype(z.dtype)
    d = z - fz
    same = (~jnp.isfinite(z)) & (~jnp.isfinite(fz)) & ((jnp.isnan(z) & jnp.isnan(fz)) | (z == fz))
    fin = jnp.isfinite(d)
    val = jnp.sum(jnp.where(fin, jnp.abs(d).astype(rdt) ** 2, 0))
    return jnp.where(jnp.any(~fin & ~same), jnp.inf, val).astype(rdt)


def _iterate_elk(f: Flat, z0, xs, guess, *, method, structure, rtol, atol, max_iters,
                 jacobian, lyapunov=True):
    """ELK: Levenberg--Marquardt steps (see the module docstring)."""
    T, n = guess.shape
    dtype = guess.dtype
    rdt = _real_dtype(dtype)
    kind, use_user, lyap_exact, needs_jvp, E = _setup(method, structure, jacobian, n, dtype)
    ev = _make_evaluate(f, method, structure, kind, jacobian, lyap_exact, needs_jvp, E, n,
                        dtype)
    V0, lyap = _lyapunov_tools(n, T, dtype, lyap_exact, lyapunov)
    lam_max = _ELK_LAMBDA_MAX[jnp.dtype(rdt).itemsize >= 8]

    def evaluate(z):
        P = _shift(z, z0)
        fz, a, jvp_all = ev(P, xs)
        return P, fz, a, jvp_all

    # As in ``_iterate``, the loop starts at k = -1 with a pass that keeps z = guess and
    # evaluates there (one trace of the evaluation).
    a0 = _initial_a(kind, method, structure, T, n, dtype)
    state0 = dict(k=jnp.asarray(-1, jnp.int32), z=guess, P=jnp.broadcast_to(z0, (T, n)),
                  fz=guess, a=a0, phi=jnp.asarray(jnp.inf, rdt), tr=jnp.asarray(lam_max, rdt),
                  res=jnp.asarray(jnp.inf, rdt), ok=jnp.asarray(False),
                  lam=jnp.asarray(jnp.nan, rdt), V=V0,
                  hist=jnp.full((max_iters + 1,), jnp.nan, rdt), stop=jnp.asarray(False),
                  stalls=jnp.asarray(0, jnp.int32))

    def cond(s):
        return (s["k"] < 0) | (~s["ok"] & ~s["stop"] & (s["k"] < max_iters))

    def body(s):
        z, P, fz, a, tr = s["z"], s["P"], s["fz"], s["a"], s["tr"]
        first = s["k"] < 0
        z_new = jnp.where(first, z, _elk_step(kind, a, fz, P, z, z0, tr, structure))
        z_new = jnp.where(jnp.isfinite(z_new) | ~jnp.isfinite(fz), z_new, fz)
        # the model's residual at z_new: what the linearisation predicts
        Pn = _shift(z_new, z0)
        model = _merit(z_new, fz + _apply(kind, a, Pn - P, structure))
        P2, fz2, a2, jvp2 = evaluate(z_new)
        phi2 = _merit(z_new, fz2)
        res2, ok2 = _check(z_new, fz2, rtol, atol)
        lam2, V2 = lyap(a2, jvp2, s["V"], first)
        phi = s["phi"]
        pred = phi - model
        actual = phi - phi2
        rho = jnp.where(pred > 0, actual / jnp.where(pred > 0, pred, 1), -1)
        accept = first | ok2 | (jnp.isfinite(phi2) & (phi2 < phi))
        tr_new = jnp.where(first, tr, jnp.where(~accept, tr * _ELK_SHRINK,
                           jnp.where(rho > 0.75, tr * _ELK_GROW,
                                     jnp.where(rho < 0.25, tr * 0.5, tr))))
        tr_new = jnp.clip(tr_new, 0, lam_max).astype(rdt)
        pick = lambda new, old: jax.tree.map(  # noqa: E731
            lambda x, y: jnp.where(accept, x, y), new, old)
        z, P, fz, a, phi, res, ok, lam, V = pick(
            (z_new, P2, fz2, _sanitize(a2), phi2, res2, ok2, lam2, V2),
            (z, P, fz, a, phi, s["res"], s["ok"], s["lam"], s["V"]))
        k = s["k"] + 1
        hist = s["hist"].at[k].set(res)
        stalled = ~first & ~(phi < (1 - _ELK_STALL) * s["phi"])
        stalls = jnp.where(stalled, s["stalls"] + 1, 0).astype(jnp.int32)
        stop = ~ok & ((tr_new < _ELK_LAMBDA_MIN)  # the trust region collapsed
                      | ((k >= _MIN_ITERS_BEFORE_STOP) & (lam > _DIVERGENCE_LYAPUNOV)
                         & (stalls >= _ELK_STALL_ITERS)))
        return dict(k=k, z=z, P=P, fz=fz, a=a, phi=phi, tr=tr_new, res=res, ok=ok, lam=lam,
                    V=V, hist=hist, stop=stop, stalls=stalls)

    s = lax.while_loop(cond, body, state0)
    stats = dict(iterations=s["k"], residual=s["res"], converged=s["ok"], lyapunov=s["lam"],
                 history=s["hist"][1:])
    return s["z"], stats


# ----------------------------------------------------------------------------- windows

def _iterate_windowed(f: Flat, z0, xs, guess, *, method, structure, rtol, atol, max_iters,
                      jacobian, window):
    """Sliding-window iteration (see the module docstring): one method step per sweep on
    ``window`` steps starting at the first step not yet accepted."""
    T, n = guess.shape
    W = int(window)
    dtype = guess.dtype
    rdt = _real_dtype(dtype)
    kind, use_user, lyap_exact, needs_jvp, E = _setup(method, structure, jacobian, n, dtype)
    ev = _make_evaluate(f, method, structure, kind, jacobian, lyap_exact, needs_jvp, E, n,
                        dtype, want_jvp=False)
    idx = jnp.arange(W, dtype=jnp.int32)

    def slice_xs(w0):
        if xs is None:
            return None
        return jax.tree.map(lambda leaf: lax.dynamic_slice_in_dim(leaf, w0, W, 0), xs)

    def mask_a(a, keep):
        if kind == "zero":
            return a
        shape = (W,) + (1,) * (a.ndim - 1)
        return jnp.where(keep.reshape(shape), jnp.zeros_like(a), a)

    state0 = dict(k=jnp.asarray(0, jnp.int32), s=jnp.asarray(0, jnp.int32), z=guess,
                  res=jnp.asarray(0, rdt), hist=jnp.full((max_iters,), jnp.nan, rdt))

    def cond(s):
        return (s["s"] < T) & (s["k"] < max_iters)

    def body(s):
        start, z = s["s"], s["z"]
        w0 = jnp.minimum(start, T - W)
        zw = lax.dynamic_slice_in_dim(z, w0, W, 0)
        prev = jnp.where(w0 > 0, z[jnp.maximum(w0 - 1, 0)], z0)
        P = _shift(zw, prev)
        fz, a, _ = ev(P, slice_xs(w0))
        bad, fin, bad_nonfinite = _check_steps(zw, fz, rtol, atol)
        step_bad = jnp.any(bad, axis=-1) & (idx >= start - w0)
        first_bad = jnp.where(jnp.any(step_bad), jnp.argmax(step_bad), W).astype(jnp.int32)
        final = idx < first_bad            # accepted (before or now)
        newly = final & (idx >= start - w0)
        res = jnp.maximum(s["res"], jnp.max(jnp.where(newly[:, None], fin, 0), initial=0.0))
        # one method step on the rest of the window, the accepted prefix held fixed
        a = _sanitize(a)
        b = jnp.where(final[:, None], zw, fz - _apply(kind, a, P, structure))
        zn = _linear_recurrence(kind, mask_a(a, final), b, prev, structure)
        zn = jnp.where(jnp.isfinite(zn) | ~jnp.isfinite(fz), zn, fz)
        zn = jnp.where(final[:, None], zw, zn)
        wres = jnp.max(jnp.where(bad_nonfinite, jnp.inf, fin), initial=0.0).astype(rdt)
        return dict(k=s["k"] + 1, s=w0 + first_bad, z=lax.dynamic_update_slice_in_dim(z, zn, w0, 0),
                    res=res.astype(rdt), hist=s["hist"].at[s["k"]].set(wres))

    s = lax.while_loop(cond, body, state0)
    ok = s["s"] >= T

    def full_residual(z):
        fz = _map_steps(f, _shift(z, z0), xs)
        return _check(z, fz, rtol, atol)[0]

    res = lax.cond(ok, lambda z: s["res"], full_residual, s["z"])
    stats = dict(iterations=s["k"], residual=res.astype(rdt), converged=ok,
                 lyapunov=jnp.asarray(jnp.nan, rdt), history=s["hist"])
    return s["z"], stats


# ----------------------------------------------------------------------------- tangent solve

def _tangent_solve(g: Callable, y: jax.Array, structure: Structure) -> jax.Array:
    """Solve ``g(x) = y`` for ``g(V)_t = V_t - J_t V_{t-1}``: ``x_t = J_t x_{t-1} + y_t``."""
    T, n = y.shape
    if structure.jacobian == "zero":
        return y
    kind, a = _structured(_shift_per_step(g, T, n), structure, T, n, y.dtype)
    # A_0 = 0 (row 0 of the extraction), so h_{-1} does not matter; it is taken as y_0 rather
    # than a constant zero because custom_linear_solve only transposes when every
    # right-hand side (here b and h0) is linear in the cotangent.
    return _linear_recurrence(kind, a, y, _sharding.from_first_step(y[0]), structure)


# ----------------------------------------------------------------------------- public

def solve_nonlinear(f, z0, xs, *, method, structure, length, rtol, atol, max_iters=None,
                    init=None, jacobian=None, window=None, lyapunov=True):
    """All ``T = length`` states of ``z_t = f(z_{t-1}, x_t)``, ``z_{-1} = z0``, in parallel.

    Args:
      f: ``f(z, x) -> z'`` on the flat state (``x``: this step's pytree of inputs, or
        ``None`` when ``xs is None``).  May close over arrays (they get exact derivatives).
      z0: ``(n,)`` initial state (float or complex).
      xs: pytree of arrays with leading axis ``length``, or ``None``.
      method: ``"deer"``, ``"quasi-deer"``, ``"picard"``, ``"jacobi"``, ``"elk"`` or
        ``"quasi-elk"``.
      structure: the (sound) Jacobian structure from ``passes._structure``.
      length: ``T``.
      rtol, atol: stopping test ``|z_t - f(z_{t-1}, x_t)| <= atol + rtol |z_t|``.
      max_iters: most linear solves; default :func:`default_max_iters` (never above ``T``).
      init: optional ``(length, n)`` initial guess; default ``z̃_t = f(z0, x_t)``.
      jacobian: optional ``jacobian(z, x) -> (n,)`` diagonal approximation of ``∂f/∂z``,
        used as ``Ã`` by ``quasi-deer`` (and by ``deer`` on a diagonal structure); the
        derivatives always use the true Jacobians.
      lyapunov: estimate the largest Lyapunov exponent while iterating and stop early on
        chaos (default); ``False`` skips the sweeps (``lyapunov`` NaN in the stats) for
        models known to be contractive.
      window: ``None`` (iterate on the whole sequence) or ``W >= 1``: sliding windows of
        ``W`` steps (deer, quasi-deer, picard, jacobi; ``W >= T`` is the whole sequence);
        ``max_iters`` then counts sweeps, default ``T + 1`` (always enough).

    Returns:
      ``(zs, stats)``: ``zs`` of shape ``(length, n)``; ``stats`` a dict of arrays:
      ``iterations`` (int32, linear solves done), ``residual`` (final
      ``max_t |z_t - f(z_{t-1}, x_t)|``, ``inf`` for a non-finite disagreement),
      ``converged`` (bool), ``lyapunov`` (largest-Lyapunov-exponent estimate per step along
      the final iterate), ``history`` (residual after iteration ``i+1`` at index ``i``,
      shape ``(max_iters,)``, NaN past the last; with windows: the largest residual
      in the window at sweep ``i``), ``sweeps`` (int32, = ``iterations``: linear solves
      or window sweeps) and ``evaluations`` (int32: single-step evaluations of ``f``
      done, to compare with ``T`` for the sequential loop; JVPs not counted).
    """
    if method not in METHODS:
        raise PlanError(f"unknown nonlinear method {method!r}; expected one of {METHODS}")
    z0 = jnp.asarray(z0)
    if z0.ndim != 1:
        raise StepFunctionError(f"solve_nonlinear: z0 must be a flat (n,) state, got {z0.shape}")
    n, dtype = z0.shape[0], z0.dtype
    T = int(length)
    T_all = _sharding.global_length(T)  # the whole sequence when split across devices
    if _sharding.current() is not None and (window is not None or method in ("elk", "quasi-elk")):
        raise PlanError(f"{'window=' if window is not None else 'method ' + repr(method)} is not "
                        "available across devices yet; use deer, quasi-deer, picard or jacobi "
                        "without a window.")
    if window is not None:
        W = int(window)
        if W < 1:
            raise PlanError(f"window must be >= 1, got {window!r}")
        if method not in WINDOW_METHODS:
            raise PlanError(f"window is not supported with method {method!r}; use one of "
                            f"{WINDOW_METHODS}")
        window = None if W >= T else W
    if max_iters is None:
        max_iters = default_max_iters(method, T_all) if window is None else T + 1
    max_iters = int(max_iters)
    if max_iters < 0:
        raise PlanError(f"max_iters must be >= 0, got {max_iters}")
    rdt = _real_dtype(dtype)
    if T == 0:
        stats = dict(iterations=jnp.asarray(0, jnp.int32), residual=jnp.asarray(0, rdt),
                     converged=jnp.asarray(True), lyapunov=jnp.asarray(jnp.nan, rdt),
                     history=jnp.full((max_iters,), jnp.nan, rdt),
                     sweeps=jnp.asarray(0, jnp.int32), evaluations=jnp.asarray(0, jnp.int32))
        return jnp.zeros((0, n), dtype), stats

    if init is None:
        guess = _map_steps(lambda p, x: f(p, x), jnp.broadcast_to(z0, (T, n)), xs)
    else:
        guess = jnp.asarray(init)
        if guess.shape != (T, n):
            raise StepFunctionError(
                f"solve_nonlinear: init must have shape {(T, n)}, got {guess.shape}")
    guess = lax.stop_gradient(guess.astype(dtype))

    def F(zs):
        return zs - _map_steps(f, _shift(zs, z0), xs)

    def solve(_F, guess):
        kw = dict(method=method, structure=structure, rtol=rtol, atol=atol,
                  max_iters=max_iters, jacobian=jacobian)
        if window is not None:
            zs, stats = _iterate_windowed(f, z0, xs, guess, window=window, **kw)
        elif method in ("elk", "quasi-elk"):
            zs, stats = _iterate_elk(f, z0, xs, guess, lyapunov=lyapunov, **kw)
        else:
            zs, stats = _iterate(f, z0, xs, guess, lyapunov=lyapunov, **kw)
        # aux values travel through custom_root's custom_jvp: keep them inexact
        aux = dict(iterations=stats["iterations"].astype(rdt),
                   converged=stats["converged"].astype(rdt), residual=stats["residual"],
                   lyapunov=stats["lyapunov"], history=stats["history"])
        return zs, aux

    def tangent_solve(g, y):
        return _tangent_solve(g, y, structure)

    zs, aux = lax.custom_root(F, guess, solve, tangent_solve, has_aux=True)
    aux = lax.stop_gradient(aux)
    its = aux["iterations"].astype(jnp.int32)
    ok = aux["converged"] > 0
    evals = jnp.asarray(T_all if init is None else 0, jnp.int32)
    if window is None:  # the k = -1 pass evaluates at the guess, then one per iteration
        evals = evals + (its + 1) * T_all
    else:  # one window per sweep, plus the full residual when not converged
        evals = evals + its * window + jnp.where(ok, 0, T).astype(jnp.int32)
    stats = dict(iterations=its, residual=aux["residual"], converged=ok,
                 lyapunov=aux["lyapunov"], history=aux["history"], sweeps=its,
                 evaluations=evals)
    return zs, stats


__all__ = ["solve_nonlinear", "default_max_iters", "METHODS", "WINDOW_METHODS"]
