r"""The ``scan`` method: exact evaluation of an affine recurrence, with exact derivatives.

For an affine step ``f(h, x_t) = A_t h + b_t`` the whole trajectory solves the
block-bidiagonal linear system ``L h = r``,

    (L h)_t = h_t - A_t h_{t-1}   (h_{-1} := 0),      r_0 = f(h_0, x_0),  r_t = b_t = f(0, x_t),

and ``L^{-1}`` is one associative scan with the coefficients ``A_t`` extracted from a JVP
of ``f`` at the structure's cost (``runtime/_jacobian.py``).  The solve is wrapped in
``jax.lax.custom_linear_solve`` with

* ``matvec``: ``L`` written through ``jax.jvp`` of the user's ``f`` (linear in ``h``,
  closes over ``x``, params and closed-over arrays, so their derivatives are the exact
  derivatives of the sequential recurrence: ``dh = L^{-1} (dr - dL h)``);
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

from ..passes._structure import Structure
from . import _scan, _sharding
from ._jacobian import diagonal_from_jvp, permute_in, permute_out, structured_from_jvp

Flat = Callable[[jax.Array, Any], jax.Array]


def _coefficients(f: Flat, xs, n: int, dtype, structure: Structure, length: int):
    """Per step: ``b_t = f(0, x_t)`` and ``A_t`` in the structure's layout."""
    zeros = jnp.zeros((n,), dtype)
    kind = structure.jacobian

    def one(x):
        b, jvp = jax.linearize(lambda z: f(z, x), zeros)
        if kind == "zero":
            a = jnp.zeros((0,), dtype)
        elif kind == "diagonal":
            a = diagonal_from_jvp(jvp, n, dtype)
        else:
            a = structured_from_jvp(jvp, n, dtype, structure)  # blocks, or colours
        return a, b

    if xs is None:
        a, b = one(None)
        return (jnp.broadcast_to(a, (length,) + a.shape), jnp.broadcast_to(b, (length, n)))
    return jax.vmap(one)(xs)


def _scan_with(a, rhs, structure: Structure, *, transpose: bool):
    """Solve ``h_t = A_t h_{t-1} + rhs_t`` (h_{-1}=0), or with ``transpose`` the adjoint
    ``λ_t = A_{t+1}^T λ_{t+1} + rhs_t`` (λ_T = 0)."""
    T, n = rhs.shape
    kind = structure.jacobian
    if kind == "zero":
        return rhs
    if transpose:
        a = _sharding.shift_back(a, jnp.zeros_like(a[0]))
        if kind != "diagonal":
            a = jnp.swapaxes(a, -1, -2)
    if kind == "diagonal":
        return _scan.diagonal_scan(a, rhs, jnp.zeros((n,), rhs.dtype), reverse=transpose)
    rb = permute_in(rhs, structure.blocks)
    hb = _scan.block_scan(a, rb, jnp.zeros(rb.shape[1:], rhs.dtype), reverse=transpose)
    return permute_out(hb, structure.blocks, n)


def solve_affine(f: Flat, z0: jax.Array, xs: Any, structure: Structure, length: int):
    """All ``T`` states of the affine recurrence ``z_t = f(z_{t-1}, x_t)``, ``z_{-1} = z0``."""
    n, dtype = z0.shape[0], z0.dtype
    if length == 0:
        return jnp.zeros((0, n), dtype)
    a, b = _coefficients(f, xs, n, dtype, structure, length)
    a = jax.lax.stop_gradient(a)  # used by the solves only; derivatives come from matvec
    x0 = None if xs is None else jax.tree_util.tree_map(lambda v: v[0], xs)
    first = f(z0, x0)
    if _sharding.current() is not None:  # only the device holding global step 0 starts at z0
        first = jnp.where(_sharding.position(_sharding.current()) == 0, first, b[0])
    rhs = b.at[0].set(first)
    zeros = jnp.zeros((n,), dtype)

    def apply_jacobian(prev):
        def one(x, p):
            return jax.jvp(lambda z: f(z, x), (zeros,), (p,))[1]
        if xs is None:
            return jax.vmap(lambda p: one(None, p))(prev)
        return jax.vmap(one)(xs, prev)

    def matvec(zs):
        return zs - apply_jacobian(_sharding.shift(zs, zeros))

    def solve(_, r):
        return _scan_with(a, r, structure, transpose=False)

    def transpose_solve(_, g):
        return _scan_with(a, g, structure, transpose=True)

    return jax.lax.custom_linear_solve(matvec, rhs, solve, transpose_solve)


__all__ = ["solve_affine"]
