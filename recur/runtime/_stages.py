r"""Running a plan: its stages in order, then the whole-step check.

The trajectory is kept as the state's own leaves, each with a leading time axis and its own
dtype, so integer, boolean and key leaves are never rounded.  Stage ``s`` reads its own
elements and those of earlier stages; given those trajectories it is a recurrence of its
own:

* an **exact** stage (integer, boolean or key elements) or a stage whose method is
  ``sequential`` runs the loop on the leaves it touches, with every other element at each
  step taken from the trajectory so far (``before_t``: the states at ``t - 1``); an exact
  stage that reads none of its own elements (Viterbi's back-pointers, given the scores) is
  a map: every step at once from ``before_t``, the same values the loop computes;
* a **float** stage runs its method on the flat vector ``z`` of its elements
  (``ElementView``): ``f_s(z, x_t, before_t)`` writes ``z`` into ``before_t``, evaluates
  the step and reads the stage's elements back.

Elements of later stages are not computed yet while a stage runs; their places hold the
initial state (a valid value of every dtype), and the analysis guarantees the stage does
not read them.

The whole-step check
--------------------
Each stage checks itself, given the earlier stages.  Nothing in that checks the *analysis*
(a missed dependency puts a stage before one it reads).  So after a staged plan, one
batched evaluation of the full step on the assembled trajectory is compared with it on
every leaf -- inexact leaves with the step test of ``_checks.py`` at their own tolerance,
exact leaves for equality -- and a failure falls back to the loop of the whole step (or
raises, per ``on_failure``), reason ``WHOLE_STEP``.  An analysis bug costs time, never
truth.  A single float stage needs no extra evaluation: its own check already evaluates the
whole step on every element.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import _methods
from .._dtypes import is_key
from .._ir import ElementView, StageData, StepIR
from . import _checks, _sharding
from ._affine import solve_affine
from ._iterative import solve_nonlinear
from ._result import Reason, StageStats
from ._sequential import sequential_scan


def _real(dtype):
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.float32


def shift_leaves(hs: Sequence[Any], h0: Sequence[Any]) -> list[Any]:
    """``before_t = h_{t-1}`` for every leaf (``h_{-1} = h0``)."""
    return [_sharding.shift(v, jnp.asarray(h)) for v, h in zip(hs, h0)]


def placeholders(h0: Sequence[Any], T: int) -> list[Any]:
    return [jnp.broadcast_to(jnp.asarray(h), (T,) + jnp.shape(h)) for h in h0]


class StageRun:
    """One stage of a plan in a program: its elements as leaves (``touched``, ``masks``) and,
    for a float stage, as a flat vector (``view``)."""

    def __init__(self, ir: StepIR, data: StageData, method: str):
        self.ir, self.data, self.method = ir, data, _methods.get(method)
        elements = data.elements
        self.touched, self.masks = [], []
        for i, (leaf, off) in enumerate(zip(ir.state, ir.offsets)):
            local = elements[(elements >= off) & (elements < off + leaf.size)] - off
            if len(local):
                self.touched.append(i)
                whole = len(local) == leaf.size
                mask = None if whole else np.isin(np.arange(leaf.size), local).reshape(
                    leaf.shape)
                self.masks.append(mask)
        self.whole_state = len(self.touched) == len(ir.state) and all(
            m is None for m in self.masks)
        self.view = None if data.exact else ElementView(ir, elements)

    # ------------------------------------------------------------------ the loop
    def loop(self, step, hs, h0, xs, p, T):
        """The stage by the sequential loop, on leaves."""
        touched, masks = self.touched, self.masks
        before = None if self.whole_state else shift_leaves(hs, h0)

        def body(carry, inp):
            x, bef = inp
            full = list(carry) if self.whole_state else list(bef)
            if not self.whole_state:
                for i, c, m in zip(touched, carry, masks):
                    full[i] = c if m is None else jnp.where(m, c, bef[i])
            out = step(full, [] if x is None else x, p)
            return [out[i] for i in touched]

        traj = sequential_scan(body, [jnp.asarray(h0[i]) for i in touched], (xs, before),
                               length=T)
        out = list(hs)
        for i, v, m in zip(touched, traj, masks):
            out[i] = v if m is None else jnp.where(m, v, hs[i])
        return out

    def map(self, step, hs, h0, xs, p):
        """A stage that reads none of its own elements (Viterbi's back-pointers given the
        scores): every step at once from the earlier stages' states, exactly the values the
        loop computes from them."""
        before = shift_leaves(hs, h0)

        def one(bef, x):
            out = step(list(bef), [] if x is None else x, p)
            return [out[i] for i in self.touched]

        traj = jax.vmap(one)(before, xs)
        out = list(hs)
        for i, v, m in zip(self.touched, traj, self.masks):
            out[i] = v if m is None else jnp.where(m, v, hs[i])
        return out

    # ------------------------------------------------------------------ a float stage
    def flat(self, step, hs, h0, xs, p):
        """``(f_s, z0, xs_s)``: the stage as a recurrence on its flat vector."""
        view = self.view
        z0 = view.gather([jnp.asarray(h) for h in h0])
        if view.complete:
            def f_s(z, x):
                return view.gather(step(view.scatter(z), [] if x is None else x, p))
            return f_s, z0, xs
        before = shift_leaves(hs, h0)

        def f_s(z, xb):
            x, bef = xb
            return view.gather(step(view.scatter(z, bef), [] if x is None else x, p))
        return f_s, z0, (xs, before)

    def semiring_modes(self, step, p):
        """The stage's step in the semiring's ``"linear"`` and ``"offset"`` modes
        (``_semiring_analysis.evaluator``) as ``(z, x) -> (z', coefficients)`` like ``flat``'s
        (``f_off`` None for a linear stage)."""
        from .._semiring_analysis import evaluator
        ir, view, claim = self.ir, self.view, self.data.semiring
        n_other = len(ir.inputs) + len(ir.params)

        def flat(mode):
            run = evaluator(step.closed, len(ir.state), self.touched, n_other, claim, mode)

            def f(z, xb):
                x, bef = (xb, None) if view.complete else xb
                out, coefs = run(view.scatter(z, bef), [] if x is None else x, p)
                return view.gather(out), coefs
            return f

        return flat("linear"), (flat("offset") if claim.affine else None)

    def tolerances(self, options):
        view = self.view
        dtypes = [self.ir.state[i].dtype for i, _, _ in view.parts]
        sizes = [self.ir.state[i].size if local is None else len(local)
                 for i, local, _ in view.parts]
        return _checks.element_tolerances(dtypes, sizes, options.get("rtol"),
                                          options.get("atol"))


def run_stage(stage: StageRun, step, hs, h0, xs, p, T, options, *, init=None, jacobian=None,
              raise_on_failure=None):
    """``(hs, StageStats)`` after running ``stage`` (``init``: ``(T, n_state)`` leaves-form
    guess or None)."""
    T_all = _sharding.global_length(T)
    if stage.data.exact and stage.data.structure.jacobian == "zero" and T > 0:
        return stage.map(step, hs, h0, xs, p), StageStats.make(
            reason=Reason.SEQUENTIAL, evaluations=T_all)
    if stage.data.exact or stage.method.family == "loop":
        return stage.loop(step, hs, h0, xs, p, T), StageStats.make(
            reason=Reason.SEQUENTIAL, evaluations=T_all)
    f_s, z0, xs_s = stage.flat(step, hs, h0, xs, p)
    rdt = _real(z0.dtype)
    tol = stage.tolerances(options)
    on_failure = options.get("on_failure", "sequential")
    chunk = options.get("chunk")
    check = options.get("check", True)
    if stage.method.family == "semiring":
        from ._semiring import solve_semiring
        f_lin, f_off = stage.semiring_modes(step, p)
        zs, st = solve_semiring(f_s, f_lin, f_off, z0, xs_s, claim=stage.data.semiring,
                                structure=stage.data.structure, length=T, tolerances=tol,
                                chunk=chunk, fallback=on_failure == "sequential")
    elif stage.method.iterative:
        guess = None if init is None else stage.view.gather(init, lead=(T,))
        zs, st, _ = solve_nonlinear(
            f_s, z0, xs_s, method=stage.method.name, structure=stage.data.structure,
            length=T, tolerances=tol, max_iters=options.get("max_iters"), init=guess,
            jacobian=jacobian, window=options.get("window"),
            lyapunov=bool(options.get("lyapunov", True)), chunk=chunk,
            fallback=on_failure == "sequential")
    else:  # scan
        zs = solve_affine(f_s, z0, xs_s, stage.data.structure, T, chunk=chunk)
        if check:
            res, ok = _checks.residual(f_s, z0, zs, xs_s, rtol=tol.rtol, atol=tol.atol)
            fell_back = jnp.asarray(False)
            if on_failure == "sequential":
                zs = _checks.with_fallback(zs, ok, lambda: sequential_scan(f_s, z0, xs_s,
                                                                          length=T))
                fell_back = ~ok
            reason = jnp.where(ok, Reason.CONVERGED,
                               jnp.where(jnp.isfinite(res), Reason.CHECK_FAILED,
                                         Reason.NON_FINITE))
            evals = 2 * T_all + 1 + jnp.where(fell_back, T_all, 0)
            st = StageStats.make(iterations=1, residual=res, converged=ok, fell_back=fell_back,
                                 reason=reason, evaluations=evals, real_dtype=rdt)
        else:
            st = StageStats.make(iterations=1, residual=jnp.nan, reason=Reason.NOT_CHECKED,
                                 evaluations=T_all + 1, real_dtype=rdt)
    if raise_on_failure is not None and on_failure == "raise":
        raise_on_failure(st.converged, st.residual, stage.method.name)
    return stage.view.scatter(zs, hs, lead=(T,)), st


def whole_step_check(ir: StepIR, step, hs, h0, xs, p, options):
    """``(residual, ok)`` of the full step on the assembled trajectory (module docstring)."""
    prev = shift_leaves(hs, h0)
    if xs is None:
        out = jax.vmap(lambda h: step(h, [], p))(prev)
    else:
        out = jax.vmap(lambda h, x: step(h, x, p))(prev, xs)
    oks, residuals = [], []
    for leaf, z, f in zip(ir.state, hs, out):
        T = z.shape[0]
        if leaf.exact:
            if is_key(leaf.dtype):
                z, f = jax.random.key_data(z), jax.random.key_data(f)
            same = jnp.reshape(z == f, (T, -1))  # T > 0: the loop runs T = 0 plans
            valid = _sharding.valid_steps(T)
            if valid is not None:
                same = same | ~valid[:, None]
            oks.append(~_sharding.reduce_any(jnp.any(~same)))
            continue
        tol = _checks.element_tolerances([leaf.dtype], [leaf.size], options.get("rtol"),
                                         options.get("atol"))
        res, ok = _checks.check(jnp.reshape(z, (T, leaf.size)), jnp.reshape(f, (T, leaf.size)),
                                tol.rtol, tol.atol)
        oks.append(ok)
        residuals.append(res.astype(jnp.float64 if jax.config.jax_enable_x64 else
                                    jnp.float32))
    ok = jnp.all(jnp.stack(oks)) if oks else jnp.asarray(True)
    res = jnp.max(jnp.stack(residuals)) if residuals else jnp.asarray(0.0)
    return jax.lax.stop_gradient(res), jax.lax.stop_gradient(ok)


def first_nonfinite(leaves, hs, reverse: bool) -> jax.Array:
    """The index (into the returned trajectory) of the first step the recurrence computes
    whose value (``hs``: states, or per-step outputs, with ``leaves`` their ``LeafInfo``s)
    holds a non-finite number -- for ``reverse=True`` the largest such index -- or -1
    (``hs`` in processing order, before any flip for ``reverse``)."""
    T = hs[0].shape[0] if hs else 0
    flags = [jnp.any(~jnp.isfinite(jnp.reshape(v, (T, leaf.size))), axis=1)
             for leaf, v in zip(leaves, hs) if not leaf.exact and leaf.size and T]
    if not flags:
        return jnp.asarray(-1, jnp.int32)
    bad = jnp.any(jnp.stack(flags), axis=0)
    proc = _sharding.step_index(T)
    proc = jnp.arange(T, dtype=jnp.int32) if proc is None else proc
    valid = _sharding.global_length(T)
    big = jnp.iinfo(jnp.int32).max
    first = -_sharding.reduce_max(-jnp.min(jnp.where(bad & (proc < valid), proc, big)))
    index = valid - 1 - first if reverse else first
    return jnp.where(first == big, -1, index).astype(jnp.int32)


__all__ = ["StageRun", "run_stage", "whole_step_check", "first_nonfinite", "shift_leaves",
           "placeholders"]
