r"""Coefficient forms: the structured matrices ``A_t`` of a linear recurrence.

Every parallel method of recur solves linear recurrences ``h_t = A_t h_{t-1} + b_t`` whose
``A_t`` has the structure the passes found: the affine scan with the true coefficients,
each Newton-family iteration with its linearisation ``Ã_t``, the tangent solve with the
true Jacobians.  One *form* per structure holds what all of them need -- the layout of
``A = (A_t)_t`` for all ``T`` steps, ``A_t v_t``, the transpose, zero/identity/masked
coefficients -- so no solver dispatches on the structure itself:

================ ======================== ==========================================
form             ``A`` (all steps)         ``A_t v_t``
================ ======================== ==========================================
``ZeroForm``     ``(0,)`` (nothing)         ``0``
``DiagForm``     ``(T, n)``, or ``(T, 1)``  ``a_t ⊙ v_t`` (a scalar broadcast)
``BlockForm``    ``(T, m, k, k)``           ``m`` blocks of ``k × k`` after the structure's
                                            permutation; a dense ``A_t`` is ``m = 1, k = n``
================ ======================== ==========================================

Coefficients are read off JVPs at the structure's cost: the tangents of
``structure_tangents`` (one per colour) give the columns ``cols[..., :, c] = J e_c`` and
``BlockForm.from_columns`` puts them in place (``_ir.Structure``'s docstring says why this
is exact for a sound pattern).  This module is shared by the verification pass (which
probes a claimed structure with exactly the extraction the runtime uses) and the runtime.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._ir import Structure


def structure_tangents(structure: Structure, n: int, dtype) -> np.ndarray:
    """``(c, n)`` tangents of a non-diagonal ``structure``'s column colouring: for blocks,
    row ``c`` has a one at the ``c``-th element of every block (``c < k``); for a dense
    structure with a column colouring, a one on every column of colour ``c``."""
    colours = structure.colours
    if colours is not None:
        tangents = np.zeros((int(colours.max(initial=-1)) + 1, n), dtype=np.dtype(dtype))
        tangents[colours, np.arange(n)] = 1
        return tangents
    blocks = structure.blocks
    tangents = np.zeros((blocks.shape[1], n), dtype=np.dtype(dtype))
    for c in range(blocks.shape[1]):
        valid = blocks[:, c] >= 0
        tangents[c, blocks[valid, c]] = 1
    return tangents


def permute_in(z: jax.Array, blocks: np.ndarray) -> jax.Array:
    """``(..., n) -> (..., m, k)`` in the block layout (padding slots are zero)."""
    n = z.shape[-1]
    padded = jnp.concatenate([z, jnp.zeros(z.shape[:-1] + (1,), z.dtype)], axis=-1)
    return padded[..., jnp.asarray(np.where(blocks >= 0, blocks, n))]


def permute_out(zb: jax.Array, blocks: np.ndarray, n: int) -> jax.Array:
    """Inverse of ``permute_in``: ``(..., m, k) -> (..., n)``."""
    flat = zb.reshape(zb.shape[:-2] + (-1,))
    where = np.empty(n, dtype=np.int64)
    idx = blocks.reshape(-1)
    valid = idx >= 0
    where[idx[valid]] = np.flatnonzero(valid)
    return flat[..., jnp.asarray(where)]


def _sanitize(a):
    return jnp.where(jnp.isfinite(a), a, jnp.zeros((), a.dtype))


@dataclasses.dataclass(frozen=True, eq=False)
class ZeroForm:
    """``A_t = 0``: the recurrence is a map (Jacobi sweeps, a state that reads no state)."""

    n: int
    kind = "zero"

    def zeros(self, T: int, dtype) -> jax.Array:
        return jnp.zeros((0,), dtype)

    def apply(self, a, v: jax.Array) -> jax.Array:
        return jnp.zeros_like(v)

    def transpose(self, a):
        return a

    def mask(self, a, keep: jax.Array):
        return a

    def sanitize(self, a):
        return a

    def abs_bound(self, a, T: int) -> jax.Array:
        return jnp.zeros((T, self.n))


@dataclasses.dataclass(frozen=True, eq=False)
class DiagForm:
    """``A_t = diag(a_t)``, ``a`` of shape ``(T, n)``; ``scalar=True``: ``a`` is ``(T, 1)``,
    one number per step (Picard's identity is ``a = 1``)."""

    n: int
    scalar: bool = False
    kind = "diag"

    def zeros(self, T: int, dtype) -> jax.Array:
        return jnp.zeros((T, 1 if self.scalar else self.n), dtype)

    def apply(self, a, v: jax.Array) -> jax.Array:
        return a * v

    def transpose(self, a):
        return a

    def mask(self, a, keep: jax.Array):
        return jnp.where(keep[:, None], jnp.zeros((), a.dtype), a)

    def sanitize(self, a):
        return _sanitize(a)

    def abs_bound(self, a, T: int) -> jax.Array:
        """``|A_t|`` elementwise (``(T, n)``): how an error in ``h_{t-1}`` reaches ``h_t``."""
        return jnp.broadcast_to(jnp.abs(a), (T, self.n))


@dataclasses.dataclass(frozen=True, eq=False)
class BlockForm:
    """``A_t`` block-diagonal after the structure's permutation, ``a`` of shape
    ``(T, m, k, k)`` (a dense matrix: one block); a coloured dense structure is read off
    ``c`` JVPs and laid out as one ``n × n`` block."""

    structure: Structure
    n: int
    kind = "block"

    @property
    def blocks(self) -> np.ndarray:
        return self.structure.blocks

    def zeros(self, T: int, dtype) -> jax.Array:
        m, k = self.blocks.shape
        return jnp.zeros((T, m, k, k), dtype)

    def apply(self, a, v: jax.Array) -> jax.Array:
        # one batched matrix-vector product (measured: a broadcast-multiply-sum that
        # materialises T x m x k x k products was 70x slower at k = 32 on CPU)
        vb = permute_in(v, self.blocks)
        out = jnp.einsum("...mij,...mj->...mi", a, vb, precision=lax.Precision.HIGHEST)
        return permute_out(out, self.blocks, self.n)

    def transpose(self, a):
        return jnp.swapaxes(a, -1, -2)

    def mask(self, a, keep: jax.Array):
        return jnp.where(keep[:, None, None, None], jnp.zeros((), a.dtype), a)

    def sanitize(self, a):
        return _sanitize(a)

    def abs_bound(self, a, T: int) -> jax.Array:
        """Per element, the absolute row sum of its block row: ``|A_t v|_i <= r_i |v|_∞``."""
        rows = jnp.sum(jnp.abs(a), axis=-1)  # (T, m, k)
        return permute_out(rows, self.blocks, self.n)

    def from_columns(self, cols: jax.Array) -> jax.Array:
        """``cols[..., :, c] = J e_c`` for the tangents of ``structure_tangents`` (colour
        axis last) -> ``J`` in this layout, ``(..., m, k, k)``; for a coloured dense
        structure ``J[i, j] = cols[i, colour(j)]`` where the pattern has ``(i, j)``."""
        colours = self.structure.colours
        if colours is not None:
            full = jnp.take(cols, jnp.asarray(colours), axis=-1)
            full = jnp.where(jnp.asarray(self.structure.pattern), full,
                             jnp.zeros((), cols.dtype))
            return full[..., None, :, :]
        pad = jnp.zeros(cols.shape[:-2] + (1, cols.shape[-1]), cols.dtype)
        padded = jnp.concatenate([cols, pad], axis=-2)
        return jnp.take(padded, jnp.asarray(np.where(self.blocks >= 0, self.blocks, self.n)),
                        axis=-2)


Form = ZeroForm | DiagForm | BlockForm


def jacobian_form(structure: Structure, n: int) -> Form:
    """The form of the true Jacobian in this structure."""
    if structure.jacobian == "zero" or n == 0:
        return ZeroForm(n)
    if structure.jacobian == "diagonal":
        return DiagForm(n)
    return BlockForm(structure, n)


def diagonal_from_jvp(jvp: Callable, n: int, dtype) -> jax.Array:
    """``diag(J) = J 1`` -- valid only for a diagonal ``J``."""
    return jvp(jnp.ones((n,), dtype))


def structured_from_jvp(jvp: Callable, n: int, dtype, structure: Structure) -> jax.Array:
    """``J`` in the layout of a non-diagonal ``structure``: ``(m, k, k)`` blocks, from its
    column colouring when it has one."""
    tangents = jnp.asarray(structure_tangents(structure, n, dtype))
    return BlockForm(structure, n).from_columns(jax.vmap(jvp, out_axes=-1)(tangents))


__all__ = ["ZeroForm", "DiagForm", "BlockForm", "Form", "jacobian_form", "structure_tangents",
           "permute_in", "permute_out", "diagonal_from_jvp", "structured_from_jvp"]
