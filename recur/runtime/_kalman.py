r"""The parallel Kalman filter and RTS smoother of ELK's trust-region step.

For the linear-Gaussian model, per block (``F`` ``(T, m, k, k)``, ``c``, ``y`` ``(T, m, k)``),

.. math::  z_t = F_t z_{t-1} + c_t + w_t,\; w_t \sim N(0, I), \qquad
           y_t = z_t + v_t,\; v_t \sim N(0, \lambda I), \qquad F_0 = 0,

``smooth(F, c, y, λ)`` is the posterior mean of ``z`` given all ``y``: the parallel Kalman
filter of Särkkä & García-Fernández -- a prefix scan over the elements ``(A, b, C, η, J)``
with ``H = Q = I`` and ``R = λ I``: ``A = ωF``, ``b = ωc + κy``, ``C = ωI``,
``η = κF^H(y - c)``, ``J = κF^H F``, ``κ = 1/(1+λ)``, ``ω = λκ`` -- computed by recursive
doubling in a ``fori_loop`` (``log2 T`` rounds, so the combine compiles once: with
``lax.associative_scan`` the GRU test compiled in 9 s instead of 4 s), then the RTS
smoother ``s_t = E_t s_{t+1} + g_t`` as a reverse ``block_scan``.  The small ``k × k``
systems are inverted by a jnp Gauss--Jordan elimination (``_binv``), never by LAPACK:
jaxlib 0.10's batch-parallel LAPACK kernels deadlock XLA:CPU's thread pool when two run
at once (``benchmarks/repro_elk_hang.py``).

Across devices (``_sharding.py``: device ``p`` holds the ``L`` steps ``pL .. pL+L-1``) the
filter is composed like the scan's summaries: every device scans its own elements
(``log2 L`` rounds), the ``D`` local totals ``Π_p`` (its last prefix element) are
exchanged with one ``all_gather`` (``D`` elements of ``3 m k^2 + 2 m k`` numbers), every
device combines the totals of the devices before it (the exclusive prefix ``E_p``, by the
same doubling over ``D``) and finishes with one combine ``E_p • x_t`` of its local prefix.
The smoother needs the next step's ``F_{t+1}`` (one ``ppermute`` of a boundary element)
and is a reverse ``block_scan``, sharded by ``_scan.py``.  Padded steps (after the last
real one, ``_sharding.py``) are decoupled from it (``E_{T-1} = 0``), so the real steps
are smoothed exactly as on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _scan, _sharding


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


def smooth(F, c, y, lam):
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
    _, mf, P, _, _ = _prefix(combine, (A, b, C, eta, J), identity)
    # s_t = E_t s_{t+1} + g_t with E_t = P_t F_{t+1}^H (F_{t+1} P_t F_{t+1}^H + I)^{-1},
    # g_t = m_t - E_t (F_{t+1} m_t + c_{t+1}); F_T = 0 at the end (E = 0, s = m there)
    Fn = _sharding.shift_back(F, zero_m)
    cn = _sharding.shift_back(c, zero_v)
    ax = _sharding.current()
    if ax is not None and ax.valid < ax.length:  # the last real step ends the chain
        couple = _sharding.global_steps(T) + 1 < ax.valid
        Fn = jnp.where(couple[:, None, None, None], Fn, 0)
    G = Fn @ P @ _ct(Fn) + I
    Ek = P @ _ct(Fn) @ _binv(G)
    g = mf - _mv(Ek, _mv(Fn, mf) + cn)
    return _scan.block_scan(Ek, g, jnp.zeros((m, k), dt), reverse=True)


def _prefix(combine, elems, identity):
    """The inclusive prefix of the elements over the whole (possibly split) time axis."""
    local = _doubling_scan(combine, elems, identity)
    ax = _sharding.current()
    if ax is None or ax.size == 1:
        return local
    totals = jax.tree.map(lambda v: _sharding.gather(v[-1]), local)     # (D, ...)
    upto = _doubling_scan(combine, totals, identity)
    p = _sharding.position(ax)
    before = jax.tree.map(
        lambda v, e: jnp.where(p == 0, e, _sharding.pick(v, jnp.maximum(p - 1, 0))),
        upto, identity)
    L = jax.tree.leaves(elems)[0].shape[0]
    return combine(jax.tree.map(lambda e: jnp.broadcast_to(e, (L,) + e.shape), before), local)


__all__ = ["smooth"]
