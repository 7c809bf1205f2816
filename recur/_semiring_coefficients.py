r"""A stage's coefficients in a semiring, and the maps they make.

One step's map ``h ↦ A ⊗ h ⊕ b`` is read off the step's modes
(``recur._semiring_analysis.evaluator``), exactly: the ``"linear"`` mode evaluated at the
algebra's unit vectors (``1̄`` on one element per block, ``0̄`` elsewhere: the structure's
column colouring, as for the Jacobians of ``recur/_coefficients.py``) gives the columns of
``A`` (``⊕`` with ``0̄`` is exact in every algebra); the ``"offset"`` mode gives ``b``.

``A`` is laid out as ``(n,)`` for a diagonal stage and as ``(m, k, k)`` blocks otherwise
(``block_layout``: the structure's blocks, or one ``n × n`` block for a coloured dense
structure), ``0̄`` outside the sparsity pattern and in padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._coefficients import permute_in, permute_out, structure_tangents
from ._semiring_algebra import Algebra
from ._semiring_analysis import Claim


def _diagonal(structure) -> bool:
    return structure.jacobian in ("diagonal", "zero")


def extract(f_lin, f_off, x, n: int, dtype, structure, claim: Claim):
    """One step's ``(A, b, nonneg)``: ``A`` as ``(n,)`` (diagonal) or ``(m, k, k)`` blocks
    (a coloured dense structure: one ``n × n`` block), ``b`` ``(n,)`` or None, and the
    ``×`` coefficients that must be ``≥ 0`` -- from the step in ``"linear"`` mode at the
    unit vectors of the structure's colouring and in ``"offset"`` mode (module
    docstring).  ``f_lin``/``f_off``: ``(z, x) -> (z', coefficients)``."""
    alg = claim.alg
    if _diagonal(structure):
        units = jnp.full((1, n), alg.one, dtype)
    else:
        on = structure_tangents(structure, n, np.float32) > 0
        units = jnp.where(jnp.asarray(on), alg.one, alg.zero).astype(dtype)
    cols, nonneg = jax.vmap(lambda u: f_lin(u, x), out_axes=(-1, 0))(units)
    b = None if f_off is None else f_off(jnp.zeros((n,), dtype), x)[0]
    A = cols[..., 0] if _diagonal(structure) else place(cols, structure, n, alg)
    return A, b, nonneg


def block_layout(structure, n: int) -> np.ndarray:
    """``(m, k)`` element indices of the blocks ``A`` is laid out in (``-1``: padding)."""
    return np.arange(n)[None, :] if structure.colours is not None else structure.blocks


def place(cols, structure, n: int, alg: Algebra):
    """``cols[..., i, c]`` (the step at colour ``c``'s unit vector) in the block layout:
    ``0̄`` outside the pattern and in padding."""
    zero = jnp.asarray(alg.zero, cols.dtype)
    if structure.colours is not None:
        full = jnp.take(cols, jnp.asarray(structure.colours), axis=-1)
        return jnp.where(jnp.asarray(structure.pattern), full, zero)[..., None, :, :]
    blocks = structure.blocks
    pad = jnp.full(cols.shape[:-2] + (1, cols.shape[-1]), zero)
    padded = jnp.concatenate([cols, pad], axis=-2)
    A = jnp.take(padded, jnp.asarray(np.where(blocks >= 0, blocks, n)), axis=-2)
    return jnp.where(jnp.asarray(blocks >= 0)[:, None, :], A, zero)


def apply_map(alg: Algebra, A, z, structure, n: int):
    """``A ⊗ z`` on the flat state ``z`` (``(n,)``)."""
    if _diagonal(structure):
        return alg.otimes(A, z)
    blocks = block_layout(structure, n)
    zb = jnp.where(jnp.asarray(blocks >= 0), permute_in(z, blocks),
                   jnp.asarray(alg.zero, z.dtype))
    return permute_out(alg.matvec(A, zb), blocks, n)


__all__ = ["extract", "place", "apply_map", "block_layout"]
