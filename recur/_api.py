"""The public entry points: ``recurrence``/``Recurrence``, ``scan`` and ``plan``.

Data flows one way: front end (``passes/_trace``) -> analysis passes -> ``Plan``
(``passes/_lower``) -> runtime program (``runtime/_program``).  Nothing is cached
between calls, so a closure over arrays that change between calls is always traced
afresh; under ``jit`` the planning happens once, at trace time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ._errors import PlanError
from ._info import Info
from ._plan import Plan
from .passes._layout import attach_layout
from .passes._lower import ITERATIVE, make_plan
from .passes._trace import trace_step
from .runtime._program import execute


def _as_arrays(tree: Any) -> Any:
    def conv(v):
        return v if hasattr(v, "shape") and hasattr(v, "dtype") else jnp.asarray(v)
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


def _with_layout(the_plan: Plan, xs: Any, mesh: Any, axis_name: str | None) -> Plan:
    """Split the plan's time axis over devices when asked (``mesh``/``axis_name``) or when
    the inputs are visibly sharded along time."""
    if mesh is None and axis_name is None:
        found = [a for a in map(_time_axis_of, jax.tree_util.tree_leaves(xs)) if a]
        if not found:
            return the_plan
        mesh, axis_name = found[0]
    elif mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or getattr(mesh, "empty", True):
            raise PlanError(f"axis_name={axis_name!r} needs a mesh: pass mesh= or set one with "
                            "jax.set_mesh(mesh).")
    return attach_layout(the_plan, mesh, axis_name)


def plan(fn: Callable, h0: Any, xs: Any = None, params: Any = None, *,
         length: int | None = None, reverse: bool = False, method: str = "auto",
         backend: str | None = None, mesh: Any = None, axis_name: str | None = None,
         **options: Any) -> Plan:
    """Analyse ``fn`` and return the ``Plan`` recur would run (shapes/dtypes suffice:
    arrays or ``jax.ShapeDtypeStruct``s).  With concrete arrays and a step that is not
    affine, the plan also notes the largest Lyapunov exponent along the sequential
    trajectory of those values (one run of the loop)."""
    ir = trace_step(fn, h0, xs, params, length=length, reverse=reverse)
    if method == "autotune":
        _one_device_for_autotune(mesh, axis_name)
        from ._autotune import choose
        if not _all_arrays((h0, xs, params)):
            raise PlanError("method='autotune' times the candidates, so plan() needs arrays "
                            "(not ShapeDtypeStructs) for h0, xs and params.")
        chosen, note = choose(ir, _as_arrays(h0), None if xs is None else _as_arrays(xs),
                              None if params is None else _as_arrays(params), options,
                              backend)
        the_plan = make_plan(ir, method=chosen, backend=backend, options=options)
        return dataclasses.replace(the_plan, notes=the_plan.notes + (note,))
    the_plan = _with_layout(make_plan(ir, method=method, backend=backend, options=options),
                            xs, mesh, axis_name)
    if the_plan.kind not in ("linear", "affine") and _all_arrays((h0, xs, params)):
        from ._contractivity import lyapunov_along_loop
        lam = lyapunov_along_loop(ir, _as_arrays(h0), None if xs is None else _as_arrays(xs),
                                  None if params is None else _as_arrays(params))
        if lam is not None:
            growth = lam * ir.length   # log of the error amplification over the sequence
            chaotic = lam > _CHAOTIC or growth > _CHAOTIC_GROWTH
            verdict = ("contractive: the iterative methods should converge quickly"
                       if lam < 0 else
                       f"chaotic (errors grow by e^{growth:.3g} over T = {ir.length}): the "
                       "iterative methods will likely fall back to the loop"
                       if chaotic else "marginal: convergence may be slow")
            iterative = [name for st in the_plan.stages if st.method in ITERATIVE
                         for name in st.states]
            if method == "auto" and chaotic and iterative:
                # auto does not bet on a parallel solve that would most likely fall back
                replanned = make_plan(ir, method={name: "sequential" for name in iterative},
                                      backend=backend, options=options)
                why = (f"chaotic along these values (largest Lyapunov exponent {lam:.3g} per "
                       f"step, e^{growth:.3g} over the sequence): a parallel solve would most "
                       "likely fall back, so auto keeps the loop")
                stages = tuple(dataclasses.replace(st, why=why) if set(st.states) <= set(iterative)
                               else st for st in replanned.stages)
                the_plan = _with_layout(dataclasses.replace(replanned, stages=stages), xs, mesh,
                                        axis_name)
                verdict += "; auto keeps the loop for " + ", ".join(iterative)
            the_plan = dataclasses.replace(the_plan, notes=the_plan.notes + (
                f"largest Lyapunov exponent along the sequential trajectory of these values: "
                f"{lam:.3g} per step ({verdict})",))
    return the_plan


_CHAOTIC = 0.05  # per step; the runtime's early stop uses the same threshold
# lam * T above which a whole-sequence Newton solve is hopeless even with a small lam
# (measured: Lorenz-96, lam = 0.0136, T = 1000 -> deer and quasi-deer diverge; T = 200
# converges with windows): errors amplified by e^10 ~ 2e4 along the sequence.
_CHAOTIC_GROWTH = 10.0


def _all_arrays(tree) -> bool:
    return not any(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree_util.tree_leaves(tree))


def scan(fn: Callable, h0: Any, xs: Any = None, params: Any = None, *,
         length: int | None = None, reverse: bool = False, method: str = "auto",
         return_info: bool = False, mesh: Any = None, axis_name: str | None = None,
         **options: Any) -> Any | tuple[Any, Info]:
    """All ``T`` states of ``h_t = fn(h_{t-1}, xs[t][, params])``, stacked along a leading
    axis; with ``return_info=True`` also an ``Info`` of what ran."""
    ir = trace_step(fn, h0, xs, params, length=length, reverse=reverse)
    h0 = _as_arrays(h0)
    xs = None if xs is None else _as_arrays(xs)
    params = None if params is None else _as_arrays(params)
    note = None
    if method == "autotune":
        _one_device_for_autotune(mesh, axis_name)
        from ._autotune import choose
        method, note = choose(ir, h0, xs, params, options)
    the_plan = _with_layout(make_plan(ir, method=method, options=options), xs, mesh, axis_name)
    if note:
        the_plan = dataclasses.replace(the_plan, notes=the_plan.notes + (note,))
    hs, info = execute(the_plan, h0, xs, params, init=options.get("init"),
                       jacobian=options.get("jacobian"))
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
