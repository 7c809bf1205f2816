r"""Semirings: the algebras in which the semiring pass reads a step and the scan runs it.

A semiring ``(K, ⊕, ⊗, 0̄, 1̄)`` turns recurrences that are nonlinear in ordinary arithmetic
into linear ones: with ``(A ⊗ h)_i = ⊕_j A_ij ⊗ h_j``, a step

.. math::  h' = A_t ⊗ h ⊕ b_t

is an *affine map in that algebra* (``b_t = 0̄``: linear), maps compose as
``(A_2, b_2) ∘ (A_1, b_1) = (A_2 ⊗ A_1, A_2 ⊗ b_1 ⊕ b_2)`` -- associative, because ``⊗``
distributes over ``⊕`` -- and all ``T`` states are one associative scan.  The algebras:

=============== ============= ========== ====== ====== ===================================
key             ⊕             ⊗          0̄      1̄      a user writes
=============== ============= ========== ====== ====== ===================================
``logsumexp``   log-sum-exp   ``+``      -inf   0      ``logsumexp(α[:, None] + logA, 0)``
``max-plus``    ``max``       ``+``      -inf   0      ``max(δ[:, None] + logA, 0)``
``min-plus``    ``min``       ``+``      +inf   0      ``min(d[:, None] + W, 0)``
``max-times``   ``max``       ``×``      -inf   1      ``max(a * m, x)``, ``a ≥ 0``
``min-times``   ``min``       ``×``      +inf   1      ``min(a * m, x)``, ``a ≥ 0``
``plus-times``  ``+``         ``×``      0      1      ``u / sum(u)``, ``u = Aᵀ α ⊙ b``
=============== ============= ========== ====== ====== ===================================

``max-times``/``min-times`` are semirings on the state only elementwise (``a (max(u, v)) =
max(a u, a v)`` needs ``a ≥ 0``, which the runtime checks on the coefficients; a ``max``
over several state elements times coefficients would also need a nonnegative state), so
only diagonal stages use them.  ``plus-times`` is ordinary arithmetic: an affine stage is
the ordinary scan's; here it appears only **normalised**.

Normalised (projective) steps
-----------------------------
``h' = u ⊘ c(u)`` with ``u = A_t ⊗ h`` linear and ``c`` a ⊗-scalar that is itself linear in
``u`` (``sum(u)`` in ``plus-times``; ``logsumexp(u)`` in ``logsumexp``) is homogeneous of
degree 0: ``f(λ ⊗ h) = f(h)``.  So ``h_t = f_t(β_{t-1})`` for ``β_t = A_t ⊗ β_{t-1}``
(``β_{-1} = h_0``) up to *any* ⊗-scalar, which the scan divides out as it goes
(``Algebra.scale_of``, ``Algebra.divide``; no underflow however long the sequence).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Algebra:
    """One semiring (module docstring).  ``plus``: ``lse``/``max``/``min``/``sum``;
    ``times``: ``add``/``mul``."""

    key: str
    name: str
    plus: str
    times: str
    zero: float
    one: float
    dense: bool = True  # whether ``A`` may couple several state elements

    # -- elementwise ------------------------------------------------------------------
    def oplus(self, a, b):
        if self.plus == "lse":
            return jnp.logaddexp(a, b)
        if self.plus == "max":
            return jnp.maximum(a, b)
        if self.plus == "min":
            return jnp.minimum(a, b)
        return a + b

    def otimes(self, a, b):
        """``a ⊗ b``; ``0̄`` absorbs (``0 × -inf`` is ``0̄`` in ``max-times``)."""
        if self.times == "add":
            return a + b
        out = a * b
        if self.zero != 0:
            zero = jnp.asarray(self.zero, out.dtype)
            out = jnp.where((a == zero) | (b == zero), zero, out)
        return out

    def reduce(self, x, axis):
        if self.plus == "lse":
            return _logsumexp(x, axis)
        if self.plus == "max":
            return jnp.max(x, axis=axis)
        if self.plus == "min":
            return jnp.min(x, axis=axis)
        return jnp.sum(x, axis=axis)

    def zeros(self, shape, dtype):
        return jnp.full(shape, self.zero, dtype)

    def ones(self, shape, dtype):
        return jnp.full(shape, self.one, dtype)

    # -- matrices (blocks: ``(..., k, k)``) -----------------------------------------------
    def matvec(self, A, v):
        """``(A ⊗ v)_i = ⊕_j A_ij ⊗ v_j``."""
        if self.plus == "sum":
            return jnp.einsum("...ij,...j->...i", A, v, precision=_HIGHEST)
        return self.reduce(self.otimes(A, v[..., None, :]), -1)

    def matmul(self, A, B):
        """``(A ⊗ B)_ik = ⊕_j A_ij ⊗ B_jk`` (log-sum-exp: a shifted ordinary matmul)."""
        if self.plus == "sum":
            return jnp.einsum("...ij,...jk->...ik", A, B, precision=_HIGHEST)
        if self.plus == "lse":
            a = _finite_max(A, -1, keepdims=True)       # per row of A
            b = _finite_max(B, -2, keepdims=True)       # per column of B
            prod = jnp.einsum("...ij,...jk->...ik", jnp.exp(A - a), jnp.exp(B - b),
                              precision=_HIGHEST)
            return jnp.log(prod) + a + b
        return self.reduce(self.otimes(A[..., :, :, None], B[..., None, :, :]), -2)

    # -- normalisation (projective steps) ------------------------------------------------
    def scale_of(self, x, axes):
        """A ⊗-invertible scalar of ``x`` over ``axes`` to divide by (keepdims)."""
        if self.times == "add":
            return _finite_max(x, axes, keepdims=True)
        mag = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
        return jnp.where((mag > 0) & jnp.isfinite(mag), mag, jnp.ones((), x.dtype))

    def divide(self, x, c):
        return x - c if self.times == "add" else x / c


def _finite_max(x, axis, keepdims=False):
    m = jnp.max(x, axis=axis, keepdims=keepdims)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype)))


def _logsumexp(x, axis):
    m = _finite_max(x, axis, keepdims=True)
    return jnp.log(jnp.sum(jnp.exp(x - m), axis=axis)) + jnp.squeeze(m, axis)


_INF = float("inf")
ALGEBRAS: dict[str, Algebra] = {a.key: a for a in (
    Algebra("logsumexp", "log-sum-exp/+", "lse", "add", -_INF, 0.0),
    Algebra("max-plus", "max/+", "max", "add", -_INF, 0.0),
    Algebra("min-plus", "min/+", "min", "add", _INF, 0.0),
    Algebra("max-times", "max/×", "max", "mul", -_INF, 1.0, dense=False),
    Algebra("min-times", "min/×", "min", "mul", _INF, 1.0, dense=False),
    Algebra("plus-times", "+/× (normalised)", "sum", "mul", 0.0, 1.0),
)}


__all__ = ["Algebra", "ALGEBRAS"]
