"""``recur bench``: time every method that applies to a ``.rec`` recurrence on random
inputs, against the sequential loop.

The loop runs first (the reference of the difference and speed columns), then each method,
``auto`` last, printing each row as it finishes; a method that fails is reported in its
row and the bench goes on. ``--reps`` (at least 1) timed runs follow one compiling run."""

from __future__ import annotations

import json
import time
from typing import Sequence

from .._errors import RecurError
from ._checks import _compare, _info_summary
from ._common import _load, _time
from ._files import _atomic_write, _atomic_write_text, _refuse_protected


def _bench_params(rec, rng):
    import jax.numpy as jnp
    out = {}
    for name, shape in rec.model.params.items():
        default = rec.model.param_defaults.get(name)
        if default is not None:
            out[name] = jnp.asarray(default, rec.model.dtype)
        else:
            fan_in = shape[-1] if shape else 1
            out[name] = jnp.asarray(rng.standard_normal(shape) / max(fan_in, 1) ** 0.5,
                                    rec.model.dtype)
    return out


def _times_fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _speed(seq_s: float | None, t_s: float, is_reference: bool) -> str:
    """``3.2× faster`` / ``200× slower`` than the sequential loop (never ``0.00x``)."""
    if is_reference:
        return "1× (reference)"
    if not seq_s or not t_s:
        return "-"
    r = seq_s / t_s
    return f"{_times_fmt(r)}× faster" if r >= 1 else f"{_times_fmt(1 / r)}× slower"


_BENCH_COLS = (("method", 12), ("ran", 12), ("median ms", 10), ("min ms", 10),
               ("max ms", 10), ("compile s", 9), ("residual", 9), ("fell back", 9),
               ("max |diff|", 10), ("vs sequential", 0))


def _bench_row(cells: Sequence[str]) -> str:
    return " ".join(c.ljust(w) if w else c for c, (_, w) in zip(cells, _BENCH_COLS)).rstrip()


def _bench_methods(args) -> list[str]:
    """The methods to compare: the loop first (the reference of the difference and speed
    columns), ``auto`` last."""
    from .. import _methods
    known = _methods.names()
    methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods
               else [m for m in known if m != "auto"])
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise RecurError(f"unknown method(s) {', '.join(unknown)}; recur has "
                         f"{', '.join(known)}.")
    return ["sequential"] + [m for m in dict.fromkeys(methods)
                             if m not in ("sequential", "auto")] + ["auto"]


def _bench_one(rec, m, run, reps, reference, seq_s):
    """One method's record (or ``None`` when it does not apply), printed as it finishes;
    ``reference``: the loop's leaves, ``seq_s``: its median time."""
    import jax
    import numpy as np

    print(f"{m:<{_BENCH_COLS[0][1]}} ", end="", flush=True)   # which one is running
    try:
        rec.plan(length=run["T"], method=m)          # shapes suffice to know if it applies
    except RecurError as exc:
        print(f"not applicable: {exc}", flush=True)
        return None
    try:
        fn = jax.jit(lambda xs: rec.scan(run["h0"], xs, run["params"], length=run["length"],
                                         method=m, return_info=True))
        start = time.perf_counter()
        hs, info = jax.block_until_ready(fn(run["xs"]))
        compile_s = time.perf_counter() - start
        times = [_time(fn, run["xs"]) for _ in range(reps)]
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one method failing does not end the bench
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"failed: {type(exc).__name__}: {msg[:300]}", flush=True)
        return {"method": m, "error": f"{type(exc).__name__}: {msg}"}
    leaves = [np.asarray(v) for v in jax.tree_util.tree_leaves(hs)]
    cmp = [_compare(a, b) for a, b in zip(leaves, reference or leaves)]
    diff = max((c["max_abs"] for c in cmp), default=0.0)
    mismatches = sum(c["mismatches"] for c in cmp)
    residual, _, fell_back = _info_summary(info)
    med = float(np.median(times))
    seq_s = med if m == "sequential" else seq_s
    r = {"method": m, "ran": info.method, "median_s": med, "min_s": float(np.min(times)),
         "max_s": float(np.max(times)), "compile_s": compile_s, "residual": residual,
         "fell_back": fell_back, "max_abs_diff": diff, "nonfinite_mismatches": mismatches,
         "speedup_vs_sequential": (seq_s / med) if seq_s else None, "_leaves": leaves}
    cells = ["", r["ran"], f"{med * 1e3:.3f}", f"{r['min_s'] * 1e3:.3f}",
             f"{r['max_s'] * 1e3:.3f}", f"{compile_s:.2f}", f"{residual:.2e}",
             "yes" if fell_back else "no",
             f"{diff:.2e}" + (f" ({mismatches} non-finite disagree)" if mismatches else ""),
             _speed(seq_s, med, m == "sequential")]
    print(_bench_row(cells)[_BENCH_COLS[0][1] + 1:], flush=True)   # after the name
    return r


def cmd_bench(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    if args.reps < 1:
        raise RecurError(f"--reps must be at least 1 (the timed runs after the first, "
                         f"compiling run), got {args.reps}.")
    if args.length < 1:
        raise RecurError(f"--length must be at least 1, got {args.length}.")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            _refuse_protected(path, flag, [(args.file, "the .rec file")])
    methods = _bench_methods(args)

    rec = _load(args)
    rng = np.random.default_rng(args.seed)
    T = args.length
    params = _bench_params(rec, rng)
    xs = {k: jnp.asarray(0.5 * rng.standard_normal((T,) + tuple(s)), rec.model.dtype)
          for k, s in rec.model.inputs.items()} or None
    run = {"T": T, "h0": rec.init(params), "xs": xs, "params": params,
           "length": None if xs else T}
    device = jax.devices()[0]
    print(f"recur bench {rec.model.name}: T={T}, {device.platform} ({device.device_kind}), "
          f"{args.reps} timed run(s) per method after a compiling run; differences and speed "
          "against the sequential loop", flush=True)
    print(_bench_row([c for c, _ in _BENCH_COLS]), flush=True)
    records, reference, seq_s = [], None, None
    for m in methods:
        r = _bench_one(rec, m, run, args.reps, reference, seq_s)
        if r is None:
            continue
        leaves = r.pop("_leaves", None)
        if leaves is not None and reference is None:
            reference = leaves
        if m == "sequential" and "median_s" in r:
            seq_s = r["median_s"]
        records.append(r)
    if args.json:
        _atomic_write_text(args.json, json.dumps({"device": device.device_kind,
                                                  "platform": device.platform, "T": T,
                                                  "reps": args.reps, "records": records},
                                                 indent=1), "--json")
        print(f"wrote {args.json}")
    if args.plot:
        timed = [r for r in records if "median_s" in r]
        _bench_plot(timed, args.plot, f"{rec.model.name}, T={T}, {device.platform}")
        print(f"wrote {args.plot}")
    return 0


def _bench_plot(records, path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RecurError("--plot needs matplotlib: pip install 'recur[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["method"] for r in records]
    ax.bar(names, [r["median_s"] * 1e3 for r in records],
           yerr=[[(r["median_s"] - r["min_s"]) * 1e3 for r in records],
                 [(r["max_s"] - r["median_s"]) * 1e3 for r in records]], capsize=4)
    ax.set_ylabel("median time per call (ms)")
    ax.set_title(title)
    fig.tight_layout()
    _atomic_write(path, "--plot", lambda fh: fig.savefig(fh, dpi=120, format="png"))
    plt.close(fig)



__all__ = ["cmd_bench", "_speed"]
