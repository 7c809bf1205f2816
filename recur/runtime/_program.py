"""The runtime program: evaluate a ``Plan`` on concrete (or traced) values.

One function of ``(h0, xs, params)`` made of JAX operations only, so it runs eagerly,
under ``jit``, ``vmap``, ``grad``/``vjp`` and ``jvp``.  For ``scan`` it solves the affine
recurrence, checks the residual (unless ``check=False``) and, per ``on_failure``, falls
back to the sequential loop inside the same program (``"sequential"``), raises
(``"raise"``, outside ``jit``), or returns the result as is (``"ignore"``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ConvergenceError
from .._info import Info
from .._plan import Plan
from ._affine import solve_affine
from ._checks import default_tolerance, residual, with_fallback
from ._flat import FlatStep
from ._sequential import sequential_scan


def _info(method, iterations, res, converged, fell_back):
    return Info(method=method, iterations=jnp.asarray(iterations, jnp.int32),
                residual=jnp.asarray(res), converged=jnp.asarray(converged, bool),
                fell_back=jnp.asarray(fell_back, bool),
                lyapunov=jnp.asarray(jnp.nan, jnp.float32))


def execute(plan: Plan, h0: Any, xs: Any, params: Any) -> tuple[Any, Info]:
    ir = plan._ir
    options = dict(plan.options)
    T = ir.length
    flat = FlatStep(ir)
    real_dtype = np.dtype(jnp.finfo(flat.dtype).dtype) if flat.dtype.kind in "fc" \
        else np.dtype(np.float32)
    h_leaves = jax.tree_util.tree_leaves(h0)
    x_leaves = [] if xs is None else jax.tree_util.tree_leaves(xs)
    p_leaves = jax.tree_util.tree_leaves(params)

    if plan.method == "sequential" or T == 0:
        def step(h, x):
            return ir.call(h, x, params)
        hs = sequential_scan(step, h0, xs, length=T, reverse=ir.reverse)
        zero = jnp.zeros((), real_dtype)
        return hs, _info(plan.method, 0, zero, True, False)

    x_flat = [jnp.flip(v, 0) if ir.reverse else v for v in x_leaves]
    per_step = x_flat if x_flat else None

    def f(z, x):
        return flat(z, [] if x is None else x, p_leaves)

    z0 = flat.ravel(h_leaves)
    zs = solve_affine(f, z0, per_step, plan._structure, T)
    tol = default_tolerance([leaf.dtype for leaf in ir.state])
    rtol = options.get("rtol") if options.get("rtol") is not None else tol
    atol = options.get("atol") if options.get("atol") is not None else tol
    on_failure = options.get("on_failure", "sequential")
    fell_back = jnp.asarray(False)
    if options.get("check", True):
        res, ok = residual(f, z0, zs, per_step, rtol=rtol, atol=atol)
        if on_failure == "sequential":
            def seq():
                return sequential_scan(f, z0, per_step, length=T)
            zs = with_fallback(zs, ok, seq)
            fell_back = ~ok
        elif on_failure == "raise":
            _raise_if_failed(ok, res, plan)
    else:
        res, ok = jnp.asarray(jnp.nan, real_dtype), jnp.asarray(True)
    if ir.reverse:
        zs = jnp.flip(zs, 0)
    hs = jax.tree_util.tree_unflatten(ir.state_treedef, flat.unravel(zs, lead=(T,)))
    return hs, _info(plan.method, 1, res.astype(real_dtype), ok, fell_back)


def _raise_if_failed(ok, res, plan: Plan) -> None:
    try:
        failed = not bool(ok)
    except jax.errors.ConcretizationTypeError:
        failed = None
    if failed:
        raise ConvergenceError(
            f"method {plan.method!r} did not meet the tolerance: residual {float(res):.3g} "
            "(on_failure='raise'). Use on_failure='sequential' to fall back to the loop.")
    if failed is None:
        def _check(ok_value, res_value):
            if not bool(ok_value):
                raise ConvergenceError(
                    f"ConvergenceError: method {plan.method!r} did not meet the tolerance: "
                    f"residual {float(res_value):.3g} (on_failure='raise')")
        jax.debug.callback(_check, ok, res)


__all__ = ["execute"]
