r"""Contractivity from concrete values: the largest Lyapunov exponent along the loop.

Whether the iterative methods converge depends on values, not shapes (the logistic map
at r = 2.5 and r = 3.9 has the same shapes).  Given concrete ``h0``, ``xs`` and params,
the sequential loop is run once and the largest Lyapunov exponent along that trajectory
estimated with the standard forward power iteration (Benettin et al. 1980):

    v_t = J_t v_{t-1} / |J_t v_{t-1}|,     λ ≈ (1/T) Σ_t log |J_t v_{t-1}|,

with ``J_t = ∂f/∂h`` (the inexact elements) at ``h_{t-1}`` applied by one JVP per step.
What it means for each method (``describe``): Newton (``deer``) converges in a few
iterations on a smooth contractive step (``λ < 0``); quasi-Newton, Picard and Jacobi
converge linearly, at rates the exponent does not give; with ``λ ≈ 0`` (a marginal step:
an HMM's normalised filter, a running extremum) errors neither grow nor decay and the
linearly converging methods may take up to ``T`` iterations; with ``λ > 0`` (chaos) they
diverge and fall back.  A step that is not smooth in its state (``max``, ``where`` on a
state-dependent predicate, a reset, ``abs``) loses Newton's quadratic convergence as well.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax_adapter as jx
from .._ir import ElementView, StepIR, jaxpr_step

# |λ| below this (per step) is "marginal": errors neither grow nor decay over ~1/|λ| steps
MARGINAL = 1e-3
_NONSMOOTH = frozenset("max min select_n abs sign floor ceil round lt le gt ge eq ne "
                       "argmax argmin reduce_max reduce_min cummax cummin sort clamp "
                       "rem".split())


def lyapunov_along_loop(ir: StepIR, h0: Any, xs: Any, params: Any) -> float | None:
    """λ per step, or None when it cannot be computed (tracers, no inexact state, no JVP,
    T = 0)."""
    leaves = [*jax.tree_util.tree_leaves(h0), *jax.tree_util.tree_leaves(xs),
              *jax.tree_util.tree_leaves(params), *ir.jaxpr.consts]
    if ir.length == 0 or not all(jx.is_concrete(v) for v in leaves) or not ir.has_jvp:
        return None
    inexact = np.flatnonzero(~ir.exact_elements)
    if not len(inexact):
        return None
    view = ElementView(ir, inexact)
    step = jaxpr_step(ir, ir.jaxpr.consts)
    p_leaves = [jnp.asarray(v) for v in jax.tree_util.tree_leaves(params)]
    x_leaves = [jnp.asarray(v) for v in jax.tree_util.tree_leaves(xs)] if xs is not None else []
    if ir.reverse:
        x_leaves = [jnp.flip(v, 0) for v in x_leaves]
    h_leaves = [jnp.asarray(v) for v in jax.tree_util.tree_leaves(h0)]
    v0 = jnp.full((view.n,), 1 / np.sqrt(view.n), view.dtype)  # strict promotion: no f64

    @jax.jit
    def run(h_leaves, v0, x_leaves, p_leaves):
        def body(carry, x):
            h, v = carry

            def g(z):
                out = step(view.scatter(z, h), x if x is not None else [], p_leaves)
                return view.gather(out), out

            _, jv, out = jax.jvp(g, (view.gather(h),), (v,), has_aux=True)
            norm = jnp.linalg.norm(jv)  # real, also for a complex state
            scale = jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)
            return (out, jv / scale.astype(jv.dtype)), jnp.log(scale)
        _, logs = jax.lax.scan(body, (h_leaves, v0), x_leaves if x_leaves else None,
                               length=ir.length)
        finite = jnp.isfinite(logs)
        count = jnp.maximum(jnp.sum(finite).astype(logs.dtype), 1)
        return jnp.sum(jnp.where(finite, logs, 0)) / count

    value = float(run(h_leaves, v0, x_leaves, p_leaves))
    return value if np.isfinite(value) else None


def nonsmooth_operations(ir: StepIR) -> tuple[str, ...]:
    """Primitives that make the step non-smooth in its inexact state (applied to a value
    that depends on it), e.g. ``max``, ``select_n`` on a state-dependent predicate."""
    found: list[str] = []

    def walk(jaxpr, dep_in):
        dep = dict(zip(jaxpr.invars, dep_in))

        def d(atom):
            return False if jx.is_literal(atom) else dep.get(atom, False)

        for eqn in jaxpr.eqns:
            ins = [d(a) for a in eqn.invars]
            subs = jx.sub_jaxprs(eqn)
            if subs and any(ins):  # inside calls and control flow: every input counts
                for sub in subs:
                    walk(sub.jaxpr, [True] * len(sub.jaxpr.invars))
                for v in eqn.outvars:
                    dep[v] = True
                continue
            if any(ins) and eqn.primitive.name in _NONSMOOTH:
                if eqn.primitive.name != "select_n" or ins[0]:
                    found.append(eqn.primitive.name)
            for v in eqn.outvars:
                dep[v] = any(ins)
        return [d(a) for a in jaxpr.outvars]

    seeds = [not leaf.exact for leaf in ir.state] + [False] * (len(ir.inputs) + len(ir.params))
    walk(ir.jaxpr.jaxpr, seeds)
    return tuple(dict.fromkeys(found))


def describe(lam: float, T: int, nonsmooth: tuple[str, ...], chaotic: bool) -> str:
    """What the exponent means for each family of methods."""
    growth = lam * T
    rough = (f"; the step is not smooth in its state ({', '.join(nonsmooth)}), so Newton's "
             "quadratic convergence is not guaranteed either") if nonsmooth else ""
    if chaotic:
        return (f"chaotic: errors grow by e^{growth:.3g} over T = {T}; the iterative methods "
                "will likely stop early and fall back to the loop")
    if abs(lam) < MARGINAL:
        return ("marginal: errors neither grow nor decay, so quasi-Newton, Picard and Jacobi "
                "may need up to T iterations and fall back; Newton (deer) converges only "
                "where the step is smooth" + rough)
    if lam < 0:
        return (f"contractive (errors shrink by e^{lam:.3g} per step): Newton (deer) "
                "converges in a few iterations where the step is smooth; quasi-Newton, Picard "
                "and Jacobi converge linearly, at a rate this estimate does not give" + rough)
    return ("mildly expanding: convergence may be slow and the result is only as good as "
            "the loop's own rounding allows" + rough)


__all__ = ["lyapunov_along_loop", "nonsmooth_operations", "describe", "MARGINAL"]
