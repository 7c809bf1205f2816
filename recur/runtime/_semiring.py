r"""The ``semiring`` method: an exact associative scan in the stage's own algebra.

For a stage that is linear over a semiring (``recur/_semiring_algebra.py``; the pass is
``passes/_semiring.py``), ``z_t = A_t ⊗ z_{t-1} ⊕ b_t``, and the trajectory is the prefix
"sum" of the affine maps ``(A_t, b_t)`` under

.. math::  (A_2, b_2) ∘ (A_1, b_1) = (A_2 ⊗ A_1,\; A_2 ⊗ b_1 ⊕ b_2).

Coefficients
------------
Read off values, exactly, at every step at once: ``b_t`` is the step in ``"offset"`` mode
(every purely linear value replaced by ``0̄``); column ``c`` of ``A_t`` is the step in
``"linear"`` mode (offsets ``0̄``, normalisers ``1̄``) at the unit vector ``1̄`` on the
``c``-th element of every block and ``0̄`` elsewhere (the structure's column colouring, as
for the Jacobians of ``recur/_coefficients.py``: one evaluation per column of a block,
one in all for a diagonal stage).

The kernel
----------
The chunked scheme of ``_scan.py`` with ``⊕``/``⊗`` for ``+``/``×``: cut time into chunks
of ``L``; **reduce** every chunk to its composed map (one ``lax.scan`` over the ``L``
positions, vectorised over the chunks); **combine** the chunk maps by the same kernel
recursively (the state entering each chunk); **rescan** every chunk from there.  ``L = T``
(the CPU default, ``_scan.default_chunk``) is the plain loop over the extracted maps; on
accelerators ``L = 64``.  Products are ``⊗``-matrix products: the ``max``/``min`` ones by a
broadcast and a reduction, the log-sum-exp one as ``log(exp(A - a) exp(B - b)) + a + b``
with ``a`` the row maxima of ``A`` and ``b`` the column maxima of ``B`` -- an ordinary
matrix product, stable except where an entry lies more than the dtype's exponent range
(about 87 in float32) below ``a_i + b_k``: it then underflows to ``0̄``, and the step test
below sees it.  Across devices (``runtime/_sharding.py``) every device reduces its piece
to one map, the ``D`` maps are gathered, and each device runs its piece from the state
entering it, as the affine scan does.

A **normalised** stage (``h' = u ⊘ c(u)``, degree-0 homogeneous) runs the scan of its
linear part ``β_t = A_t ⊗ β_{t-1}``, dividing every carried vector and product by a
⊗-scalar per block as it goes (its maximum entry), and returns ``h_t = f(β_{t-1}, x_t)``:
one batched evaluation of the step, exact because ``f(λ ⊗ β) = f(β)``.

The check, the fallback, and exact derivatives
----------------------------------------------
The result passes the step test of ``_checks.py`` (and, for ``max/×``/``min/×``, every
coefficient ``⊗``-multiplying the state is ``≥ 0``) or the loop's is used, inside the same
program.  The solve is the ``solve`` of ``lax.custom_root`` for ``F(Z) = Z - f(shift(Z))``,
with the tangent solve of the Newton methods (``_iterative.tangent_solve``: the linear
recurrence with the step's true Jacobians at the solution, from its JVP), so ``jax.jvp``
and ``jax.grad`` give the derivatives of the sequential loop -- for ``max``/``min`` the
subgradient JAX's own rules give the loop at every step, ties included (a tie in the loop
is a tie here when the scan's sums are exact, as they are for integer-valued scores) --
and nothing differentiates through the scan.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from .._coefficients import permute_in, permute_out
from .._errors import PlanError
from .._ir import Structure
from .._semiring_algebra import Algebra
from .._semiring_analysis import Claim
from .._semiring_coefficients import block_layout, extract
from . import _checks, _sharding
from ._chunk_policy import _resolve_chunk, _unroll
from ._iterative import _from_aux, _stats_aux, tangent_solve
from ._jacobian import map_steps
from ._result import Reason, StageStats
from ._sequential import sequential_scan

Flat = Callable[[jax.Array, Any], jax.Array]


# ----------------------------------------------------------------------------- layouts

class _Layout:
    """Coefficients of one step, diagonal (``(n,)``) or blocks (``(m, k, k)``), in one
    algebra; ``norm``: divide carried values by a ⊗-scalar per block."""

    def __init__(self, alg: Algebra, diagonal: bool, norm: bool):
        self.alg, self.diagonal, self.norm = alg, diagonal, norm

    def apply(self, A, h):
        return self.alg.otimes(A, h) if self.diagonal else self.alg.matvec(A, h)

    def mul(self, A, P):
        """``A ⊗ P`` (``A`` after ``P``)."""
        out = self.alg.otimes(A, P) if self.diagonal else self.alg.matmul(A, P)
        return self.normalise_map(out)

    def eye(self, like):
        if self.diagonal:
            return self.alg.ones(like.shape, like.dtype)
        k = like.shape[-1]
        eye = jnp.where(jnp.eye(k, dtype=bool), self.alg.one, self.alg.zero).astype(like.dtype)
        return jnp.broadcast_to(eye, like.shape)

    def normalise_state(self, h):
        if not self.norm:
            return h
        return self.alg.divide(h, lax.stop_gradient(self.alg.scale_of(h, -1)))

    def normalise_map(self, P):
        if not self.norm or self.diagonal:
            return P
        return self.alg.divide(P, lax.stop_gradient(self.alg.scale_of(P, (-2, -1))))

    def step(self, A, h, b):
        h = self.apply(A, h)
        if b is not None:
            h = self.alg.oplus(h, b)
        return self.normalise_state(h)


# ----------------------------------------------------------------------------- kernels

def _sequential(lay: _Layout, a, b, h0):
    def body(h, ab):
        at, bt = ab
        h = lay.step(at, h, bt)
        return h, h
    _, hs = lax.scan(body, h0, (a, b))
    return hs


def _at(x, l):
    return None if x is None else lax.dynamic_index_in_dim(x, l, axis=1, keepdims=False)


def _split(lay: _Layout, a, b, L):
    T = a.shape[0]
    C = -(-T // L)
    pad = C * L - T
    if pad:  # identity maps: A = I, b = 0̄
        a = jnp.concatenate([a, lay.eye(jnp.zeros((pad,) + a.shape[1:], a.dtype))])
        if b is not None:
            b = jnp.concatenate([b, lay.alg.zeros((pad,) + b.shape[1:], b.dtype)])
    a3 = a.reshape((C, L) + a.shape[1:])
    b3 = None if b is None else b.reshape((C, L) + b.shape[1:])
    return a3, b3, pad


def _reduce(lay: _Layout, a3, b3, unroll):
    """Each chunk's composed map ``(P_c, S_c)``."""
    L = a3.shape[1]
    P0, S0 = a3[:, 0], None if b3 is None else b3[:, 0]

    def body(carry, l):
        P, Sm = carry
        at = _at(a3, l)
        P = lay.mul(at, P)
        if Sm is not None:
            Sm = lay.alg.oplus(lay.apply(at, Sm), _at(b3, l))
        return (P, Sm), None

    (P, Sm), _ = lax.scan(body, (lay.normalise_map(P0), S0), jnp.arange(1, L), unroll=unroll)
    return P, Sm


def _summary(lay: _Layout, a, b, chunk):
    """The composition of all ``T`` maps (recursively chunked)."""
    T = a.shape[0]
    L = min(_resolve_chunk(T, chunk), T)
    a3, b3, _ = _split(lay, a, b, L)
    P, Sm = _reduce(lay, a3, b3, _unroll(L))
    if P.shape[0] == 1:
        return P[0], None if Sm is None else Sm[0]
    return _summary(lay, P, Sm, None)


def kernel(lay: _Layout, a, b, h0, chunk):
    """All states ``h_t = A_t ⊗ h_{t-1} ⊕ b_t`` (``b`` may be None: ``0̄``)."""
    T = a.shape[0]
    L = _resolve_chunk(T, chunk)
    if L >= T or T == 1:
        return _sequential(lay, a, b, h0)
    a3, b3, pad = _split(lay, a, b, L)
    C = a3.shape[0]
    P, Sm = _reduce(lay, a3, b3, _unroll(L))
    H = kernel(lay, P, Sm, h0, None)  # state after each chunk
    H_in = jnp.concatenate([h0[None], H[:-1]])

    def body(carry, l):
        h, out = carry
        h = lay.step(_at(a3, l), h, _at(b3, l))
        return (h, lax.dynamic_update_index_in_dim(out, h, l, axis=1)), None

    out0 = jnp.zeros((C, L) + h0.shape, h0.dtype)
    (_, out), _ = lax.scan(body, (H_in, out0), jnp.arange(L), unroll=_unroll(L))
    out = out.reshape((C * L,) + h0.shape)
    return out[:T] if pad else out


def sharded_kernel(lay: _Layout, a, b, h0, chunk):
    """The kernel over a time axis split across devices (module docstring)."""
    ax = _sharding.current()
    P, Sm = _summary(lay, a, b, chunk)
    Ps = _sharding.gather(P)
    Ss = None if Sm is None else _sharding.gather(Sm)
    H = _sequential(lay, Ps, Ss, h0)
    p = _sharding.position(ax)
    h_in = jnp.where(p == 0, h0, _sharding.pick(H, jnp.maximum(p - 1, 0)))
    return kernel(lay, a, b, h_in, chunk)


# ----------------------------------------------------------------------------- coefficients

def coefficients(f_lin: Flat, f_off: Flat | None, xs, n: int, dtype, structure: Structure,
                 claim: Claim, length: int):
    """Per step (``_semiring_coefficients.extract``): ``A_t``, ``b_t`` (None for a linear
    stage) and the ``×`` coefficients that must be ``≥ 0``, each with a leading axis ``T``."""
    def one(x):
        return extract(f_lin, f_off, x, n, dtype, structure, claim)

    if xs is None:
        a, b, nonneg = one(None)
        return (jnp.broadcast_to(a, (length,) + a.shape),
                None if b is None else jnp.broadcast_to(b, (length, n)), nonneg)
    return jax.vmap(one)(xs)


# ----------------------------------------------------------------------------- the solve

def _scan_states(lay: _Layout, a, b, z0, structure: Structure, n: int, chunk):
    """The kernel on the flat state: blocks permuted in and out."""
    if lay.diagonal:
        run = sharded_kernel if _sharding.current() is not None else kernel
        return run(lay, a, b, z0, chunk)
    blocks = block_layout(structure, n)
    zero = lay.alg.zero

    def into(v):
        # padding slots hold 0̄ (their columns of A are 0̄ too)
        vb = permute_in(v, blocks)
        return jnp.where(jnp.asarray(blocks >= 0), vb, jnp.asarray(zero, v.dtype))

    run = sharded_kernel if _sharding.current() is not None else kernel
    hb = run(lay, a, None if b is None else into(b), into(z0), chunk)
    return permute_out(hb, blocks, n)


def solve_semiring(f: Flat, f_lin: Flat, f_off: Flat | None, z0, xs, *, claim: Claim,
                   structure: Structure, length: int, tolerances: _checks.Tolerances,
                   chunk=None, fallback: bool = True):
    """All ``T`` states of the semiring-linear recurrence ``z_t = f(z_{t-1}, x_t)``.

    ``f_lin(z, x)`` / ``f_off(z, x)`` are the step in ``"linear"`` /
    ``"offset"`` mode returning ``(z', [coefficients that must be ≥ 0])``; ``f_off`` is None
    for a linear stage.  Returns ``(zs, StageStats)``.
    """
    z0 = jnp.asarray(z0)
    n, dtype = z0.shape[0], z0.dtype
    T = int(length)
    T_all = _sharding.global_length(T)
    rdt = jnp.finfo(dtype).dtype
    if T == 0:
        return jnp.zeros((0, n), dtype), StageStats.make(real_dtype=rdt)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise PlanError("method='semiring' needs a real state")
    diagonal = structure.jacobian in ("diagonal", "zero")
    lay = _Layout(claim.alg, diagonal, claim.normalised)
    tol = tolerances

    def F(zs):
        return zs - map_steps(f, _sharding.shift(zs, z0), xs)

    def solve(_F, _guess):
        a, b, nonneg = coefficients(f_lin, f_off, xs, n, dtype, structure, claim, T)
        a, b = lax.stop_gradient((a, b))
        zs = _scan_states(lay, a, b, lax.stop_gradient(z0), structure, n, chunk)
        if claim.normalised:  # h_t = f(β_{t-1}): f is degree-0 homogeneous
            zs = map_steps(f, _sharding.shift(zs, z0), xs)
        res, ok = _checks.residual(f, z0, zs, xs, rtol=tol.rtol, atol=tol.atol)
        if nonneg:
            neg = jnp.any(jnp.stack([jnp.any(c < 0) for c in nonneg]))
            ok = ok & ~_sharding.reduce_any(lax.stop_gradient(neg))
        fell_back = jnp.asarray(False)
        if fallback:
            zs = _checks.with_fallback(zs, ok, lambda: sequential_scan(f, z0, xs, length=T))
            fell_back = ~ok
        reason = jnp.where(ok, Reason.CONVERGED,
                           jnp.where(jnp.isfinite(res), Reason.CHECK_FAILED, Reason.NON_FINITE))
        extraction = (1 if diagonal else structure.jvps_per_step) + (f_off is not None)
        evals = (extraction + 1 + claim.normalised) * T_all + jnp.where(fell_back, T_all, 0)
        st = StageStats.make(iterations=1, residual=res, converged=ok, fell_back=fell_back,
                             reason=reason, evaluations=evals, real_dtype=rdt)
        return zs, _stats_aux(st)

    def tangent(g, y):
        return tangent_solve(g, y, structure, chunk)

    guess = jnp.zeros((T, n), dtype)
    zs, aux = lax.custom_root(F, guess, solve, tangent, has_aux=True)
    return zs, _from_aux(lax.stop_gradient(aux))


__all__ = ["solve_semiring", "coefficients", "kernel", "sharded_kernel"]
