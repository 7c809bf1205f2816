r"""The ``scan`` method: exact evaluation of an affine recurrence, with exact derivatives.

For an affine step ``f(h, x_t) = A_t h + b_t`` the whole trajectory solves the
block-bidiagonal linear system ``L h = r``,

    (L h)_t = h_t - A_t h_{t-1}   (h_{-1} := 0),      r_0 = f(h_0, x_0),  r_t = b_t = f(0, x_t),

and ``L^{-1}`` is one associative scan with the coefficients ``A_t`` extracted from JVPs of
``f`` at the structure's cost (``recur/_coefficients.py``).  The solve is wrapped in
``jax.lax.custom_linear_solve`` with

* ``matvec``: ``L`` through ``jax.linearize`` of the batched step at ``h = 0`` -- the linear
  part only, so ``custom_linear_solve`` can transpose it even when the step branches on its
  inputs (``lax.cond`` under ``vmap`` becomes a ``select`` whose predicate is not linear);
  it closes over ``x``, params and closed-over arrays, so their derivatives are the exact
  derivatives of the sequential recurrence: ``dh = L^{-1} (dr - dL h)``;
* ``solve``: the forward scan with ``A_t``;
* ``transpose_solve``: the adjoint ``λ_t = g_t + A_{t+1}^T λ_{t+1}``, a reverse scan.

So ``jax.jvp`` (forward mode) and ``jax.grad``/``jax.vjp`` (reverse mode, via the
transpose) are both exact, and nothing differentiates through the scan's internals.
``reverse=True`` is handled by the caller by flipping time.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from .._coefficients import DiagForm, ZeroForm, jacobian_form, structured_from_jvp, \
    diagonal_from_jvp
from .._ir import Structure
from . import _linear, _sharding
from ._jacobian import map_steps

Flat = Callable[[jax.Array, Any], jax.Array]


def coefficients(f: Flat, xs, n: int, dtype, structure: Structure, length: int):
    """Per step: ``A_t`` in the structure's form and ``b_t = f(0, x_t)``."""
    zeros = jnp.zeros((n,), dtype)
    form = jacobian_form(structure, n)

    def one(x):
        b, jvp = jax.linearize(lambda z: f(z, x), zeros)
        if isinstance(form, ZeroForm):
            a = jnp.zeros((0,), dtype)
        elif isinstance(form, DiagForm):
            a = diagonal_from_jvp(jvp, n, dtype)
        else:
            a = structured_from_jvp(jvp, n, dtype, structure)  # blocks, or colours
        return a, b

    if xs is None:
        a, b = one(None)
        return (jnp.broadcast_to(a, (length,) + a.shape), jnp.broadcast_to(b, (length, n)))
    return jax.vmap(one)(xs)


def solve_affine(f: Flat, z0: jax.Array, xs: Any, structure: Structure, length: int,
                 chunk: int | None = None, coefficients_of=coefficients):
    """All ``T`` states of the affine recurrence ``z_t = f(z_{t-1}, x_t)``, ``z_{-1} = z0``
    (``coefficients_of``: how ``(A_t, b_t)`` are read off ``f``, ``coefficients``'s
    signature)."""
    n, dtype = z0.shape[0], z0.dtype
    if length == 0:
        return jnp.zeros((0, n), dtype)
    form = jacobian_form(structure, n)
    a, b = coefficients_of(f, xs, n, dtype, structure, length)
    a = jax.lax.stop_gradient(a)  # used by the solves only; derivatives come from matvec
    x0 = None if xs is None else jax.tree_util.tree_map(lambda v: v[0], xs)
    first = f(z0, x0)
    if _sharding.current() is not None:  # only the device holding global step 0 starts at z0
        first = jnp.where(_sharding.position(_sharding.current()) == 0, first, b[0])
    rhs = b.at[0].set(first)
    zeros = jnp.zeros((n,), dtype)
    _, jacobian = jax.linearize(lambda Z: map_steps(f, Z, xs), jnp.zeros((length, n), dtype))

    def matvec(zs):
        return zs - jacobian(_sharding.shift(zs, zeros))

    def solve(_, r):
        return _linear.solve(form, a, r, zeros, chunk=chunk)

    def transpose_solve(_, g):
        at = form.transpose(_sharding.shift_back(a, jnp.zeros_like(a[0])))
        return _linear.solve(form, at, g, zeros, reverse=True, chunk=chunk)

    return jax.lax.custom_linear_solve(matvec, rhs, solve, transpose_solve)


__all__ = ["solve_affine", "coefficients"]
