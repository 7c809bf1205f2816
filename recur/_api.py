"""The public entry points: ``recurrence``/``Recurrence``, ``scan`` and ``plan``.

Data flows one way: front end (``passes/_trace``) -> analysis passes -> ``Plan``
(``passes/_lower``) -> runtime program (``runtime/_program``).  ``plan`` and ``scan`` lower
through the same ``make_plan``, so a plan shows what ``scan`` runs.

Plan cache
----------
Tracing the step is cheap; the passes are not (25-190 ms), and with concrete values a
plan also probes at them and may run the loop once for the Lyapunov exponent.  So plans
are cached, keyed by what they are computed from: the step's jaxpr (its text and the
Python callables in it), the shapes, dtypes and weak types of every argument, the values of
the closed-over arrays the dependency pass reads (those of at most 65536 elements, whose
zero patterns and indices can shape the Jacobian's sparsity), the method, the options, the
backend and the device layout.  Never by the values of ``h0``, ``xs`` or params: what
those decide (probes, the chaos policy) only speeds a plan up or slows it down, and every
result is still checked.  An eager call therefore costs a trace, a dictionary lookup and
the compiled program.  Inside ``jit`` the plan is made once, at trace time.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as jx
from . import _trace_cache
from ._errors import PlanError
from ._info import Info
from ._plan import Plan
from .passes._layout import attach_layout
from .passes._lower import make_plan
from .passes._options import check_options, decisions
from .passes._trace import trace_step
from .passes._verify import values_of
from .runtime._program import execute, step_key

_PLAN_CACHE_SIZE = 128
_plans: "collections.OrderedDict[Any, Plan]" = collections.OrderedDict()
# Closed-over arrays up to this size are read by the dependency pass (its known values).
_KNOWN_CONST_SIZE = 1 << 16


def _as_arrays(tree: Any) -> Any:
    def conv(v):
        return v if isinstance(v, jax.Array) else jnp.asarray(v)
    return jax.tree_util.tree_map(conv, tree)


def _time_axis_of(leaf) -> tuple[Any, str] | None:
    """``(mesh, axis)`` when ``leaf`` is sharded along its leading axis over > 1 device."""
    shardings = []
    if not isinstance(leaf, jax.core.Tracer):
        shardings.append(getattr(leaf, "sharding", None))
    try:  # explicit sharding is visible in the type, also under jit
        shardings.append(jax.typeof(leaf).sharding)
    except Exception:  # noqa: BLE001 - no type-level sharding for this value
        pass
    for sh in shardings:
        spec = getattr(sh, "spec", None)
        if not isinstance(sh, jax.sharding.NamedSharding) or not spec or spec[0] is None:
            continue
        name = spec[0]
        if isinstance(name, tuple):
            if len(name) != 1:
                continue
            name = name[0]
        if int(dict(sh.mesh.shape).get(name, 1)) > 1:
            return sh.mesh, name
    return None


def _one_device_for_autotune(mesh, axis_name) -> None:
    if mesh is not None or axis_name is not None:
        raise PlanError("method='autotune' times candidates on one device; pick a method "
                        "for a plan across devices.")


def _layout_request(xs: Any, mesh: Any, axis_name: str | None, traced: Any = ()):
    """``(mesh, axis_name, batch axes, batched)`` the plan is split over, or ``None`` for
    one device; the batch axes are the mesh axes of an enclosing ``jax.vmap``'s
    ``spmd_axis_name`` (read off the ``traced`` arguments)."""
    if mesh is None and axis_name is None:
        found = [a for a in map(_time_axis_of, jax.tree_util.tree_leaves(xs)) if a]
        if not found:
            return None
        mesh, axis_name = found[0]
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or getattr(mesh, "empty", True):
            raise PlanError(f"axis_name={axis_name!r} needs a mesh: pass mesh= or set one with "
                            "jax.set_mesh(mesh).")
    batched, batch_axes = jx.vmap_axes(jax.tree_util.tree_leaves(traced))
    return mesh, axis_name, batch_axes, batched


def _const_digest(consts) -> tuple:
    """The values of the closed-over arrays the dependency pass may read."""
    out = []
    for c in consts:
        if not jx.is_concrete(c) or int(np.size(c)) > _KNOWN_CONST_SIZE:
            out.append((tuple(np.shape(c)), None))
            continue
        arr = np.asarray(jax.random.key_data(c) if jnp.issubdtype(c.dtype, jax.dtypes.prng_key)
                         else c)
        out.append((arr.shape, str(arr.dtype), hashlib.sha1(arr.tobytes()).digest()))
    return tuple(out)


def _avals(tree) -> tuple:
    return tuple((tuple(np.shape(v)), str(getattr(v, "dtype", type(v).__name__)),
                  bool(getattr(v, "weak_type", False)))
                 for v in jax.tree_util.tree_leaves(tree))


def _signature(h0, xs, params, length, reverse) -> tuple:
    """What tracing reads of the arguments: structures, shapes, dtypes, weak types."""
    def spec(tree):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return treedef, tuple((type(v).__name__, tuple(np.shape(v)),
                               str(getattr(v, "dtype", "")), bool(getattr(v, "weak_type", False)))
                              for v in leaves)
    return (spec(h0), xs is None, spec(xs), params is None, spec(params), length, bool(reverse))


def _trace(fn, h0, xs, params, length, reverse):
    """``trace_step``, through the trace cache (``_trace_cache.py``)."""
    try:
        signature = _signature(h0, xs, params, length, reverse)
        hash(signature)
    except TypeError:  # an unhashable structure: trace afresh
        return trace_step(fn, h0, xs, params, length=length, reverse=reverse)
    return _trace_cache.cached_trace(
        fn, signature, lambda: trace_step(fn, h0, xs, params, length=length, reverse=reverse))


def _code_of(fn) -> Any:
    """The step's code object (by value: file, line, bytecode): plans quote source
    locations, so two steps with the same jaxpr but different code get their own plans."""
    for attr in ("__func__", "func"):
        fn = getattr(fn, attr, fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        code = getattr(getattr(type(fn), "__call__", None), "__code__", None)
    # code objects compare by value but without their file name
    return None if code is None else (code, code.co_filename)


def _frozen(method) -> Any:
    return tuple(sorted(method.items())) if isinstance(method, dict) else method


def _lower(ir, method, backend, options, values, lyapunov_note, args, layout,
           outputs=None) -> Plan:
    """``make_plan`` through the plan cache (module docstring); ``outputs``: the body of a
    ``recur.lax.scan`` (its jaxpr is then part of the key)."""
    opts = check_options(options)
    key = (step_key(ir), _code_of(ir.fn), _const_digest(ir.jaxpr.consts),
           tuple(map(_avals, args)),
           _frozen(method), decisions(opts), opts.get("jacobian") is not None, backend,
           values is not None, lyapunov_note,
           None if layout is None else (id(layout[0]),) + tuple(layout[1:]),
           None if outputs is None else (outputs.key, _const_digest(outputs.jaxpr.consts)))
    plan = _plans.get(key)
    if plan is not None and plan.ir is not None:
        _plans.move_to_end(key)
        # the cached decisions with this call's step (its closed-over arrays; a chunkwise
        # form reads the body's structure only, its arrays are passed when it runs)
        return dataclasses.replace(plan, ir=ir)
    plan = make_plan(ir, method=method, backend=backend, options=opts, values=values,
                     lyapunov_note=lyapunov_note, outputs=outputs, sharded=layout is not None)
    if layout is not None:
        plan = attach_layout(plan, *layout)
    _plans[key] = plan
    if len(_plans) > _PLAN_CACHE_SIZE:
        _plans.popitem(last=False)
    return plan


def _for_grad(options: dict, trees) -> dict:
    """``for_grad=True`` when a differentiation is visibly tracing the arguments."""
    if "for_grad" in options:
        return options
    if jx.under_differentiation(jax.tree_util.tree_leaves(trees)):
        return {**options, "for_grad": True}
    return options


def plan(fn: Callable, h0: Any, xs: Any = None, params: Any = None, *,
         length: int | None = None, reverse: bool = False, method: str = "auto",
         backend: str | None = None, mesh: Any = None, axis_name: str | None = None,
         _outputs: Any = None, **options: Any) -> Plan:
    """Analyse ``fn`` and return the ``Plan`` recur would run (shapes/dtypes suffice:
    arrays or ``jax.ShapeDtypeStruct``s).  With concrete arrays the claims are probed at
    those values and, for a step that is not affine, the plan notes the largest Lyapunov
    exponent along the sequential trajectory of those values (one run of the loop)."""
    ir = _trace(fn, h0, xs, params, length, reverse)
    options = _for_grad(options, (h0, xs, params))
    concrete = _all_arrays((h0, xs, params))
    values = values_of(ir, _as_arrays(h0), None if xs is None else _as_arrays(xs),
                       None if params is None else _as_arrays(params)) if concrete else None
    if method == "autotune":
        _one_device_for_autotune(mesh, axis_name)
        from ._autotune import choose
        if not concrete:
            raise PlanError("method='autotune' times the candidates, so plan() needs arrays "
                            "(not ShapeDtypeStructs) for h0, xs and params.")
        chosen, note = choose(ir, _as_arrays(h0), None if xs is None else _as_arrays(xs),
                              None if params is None else _as_arrays(params), options,
                              backend)
        the_plan = make_plan(ir, method=chosen, backend=backend, options=options,
                             values=values)
        return dataclasses.replace(the_plan, notes=the_plan.notes + (note,))
    layout = _layout_request(xs, mesh, axis_name, (h0, xs, params))
    return _lower(ir, method, backend, options, values, True, (h0, xs, params), layout,
                  _outputs)


def _all_arrays(tree) -> bool:
    return not any(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree_util.tree_leaves(tree))


def scan(fn: Callable, h0: Any, xs: Any = None, params: Any = None, *,
         length: int | None = None, reverse: bool = False, method: str = "auto",
         return_info: bool = False, mesh: Any = None, axis_name: str | None = None,
         **options: Any) -> Any | tuple[Any, Info]:
    """All ``T`` states of ``h_t = fn(h_{t-1}, xs[t][, params])``, stacked along a leading
    axis; with ``return_info=True`` also an ``Info`` of what ran."""
    ir = _trace(fn, h0, xs, params, length, reverse)
    h0 = _as_arrays(h0)
    xs = None if xs is None else _as_arrays(xs)
    params = None if params is None else _as_arrays(params)
    options = _for_grad(options, (h0, xs, params))
    note = None
    if method == "autotune":
        _one_device_for_autotune(mesh, axis_name)
        from ._autotune import choose
        method, note = choose(ir, h0, xs, params, options)
    values = values_of(ir, h0, xs, params)
    the_plan = _lower(ir, method, None, options, values, False, (h0, xs, params),
                      _layout_request(xs, mesh, axis_name, (h0, xs, params)))
    if note:
        the_plan = dataclasses.replace(the_plan, notes=the_plan.notes + (note,))
    hs, info = execute(the_plan, h0, xs, params, init=options.get("init"),
                       jacobian=options.get("jacobian"), details=return_info)
    return (hs, info) if return_info else hs


class Recurrence:
    """A step function with recurrence superpowers: calling it is still one step;
    ``.scan`` runs all steps, ``.plan`` shows how."""

    def __init__(self, fn: Callable, *, method: str = "auto", **options: Any):
        if not callable(fn):
            raise TypeError(f"recur.recurrence needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.method = method
        self.options = options
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def _merged(self, method, options):
        return (self.method if method is None else method), {**self.options, **options}

    def scan(self, h0: Any, xs: Any = None, params: Any = None, *, length: int | None = None,
             reverse: bool = False, method: str | None = None, return_info: bool = False,
             **options: Any):
        method, options = self._merged(method, options)
        return scan(self.fn, h0, xs, params, length=length, reverse=reverse, method=method,
                    return_info=return_info, **options)

    def plan(self, h0: Any, xs: Any = None, params: Any = None, *, length: int | None = None,
             reverse: bool = False, method: str | None = None, backend: str | None = None,
             mesh: Any = None, axis_name: str | None = None, **options: Any) -> Plan:
        method, options = self._merged(method, options)
        return plan(self.fn, h0, xs, params, length=length, reverse=reverse, method=method,
                    backend=backend, mesh=mesh, axis_name=axis_name, **options)

    def __repr__(self) -> str:
        return f"recur.Recurrence({getattr(self.fn, '__name__', self.fn)!r})"


def recurrence(fn: Callable | None = None, /, *, method: str = "auto",
               **options: Any) -> Recurrence | Callable[[Callable], Recurrence]:
    """Decorator: ``@recur.recurrence`` or ``@recur.recurrence(method=..., **options)``."""
    if fn is None:
        return lambda f: Recurrence(f, method=method, **options)
    return Recurrence(fn, method=method, **options)


__all__ = ["Recurrence", "recurrence", "scan", "plan"]
