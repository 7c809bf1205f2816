"""``method="autotune"``: time the candidate methods on the real shapes and keep the fastest.

Candidates are ``sequential``, ``scan`` (when every stage is affine), the iterative
methods, and the per-stage plan a GPU would get; each is compiled, then timed (median of
3 calls), and accepted only if it converged without falling back.  The choice is cached
by the step's jaxpr (its text and the Python callables in it), the shapes and dtypes of
every argument, the options and the backend — never by values, so a cached *choice* is
never stale: the plan and the program are rebuilt from the current closed-over arrays on
every call, as for any other method.  Under a trace (inside ``jit``) nothing can be
timed: a cached choice is used if there is one, else ``auto``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as jx
from ._errors import PlanError
from . import _methods
from .passes._lower import make_plan
from .passes._options import check_options, decisions
from .passes._trace import StepIR
from .runtime._program import execute, step_key

_choices: dict[Any, Any] = {}
_REPS = 3


def _key(ir: StepIR, leaves, backend: str, options: dict) -> tuple:
    avals = tuple((tuple(np.shape(v)), str(jnp.result_type(v))) for v in leaves)
    return (step_key(ir), avals, backend, decisions(check_options(options)))


def _candidates(ir: StepIR, options: dict, backend: str):
    auto = make_plan(ir, method="auto", backend=backend, options=options)
    gpu = make_plan(ir, method="auto", backend="gpu", options=options)
    out = ["sequential"]
    if all(st.kind in ("linear", "affine") for st in auto.stages):
        out.append("scan")
    if any(st.kind not in ("linear", "affine") for st in auto.stages):
        out += list(_methods.iterative())
    staged = {st.states[0]: st.method for st in gpu.stages}
    if len(set(staged.values())) > 1:
        out.append(staged)
    return out


def choose(ir: StepIR, h0, xs, params, options: dict, backend: str | None = None):
    """The fastest method (a name or a per-stage dict) and a log of the measurements."""
    backend = backend or jax.default_backend()
    leaves = [*jax.tree_util.tree_leaves(h0), *jax.tree_util.tree_leaves(xs),
              *jax.tree_util.tree_leaves(params)]
    key = _key(ir, leaves, backend, options)
    if key in _choices:
        return _choices[key]
    if not all(jx.is_concrete(v) for v in leaves):
        return "auto", ("autotune: under a trace nothing can be timed and no choice was "
                        "cached for these shapes; used auto")
    log, best = [], None
    for cand in _candidates(ir, options, backend):
        try:
            plan = make_plan(ir, method=cand, backend=backend, options=options)
        except PlanError as exc:
            log.append(f"{cand}: not applicable ({exc})")
            continue

        def run(h0=h0, xs=xs, params=params, plan=plan):
            return execute(plan, h0, xs, params)
        jax.block_until_ready(run())
        times = []
        for _ in range(_REPS):
            start = time.perf_counter()
            hs, info = jax.block_until_ready(run())
            times.append(time.perf_counter() - start)
        ok = bool(np.all(info.converged)) and not bool(np.any(info.fell_back))
        median = statistics.median(times)
        log.append(f"{cand}: {median * 1e3:.3g} ms" + ("" if ok else " (did not converge)"))
        if ok and (best is None or median < best[1]):
            best = (cand, median)
    chosen = best[0] if best else "sequential"
    result = (chosen, "autotune: " + "; ".join(log) + f" -> {chosen}")
    _choices[key] = result
    return result


__all__ = ["choose"]
