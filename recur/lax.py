"""``recur.lax``: the ``jax.lax.scan`` contract, planned and parallelised by recur.

``carry, ys = recur.lax.scan(f, init, xs)`` is ``jax.lax.scan(f, init, xs)`` for every body
``f(carry, x) -> (carry, y)`` that ``jax.lax.scan`` accepts -- same arguments, same results
(``ys`` stacked along a leading axis, ``y`` any pytree or ``None``), same ``reverse``,
``length`` and ``xs=None`` rules, ``unroll`` honoured by the loop -- so porting code is one
line: ``jax.lax.scan`` -> ``recur.lax.scan``.

The carry is the recurrence recur analyses and plans (``h_t = f(h_{t-1}, x_t)[0]``); the
outputs ``y_t = f(h_{t-1}, x_t)[1]`` are computed alongside:

* the loop (``sequential``, and ``auto`` wherever the loop is fastest) is one ``lax.scan``
  of ``f`` itself that emits ``ys`` as it goes -- no state is stored, the same program as
  the user's own ``lax.scan``;
* the parallel methods (``scan``, ``deer``, ...) hold the whole trajectory of carries by
  nature (the plan's memory estimate says so) and evaluate the outputs from it in one
  batched pass of ``f``;
* ``chunked`` -- for a decayed linear-attention body (``S' = g ⊙ S + Σ k vᵀ``, outputs
  built from readouts ``Sᵀ q``: gated linear attention, RetNet, Mamba-2/SSD, mLSTM) --
  computes the outputs chunk by chunk with masked ``C × C`` products and keeps one state
  per chunk (``runtime/_chunked.py``); ``auto`` takes it where the cost model predicts it
  fastest.

Plans, methods, options, ``info``, derivatives (w.r.t. ``init``, ``xs`` and closed-over
arrays), ``vmap``, ``jit`` and sharding are those of ``recur.scan``;
``return_info=True`` returns ``((carry, ys), info)``, and ``info.first_nonfinite`` then
refers to the outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from . import _api, _trace_cache
from ._info import Info
from ._plan import Plan
from .passes._trace import scan_body_pair, trace_outputs
from .runtime._program import execute


def _carry_step(f: Callable) -> Callable:
    """The recurrence of a scan body: ``h' = f(h, x)[0]``."""
    def step(h, x):
        return scan_body_pair(f(h, x))[0]
    step.__wrapped__ = f  # plans quote the user's code, and are cached by it
    step.__name__ = getattr(f, "__name__", "scan_body")
    return step


def _traced(f, init, xs, length, reverse, unroll):
    step = _carry_step(f)
    ir = _api._trace(step, init, xs, None, length, reverse)
    signature = ("outputs", _api._signature(init, xs, None, length, reverse), unroll)
    outputs = _trace_cache.cached_trace(f, signature, lambda: trace_outputs(f, ir, unroll))
    return step, ir, outputs


def scan(f: Callable, init: Any, xs: Any = None, length: int | None = None,
         reverse: bool = False, unroll: int | bool = 1, *, method: str = "auto",
         return_info: bool = False, mesh: Any = None, axis_name: str | None = None,
         **options: Any) -> Any | tuple[Any, Info]:
    """``(carry, ys)`` exactly as ``jax.lax.scan(f, init, xs, length, reverse, unroll)``,
    planned by recur (module docstring); ``return_info=True`` gives ``((carry, ys), info)``."""
    step, ir, outputs = _traced(f, init, xs, length, reverse, unroll)
    init = _api._as_arrays(init)
    xs = None if xs is None else _api._as_arrays(xs)
    options = _api._for_grad(options, (init, xs))
    values = _api.values_of(ir, init, xs, None)
    the_plan = _api._lower(ir, method, None, options, values, False, (init, xs, None),
                           _api._layout_request(xs, mesh, axis_name, (init, xs)), outputs)
    the_plan = dataclasses.replace(the_plan, outputs=outputs.leaves)
    out, info = execute(the_plan, init, xs, None, init=options.get("init"),
                        jacobian=options.get("jacobian"), details=return_info,
                        outputs=outputs)
    return (out, info) if return_info else out


def plan(f: Callable, init: Any, xs: Any = None, length: int | None = None,
         reverse: bool = False, *, method: str = "auto", backend: str | None = None,
         mesh: Any = None, axis_name: str | None = None, **options: Any) -> Plan:
    """The ``Plan`` ``recur.lax.scan`` would run (shapes suffice), with its outputs path."""
    step, ir, outputs = _traced(f, init, xs, length, reverse, 1)
    the_plan = _api.plan(step, init, xs, None, length=length, reverse=reverse, method=method,
                         backend=backend, mesh=mesh, axis_name=axis_name, _outputs=outputs,
                         **options)
    return dataclasses.replace(the_plan, outputs=outputs.leaves)


__all__ = ["scan", "plan"]
