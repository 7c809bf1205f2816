r"""The one convergence test, the one non-finite rule, and the fallback.

Tolerances
----------
Every element has its own tolerances, from the dtype of the leaf it belongs to, unless
the user gives ``rtol``/``atol`` (which then set both): the step test's
``atol = rtol = eps^(2/3)`` (``2.4e-5`` for float32, ``3.7e-11`` for float64; bfloat16 and
float16 by their own ``eps``), and the forward-error test's ``eps^(3/4)`` (``6.5e-6``,
``1.8e-12``) -- about what the sequential loop's own rounding reaches over a thousand-step
memory (measured: 1.3-2e-6 for the float32 Euler step ``h + 1e-3 tanh(x - h)``, T = 4000).
So a float64 leaf next to a float32 leaf is solved to float64 accuracy.

The step test (the residual)
----------------------------
For a trajectory ``z`` and ``f = f(shift(z), x)`` (one batched evaluation of the step), an
element agrees when

    z and f are finite and |z - f| <= atol + rtol |f|,
    or z and f are the same non-finite value (both NaN, or the same infinity).

A non-finite value agrees only with the same non-finite value: ``z = inf`` never passes
against a finite ``f``.  The reported residual is ``max |z - f|`` over the finite
differences, ``inf`` when some element disagrees through a non-finite value.

The forward-error test
----------------------
A small residual per step does not bound the trajectory's error: for a slowly contracting
step (``ρ = |∂f/∂h| ≈ 1 - 1e-3``) per-step residuals ``r`` add up to ``r / (1 - ρ)``.  The
iterative solvers therefore also estimate the error ``e`` of the trajectory itself by
propagating the residuals through the linearised recurrence (``e_t = Ã_t e_{t-1} + r_t``,
one scan: the next correction of the iteration) and accept only when, elementwise,
``|e| <= atol + rtol |z|`` as well (``runtime/_iterative.py`` says what the estimate bounds
for each method).

The fallback
------------
Fallback to the sequential loop happens inside the compiled program with ``lax.cond``.
Under ``vmap`` a batched predicate would turn ``cond`` into ``select`` and run the loop for
every example; the predicate is therefore reduced over the batch ("some example failed")
by a ``custom_vmap`` rule so it stays unbatched, and the loop's result replaces only the
failed examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import is_inexact
from . import _sharding


STEP_POWER = 2.0 / 3.0   # the step test: eps^(2/3), tolerant of a scan's reassociation
ERROR_POWER = 3.0 / 4.0  # the trajectory's error: eps^(3/4), a few tens of eps like the loop


def leaf_tolerance(dtype, power: float = STEP_POWER) -> float:
    """``eps^power`` of an inexact dtype (float32 for the others)."""
    dt = dtype if is_inexact(dtype) else jnp.float32
    return float(jnp.finfo(dt).eps) ** power


@dataclasses.dataclass(frozen=True, eq=False)
class Tolerances:
    """Per element (NumPy scalars when all agree, ``(n,)`` vectors otherwise): ``rtol``,
    ``atol`` of the step test, ``error_rtol``, ``error_atol`` of the forward-error test."""

    rtol: Any
    atol: Any
    error_rtol: Any
    error_atol: Any

    @classmethod
    def uniform(cls, rtol, atol) -> "Tolerances":
        return cls(rtol, atol, rtol, atol)


def element_tolerances(leaf_dtypes: Sequence, sizes: Sequence[int], rtol=None,
                       atol=None) -> Tolerances:
    """The tolerances of a stage whose elements come from leaves of ``leaf_dtypes`` with
    ``sizes`` elements each; a user's ``rtol``/``atol`` sets both tests."""
    def per(power):
        return np.concatenate([np.full(s, leaf_tolerance(d, power))
                               for d, s in zip(leaf_dtypes, sizes)]) if sizes else np.zeros(0)

    def one(user, values):
        if user is not None:
            return np.float64(user)
        if values.size and np.all(values == values[0]):
            return np.float64(values[0])
        return values if values.size else np.float64(leaf_tolerance(jnp.float32))

    step, error = per(STEP_POWER), per(ERROR_POWER)
    return Tolerances(one(rtol, step), one(atol, step), one(rtol, error), one(atol, error))


def _real(dtype):
    return jnp.finfo(dtype).dtype


def _tol(tol, rdt):
    return jnp.asarray(tol, rdt)


def same_nonfinite(z, f) -> jax.Array:
    """Positions where ``z`` and ``f`` are the same non-finite value."""
    return (~jnp.isfinite(z)) & (~jnp.isfinite(f)) & ((jnp.isnan(z) & jnp.isnan(f)) | (z == f))


def step_test(z, f, rtol, atol):
    """Per element (``z``, ``f``: ``(T, n)``): ``bad`` (fails the step test), the finite
    part of ``|z - f|``, and ``nonfinite`` (fails through a non-finite value)."""
    rdt = _real(z.dtype)
    diff = jnp.abs(z - f).astype(rdt)
    finite = jnp.isfinite(z) & jnp.isfinite(f)
    ok = (finite & (diff <= _tol(atol, rdt) + _tol(rtol, rdt) * jnp.abs(f).astype(rdt))) \
        | same_nonfinite(z, f)
    bad = ~ok
    fin = jnp.where(finite, diff, jnp.zeros((), rdt))
    valid = _sharding.valid_steps(z.shape[0])
    if valid is not None:  # padded steps (across devices) never count
        bad = bad & valid[:, None]
        fin = jnp.where(valid[:, None], fin, 0)
    return bad, fin, bad & ~finite


def max_and_any(value, *flags):
    """``(max(value, initial=0), any(flag) for each flag)`` in one pass: a single variadic
    reduction, into which XLA fuses the elementwise work that makes its operands (separate
    reductions made XLA on CPU materialise and re-read them: a step test of 4M elements took
    19 ms, one pass 2.9 ms).  Diagnostics only: no derivative flows through."""
    value = jax.lax.stop_gradient(value)
    init = (jnp.zeros((), value.dtype),) + (jnp.asarray(False),) * len(flags)

    def combine(a, b):
        return (jnp.maximum(a[0], b[0]),) + tuple(x | y for x, y in zip(a[1:], b[1:]))
    return jax.lax.reduce((value,) + tuple(flags), init, combine, tuple(range(value.ndim)))


def summarize(bad, fin, nonfinite):
    """``(residual, ok)`` over all steps (and devices): the largest finite difference, or
    ``inf`` when an element disagrees through a non-finite value."""
    res, any_nonfinite, any_bad = max_and_any(fin, nonfinite, bad)
    res = jnp.where(any_nonfinite, jnp.inf, res).astype(fin.dtype)
    return _sharding.reduce_max(res), ~_sharding.reduce_any(any_bad)


def check(z, f, rtol, atol):
    """``(residual, ok)`` of the step test on the whole trajectory."""
    return summarize(*step_test(z, f, rtol, atol))


def error_test(e, z, rtol, atol):
    """``(max |e|, ok)``: the estimated error ``e`` of ``z`` within ``atol + rtol |z|``
    everywhere (a non-finite estimate fails, except where ``z`` is itself non-finite)."""
    rdt = _real(z.dtype)
    mag = jnp.abs(e).astype(rdt)
    # where z itself is not finite the step test decides (the loop gives the same value)
    ok = ~jnp.isfinite(z) | (jnp.isfinite(mag) & (
        mag <= _tol(atol, rdt) + _tol(rtol, rdt) * jnp.abs(z).astype(rdt)))
    valid = _sharding.valid_steps(z.shape[0])
    if valid is not None:
        ok = ok | ~valid[:, None]
        mag = jnp.where(valid[:, None], mag, 0)
    err, any_bad = max_and_any(jnp.where(jnp.isfinite(mag), mag, jnp.inf), ~ok)
    return _sharding.reduce_max(err.astype(rdt)), ~_sharding.reduce_any(any_bad)


def residual(f: Callable, z0, zs, xs, *, rtol, atol):
    """``(residual, ok)`` of the step test for the trajectory ``zs`` (``(T, n)``)."""
    prev = _sharding.shift(zs, z0)
    fz = jax.vmap(f)(prev, xs) if xs is not None else jax.vmap(lambda z: f(z, None))(prev)
    res, ok = check(zs, fz, rtol, atol)
    return jax.lax.stop_gradient(res), jax.lax.stop_gradient(ok)


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
    some_failed = _sharding.uniform(any_over_batch(jax.lax.stop_gradient(~ok)))

    def repair(zs):
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), zs, sequential())

    return jax.lax.cond(some_failed, repair, lambda zs: zs, zs)


__all__ = ["leaf_tolerance", "element_tolerances", "Tolerances", "STEP_POWER", "ERROR_POWER", "same_nonfinite", "step_test", "max_and_any", "summarize",
           "check", "error_test", "residual", "any_over_batch", "with_fallback"]
