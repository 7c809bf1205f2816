"""Shared pieces of the benchmark suites: timing, errors, records, load, JSON output.

Method (``../shared/BENCHMARKS.md``): every candidate is jitted and compiled first (trace +
lower + compile timed separately), run once to warm up, then timed ``reps`` (>= 5) times
with ``jax.block_until_ready``; median/min/max are reported, and every result is compared
with the sequential ``lax.scan`` loop on the same data in the same run.  Calls much shorter
than ``MIN_TOTAL_S`` are repeated more (up to 200 times).  ``compare`` (the workload suites)
compiles every candidate first and then times them round-robin, so that the load of the
other jobs on the shared cores falls on all candidates alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as _platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import recur


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or "unknown"


def recur_source_digest() -> str:
    """sha256 (first 12 hex digits) of recur's Python sources: which code was measured."""
    root = os.path.dirname(os.path.abspath(recur.__file__))
    h = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(files):
            if name.endswith((".py", ".lark")):
                with open(os.path.join(dirpath, name), "rb") as fh:
                    h.update(name.encode() + fh.read())
    return h.hexdigest()[:12]


def device_info() -> dict:
    dev = jax.devices()[0]
    info = {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "recur_sources_sha256": recur_source_digest()}
    if dev.platform == "cpu":
        info["cpu_model"] = cpu_model()
    return info


MIN_TOTAL_S = 0.25  # fast candidates are repeated until about this much time is timed


def _adaptive_reps(reps: int, first_s: float) -> int:
    """At least ``reps``; more (up to 200) for calls much shorter than ``MIN_TOTAL_S``, whose
    medians are otherwise at the mercy of the scheduler."""
    if first_s <= 0:
        return max(reps, 200)
    return int(max(reps, min(200, MIN_TOTAL_S // first_s)))


def time_jitted(fn: Callable, args: tuple, reps: int = 5):
    """``(output, compile seconds, run seconds list)`` for ``jax.jit(fn)(*args)``."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))  # warm-up
    first = time.perf_counter() - t0
    times = []
    for _ in range(_adaptive_reps(reps, first)):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return out, compile_s, times


def time_python(fn: Callable, reps: int = 5):
    """``(output, first-call seconds, run seconds list)`` for a non-JAX callable."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, first, times


def max_abs_err(a: Any, b: Any) -> float:
    """Largest |a - b| over the leaves of two pytrees (float64 arithmetic; NaN where the
    shapes differ)."""
    errs = []
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("nan")
        errs.append(float(np.max(np.abs(x - y), initial=0.0)))
    return max(errs, default=0.0)


def timing_fields(times: list[float], compile_s: float | None) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "reps": len(times), "compile_s": compile_s}


def loop_fn(step: Callable, T: int, with_params: bool = False) -> Callable:
    """The hand-written sequential ``lax.scan`` loop: the reference."""
    if with_params:
        return lambda h0, xs, p: jax.lax.scan(lambda h, x: (step(h, x, p),) * 2, h0, xs,
                                              length=T)[1]
    return lambda h0, xs: jax.lax.scan(lambda h, x: (step(h, x),) * 2, h0, xs, length=T)[1]


def info_fields(info) -> dict:
    """JSON-able fields of a recur ``Info`` (per stage lists for staged plans)."""
    its = np.atleast_1d(np.asarray(info.iterations))
    res = np.atleast_1d(np.asarray(info.residual, np.float64))
    conv = np.atleast_1d(np.asarray(info.converged))
    fb = np.atleast_1d(np.asarray(info.fell_back))
    lyap = np.atleast_1d(np.asarray(info.lyapunov, np.float64))
    rec = {"ran": info.method, "iterations": int(its.max()),
           "converged": bool(conv.all()), "fell_back": bool(fb.any()),
           "residual": float(res.max()),
           "lyapunov": float(np.nanmax(lyap)) if np.any(np.isfinite(lyap)) else None}
    if getattr(info, "evaluations", None) is not None:  # newer recur: its own count
        rec["evaluations"] = int(np.sum(np.asarray(info.evaluations)))
    if its.size > 1:
        rec["stage_iterations"] = [int(v) for v in its]
        rec["stage_converged"] = [bool(v) for v in conv]
        rec["stage_fell_back"] = [bool(v) for v in fb]
    return rec


def run_recur(step: Callable, h0, xs, params, *, T: int, method, reps: int, ref,
              options: dict | None = None, label: str | None = None) -> dict:
    """Time ``recur.scan(step, h0, xs[, params], method=...)`` under ``jit``; one record."""
    options = dict(options or {})
    if params is None:
        def fn(h0, xs):
            return recur.scan(step, h0, xs, length=T, method=method, return_info=True,
                              **options)
        args = (h0, xs)
    else:
        def fn(h0, xs, p):
            return recur.scan(step, h0, xs, p, length=T, method=method, return_info=True,
                              **options)
        args = (h0, xs, params)
    name = label or (method if isinstance(method, str) else json.dumps(method))
    rec = {"method": name, "candidate": "recur"}
    try:
        (hs, info), compile_s, times = time_jitted(fn, args, reps)
    except Exception as e:  # noqa: BLE001 - report and go on
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        return rec
    rec.update(info_fields(info))
    rec.update(timing_fields(times, compile_s))
    rec["max_abs_err"] = max_abs_err(hs, ref)
    rec["_hs"] = hs
    return rec


def run_loop(step: Callable, h0, xs, params, *, T: int, reps: int) -> tuple[dict, Any]:
    """The hand-written ``lax.scan`` reference: ``(record, its output)``."""
    fn = loop_fn(step, T, params is not None)
    args = (h0, xs) if params is None else (h0, xs, params)
    out, compile_s, times = time_jitted(fn, args, reps)
    rec = {"method": "lax.scan", "candidate": "hand-written", "ran": "lax.scan",
           "iterations": 0, "converged": True, "fell_back": False, "max_abs_err": 0.0}
    rec.update(timing_fields(times, compile_s))
    return rec, out


def _prepare(fn: Callable, args: tuple, reps: int) -> dict:
    """Compile (timed) and warm up ``jax.jit(fn)``; the number of timed calls it gets."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first = time.perf_counter() - t0
    return {"compiled": compiled, "args": args, "out": out, "compile_s": compile_s,
            "first_s": first, "n": _adaptive_reps(reps, first), "times": []}


def _time_interleaved(prepared: list[dict], rounds: int = 5) -> None:
    """Round-robin timing: ``rounds`` rounds, in each of which every candidate gets one
    block of its timed calls, so that a change of the machine's load (other jobs share the
    cores) falls on all candidates alike instead of on whichever ran at that moment.  A
    block of a short call (< 10 ms) starts with one untimed call, so that it is not timed
    cold right after a heavy neighbour."""
    for r in range(rounds):
        for p in prepared:
            block = -(-p["n"] // rounds)
            todo = min(block, p["n"] - len(p["times"]))
            if todo <= 0:
                continue
            if p["first_s"] < 0.01:
                jax.block_until_ready(p["compiled"](*p["args"]))
            for _ in range(todo):
                t0 = time.perf_counter()
                jax.block_until_ready(p["compiled"](*p["args"]))
                p["times"].append(time.perf_counter() - t0)


def compare(step: Callable, h0, xs, params, *, T: int, candidates, reps: int,
            tol: float | None = None, extra=()) -> tuple[list[dict], Any]:
    """The ``lax.scan`` loop and every ``(label, method, options)`` of ``candidates``
    through ``recur.scan`` on the same data, all compiled first and then timed
    interleaved (``_time_interleaved``): ``(records, the loop's output)``.  ``tol`` sets
    ``atol = rtol = tol`` unless a candidate's options say otherwise.  ``extra``: more
    candidates ``(label, fn(*args) -> out, fields(out, ref) -> dict)`` (hand-written
    baselines), timed in the same rounds."""
    with_p = params is not None
    args = (h0, xs, params) if with_p else (h0, xs)
    loop = _prepare(loop_fn(step, T, with_p), args, reps)
    recs = [{"method": "lax.scan", "candidate": "hand-written", "ran": "lax.scan",
             "iterations": 0, "converged": True, "fell_back": False, "max_abs_err": 0.0}]
    prepared = [loop]
    for label, method, options in candidates:
        opts = {} if tol is None else {"atol": tol, "rtol": tol}
        opts.update(options or {})

        def fn(*a, method=method, opts=opts):
            return recur.scan(step, *a, length=T, method=method, return_info=True, **opts)

        rec = {"method": label, "candidate": "recur"}
        try:
            prepared.append(_prepare(fn, args, reps))
        except Exception as e:  # noqa: BLE001 - report and go on
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            prepared.append(None)
        recs.append(rec)
    fields_of = {}
    for label, fn, fields in extra:
        rec = {"method": label, "candidate": "hand-written"}
        fields_of[label] = fields
        try:
            prepared.append(_prepare(fn, args, reps))
        except Exception as e:  # noqa: BLE001 - report and go on
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            prepared.append(None)
        recs.append(rec)
    _time_interleaved([p for p in prepared if p is not None])
    ref = loop["out"]
    for rec, p in zip(recs, prepared):
        if p is None:
            continue
        if rec["method"] in fields_of:
            rec.update(fields_of[rec["method"]](p["out"], ref))
        elif rec["candidate"] == "recur":
            hs, info = p["out"]
            rec.update(info_fields(info))
            rec["max_abs_err"] = max_abs_err(hs, ref)
            rec["_hs"] = hs
        rec.update(timing_fields(p["times"], p["compile_s"]))
        rec["timing"] = "interleaved"
    return recs, ref


def evaluations(rec: dict, T: int, window: int | None = None) -> int | None:
    """Single-step evaluations of ``f`` a recur record did (the accounting of
    ``recur.runtime._iterative.solve_nonlinear``: ``T`` for the initial guess, ``T`` per
    whole-sequence iteration plus one for the guess's check, ``W`` per window sweep plus
    ``T`` for the final residual when not converged), plus ``T`` for a fallback loop."""
    ran = rec.get("ran")
    if "evaluations" in rec:  # recur's own count (Info.evaluations, newer recur)
        return rec["evaluations"]
    if ran is None or "iterations" not in rec:
        return None
    if ran in ("sequential", "lax.scan"):
        return T
    its = rec["iterations"]
    if window is not None and window < T:
        n = T + its * window + (0 if rec["converged"] else T)
    else:
        n = T + (its + 1) * T
    return n + (T if rec.get("fell_back") else 0)


def finish_workload(records: list[dict], workload: str, common: dict) -> list[dict]:
    """Add the workload's common fields, ``speedup_vs_loop`` (lax.scan time / time) and
    ``auto_over_fastest`` (auto's time over the fastest of recur's own methods) to every
    record; drop private fields."""
    loop_t = next((r["median_s"] for r in records if r["method"] == "lax.scan"
                   and "median_s" in r), None)
    ours = {r["method"]: r["median_s"] for r in records
            if r.get("candidate") == "recur" and "median_s" in r}
    ours_min = {r["method"]: r["min_s"] for r in records
                if r.get("candidate") == "recur" and "min_s" in r}
    ratio = ratio_min = None
    if "auto" in ours and ours:
        fastest = min(ours, key=ours.get)
        ratio = ours["auto"] / ours[fastest]
        # the same with the fastest call of each: less sensitive to the other jobs' load
        ratio_min = ours_min["auto"] / min(ours_min.values())
    out = []
    for r in records:
        r = {"workload": workload, **common, **{k: v for k, v in r.items()
                                                if not k.startswith("_")}}
        if loop_t and "median_s" in r and r.get("candidate") != "piece":
            r["speedup_vs_loop"] = loop_t / r["median_s"]
        if r.get("method") == "auto" and ratio is not None:
            r["auto_over_fastest"] = ratio
            r["auto_over_fastest_min"] = ratio_min
            r["fastest_recur_method"] = min(ours, key=ours.get)
        out.append(r)
    return out


def print_records(records: list[dict], extra: tuple[str, ...] = ()) -> None:
    for r in records:
        if "error" in r:
            print(f"{r['workload']:24s} {r['method']:24s} ERROR {r['error'][:120]}", flush=True)
            continue
        if "skipped" in r:
            print(f"{r['workload']:24s} {r['method']:24s} SKIPPED {r['skipped'][:120]}",
                  flush=True)
            continue
        if r.get("candidate") == "piece":
            print(f"{r['workload']:24s} piece: {r['method']:70s} {r['median_s'] * 1e3:9.2f} ms "
                  f"[{r['min_s'] * 1e3:.2f}, {r['max_s'] * 1e3:.2f}]", flush=True)
            continue
        it = r.get("iterations")
        line = (f"{r['workload']:24s} {r['method']:24s} ran {str(r.get('ran', '')):11s} "
                f"it {'' if it is None else it!s:>4s} conv {r.get('converged')!s:5s} "
                f"fb {r.get('fell_back')!s:5s} err {r.get('max_abs_err', float('nan')):.1e} "
                f"{r['median_s'] * 1e3:9.2f} ms [{r['min_s'] * 1e3:.2f}, "
                f"{r['max_s'] * 1e3:.2f}] compile {r['compile_s'] or 0:.2f}s")
        if "speedup_vs_loop" in r:
            line += f" ({r['speedup_vs_loop']:.2f}x vs loop)"
        for k in extra:
            if k in r:
                line += f" {k}={r[k]}"
        print(line, flush=True)
    for r in records:
        if "auto_over_fastest" in r:
            print(f"  auto / fastest of recur's methods on {r['workload']}: "
                  f"{r['auto_over_fastest']:.2f} (fastest: {r['fastest_recur_method']}; "
                  f"by min time {r['auto_over_fastest_min']:.2f}; target <= 1.10)",
                  flush=True)


def write_json(path: str | None, suite: str, records: list[dict], load_start, **extra) -> None:
    if not path:
        return
    payload = {"suite": suite, **device_info(), "loadavg_start": load_start,
               "loadavg_end": loadavg(), **extra, "records": records}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(_jsonable(payload), fh, indent=1)
    print(f"wrote {path}")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, (jax.Array, np.ndarray)):
        return _jsonable(np.asarray(x).tolist())
    return x


def f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


__all__ = ["loadavg", "device_info", "time_jitted", "time_python", "max_abs_err",
           "timing_fields", "loop_fn", "info_fields", "run_recur", "run_loop", "compare",
           "evaluations",
           "finish_workload", "print_records", "write_json", "f32"]
