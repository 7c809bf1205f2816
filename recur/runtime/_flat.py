"""The state pytree as one flat vector, and the step as a function of that vector.

Solvers work on ``z ∈ K^n``: every state leaf raveled and concatenated, in a common
compute dtype (the leaves' result type, at least float32 so that bfloat16/float16
states accumulate in float32).  ``unravel`` casts back to each leaf's own dtype.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import is_complex, is_inexact
from .._jax_adapter import ClosedJaxpr, eval_jaxpr
from ..passes._trace import StepIR


def compute_dtype(dtypes: Sequence[np.dtype]) -> np.dtype:
    dt = np.dtype(jnp.result_type(*dtypes)) if dtypes else np.dtype(jnp.float32)
    if is_inexact(dt) and not is_complex(dt) and dt.itemsize < 4:
        dt = np.dtype(jnp.float32)
    return dt


def jaxpr_step(ir: StepIR, consts: Sequence[Any]):
    """The traced step as ``(h leaves, x leaves, p leaves) -> h' leaves``, with the
    closed-over arrays given explicitly (so compiled programs never hold stale ones)."""
    closed = ClosedJaxpr(ir.jaxpr.jaxpr, list(consts))

    def call(h_leaves, x_leaves, p_leaves):
        return eval_jaxpr(closed, *h_leaves, *x_leaves, *p_leaves)

    return call


class FlatStep:
    """``z' = f(z, x_t, params)`` on the flat state; ``ravel``/``unravel`` convert."""

    def __init__(self, ir: StepIR, leaf_step=None):
        self.ir = ir
        self.leaf_step = ir.flat_call if leaf_step is None else leaf_step
        self.n = ir.n_state
        self.dtype = compute_dtype([leaf.dtype for leaf in ir.state])

    def ravel(self, leaves: Sequence[Any]) -> jax.Array:
        if not leaves:
            return jnp.zeros((0,), self.dtype)
        return jnp.concatenate([jnp.ravel(jnp.asarray(v)).astype(self.dtype) for v in leaves])

    def ravel_batched(self, leaves: Sequence[Any]) -> jax.Array:
        """Leaves with one leading axis -> (lead, n)."""
        lead = jnp.shape(leaves[0])[0]
        return jnp.concatenate(
            [jnp.reshape(v, (lead, -1)).astype(self.dtype) for v in leaves], axis=1)

    def unravel(self, z: jax.Array, *, lead: tuple[int, ...] = ()) -> list[jax.Array]:
        out = []
        for leaf, off in zip(self.ir.state, self.ir.offsets):
            part = z[..., off:off + leaf.size].reshape(lead + leaf.shape)
            if leaf.dtype.kind != "c" and np.dtype(self.dtype).kind == "c":
                part = jnp.real(part)
            out.append(part.astype(leaf.dtype))
        return out

    def __call__(self, z: jax.Array, x_leaves: Sequence[Any], p_leaves: Sequence[Any]):
        h = self.unravel(z)
        return self.ravel(self.leaf_step(h, x_leaves, p_leaves))


__all__ = ["FlatStep", "compute_dtype"]
