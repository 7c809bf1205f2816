r"""The last line of defence: a residual check of a parallel result, and the fallback.

The residual of a trajectory is ``r_t = h_t - f(h_{t-1}, x_t)`` (one batched evaluation
of ``f``).  A result is accepted when, elementwise,

    |r_t| <= atol + rtol * max(|h_t|, |f(h_{t-1}, x_t)|),

where positions at which both sides are the same non-finite value (a NaN or an overflow
that the sequential loop produces too) count as agreeing.  Default tolerances are tied to
the dtype: ``atol = rtol = eps^(2/3)`` of the least precise state leaf.

Fallback to the sequential loop happens inside the compiled program with ``lax.cond``.
Under ``vmap`` a batched predicate would turn ``cond`` into ``select`` and run the loop for
every example; the predicate is therefore reduced over the batch ("some example failed")
by a ``custom_vmap`` rule so it stays unbatched, and the loop's result replaces only the
failed examples.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from .._dtypes import is_inexact
from . import _sharding


def default_tolerance(dtypes) -> float:
    inexact = [dt for dt in dtypes if is_inexact(dt)] or [jnp.float32]
    eps = max(float(jnp.finfo(dt).eps) for dt in inexact)
    return eps ** (2.0 / 3.0)


def residual(f: Callable, z0, zs, xs, *, rtol: float, atol: float):
    """``(max |r|, ok)`` for the trajectory ``zs`` (shape ``(T, n)``)."""
    prev = _sharding.shift(zs, z0)
    fz = jax.vmap(f)(prev, xs) if xs is not None else jax.vmap(lambda z: f(z, None))(prev)
    diff = jnp.abs(zs - fz)
    scale = jnp.maximum(jnp.abs(zs), jnp.abs(fz))
    same_nonfinite = (~jnp.isfinite(zs)) & (~jnp.isfinite(fz)) & (
        (jnp.isnan(zs) & jnp.isnan(fz)) | (zs == fz))
    bad = ~((diff <= atol + rtol * scale) | same_nonfinite)
    finite_diff = jnp.where(jnp.isfinite(diff), diff, 0)
    valid = _sharding.valid_steps(zs.shape[0])
    if valid is not None:  # padded steps (across devices) never count
        bad = bad & valid[:, None]
        finite_diff = jnp.where(valid[:, None], finite_diff, 0)
    res = jnp.max(finite_diff, initial=0.0).astype(jnp.finfo(diff.dtype).dtype)
    res = jnp.where(jnp.any(bad & ~jnp.isfinite(diff)), jnp.inf, res)
    res, failed = _sharding.reduce_max(res), _sharding.reduce_any(jnp.any(bad))
    return jax.lax.stop_gradient(res), jax.lax.stop_gradient(~failed)


@jax.custom_batching.custom_vmap
def any_over_batch(flag):
    """``flag`` unchanged outside ``vmap``; under ``vmap`` it is reduced with ``any`` over
    the batch and stays unbatched (so a ``cond`` on it stays a real conditional)."""
    return flag


@any_over_batch.def_vmap
def _any_over_batch_vmap(axis_size, in_batched, flag):
    (batched,) = in_batched
    reduced = jnp.any(flag) if batched else flag
    return any_over_batch(reduced), False


def with_fallback(zs, ok, sequential: Callable[[], jax.Array]):
    """``zs`` where ``ok``; the sequential result for the examples where it is not."""
    some_failed = any_over_batch(jax.lax.stop_gradient(~ok))

    def repair(zs):
        return jnp.where(ok, zs, sequential())

    return jax.lax.cond(some_failed, repair, lambda zs: zs, zs)


__all__ = ["default_tolerance", "residual", "any_over_batch", "with_fallback"]
