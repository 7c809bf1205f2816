r"""Contractivity from concrete values: the largest Lyapunov exponent along the loop.

Whether the iterative methods converge depends on values, not shapes (the logistic map
at r = 2.5 and r = 3.9 has the same shapes).  Given concrete ``h0``, ``xs`` and params,
``plan`` runs the sequential loop once and estimates the largest Lyapunov exponent along
that trajectory with the standard forward power iteration (Benettin et al. 1980):

    v_t = J_t v_{t-1} / |J_t v_{t-1}|,     λ ≈ (1/T) Σ_t log |J_t v_{t-1}|,

with ``J_t = ∂f/∂h`` at ``h_{t-1}`` applied by one JVP per step.  λ < 0: contractive, the
DEER family converges fast; λ > 0: chaotic, expect a fallback to the loop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as jx
from ._dtypes import is_inexact
from .passes._trace import StepIR
from .runtime._flat import FlatStep, jaxpr_step


def lyapunov_along_loop(ir: StepIR, h0: Any, xs: Any, params: Any) -> float | None:
    """λ per step, or None when it cannot be computed (tracers, integer state, T = 0)."""
    leaves = [*jax.tree_util.tree_leaves(h0), *jax.tree_util.tree_leaves(xs),
              *jax.tree_util.tree_leaves(params), *ir.jaxpr.consts]
    if ir.length == 0 or ir.n_state == 0 or not all(jx.is_concrete(v) for v in leaves):
        return None
    if not all(is_inexact(leaf.dtype) for leaf in ir.state):
        return None
    flat = FlatStep(ir, jaxpr_step(ir, ir.jaxpr.consts))
    p_leaves = [jnp.asarray(v) for v in jax.tree_util.tree_leaves(params)]
    x_leaves = [jnp.asarray(v) for v in jax.tree_util.tree_leaves(xs)] if xs is not None else []
    if ir.reverse:
        x_leaves = [jnp.flip(v, 0) for v in x_leaves]
    z0 = flat.ravel([jnp.asarray(v) for v in jax.tree_util.tree_leaves(h0)])
    v0 = jnp.ones_like(z0) / np.sqrt(ir.n_state)

    @jax.jit
    def run(z0, v0, x_leaves, p_leaves):
        def body(carry, x):
            z, v = carry
            z_new, jv = jax.jvp(lambda z: flat(z, x if x is not None else [], p_leaves),
                                (z,), (v,))
            norm = jnp.linalg.norm(jv)
            tiny = jnp.finfo(norm.dtype).tiny
            return (z_new, jv / jnp.maximum(norm, tiny)), jnp.log(jnp.maximum(norm, tiny))
        _, logs = jax.lax.scan(body, (z0, v0), x_leaves if x_leaves else None,
                               length=ir.length)
        finite = jnp.isfinite(logs)
        count = jnp.maximum(jnp.sum(finite).astype(logs.dtype), 1)
        return jnp.sum(jnp.where(finite, logs, 0)) / count

    value = float(run(z0, v0, x_leaves, p_leaves))
    return value if np.isfinite(value) else None


__all__ = ["lyapunov_along_loop"]
