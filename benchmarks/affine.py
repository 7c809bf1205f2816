"""Affine-scan benchmarks: the ``diag-scan`` and ``dense-affine`` workloads of BENCHMARKS.md.

    python -m benchmarks.affine [--quick] [--out results.json] [--reps 7]

Every candidate is a callable ``f(a, b, h0) -> hs`` on the same arrays:

* diagonal: ``a, b`` of shape ``(T, n)``, ``h0`` of shape ``(n,)``;
* dense:    ``a`` of shape ``(T, D, D)``, ``b`` of shape ``(T, D)``, ``h0`` of shape ``(D,)``
  (a candidate tells the two apart by ``a.ndim == b.ndim``).

To add a candidate, add one line to ``CANDIDATES``.  Each candidate is jitted, compiled
(timed separately), warmed up, then timed ``reps`` times with ``jax.block_until_ready``;
the median/min/max are reported with the maximum abs/rel error against ``lax.scan``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from recur.runtime._scan import block_scan, default_chunk, diagonal_scan


# ----------------------------------------------------------------------------- candidates

def _is_diag(a, b):
    return a.ndim == b.ndim


def lax_scan(a, b, h0):
    """Hand-written sequential ``lax.scan`` (the reference)."""
    diag = _is_diag(a, b)

    def step(h, ab):
        at, bt = ab
        h = (at * h if diag else jnp.matmul(at, h, precision=lax.Precision.HIGHEST)) + bt
        return h, h

    return lax.scan(step, h0, (a, b))[1]


def lax_associative_scan(a, b, h0):
    """Hand-written ``jax.lax.associative_scan`` with the affine operator, h0 applied last."""
    diag = _is_diag(a, b)
    hi = lax.Precision.HIGHEST

    def op(x, y):  # x earlier, y later: y o x
        ax, bx = x
        ay, by = y
        if diag:
            return ay * ax, ay * bx + by
        return (jnp.matmul(ay, ax, precision=hi),
                jnp.einsum("...ij,...j->...i", ay, bx, precision=hi) + by)

    A, B = lax.associative_scan(op, (a, b))
    if diag:
        return A * h0 + B
    return jnp.einsum("tij,j->ti", A, h0, precision=hi) + B


def recur_scan(chunk=None):
    """recur's kernel (``diagonal_scan`` / ``block_scan`` with m=1) at a given chunk."""

    def f(a, b, h0):
        if _is_diag(a, b):
            return diagonal_scan(a, b, h0, chunk=chunk)
        return block_scan(a[:, None], b[:, None], h0[None], chunk=chunk)[:, 0]

    return f


def recur_api(method: str):
    """The public API on the step ``h -> a_t * h + b_t`` (or ``A_t @ h + b_t``): tracing,
    analysis, coefficient extraction, the scan and the residual check, all included."""
    import recur

    def f(a, b, h0):
        if _is_diag(a, b):
            def step(h, x):
                return x[0] * h + x[1]
        else:
            def step(h, x):
                return x[0] @ h + x[1]
        return recur.scan(step, h0, (a, b), method=method)

    return f


CANDIDATES: dict[str, Callable] = {
    "lax.scan": lax_scan,
    "lax.associative_scan": lax_associative_scan,
    "recur.scan method=scan": recur_api("scan"),
    "recur.scan method=sequential": recur_api("sequential"),
    "recur.scan method=auto": recur_api("auto"),
    "kernel (default chunk)": recur_scan(None),
    "kernel chunk=64": recur_scan(64),
    "kernel chunk=1024": recur_scan(1024),
}
REFERENCE = "lax.scan"


# ----------------------------------------------------------------------------- data

def make_data(workload: str, *, T: int, D: int, complex_: bool = False, seed: int = 0):
    """Contractive random data: |a| in [0.5, 1) (diagonal), spectral radius ~0.9 (dense)."""
    rng = np.random.default_rng(seed)
    if workload == "diag-scan":
        r = rng.uniform(0.5, 1.0, (T, D))
        if complex_:
            a = r * np.exp(1j * rng.uniform(-np.pi, np.pi, (T, D)))
            b = rng.normal(size=(T, D)) + 1j * rng.normal(size=(T, D))
            h0 = rng.normal(size=D) + 1j * rng.normal(size=D)
            dt = jnp.complex64
        else:
            a, b, h0, dt = r, rng.normal(size=(T, D)), rng.normal(size=D), jnp.float32
    elif workload == "dense-affine":
        a = 0.9 * rng.normal(size=(T, D, D)) / np.sqrt(D)
        b, h0, dt = rng.normal(size=(T, D)), rng.normal(size=D), jnp.float32
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return tuple(jnp.asarray(x, dt) for x in (a, b, h0))


# ----------------------------------------------------------------------------- timing

def _errors(out, ref):
    out = np.asarray(out).astype(np.complex128)
    ref = np.asarray(ref).astype(np.complex128)
    abs_err = float(np.max(np.abs(out - ref), initial=0.0))
    scale = float(np.max(np.abs(ref), initial=0.0)) or 1.0
    return abs_err, abs_err / scale


def time_candidate(f: Callable, args, *, reps: int = 7):
    """(compile seconds, list of run seconds, output) for ``jax.jit(f)(*args)``."""
    t0 = time.perf_counter()
    compiled = jax.jit(f).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, times, out


def _memory():
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    return None if not stats else stats.get("peak_bytes_in_use")


def run_workload(name: str, candidates: dict[str, Callable], *, T: int, D: int,
                 complex_: bool = False, reps: int = 7, seed: int = 0) -> list[dict]:
    """Time every candidate on the same data; one record per candidate."""
    args = make_data(name, T=T, D=D, complex_=complex_, seed=seed)
    dtype = str(args[0].dtype)
    ref_name = REFERENCE if REFERENCE in candidates else next(iter(candidates))
    order = [ref_name] + [c for c in candidates if c != ref_name]
    ref = None
    records = []
    dev = jax.devices()[0]
    for cname in order:
        rec = dict(workload=name, T=T, D=D, dtype=dtype, method=cname,
                   device=dev.device_kind, platform=dev.platform,
                   default_chunk=default_chunk(T))
        try:
            compile_s, times, out = time_candidate(candidates[cname], args, reps=reps)
        except Exception as e:  # noqa: BLE001 - report and go on
            rec.update(error=f"{type(e).__name__}: {e}")
            records.append(rec)
            continue
        if ref is None:
            ref = out
        abs_err, rel_err = _errors(out, ref)
        rec.update(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
                   reps=reps, compile_s=compile_s, max_abs_err=abs_err, max_rel_err=rel_err,
                   peak_bytes=_memory())
        records.append(rec)
        del out
    ref_t = next((r["median_s"] for r in records if r["method"] == ref_name and "median_s" in r),
                 None)
    for r in records:
        if ref_t and "median_s" in r:
            r["speedup_vs_ref"] = ref_t / r["median_s"]
    return records


# ----------------------------------------------------------------------------- output

def print_table(records: list[dict]) -> None:
    cols = ["workload", "dtype", "T", "D", "method", "median ms", "min ms", "max ms",
            "compile s", "vs lax.scan", "max abs err", "max rel err"]

    def row(r):
        if "error" in r:
            return [r["workload"], r["dtype"], str(r["T"]), str(r["D"]), r["method"],
                    "ERROR", r["error"][:40], "", "", "", "", ""]
        return [r["workload"], r["dtype"], str(r["T"]), str(r["D"]), r["method"],
                f"{1e3 * r['median_s']:.2f}", f"{1e3 * r['min_s']:.2f}",
                f"{1e3 * r['max_s']:.2f}", f"{r['compile_s']:.2f}",
                f"{r.get('speedup_vs_ref', float('nan')):.2f}x",
                f"{r['max_abs_err']:.1e}", f"{r['max_rel_err']:.1e}"]

    dev = jax.devices()[0]
    title = f"affine scans on {dev.device_kind} ({dev.platform}), jax {jax.__version__}"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(cols))
        for r in records:
            print(" | ".join(row(r)))
        return
    table = Table(title=title)
    for c in cols:
        table.add_column(c, justify="left" if c in ("workload", "method", "dtype") else "right")
    for r in records:
        table.add_row(*row(r))
    Console(width=200).print(table)


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--out", default=None, help="write the records as JSON here")
    p.add_argument("--reps", type=int, default=None, help="timed runs per candidate (>= 5)")
    p.add_argument("--only", default=None, choices=["diag-scan", "dense-affine"])
    args = p.parse_args(argv)
    reps = args.reps or (5 if args.quick else 9)
    T_diag, T_dense = (2**12, 2**10) if args.quick else (2**17, 2**14)
    dense_D = (4, 8) if args.quick else (4, 8, 16, 32)

    records = []
    if args.only in (None, "diag-scan"):
        for cplx in (False, True):
            records += run_workload("diag-scan", CANDIDATES, T=T_diag, D=64, complex_=cplx,
                                    reps=reps)
    if args.only in (None, "dense-affine"):
        for D in dense_D:
            records += run_workload("dense-affine", CANDIDATES, T=T_dense, D=D, reps=reps)
    print_table(records)
    if args.out:
        dev = jax.devices()[0]
        with open(args.out, "w") as fh:
            json.dump({"device": dev.device_kind, "platform": dev.platform,
                       "jax": jax.__version__, "cpu_count": os.cpu_count(),
                       "loadavg_after": _loadavg(), "records": records}, fh, indent=1)
    return records


if __name__ == "__main__":
    main()
