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
from .passes._lower import make_plan
from .passes._trace import trace_step
from .runtime._program import execute


def _as_arrays(tree: Any) -> Any:
    def conv(v):
        return v if hasattr(v, "shape") and hasattr(v, "dtype") else jnp.asarray(v)
    return jax.tree_util.tree_map(conv, tree)


def _no_sharding(mesh, axis_name) -> None:
    if mesh is not None or axis_name is not None:
        raise PlanError("mesh=/axis_name= (sequence-parallel execution across devices) is not "
                        "available in this version; run on one device.")


def plan(fn: Callable, h0: Any, xs: Any = None, params: Any = None, *,
         length: int | None = None, reverse: bool = False, method: str = "auto",
         backend: str | None = None, mesh: Any = None, axis_name: str | None = None,
         **options: Any) -> Plan:
    """Analyse ``fn`` and return the ``Plan`` recur would run (shapes/dtypes suffice:
    arrays or ``jax.ShapeDtypeStruct``s).  With concrete arrays and a step that is not
    affine, the plan also notes the largest Lyapunov exponent along the sequential
    trajectory of those values (one run of the loop)."""
    _no_sharding(mesh, axis_name)
    ir = trace_step(fn, h0, xs, params, length=length, reverse=reverse)
    if method == "autotune":
        from ._autotune import choose
        if not _all_arrays((h0, xs, params)):
            raise PlanError("method='autotune' times the candidates, so plan() needs arrays "
                            "(not ShapeDtypeStructs) for h0, xs and params.")
        chosen, note = choose(ir, _as_arrays(h0), None if xs is None else _as_arrays(xs),
                              None if params is None else _as_arrays(params), options,
                              backend)
        the_plan = make_plan(ir, method=chosen, backend=backend, options=options)
        return dataclasses.replace(the_plan, notes=the_plan.notes + (note,))
    the_plan = make_plan(ir, method=method, backend=backend, options=options)
    if the_plan.kind not in ("linear", "affine") and _all_arrays((h0, xs, params)):
        from ._contractivity import lyapunov_along_loop
        lam = lyapunov_along_loop(ir, _as_arrays(h0), None if xs is None else _as_arrays(xs),
                                  None if params is None else _as_arrays(params))
        if lam is not None:
            verdict = ("contractive: the iterative methods should converge quickly"
                       if lam < 0 else
                       "chaotic: the iterative methods will likely fall back to the loop"
                       if lam > 0.05 else "marginal: convergence may be slow")
            the_plan = dataclasses.replace(the_plan, notes=the_plan.notes + (
                f"largest Lyapunov exponent along the sequential trajectory of these values: "
                f"{lam:.3g} per step ({verdict})",))
    return the_plan


def _all_arrays(tree) -> bool:
    return not any(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree_util.tree_leaves(tree))


def scan(fn: Callable, h0: Any, xs: Any = None, params: Any = None, *,
         length: int | None = None, reverse: bool = False, method: str = "auto",
         return_info: bool = False, mesh: Any = None, axis_name: str | None = None,
         **options: Any) -> Any | tuple[Any, Info]:
    """All ``T`` states of ``h_t = fn(h_{t-1}, xs[t][, params])``, stacked along a leading
    axis; with ``return_info=True`` also an ``Info`` of what ran."""
    _no_sharding(mesh, axis_name)
    ir = trace_step(fn, h0, xs, params, length=length, reverse=reverse)
    h0 = _as_arrays(h0)
    xs = None if xs is None else _as_arrays(xs)
    params = None if params is None else _as_arrays(params)
    note = None
    if method == "autotune":
        from ._autotune import choose
        method, note = choose(ir, h0, xs, params, options)
    the_plan = make_plan(ir, method=method, options=options)
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
