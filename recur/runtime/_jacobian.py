r"""Structured Jacobians from a JVP, at the cost the structure allows.

Given ``jvp(v) = J v`` for an ``n x n`` Jacobian whose sparsity is known to be
block-diagonal after a permutation (blocks as an ``(m, k)`` index array padded with
``-1``), ``k`` JVPs recover every block: tangent ``e_c`` has a one at the ``c``-th element
of every block, and since blocks do not interact, ``(J e_c)[blocks[b, i]] = J_b[i, c]``.

* diagonal: one JVP with the all-ones tangent, ``diag(J) = J 1``;
* ``block(k)``: ``k`` JVPs (a column colouring of the block pattern);
* dense: ``n`` JVPs (``jacfwd``);
* dense with a sparse pattern and a column colouring with ``c < n`` colours (from the
  structure pass): ``c`` JVPs, tangent ``Σ_{colour(j) = c} e_j``, and
  ``J[i, j] = (J e_{colour(j)})_i`` where the pattern has ``(i, j)``, else 0
  (``structure_tangents``, ``from_columns``); the result is the dense ``(1, n, n)``
  block, as for dense.

This is only valid when the structure is really there (``J 1`` of a non-diagonal ``J`` is
not its diagonal), which is why the structure comes from the sound dependency pass and
is probed by the verification pass before use.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def diagonal_from_jvp(jvp: Callable, n: int, dtype) -> jax.Array:
    return jvp(jnp.ones((n,), dtype))


def structure_tangents(structure, n: int, dtype) -> np.ndarray:
    """``(c, n)`` tangents of a non-diagonal ``structure``'s column colouring: for blocks,
    row ``c`` has a one at the ``c``-th element of every block (``c < k``); for a dense
    structure with a column colouring, a one on every column of colour ``c``."""
    colours = getattr(structure, "colours", None)
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


def from_columns(cols: jax.Array, structure, n: int) -> jax.Array:
    """``cols[..., :, c] = J e_c`` for the tangents of ``structure_tangents`` (colour axis
    last) -> ``J`` in the structure's layout, ``(..., m, k, k)``: the blocks, or for a
    coloured dense structure ``(..., 1, n, n)`` with ``J[i, j] = cols[i, colour(j)]`` where
    the pattern has ``(i, j)``, else 0."""
    colours = getattr(structure, "colours", None)
    if colours is not None:
        full = jnp.take(cols, jnp.asarray(colours), axis=-1)
        full = jnp.where(jnp.asarray(structure.pattern), full, jnp.zeros((), cols.dtype))
        return full[..., None, :, :]
    blocks = structure.blocks
    pad = jnp.zeros(cols.shape[:-2] + (1, cols.shape[-1]), cols.dtype)
    padded = jnp.concatenate([cols, pad], axis=-2)
    return jnp.take(padded, jnp.asarray(np.where(blocks >= 0, blocks, n)), axis=-2)


def structured_from_jvp(jvp: Callable, n: int, dtype, structure) -> jax.Array:
    """``J`` in the layout of a non-diagonal ``structure`` (``passes._structure``):
    ``(m, k, k)`` blocks, from its column colouring when it has one."""
    tangents = jnp.asarray(structure_tangents(structure, n, dtype))
    return from_columns(jax.vmap(jvp, out_axes=-1)(tangents), structure, n)


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


__all__ = ["diagonal_from_jvp", "structure_tangents", "from_columns", "structured_from_jvp",
           "permute_in", "permute_out"]
