"""The runtime program: evaluate a ``Plan`` on concrete (or traced) values.

The program is one JAX function of ``(h0 leaves, xs leaves, params leaves, consts)``,
where ``consts`` are the step's closed-over arrays, passed as arguments: the step is
evaluated from its jaxpr, never from a Python closure, so a compiled program can be
reused safely.  It is compiled once per *program key* -- the jaxpr (its text and the
identity of any Python callables in its parameters, such as custom JVP rules), the
shapes and dtypes of every argument, and every decision of the plan (method, stages and
their structures, options) -- and kept in a small LRU cache.  Outside a trace this makes
repeated calls cheap; under a user's ``jit``/``vmap``/``grad`` the inner ``jit`` is simply
inlined.

What the program does is ``_stages.py``: the stages in order (each checked, falling back
to the loop per ``on_failure``), then the whole-step check of a staged plan.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax_adapter as jx
from .._errors import ConvergenceError, PlanError
from .._info import Info
from .._ir import Outputs, jaxpr_step
from jax import lax
from .._plan import Plan
from . import _mesh, _sharding
from ._checks import with_fallback
from ._chunked import run_chunked
from ._result import Reason, StageStats, stack
from ._sequential import sequential_scan
from ._scan_outputs import scan_outputs
from ._stages import (StageRun, first_nonfinite, placeholders, run_stage, shift_leaves,
                      whole_step_check)

_CACHE_SIZE = 64
_programs: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()


def _info(method: str, stats: StageStats, nonfinite) -> Info:
    return Info.pack(method, stats, nonfinite)


def _run(plan: Plan, in_trace: bool, user_jacobian, axis, details: bool, outputs, h_leaves,
         x_leaves, p_leaves, consts, init_leaves, out_consts=()):
    with _sharding.along(axis):
        return run_plan(plan, in_trace, user_jacobian, h_leaves, x_leaves, p_leaves, consts,
                        init_leaves, details, outputs, out_consts)


def _user_jacobian(plan: Plan, user_jacobian, stage: StageRun, p_leaves):
    """The user's ``jacobian(h, x, params) -> diag like h`` as ``(z, x) -> (n_stage,)``."""
    if user_jacobian is None:
        return None
    ir, view = plan.ir, stage.view

    def jac(z, xb):
        x, before = (xb, None) if view.complete else xb
        h = jax.tree_util.tree_unflatten(ir.state_treedef, view.scatter(z, before))
        xt = None if ir.input_treedef is None else jax.tree_util.tree_unflatten(
            ir.input_treedef, [] if x is None else list(x))
        p = jax.tree_util.tree_unflatten(ir.param_treedef, list(p_leaves))
        d = user_jacobian(h, xt, p)
        try:
            leaves = jax.tree_util.tree_leaves(d)
            return view.gather([jnp.broadcast_to(jnp.asarray(v), leaf.shape)
                                for v, leaf in zip(leaves, ir.state)])
        except (ValueError, TypeError) as exc:
            raise PlanError(
                "jacobian= must return the diagonal of ∂f/∂h with the structure and shapes "
                f"of the state ({', '.join(f'{l.name}: {l.shape}' for l in ir.state)}); "
                f"got {jax.tree_util.tree_map(jnp.shape, d)} ({exc})") from None
    return jac


def run_plan(plan: Plan, in_trace: bool, user_jacobian, h_leaves, x_leaves, p_leaves, consts,
             init_leaves, details: bool = True, outputs: Outputs | None = None,
             out_consts=()):
    """The plan's trajectory and ``Info``; ``details=False`` skips what only a returned
    ``Info`` reports (the search for the first non-finite state).  With ``outputs`` (a
    ``jax.lax.scan`` body), ``((final carry, per-step outputs), Info)`` instead: the loop
    emits the outputs as it goes, storing no state; ``chunked`` and the boundary-state
    scan compute them without all states (``_outputs_without_states``); the other parallel
    methods hold the trajectory anyway and evaluate the outputs from it in one batched
    pass."""
    ir = plan.ir
    T = ir.length if _sharding.current() is None else _sharding.current().local
    step = jaxpr_step(ir, consts)
    xs = list(x_leaves) if x_leaves else None
    if ir.reverse and xs is not None:
        xs = [jnp.flip(v, 0) for v in xs]
    raiser = functools.partial(_raise_at_run_time) \
        if plan.option_dict.get("on_failure", "sequential") == "raise" and in_trace else None
    if outputs is not None and _sharding.current() is None:
        direct = _outputs_without_states(plan, step, outputs, out_consts, h_leaves, xs,
                                         p_leaves, T, raiser)
        if direct is not None:
            final, ys, stats = direct
            return _outputs_result(plan, outputs, final, ys, stats, details)
    hs, stats = _trajectory(plan, step, user_jacobian, h_leaves, xs, p_leaves, T,
                            init_leaves, raiser)
    if outputs is not None:
        body = outputs.body(out_consts)
        prev = shift_leaves(hs, h_leaves)
        if xs is None:
            ys = jax.vmap(lambda h: body(h, [])[1])(prev)
        else:
            ys = jax.vmap(lambda h, x: body(h, x)[1])(prev, xs)
        final = [_sharding.value_at(v, _sharding.global_length(T) - 1) for v in hs]
        return _outputs_result(plan, outputs, final, list(ys), stats, details)
    nonfinite = first_nonfinite(ir.state, hs, ir.reverse) if details \
        else jnp.asarray(-1, jnp.int32)
    if ir.reverse:
        hs = [jnp.flip(v, 0) for v in hs]
    return list(hs), _info(plan.method, stats, nonfinite)


def _sequential_stats(plan: Plan, T: int):
    return stack([StageStats.make(reason=Reason.SEQUENTIAL,
                                  evaluations=_sharding.global_length(T))] * len(plan.stages))


def _outputs_without_states(plan: Plan, step, outputs: Outputs, out_consts, h_leaves, xs,
                            p_leaves, T: int, raiser):
    """``(final carry, ys, stats)`` by a path that never holds all ``T`` states (one device):
    the loop emitting ``ys`` (one ``lax.scan`` of the body), the chunkwise form, or the scan
    over chunk maps keeping boundary states; None when the plan takes none of them."""
    options = plan.option_dict
    body = outputs.body(out_consts)
    if all(st.method == "sequential" for st in plan.stages) or T == 0:
        final, ys = lax.scan(lambda h, x: body(h, [] if x is None else x), list(h_leaves), xs,
                             length=T, unroll=outputs.unroll)
        return list(final), list(ys), _sequential_stats(plan, T)
    if plan.chunked is not None:
        final, ys, st = run_chunked(plan.chunked, body, out_consts, h_leaves, xs, T, options,
                                    raiser)
        return final, ys, stack([st] * len(plan.stages))
    C = plan.boundary_chunk
    if C is None:
        return None
    run = StageRun(plan.ir, plan.stage_data[0], plan.stages[0].method)
    f_s, z0, _ = run.flat(step, None, h_leaves, xs, p_leaves)
    return scan_outputs(f_s, body, run.view, z0, h_leaves, xs, plan.stage_data[0].structure,
                        T, C, run.tolerances(options), check=options.get("check", True),
                        on_failure=options.get("on_failure", "sequential"), raiser=raiser)


def _trajectory(plan: Plan, step, user_jacobian, h_leaves, xs, p_leaves, T: int,
                init_leaves, raiser):
    """``(all states in processing order, stats)``: every stage by its method (checked, with
    its fallback), then the whole-step check of a staged plan."""
    ir, options = plan.ir, plan.option_dict
    T_all = _sharding.global_length(T)
    init = None if init_leaves is None else [jnp.flip(v, 0) if ir.reverse else v
                                             for v in init_leaves]

    def loop_all():
        return sequential_scan(lambda h, x: step(h, [] if x is None else x, p_leaves),
                               list(h_leaves), xs, length=T)

    if all(st.method == "sequential" for st in plan.stages) or T == 0:
        return loop_all(), _sequential_stats(plan, T)
    hs = placeholders(h_leaves, T)
    per_stage = []
    for data, stage in zip(plan.stage_data, plan.stages):
        run = StageRun(ir, data, stage.method)
        hs, st = run_stage(run, step, hs, h_leaves, xs, p_leaves, T, options, init=init,
                           jacobian=None if run.view is None else
                           _user_jacobian(plan, user_jacobian, run, p_leaves),
                           raise_on_failure=raiser)
        per_stage.append(st)
    stats = stack(per_stage)
    if len(plan.stages) == 1 or not options.get("check", True):
        return hs, stats
    res, ok = whole_step_check(ir, step, hs, h_leaves, xs, p_leaves, options)
    fell_back = jnp.asarray(False)
    if options.get("on_failure", "sequential") == "sequential":
        hs = with_fallback(hs, ok, loop_all)
        fell_back = ~ok
    elif raiser is not None:
        raiser(ok, res, "staged (whole-step check)")
    return hs, stats.replace(
        converged=stats.converged & ok, fell_back=stats.fell_back | fell_back,
        reason=jnp.where(ok, stats.reason, Reason.WHOLE_STEP).astype(jnp.int32),
        evaluations=stats.evaluations + T_all + jnp.where(fell_back, T_all, 0))


def _outputs_result(plan, outputs, final, ys, stats, details):
    """``((final carry, outputs in time order), Info)``; ``first_nonfinite`` over the
    outputs."""
    reverse = plan.ir.reverse
    nonfinite = first_nonfinite(outputs.leaves, ys, reverse) if details and ys \
        else jnp.asarray(-1, jnp.int32)
    if reverse:
        ys = [jnp.flip(v, 0) for v in ys]
    return (final, ys), _info(plan.method, stats, nonfinite)


# ----------------------------------------------------------------------------- raising

jx.quiet_callback_exceptions(ConvergenceError)


def _raise_at_run_time(ok, res, method: str) -> None:
    """Under ``jit`` the program fails at run time; JAX reports it as a ``JaxRuntimeError``
    whose message ends with ``ConvergenceError: ...`` (an exception cannot leave a compiled
    program with its own type)."""
    def check(ok_value, res_value):
        if not np.all(ok_value):
            raise ConvergenceError(
                f"ConvergenceError: method {method!r} did not meet the tolerance: residual "
                f"{float(np.max(res_value)):.3g} (on_failure='raise')")
    jax.debug.callback(check, ok, res)


# ----------------------------------------------------------------------------- caching

def _avals(leaves) -> tuple:
    return tuple((tuple(np.shape(v)), str(jax.typeof(v).dtype) if hasattr(jax, "typeof")
                  else str(jnp.result_type(v)), bool(getattr(v, "weak_type", False)))
                 for v in leaves)


def step_key(ir) -> tuple:
    """What identifies the traced step (``StepIR.key``, computed once per trace)."""
    return ir.key


def program_key(plan: Plan, leaves, in_trace: bool) -> tuple:
    stages = tuple((st.method, d.key()) for st, d in zip(plan.stages, plan.stage_data))
    chunked = None if plan.chunked is None else plan.chunked.key
    return (step_key(plan.ir), tuple(map(_avals, leaves)), plan.method, stages, plan.options,
            plan.layout, plan.mesh, in_trace, chunked)


def _sharded_program(plan: Plan, in_trace: bool, jacobian, details: bool, outputs, n_h: int,
                     n_x: int, n_p: int, n_c: int, has_init: bool):
    """``_run`` inside ``shard_map`` over the plan's mesh axis (``runtime/_sharding.py``):
    inputs padded to ``D L`` steps (at the end of the processing order) and sharded along
    time, parameters and closed-over arrays replicated, states (or per-step outputs, and
    the final carry replicated) returned sharded along time and unpadded."""
    lay, ir = plan.layout, plan.ir
    mesh = _mesh.auto(plan.mesh)   # the boundary with Explicit axes: runtime/_mesh.py
    T, pad, reverse = ir.length, lay.padding, ir.reverse
    axis = _sharding.TimeAxis(name=lay.axis_name, size=lay.devices, length=T + pad, valid=T,
                              reversed=reverse)
    along_t, rep = jax.sharding.PartitionSpec(lay.axis_name), jax.sharding.PartitionSpec()

    n_o = 0 if outputs is None else len(outputs.jaxpr.consts)

    def body(h, x, p, c, oc, *init):
        return _run(plan, in_trace, jacobian, axis, details, outputs, h, x, p, c,
                    init[0] if init else None, oc)

    in_specs = ([rep] * n_h, [along_t] * n_x, [rep] * n_p, [rep] * n_c, [rep] * n_o) + \
        (([along_t] * n_h,) if has_init else ())
    traj = [along_t] * n_h if outputs is None else \
        ([rep] * n_h, [along_t] * len(outputs.leaves))
    inner = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(traj, rep),
                          check_vma=False)

    def padded(v):
        if not pad:
            return v
        if reverse:  # the processing order is flipped: pad at the front
            return jnp.concatenate([jnp.repeat(v[:1], pad, axis=0), v], axis=0)
        return jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)], axis=0)

    def unpad(out):
        return [v[pad:] if reverse else v[:T] for v in out] if pad else out

    def program(h, x, p, c, init, oc=()):
        typed = _mesh.explicit_context()
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            x = [_mesh.place(padded(_mesh.untyped(v)), mesh, along_t) for v in x]
            extra = () if init is None else (
                [_mesh.place(padded(_mesh.untyped(v)), mesh, along_t) for v in init],)
            h, p, c, oc = ([_mesh.place(_mesh.untyped(v), mesh, rep) for v in group]
                           for group in (h, p, c, oc))
            out, info = inner(h, x, p, c, oc, *extra)
            final = None
            if outputs is not None:
                final, out = out
            out = unpad(out)
        if typed:  # inside jax.set_mesh with Explicit axes: results typed on the user's mesh
            out = _mesh.typed(out, plan.mesh, rep if pad else along_t)
            info = _mesh.typed(info, plan.mesh, rep)
            if final is not None:
                final = _mesh.typed(final, plan.mesh, rep)
        return (out if outputs is None else (final, out)), info

    return jax.jit(program)


def _arrays(tree) -> list:
    return [v if isinstance(v, jax.Array) else jnp.asarray(v)
            for v in jax.tree_util.tree_leaves(tree)]


def _concrete(leaves) -> bool:
    return all(jx.is_concrete(v) for group in leaves for v in group)


def execute(plan: Plan, h0: Any, xs: Any, params: Any, *, init: Any = None,
            jacobian: Any = None, details: bool = True,
            outputs: Outputs | None = None) -> tuple[Any, Info]:
    """Run ``plan``; ``init`` (a trajectory like ``hs``) and ``jacobian`` (a function
    ``(h, x, params) -> diag of ∂f/∂h`` like ``h``) only guide the iterative solvers;
    ``details=False`` when the caller does not return the ``Info``.  With ``outputs`` (a
    traced ``jax.lax.scan`` body) the result is ``(final carry, ys)`` instead of ``hs``."""
    ir = plan.ir
    init_leaves = None if init is None else [jnp.asarray(v)
                                             for v in jax.tree_util.tree_leaves(init)]
    if init_leaves is not None:
        expected = [(ir.length,) + leaf.shape for leaf in ir.state]
        if [tuple(v.shape) for v in init_leaves] != expected:
            raise PlanError(f"init must be a trajectory like hs, leaves of shapes {expected}; "
                            f"got {[tuple(v.shape) for v in init_leaves]}.")
    h_leaves = _arrays(h0)
    x_leaves = [] if xs is None else _arrays(xs)
    p_leaves = _arrays(params)
    consts = list(ir.jaxpr.consts)
    groups = (h_leaves, x_leaves, p_leaves, consts)
    in_trace = not _concrete(groups)
    out_consts = [] if outputs is None else list(outputs.jaxpr.consts)
    in_trace = in_trace or not _concrete((out_consts,))
    key = program_key(plan, groups, in_trace) + (
        jacobian, init_leaves is None, details,
        None if outputs is None else (outputs.key, _avals(out_consts)))
    program = _programs.get(key)
    if program is None:
        if plan.layout is None:
            program = jax.jit(functools.partial(_run, plan, in_trace, jacobian, None, details,
                                                outputs))
        else:
            program = _sharded_program(plan, in_trace, jacobian, details, outputs,
                                       len(h_leaves), len(x_leaves), len(p_leaves),
                                       len(consts), init_leaves is not None)
        _programs[key] = program
        if len(_programs) > _CACHE_SIZE:
            _programs.popitem(last=False)
    else:
        _programs.move_to_end(key)
    out_leaves, info = program(h_leaves, x_leaves, p_leaves, consts, init_leaves, out_consts)
    if plan.method != "sequential" and plan.option_dict.get("on_failure") == "raise" \
            and not in_trace and not bool(np.all(info.converged)):
        raise ConvergenceError(
            f"method {plan.method!r} did not meet the tolerance: residual "
            f"{float(np.max(info.residual)):.3g}, {info.reasons()} (on_failure='raise'). Use "
            "on_failure='sequential' to fall back to the loop.")
    if outputs is not None:
        final, ys = out_leaves
        return (jax.tree_util.tree_unflatten(ir.state_treedef, final),
                jax.tree_util.tree_unflatten(outputs.treedef, ys)), info
    return jax.tree_util.tree_unflatten(ir.state_treedef, out_leaves), info


__all__ = ["execute", "program_key", "step_key"]
