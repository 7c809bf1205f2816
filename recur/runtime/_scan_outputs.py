r"""The ``scan`` method with per-step outputs: chunk-boundary states only.

For ``recur.lax.scan`` with outputs ``y_t = g(h_{t-1}, x_t)`` and an affine carry step
``h_t = A_t h_{t-1} + b_t``, storing all ``T`` states (and their ``T`` coefficients) is the
cost the outputs do not need.  With chunks of ``C`` steps (``K = ⌊T / C⌋`` of them):

1. **Boundary states.**  The chunk map ``G_k(h) = f(·, x_{kC + C - 1}) ∘ … ∘ f(h, x_{kC})``
   is affine too, ``G_k(h) = M_k h + c_k``, with ``M_k = A_{kC+C-1} ⋯ A_{kC}`` in the same
   structure when the structure is closed under products (zero, diagonal / scalar, the same
   blocks; a coloured sparse pattern is not, and keeps the all-states path:
   ``Plan.boundary_chunk`` decides, and picks ``C``).  So the
   boundary states ``H_k = h_{kC + C - 1}`` solve the affine recurrence ``H_k = G_k(H_{k-1})``
   of length ``K`` -- the ``scan`` method itself (``_affine.solve_affine``) applied to the
   chunk map, with its coefficients read off JVPs of ``G_k`` (a ``lax.scan`` of ``C`` steps,
   batched over the chunks) and its exact derivatives (``custom_linear_solve``).
2. **Outputs.**  Inside every chunk (all chunks at once, ``vmap``) the user's body runs
   ``C`` steps from ``H_{k-1}`` (``H_{-1} = h_0``) and emits ``y``; the last ``T - K C``
   steps run from ``H_{K-1}`` as one short loop, which also gives the final carry.
3. **The check.**  Every state inside a chunk is the step's own value, so the trajectory can
   be wrong only where chunks meet: the body's end state of chunk ``k`` must agree with the
   scan's ``H_k`` (the step test of ``_checks.py``).  ``Info.residual`` is the largest such
   disagreement; a failure falls back to the loop (or raises, per ``on_failure``).

Memory: the ``K`` boundary states and chunk coefficients, the ``T`` outputs, and the
``K × C`` chunked inputs -- never ``T`` states or ``T`` coefficients.  Work: about one JVP
per colour per step for the coefficients plus one body evaluation per step; depth
``2C + O(log K)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._coefficients import DiagForm, ZeroForm, jacobian_form, structured_from_jvp
from .._ir import Structure
from . import _checks
from ._affine import solve_affine
from ._result import Reason, StageStats

def _split(xs, K: int, C: int):
    """``(chunked, tail)``: the first ``K C`` steps as ``(K, C, ...)``, the rest."""
    if xs is None:
        return None, None
    chunked = [jnp.reshape(v[:K * C], (K, C) + v.shape[1:]) for v in xs]
    return chunked, [v[K * C:] for v in xs]


def _forward_coefficients(f, xs, n: int, dtype, structure: Structure, length: int):
    """``coefficients`` of the chunk maps by forward-mode JVPs alongside the primal (one
    loop per tangent batch): ``jax.linearize`` of a ``C``-step loop would store its ``C``
    residuals per chunk -- all ``T`` of them."""
    zeros = jnp.zeros((n,), dtype)
    form = jacobian_form(structure, n)

    def one(x):
        g = lambda z: f(z, x)  # noqa: E731
        if isinstance(form, ZeroForm):
            return jnp.zeros((0,), dtype), g(zeros)
        if isinstance(form, DiagForm):
            b, a = jax.jvp(g, (zeros,), (jnp.ones((n,), dtype),))
            return a, b
        b = g(zeros)
        a = structured_from_jvp(lambda t: jax.jvp(g, (zeros,), (t,))[1], n, dtype, structure)
        return a, b

    if xs is None:
        a, b = one(None)
        return jnp.broadcast_to(a, (length,) + a.shape), jnp.broadcast_to(b, (length, n))
    return jax.vmap(one)(xs)


def _emit(body, starts, x_chunks, K: int, C: int):
    """``(end states, ys as (K, C, ...))``: the body from every chunk's start at once, the
    inputs read by index (no transposed copy) and the outputs written in place."""
    def y_shapes():
        x0 = [] if x_chunks is None else [v[:, 0] for v in x_chunks]
        return jax.eval_shape(jax.vmap(body), starts, x0)[1]

    buffers = [jnp.zeros((K, C) + s.shape[1:], s.dtype) for s in y_shapes()]

    def one(i, carry):
        h, bufs = carry
        x = [] if x_chunks is None else [v[:, i] for v in x_chunks]
        h, y = jax.vmap(body)(h, x)
        return list(h), [b.at[:, i].set(v) for b, v in zip(bufs, y)]

    return jax.lax.fori_loop(0, C, one, (list(starts), buffers))


def scan_outputs(f_s, body, view, z0, h_leaves, xs, structure: Structure, T: int, C: int,
                 tol, *, check: bool, on_failure: str, raiser=None):
    """``(final carry leaves, ys leaves, StageStats)`` (module docstring); ``f_s`` the
    stage's flat step ``(z, x) -> z'``, ``body`` the user's ``(h leaves, x) -> (h', y)``,
    ``xs`` in processing order (a list of leaves, or None)."""
    K = T // C
    x_chunks, x_tail = _split(xs, K, C)

    def chunk_map(z, xc):
        # indexed, not scanned: under vmap over the chunks a scan over ``xc`` would first
        # transpose every input to (C, K, ...) -- a copy as large as the inputs
        def one(i, z):
            return f_s(z, None if xc is None else [v[i] for v in xc])
        return jax.lax.fori_loop(0, C, one, z)

    H = solve_affine(chunk_map, z0, x_chunks, structure, K,
                     coefficients_of=_forward_coefficients)                 # (K, n)
    starts = jnp.concatenate([z0[None], H[:-1]], axis=0)
    ends, ys = _emit(body, jax.vmap(view.scatter)(starts), x_chunks, K, C)
    ys = [jnp.reshape(v, (K * C,) + v.shape[2:]) for v in ys]
    last = [v[-1] for v in ends]
    if T > K * C:
        last, tail = jax.lax.scan(lambda h, x: body(h, [] if x is None else x), last, x_tail,
                                  length=T - K * C)
        ys = [jnp.concatenate([a, b], axis=0) for a, b in zip(ys, tail)]
    result = (list(last), ys)

    evals = T + K * C + 1
    if not check:
        return result[0], result[1], StageStats.make(
            iterations=1, residual=jnp.nan, reason=Reason.NOT_CHECKED, evaluations=evals,
            real_dtype=jnp.finfo(z0.dtype).dtype)
    res, ok = _checks.check(H, jax.vmap(view.gather)(ends), tol.rtol, tol.atol)
    res, ok = jax.lax.stop_gradient(res), jax.lax.stop_gradient(ok)
    fell_back = jnp.asarray(False)
    if on_failure == "sequential":
        def loop():
            final, ys_all = jax.lax.scan(lambda h, x: body(h, [] if x is None else x),
                                         list(h_leaves), xs, length=T)
            return list(final), list(ys_all)
        result = _checks.with_fallback(result, ok, loop)
        fell_back = ~ok
    elif raiser is not None:
        raiser(ok, res, "scan")
    reason = jnp.where(ok, Reason.CONVERGED,
                       jnp.where(jnp.isfinite(res), Reason.CHECK_FAILED, Reason.NON_FINITE))
    st = StageStats.make(iterations=1, residual=res, converged=ok, fell_back=fell_back,
                         reason=reason, evaluations=evals + jnp.where(fell_back, T, 0),
                         real_dtype=jnp.finfo(z0.dtype).dtype)
    return result[0], result[1], st


__all__ = ["scan_outputs"]
