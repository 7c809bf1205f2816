r"""The coefficient structures of the affine scan kernels (``_scan.py``), and the scaled
products of many coefficients.

A structure is what a kernel needs of the coefficients ``A_t``:

* ``apply(A, h)`` -- ``A h``, one step on a state;
* ``lift(A)`` -- ``A`` as a scaled product (below);
* ``mul(A, P)`` -- ``A P``, ``A`` in this representation and ``P`` a scaled product;
* ``eye(shape, dtype)`` -- the identity factor (for padding);
* ``scaled`` -- the structure of scaled products (the combine level's coefficients);
* ``transpose(A)`` -- ``A^T`` (the adjoint recurrence), for single-step coefficients.

``_Diag``: ``A_t = diag(a_t)`` (or ``a_t I``, broadcast); ``_Block``: ``m`` independent
``k x k`` blocks.  Single-step coefficients stay plain arrays.

Scaled products
---------------
Products of many coefficients (a chunk's summary) are kept *scaled*: a pair ``(M, e)``
meaning

.. math::  P = M \cdot 2^{e}

with an integer exponent ``e`` per diagonal entry (per block for blocks) and ``M``
renormalised after every product (the largest magnitude of its real and imaginary parts in
``[0.5, 1)``, by rewriting exponent bits), so a product that
overflows or underflows in floating point -- ``5^64`` in float32 -- is still exact to
rounding, and applying it to a state the loop keeps finite (``5^64 · 1e-33``) gives a
finite result: ``ldexp(M h, e)``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


def _bits(dtype):
    """``(finfo, integer type of the same width, exponent bias, all-ones exponent)``."""
    fi = jnp.finfo(dtype)
    return fi, {16: jnp.int16, 32: jnp.int32, 64: jnp.int64}[fi.bits], 1 - int(fi.minexp), \
        (1 << int(fi.nexp)) - 1


def _pow2(k, dtype):
    """``2^k`` for integer ``k`` in the normal range of ``dtype`` (``1 - bias <= k <=
    bias``), built from its bits: two integer operations, no branches."""
    fi, it, bias, _ = _bits(dtype)
    return lax.bitcast_convert_type((k.astype(it) + bias) << int(fi.nmant), fi.dtype)


def _ldexp(x, e):
    """``x 2^e``, as three multiplications by powers of two computed from ``e`` alone: linear
    in ``x`` (``jnp.ldexp`` branches on ``x``, which JAX cannot transpose), and every factor
    finite for any ``e`` whose result is (the partial products move monotonically towards
    it)."""
    _, _, bias, _ = _bits(x.dtype)
    e1 = e // 3
    e2 = (e - e1) // 2
    e3 = e - e1 - e2
    for k in (e1, e2, e3):
        # a factor is never 0 or inf, so 0 * factor stays 0; beyond the clip (|e| > 3 ·
        # (bias - 1)) the product of any finite x is out of range anyway, and overflows or
        # underflows as the true value does
        x = x * _pow2(jnp.clip(k, 1 - bias, bias), x.dtype).astype(x.dtype)
    return x


def _frexp(m, axes=()):
    """``(f, d)`` with ``m = f 2^d`` and the largest magnitude of ``f``'s parts (over
    ``axes``: one exponent per block) in ``[0.5, 1)``, by integer operations on the exponent
    bits (three times faster than scaling by a power of two, measured): the exponent field
    of every part is lowered by the same amount; a part that would leave the normal range
    (``2^-bias`` times the largest, far below its rounding) becomes a zero of its sign.  Zero, subnormal and non-finite ``m``: ``(m, 0)``."""
    fi, it, bias, top = _bits(m.dtype)
    nmant = int(fi.nmant)
    parts = (m.real, m.imag) if jnp.iscomplexobj(m) else (m,)
    bits = [lax.bitcast_convert_type(p, it) for p in parts]
    fields = [(b >> nmant) & top for b in bits]
    E = functools.reduce(jnp.maximum, fields)
    if axes:
        E = jnp.max(E, axis=axes, keepdims=True)
    normal = (E != 0) & (E != top)
    shift = E - (bias - 1)
    out = []
    for p, b, F in zip(parts, bits, fields):
        G = F - shift
        f = lax.bitcast_convert_type((b & ~(top << nmant)) | (jnp.maximum(G, 0) << nmant),
                                     fi.dtype)
        f = jnp.where(G > 0, f, jnp.copysign(jnp.zeros((), fi.dtype), p))
        out.append(jnp.where(normal, f, p))
    f = lax.complex(*out) if len(out) == 2 else out[0]
    d = jnp.where(normal, shift, 0).astype(jnp.int32)
    return f, (jnp.squeeze(d, axes) if axes else d)


class _DiagScaled:
    @staticmethod
    def apply(A, h):
        m, e = A
        return _ldexp(m * h, e)

    @staticmethod
    def normalise(m, e):
        f, d = _frexp(m)
        return f, e + d

    @staticmethod
    def lift(A):
        return A

    @classmethod
    def mul(cls, A, P):
        return cls.normalise(A[0] * P[0], A[1] + P[1])

    @staticmethod
    def eye(shape, dtype):
        return jnp.ones(shape, dtype), jnp.zeros(shape, jnp.int32)


class _Diag:
    scaled = _DiagScaled

    @staticmethod
    def apply(A, h):
        return A * h

    @staticmethod
    def lift(A):
        return _DiagScaled.normalise(A, jnp.zeros(A.shape, jnp.int32))

    @staticmethod
    def mul(A, P):
        return _DiagScaled.normalise(A * P[0], P[1])

    @staticmethod
    def eye(shape, dtype):
        return jnp.ones(shape, dtype)

    @staticmethod
    def transpose(A):
        return A


_DiagScaled.scaled = _DiagScaled


def _matvec(A, h):
    # One einsum at HIGHEST precision (exact float32 on every backend, no TF32/bf16 passes),
    # as in _coefficients.py.  Measured on the 2-core CPU (k = 32, T = 4096, float32): inside
    # the sequential loop 3.7 ms against 5.3 ms for a broadcast-multiply-sum, batched over
    # all steps 2.6 ms against 96 ms.
    return jnp.einsum("...ij,...j->...i", A, h, precision=_HIGHEST)


def _matmul(A, P):
    return jnp.einsum("...ij,...jk->...ik", A, P, precision=_HIGHEST)


class _BlockScaled:
    @staticmethod
    def apply(A, h):
        m, e = A
        return _ldexp(_matvec(m, h), e[..., None])

    @staticmethod
    def normalise(m, e):
        f, d = _frexp(m, axes=(-2, -1))
        return f, e + d

    @staticmethod
    def lift(A):
        return A

    @classmethod
    def mul(cls, A, P):
        return cls.normalise(_matmul(A[0], P[0]), A[1] + P[1])

    @staticmethod
    def eye(shape, dtype):
        return (jnp.broadcast_to(jnp.eye(shape[-1], dtype=dtype), shape),
                jnp.zeros(shape[:-2], jnp.int32))


class _Block:
    scaled = _BlockScaled

    @staticmethod
    def apply(A, h):
        return _matvec(A, h)

    @staticmethod
    def lift(A):
        return _BlockScaled.normalise(A, jnp.zeros(A.shape[:-2], jnp.int32))

    @staticmethod
    def mul(A, P):
        return _BlockScaled.normalise(_matmul(A, P[0]), P[1])

    @staticmethod
    def eye(shape, dtype):
        return jnp.broadcast_to(jnp.eye(shape[-1], dtype=dtype), shape)

    @staticmethod
    def transpose(A):
        return jnp.swapaxes(A, -1, -2)


_BlockScaled.scaled = _BlockScaled


__all__ = ["_Diag", "_Block", "_DiagScaled", "_BlockScaled", "_ldexp", "_frexp"]
