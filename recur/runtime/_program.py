"""The runtime program: evaluate a ``Plan`` on concrete (or traced) values.

The program is one JAX function of ``(h0 leaves, xs leaves, params leaves, consts)``,
where ``consts`` are the step's closed-over arrays, passed as arguments: the step is
evaluated from its jaxpr, never from a Python closure, so a compiled program can be
reused safely.  It is compiled once per *program key* — the jaxpr (its text and the
identity of any Python callables in its parameters, such as custom JVP rules), the
shapes and dtypes of every argument, and every decision of the plan (method, Jacobian
structure and block layout, options) — and kept in a small LRU cache.  Outside a trace
this makes repeated calls cheap; under a user's ``jit``/``vmap``/``grad`` the inner ``jit``
is simply inlined.

For ``scan`` the program solves the affine recurrence, checks the residual (unless
``check=False``) and, per ``on_failure``, falls back to the sequential loop inside the
same program (``"sequential"``), raises ``ConvergenceError`` (``"raise"``), or returns the
result as is (``"ignore"``).
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax_adapter as jx
from .._dtypes import is_inexact
from .._errors import ConvergenceError, PlanError
from .._info import Info
from .._plan import Plan
from ._affine import solve_affine
from ._checks import default_tolerance, residual, with_fallback
from ._flat import FlatStep, jaxpr_step
from ._newton import METHODS as ITERATIVE_METHODS
from ._newton import solve_nonlinear
from ._sequential import sequential_scan
from . import _sharding

_CACHE_SIZE = 64
_programs: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()


def _info(method, iterations, res, converged, fell_back, lyapunov, evaluations):
    return Info(method=method, iterations=jnp.asarray(iterations, jnp.int32),
                residual=jnp.asarray(res), converged=jnp.asarray(converged, bool),
                fell_back=jnp.asarray(fell_back, bool),
                lyapunov=jnp.asarray(lyapunov, jnp.float32),
                evaluations=jnp.asarray(evaluations, jnp.int32))


def _unflatten_x(ir, x):
    if ir.input_treedef is None:
        return None
    return jax.tree_util.tree_unflatten(ir.input_treedef, [] if x is None else list(x))


def _unflatten_p(ir, p_leaves):
    return jax.tree_util.tree_unflatten(ir.param_treedef, list(p_leaves))


def _run(plan: Plan, in_trace: bool, user_jacobian, axis, h_leaves, x_leaves, p_leaves, consts,
         init_leaves):
    with _sharding.along(axis):
        return _run_plan(plan, in_trace, user_jacobian, h_leaves, x_leaves, p_leaves, consts,
                         init_leaves)


def _run_plan(plan: Plan, in_trace: bool, user_jacobian, h_leaves, x_leaves, p_leaves, consts,
              init_leaves):
    ir = plan._ir
    options = dict(plan.options)
    axis = _sharding.current()
    T, n = (ir.length if axis is None else axis.local), ir.n_state
    leaf_step = jaxpr_step(ir, consts)
    flat = FlatStep(ir, leaf_step)
    real_dtype = np.dtype(jnp.finfo(flat.dtype).dtype) if is_inexact(flat.dtype) \
        else np.dtype(np.float32)
    x_per_step = x_leaves if x_leaves else None
    n_stages = len(plan.stages)

    if all(st.method == "sequential" for st in plan.stages) or T == 0:
        def step(h, x):
            return leaf_step(h, [] if x is None else x, p_leaves)
        if axis is not None and ir.reverse:  # time is flipped (runtime/_sharding.py)
            xs_fwd = None if x_per_step is None else [jnp.flip(v, 0) for v in x_per_step]
            hs = [jnp.flip(v, 0) for v in
                  sequential_scan(step, list(h_leaves), xs_fwd, length=T)]
        else:
            hs = sequential_scan(step, list(h_leaves), x_per_step, length=T, reverse=ir.reverse)
        zero = jnp.zeros((n_stages,) if n_stages > 1 else (), real_dtype)
        return list(hs), _info(plan.method, jnp.zeros_like(zero, jnp.int32), zero,
                               jnp.ones_like(zero, bool), jnp.zeros_like(zero, bool),
                               jnp.full_like(zero, jnp.nan, jnp.float32),
                               jnp.full_like(zero, _sharding.global_length(T), jnp.int32))

    if ir.reverse and x_per_step is not None:
        x_per_step = [jnp.flip(v, 0) for v in x_per_step]

    def f(z, x):
        return flat(z, [] if x is None else x, p_leaves)

    z0 = flat.ravel(h_leaves)
    zs = jnp.zeros((T, n), flat.dtype)
    init_full = None if init_leaves is None else flat.ravel_batched(init_leaves)
    if init_full is not None and ir.reverse:
        init_full = jnp.flip(init_full, 0)
    stats = []
    for data, stage in zip(plan._stages, plan.stages):
        if len(data.elements) == n:
            f_s, xs_s, z0_s = f, x_per_step, z0
        else:
            idx = jnp.asarray(data.elements)
            prev = _sharding.shift(zs, z0)

            def f_s(z, xp, idx=idx):
                x, before = xp
                return f(before.at[idx].set(z), x)[idx]
            xs_s, z0_s = (x_per_step, prev), z0[idx]
        idx_np = data.elements
        init_s = None if init_full is None else init_full[:, jnp.asarray(idx_np)]
        jac_s = None
        if user_jacobian is not None:
            def jac_s(z, xp, idx=jnp.asarray(idx_np), full_state=len(idx_np) == n):
                x, before = (xp, None) if full_state else xp
                full = z if full_state else before.at[idx].set(z)
                d = flat.ravel(jax.tree_util.tree_leaves(user_jacobian(
                    jax.tree_util.tree_unflatten(ir.state_treedef, flat.unravel(full)),
                    _unflatten_x(ir, x), _unflatten_p(ir, p_leaves))))
                return d if full_state else d[idx]
        zs_s, stage_stats = _run_stage(stage.method, f_s, z0_s, xs_s, data, ir, options,
                                       in_trace, real_dtype, T, init_s, jac_s)
        zs = zs_s if len(data.elements) == n else zs.at[:, jnp.asarray(data.elements)].set(zs_s)
        stats.append(stage_stats)
    if ir.reverse:
        zs = jnp.flip(zs, 0)
    fields = [jnp.stack(v) if n_stages > 1 else v[0] for v in zip(*stats)]
    return flat.unravel(zs, lead=(T,)), _info(plan.method, *fields)


def _run_stage(method, f, z0, xs, data, ir, options, in_trace, real_dtype, T, init=None,
               jacobian=None):
    """One stage: ``(zs, (iterations, residual, converged, fell_back, lyapunov,
    evaluations))``; ``evaluations`` counts single-step evaluations of the step function
    (JVPs not counted), the fallback loop included, to compare with ``T`` for the loop."""
    nan = jnp.asarray(jnp.nan, jnp.float32)
    T_all = _sharding.global_length(T)
    if method == "sequential":
        zs = sequential_scan(f, z0, xs, length=T)
        return zs, (jnp.asarray(0, jnp.int32), jnp.zeros((), real_dtype), jnp.asarray(True),
                    jnp.asarray(False), nan, jnp.asarray(T_all, jnp.int32))
    tol = default_tolerance([leaf.dtype for leaf in ir.state])
    rtol = options.get("rtol") if options.get("rtol") is not None else tol
    atol = options.get("atol") if options.get("atol") is not None else tol
    on_failure = options.get("on_failure", "sequential")
    fell_back = jnp.asarray(False)
    if method in ITERATIVE_METHODS:
        zs, st = solve_nonlinear(f, z0, xs, method=method, structure=data.structure, length=T,
                                 rtol=rtol, atol=atol, max_iters=options.get("max_iters"),
                                 init=init, jacobian=jacobian, window=options.get("window"),
                                 lyapunov=bool(options.get("lyapunov", True)))
        res, ok = st["residual"].astype(real_dtype), st["converged"]
        if on_failure == "sequential":
            zs = with_fallback(zs, ok, lambda: sequential_scan(f, z0, xs, length=T))
            fell_back = ~ok
        elif on_failure == "raise" and in_trace:
            _raise_at_run_time(ok, res, method)
        evals = st["evaluations"] + jnp.where(fell_back, T_all, 0)
        return zs, (st["iterations"].astype(jnp.int32), res, ok, fell_back,
                    st["lyapunov"].astype(jnp.float32), evals.astype(jnp.int32))
    zs = solve_affine(f, z0, xs, data.structure, T)
    if options.get("check", True):
        res, ok = residual(f, z0, zs, xs, rtol=rtol, atol=atol)
        if on_failure == "sequential":
            zs = with_fallback(zs, ok, lambda: sequential_scan(f, z0, xs, length=T))
            fell_back = ~ok
        elif on_failure == "raise" and in_trace:
            _raise_at_run_time(ok, res, method)
    else:
        res, ok = jnp.asarray(jnp.nan, real_dtype), jnp.asarray(True)
    # the coefficients (b_t = f(0, x_t)) and f(z0, x_0), the check, the fallback
    evals = T_all + 1 + (T_all if options.get("check", True) else 0) + \
        jnp.where(fell_back, T_all, 0)
    return zs, (jnp.asarray(1, jnp.int32), res.astype(real_dtype), ok, fell_back, nan,
                jnp.asarray(evals, jnp.int32))


def _raise_at_run_time(ok, res, method: str) -> None:
    def check(ok_value, res_value):
        if not np.all(ok_value):
            raise ConvergenceError(
                f"ConvergenceError: method {method!r} did not meet the tolerance: residual "
                f"{float(np.max(res_value)):.3g} (on_failure='raise')")
    jax.debug.callback(check, ok, res)


def _callables(jaxpr, out: list) -> None:
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            subs = value if isinstance(value, (tuple, list)) else (value,)
            for sub in subs:
                if jx.is_jaxpr(sub):
                    _callables(jx.as_closed(sub).jaxpr, out)
                elif callable(sub) and not isinstance(sub, type):
                    out.append(sub)


def _avals(leaves) -> tuple:
    return tuple((tuple(np.shape(v)), str(jnp.result_type(v))) for v in leaves)


def program_key(plan: Plan, leaves, in_trace: bool) -> tuple:
    ir = plan._ir
    found: list = []
    _callables(ir.jaxpr.jaxpr, found)
    # the structure by value: blocks, column colouring and its pattern, solver hints
    stages = tuple((st.method, d.elements.tobytes(), d.structure.key())
                   for st, d in zip(plan.stages, plan._stages))
    return (str(ir.jaxpr.jaxpr), tuple(found), tuple(map(_avals, leaves)),
            plan.method, stages, plan.options, ir.reverse, ir.length, plan.layout, plan._mesh,
            ir.state_treedef, ir.input_treedef, ir.param_treedef, in_trace)


def _place(v, mesh, spec):
    """``v`` laid out as ``spec`` over ``mesh`` (inside or outside ``jit``)."""
    sharding = jax.sharding.NamedSharding(mesh, spec)
    explicit = any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ()))
    return jax.reshard(v, sharding) if explicit else jax.lax.with_sharding_constraint(v, sharding)


def _sharded_program(plan: Plan, in_trace: bool, jacobian, n_h: int, n_x: int, n_p: int,
                     n_c: int, has_init: bool):
    """``_run`` inside ``shard_map`` over the plan's mesh axis (``runtime/_sharding.py``):
    inputs padded to ``D L`` steps (at the end of the processing order) and sharded along
    time, parameters and closed-over arrays replicated, states returned sharded along
    time and unpadded."""
    lay, mesh, ir = plan.layout, plan._mesh, plan._ir
    T, pad, reverse = ir.length, lay.padding, ir.reverse
    axis = _sharding.TimeAxis(name=lay.axis_name, size=lay.devices, length=T + pad, valid=T,
                              reversed=reverse)
    along_t, rep = jax.sharding.PartitionSpec(lay.axis_name), jax.sharding.PartitionSpec()

    def body(h, x, p, c, *init):
        return _run(plan, in_trace, jacobian, axis, h, x, p, c, init[0] if init else None)

    in_specs = ([rep] * n_h, [along_t] * n_x, [rep] * n_p, [rep] * n_c) + \
        (([along_t] * n_h,) if has_init else ())
    inner = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=([along_t] * n_h, rep),
                          check_vma=False)

    def padded(v):
        if not pad:
            return v
        if reverse:  # the processing order is flipped: pad at the front
            return jnp.concatenate([jnp.repeat(v[:1], pad, axis=0), v], axis=0)
        return jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)], axis=0)

    def program(h, x, p, c, init):
        x = [_place(padded(v), mesh, along_t) for v in x]
        extra = () if init is None else ([_place(padded(v), mesh, along_t) for v in init],)
        h, p, c = ([_place(v, mesh, rep) for v in group] for group in (h, p, c))
        out, info = inner(h, x, p, c, *extra)
        if pad:
            out = [v[pad:] if reverse else v[:T] for v in out]
        return out, info

    return jax.jit(program)


def _concrete(leaves) -> bool:
    return all(jx.is_concrete(v) for group in leaves for v in group)


def execute(plan: Plan, h0: Any, xs: Any, params: Any, *, init: Any = None,
            jacobian: Any = None) -> tuple[Any, Info]:
    """Run ``plan``; ``init`` (a trajectory like ``hs``) and ``jacobian`` (a function
    ``(h, x, params) -> diag of ∂f/∂h`` like ``h``) only guide the iterative solvers."""
    ir = plan._ir
    init_leaves = None if init is None else [jnp.asarray(v)
                                             for v in jax.tree_util.tree_leaves(init)]
    if init_leaves is not None:
        expected = [(ir.length,) + leaf.shape for leaf in ir.state]
        if [tuple(v.shape) for v in init_leaves] != expected:
            raise PlanError(f"init must be a trajectory like hs, leaves of shapes {expected}; "
                            f"got {[tuple(v.shape) for v in init_leaves]}.")
    h_leaves = [jnp.asarray(v) for v in jax.tree_util.tree_leaves(h0)]
    x_leaves = [] if xs is None else [jnp.asarray(v) for v in jax.tree_util.tree_leaves(xs)]
    p_leaves = [jnp.asarray(v) for v in jax.tree_util.tree_leaves(params)]
    consts = list(ir.jaxpr.consts)
    groups = (h_leaves, x_leaves, p_leaves, consts)
    in_trace = not _concrete(groups)
    key = program_key(plan, groups, in_trace) + (jacobian, init_leaves is None)
    program = _programs.get(key)
    if program is None:
        if plan.layout is None:
            program = jax.jit(functools.partial(_run, plan, in_trace, jacobian, None))
        else:
            program = _sharded_program(plan, in_trace, jacobian, len(h_leaves),
                                       len(x_leaves), len(p_leaves), len(consts),
                                       init_leaves is not None)
        _programs[key] = program
        if len(_programs) > _CACHE_SIZE:
            _programs.popitem(last=False)
    else:
        _programs.move_to_end(key)
    out_leaves, info = program(h_leaves, x_leaves, p_leaves, consts, init_leaves)
    if plan.method != "sequential" and dict(plan.options).get("on_failure") == "raise" \
            and not in_trace and not bool(np.all(info.converged)):
        raise ConvergenceError(
            f"method {plan.method!r} did not meet the tolerance: residual "
            f"{float(np.max(info.residual)):.3g} (on_failure='raise'). Use on_failure='sequential' "
            "to fall back to the loop.")
    return jax.tree_util.tree_unflatten(ir.state_treedef, out_leaves), info


__all__ = ["execute", "program_key"]
