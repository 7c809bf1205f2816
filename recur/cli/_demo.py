"""``recur demo``: what recur runs on this machine and would run on a GPU, timed against
the user's own jitted ``jax.lax.scan`` and checked against it.

The problem is a gated linear recurrence (an LRU/EMA-style layer),
``h' = decay * g * h + (1 - g) * x`` with ``g = sigmoid(x)``: affine in ``h``, diagonal.
The demo shows, in four sections, the plan ``auto`` runs here and its time; the plan a GPU
would run, with the cost model's predicted speed-up; the plan and time under ``jax.grad``;
and the check of every result against the loop. It exits 1 when a check fails."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .._errors import RecurError
from ._checks import _compare, _info_summary, _tolerance
from ._common import _time

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_REPS = 5


def _seconds(value: Any) -> float | None:
    """A predicted time from a plan's estimates (``'243 us'``, or a number of seconds)."""
    import re
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*(ns|us|µs|μs|ms|s)\s*", str(value))
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def _predicted(plan) -> float | None:
    """The cost model's predicted time of a plan (its stages' sum), None if not given."""
    total = 0.0
    for st in plan.stages:
        t = _seconds(dict(st.estimates).get("predicted time"))
        if t is None:
            return None
        total += t
    return total


def _two_digits(x: float) -> str:
    """A predicted ratio to two significant digits (3292.1 -> '3300')."""
    x = float(f"{x:.2g}")
    return f"{x:.0f}" if x >= 10 else f"{x:g}"


def _duration(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _best_times(fns, xs) -> list[float]:
    """The least of ``_REPS`` timed calls of each of ``fns``, interleaved so that all see
    the same load."""
    best = [float("inf")] * len(fns)
    for _ in range(_REPS):
        best = [min(b, _time(fn, xs)) for b, fn in zip(best, fns)]
    return best


def _faster(r: float) -> str:
    """``1.4× faster`` / ``2.1× slower`` for a ratio of times (the other's over ours)."""
    return f"{_two_digits(max(r, 1 / r))}× {'faster' if r >= 1 else 'slower'}"


def _print_why(plan) -> None:
    for st in plan.stages:
        print(f"   why: {st.why}")


class _Problem(NamedTuple):
    step: Callable
    h0: Any
    xs: Any
    T: int


def _problem(T: int, D: int = 64) -> _Problem:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    decay = jnp.asarray(rng.uniform(0.9, 0.999, D), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)

    def step(h, x):
        gate = jax.nn.sigmoid(x)
        return decay * gate * h + (1 - gate) * x

    return _Problem(step, jnp.zeros(D, jnp.float32), xs, T)


def cmd_demo(args) -> int:
    import jax

    if args.length < 1:
        raise RecurError(f"--length must be at least 1, got {args.length}.")
    p = _problem(args.length)
    device = jax.devices()[0]
    print("recur demo: a gated linear recurrence (an LRU/EMA-style layer)\n"
          "  h' = decay * g * h + (1 - g) * x,  g = sigmoid(x)\n"
          f"  T = {p.T} steps, D = {p.h0.shape[0]} states, float32; this machine: "
          f"{device.platform} ({device.device_kind})", flush=True)
    here, hs, info, ref = _here(p)
    gpu = _on_a_gpu(p)
    g_ok = _training(p)
    ok = _check(p, here, hs, info, ref, gpu)
    return 0 if ok and g_ok else 1


def _here(p: _Problem):
    """1. What ``auto`` runs here, next to the user's own jitted ``lax.scan``: the plan,
    the result and info of ``auto``, and the loop's result."""
    import jax

    from .._api import plan as make_plan
    from .._api import scan

    here = make_plan(p.step, p.h0, p.xs)
    print(f"\n1. Here ({here.backend}) method='auto' runs: {here.method}")
    _print_why(here)
    # timed as the user's code would call it (no info: its non-finite scan over all states is
    # work the user's lax.scan does not do); the info comes from a separate call for the check
    run_auto = jax.jit(lambda xs: scan(p.step, p.h0, xs))
    run_loop = jax.jit(lambda xs: jax.lax.scan(lambda h, x: (p.step(h, x),) * 2, p.h0, xs)[1])
    hs, info = jax.block_until_ready(
        jax.jit(lambda xs: scan(p.step, p.h0, xs, return_info=True))(p.xs))
    ref = jax.block_until_ready((run_auto(p.xs), run_loop(p.xs)))[1]  # compile both
    t_auto, t_loop = _best_times([run_auto, run_loop], p.xs)
    print(f"   time (min of {_REPS} runs each, same process): recur.scan {_duration(t_auto)}, "
          f"your own jitted jax.lax.scan {_duration(t_loop)}")
    if here.method == "sequential":
        print("   (auto runs the same loop here, so the two should be about equal: on this "
              "backend recur costs nothing and gains nothing)")
    return here, hs, info, ref


def _on_a_gpu(p: _Problem):
    """2. The plan a GPU would run, with the cost model's predicted speed-up and why."""
    from .._api import plan as make_plan
    from ..passes import _cost

    gpu = make_plan(p.step, p.h0, p.xs, backend="gpu")
    source = _cost.constants("gpu").source
    assumed = "assumed" in source.lower()
    print(f"\n2. On a GPU, method='auto' would run: {gpu.method}"
          + ("  [PREDICTION from assumed GPU constants, not measured on a GPU]" if assumed
             else "  [prediction from the cost model's GPU constants]"))
    _print_why(gpu)
    t_gpu = _predicted(gpu)
    t_gpu_loop = _predicted(make_plan(p.step, p.h0, p.xs, backend="gpu", method="sequential"))
    if t_gpu and t_gpu_loop:
        depth = [dict(st.estimates).get("depth") for st in gpu.stages]
        depth = f"depth {sum(depth)}" if all(isinstance(d, int) for d in depth) else "less depth"
        print(f"   predicted: {gpu.method} {_duration(t_gpu)} against the sequential loop "
              f"{_duration(t_gpu_loop)}, about {_faster(t_gpu_loop / t_gpu)} (the loop runs "
              f"{p.T} dependent steps, each at least a kernel launch on a GPU; the "
              f"{gpu.method} has {depth})")
    print(f"   GPU constants: {source}")
    return gpu


def _training(p: _Problem) -> bool:
    """2b. Under ``jax.grad`` the plan counts the reverse pass, on this machine too; True
    when the gradient agrees with the loop's."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .._api import plan as make_plan
    from .._api import scan

    print("\n2b. Training (jax.grad through the recurrence): the plan counts the reverse pass")
    trained = make_plan(p.step, p.h0, p.xs, for_grad=True)
    print(f"   here method='auto' under jax.grad runs: {trained.method}")
    _print_why(trained)
    grad_auto = jax.jit(jax.grad(lambda xs: jnp.sum(scan(p.step, p.h0, xs) ** 2)))
    grad_loop = jax.jit(jax.grad(lambda xs: jnp.sum(jax.lax.scan(
        lambda h, x: (p.step(h, x),) * 2, p.h0, xs)[1] ** 2)))
    g_auto, g_loop = jax.block_until_ready((grad_auto(p.xs), grad_loop(p.xs)))
    tg_auto, tg_loop = _best_times([grad_auto, grad_loop], p.xs)
    print(f"   time of the gradient (min of {_REPS}): recur {_duration(tg_auto)}, your own "
          f"jax.lax.scan {_duration(tg_loop)}: recur {_faster(tg_loop / tg_auto)} on this "
          "machine")
    g_err = float(np.max(np.abs(np.asarray(g_auto) - np.asarray(g_loop))))
    g_ok = bool(g_err <= _tolerance(np.float32) * (1 + float(np.max(np.abs(np.asarray(g_loop))))))
    print(f"   max |gradient - loop's gradient| = {g_err:.2e}: {'passed' if g_ok else 'FAILED'}")
    return g_ok


def _check(p: _Problem, here, hs, info, ref, gpu) -> bool:
    """3. The check against the loop, for what ran here and for the GPU's method."""
    import jax
    import numpy as np

    from .._api import scan

    print("\n3. Check against the sequential loop (jax.lax.scan):")
    tol = _tolerance(np.float32)
    runs = [("auto here", here.method, hs, info)]
    if gpu.method != here.method:
        run_gpu = jax.jit(lambda xs: scan(p.step, p.h0, xs, method=gpu.method,
                                          return_info=True))
        hs_gpu, info_gpu = jax.block_until_ready(run_gpu(p.xs))
        runs.append(("the GPU's method, run here", gpu.method, hs_gpu, info_gpu))
    ok = True
    ref = np.asarray(ref)
    for label, method, out, inf in runs:
        c = _compare(np.asarray(out), ref)
        _, converged, fell_back = _info_summary(inf)
        good = not c["mismatches"] and c["max_scaled"] <= tol and (converged or fell_back)
        ok &= good
        mism = f", {c['mismatches']} non-finite value(s) disagree" if c["mismatches"] else ""
        print(f"   {label} ({method}): max |recur - loop| = {c['max_abs']:.2e}{mism}; "
              f"converged {converged}, fell back {fell_back}: "
              f"{'passed' if good else 'FAILED'}")
    print(f"   (tolerance |recur - loop| <= {tol:.2g} x (1 + |loop|), the square root of "
          "float32's machine epsilon)")
    return ok


__all__ = ["cmd_demo"]
