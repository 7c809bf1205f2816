"""The ``recur`` command (also ``python -m recur``).

    recur check FILE.rec                     exit 0, or 1 with the error
    recur explain FILE.rec [--dim D=64] [--length T] [--backend gpu] [--json] [--dot] [--passes]
    recur compile FILE.rec [-o OUT.py]       standalone JAX module
    recur run FILE.rec --inputs X.npz [--params P.npz] [--init H0.npz] [--length T]
                       [--method M] [--check] [--out OUT.npz]
    recur bench FILE.rec [--length T] [--methods a,b] [--plot out.png] [--json out.json]
    recur demo                               an affine recurrence in parallel, checked

Errors go to stderr with exit status 1 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Sequence

from ._errors import RecurError


def _console(stderr: bool = False):
    from rich.console import Console
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 140)


def _dims(items: Sequence[str] | None) -> dict[str, int]:
    dims = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise RecurError(f"--dim expects NAME=VALUE, got {item!r}")
        try:
            dims[name.strip()] = int(value)
        except ValueError:
            raise RecurError(f"--dim {name.strip()} needs an integer, got {value!r}") from None
    return dims


def _load(args):
    from ._dsl import load
    return load(args.file, name=getattr(args, "name", None), **_dims(getattr(args, "dim", None)))


def cmd_check(args) -> int:
    rec = _load(args)
    _console().print(f"{args.file}: recurrence {rec.model.name!r} is valid "
                     f"({len(rec.model.states)} state(s): "
                     + ", ".join(f"{s}={k}" for s, k in rec.model.kinds.items()) + ")")
    return 0


def _plan_table(plan):
    from rich.table import Table
    table = Table(title=f"plan: {plan.kind}, method {plan.method}, backend {plan.backend}")
    for col in ("stage", "states", "kind", "jacobian", "method"):
        table.add_column(col)
    for i, st in enumerate(plan.stages):
        table.add_row(str(i), ", ".join(st.states), st.kind, st.jacobian, st.method)
    return table


def cmd_explain(args) -> int:
    rec = _load(args)
    plan = rec.plan(length=args.length, backend=args.backend)
    out = _console()
    if args.json:
        print(plan.to_json(indent=2))
    elif args.dot:
        print(_dot(plan))
    elif args.passes:
        print(plan.explain_passes())
    else:
        out.print(_plan_table(plan))
        print(plan.explain())
        for state, (kind, reason) in rec.model.classification.items():
            print(f"symbolic: {state}: {kind} - {reason}")
    return 0


def _dot(plan) -> str:
    lines = ["digraph recur {"]
    for name, size in plan.state_sizes:
        lines.append(f'  "{name}" [label="{name} ({size})"];')
    for u, v, w in plan.edges:
        lines.append(f'  "{u}" -> "{v}" [label="{w}"];')
    lines.append("}")
    return "\n".join(lines)


def cmd_compile(args) -> int:
    from ._dsl import compile as compile_rec
    with open(args.file, encoding="utf-8") as fh:
        text = fh.read()
    module = compile_rec(text, name=args.name, filename=args.file, **_dims(args.dim))
    if args.output:
        _atomic_write_text(args.output, module)
    else:
        sys.stdout.write(module)
    return 0


def _atomic_write_text(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _read_npz(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    import numpy as np
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
        raise RecurError(f"cannot read {path}: {exc}") from None


def cmd_run(args) -> int:
    import jax.numpy as jnp
    import numpy as np

    rec = _load(args)
    inputs = [os.path.abspath(p) for p in (args.inputs, args.params, args.init) if p]
    out_path = args.out or (os.path.splitext(args.file)[0] + ".out.npz")
    if os.path.abspath(out_path) in inputs:
        raise RecurError(f"--out {out_path} is one of the input files; recur never overwrites "
                         "its inputs.")
    xs = _read_npz(args.inputs)
    params = _read_npz(args.params)
    h0 = _read_npz(args.init) or rec.init(params)
    h0 = {k: jnp.asarray(v, rec.model.dtype) for k, v in h0.items()}
    if xs is not None:
        xs = {k: jnp.asarray(v, rec.model.dtype) for k, v in xs.items()}
    out = _console()
    start = time.perf_counter()
    with out.status(f"running {rec.model.name!r} (compiling, then {args.method})"):
        hs, info = rec.scan(h0, xs, params, length=args.length, method=args.method,
                            return_info=True)
        hs = {k: np.asarray(v) for k, v in hs.items()}
    elapsed = time.perf_counter() - start
    out.print(f"ran {rec.model.name!r} with method {info.method} in {elapsed:.3f} s "
              f"(residual {float(info.residual):.3g}, fell back: {bool(info.fell_back)})")
    if args.check:
        with out.status("running the sequential loop for --check"):
            ref = rec.scan(h0, xs, params, length=args.length, method="sequential")
        diff = max(float(np.max(np.abs(hs[k] - np.asarray(ref[k])), initial=0.0)) for k in hs)
        out.print(f"check: largest difference to the sequential loop {diff:.3g}")
    folder = os.path.dirname(os.path.abspath(out_path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **hs)
    os.replace(tmp, out_path)
    out.print(f"wrote {out_path}")
    return 0


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


def cmd_bench(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from rich.progress import Progress
    from rich.table import Table

    from .passes._lower import METHODS

    rec = _load(args)
    rng = np.random.default_rng(args.seed)
    T = args.length
    params = _bench_params(rec, rng)
    h0 = rec.init(params)
    xs = {k: jnp.asarray(0.5 * rng.standard_normal((T,) + tuple(s)), rec.model.dtype)
          for k, s in rec.model.inputs.items()} or None
    methods = args.methods.split(",") if args.methods else [m for m in METHODS if m != "auto"]
    if "auto" not in methods:
        methods.append("auto")
    usable, skipped = [], []
    for m in methods:
        try:
            rec.plan(h0, xs, params, length=None if xs else T, method=m)
            usable.append(m)
        except RecurError as exc:
            skipped.append((m, str(exc)))
    records = []
    reference = None
    with Progress(transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(usable) * (args.reps + 1))
        for m in usable:
            fn = jax.jit(lambda xs, m=m: rec.scan(h0, xs, params, length=None if xs else T,
                                                  method=m, return_info=True))
            start = time.perf_counter()
            hs, info = jax.block_until_ready(fn(xs))
            compile_s = time.perf_counter() - start
            progress.advance(task)
            times = []
            for _ in range(args.reps):
                times.append(_time(fn, xs))
                progress.advance(task)
            leaves = np.concatenate([np.ravel(np.asarray(v, np.float64))
                                     for v in jax.tree_util.tree_leaves(hs)])
            if reference is None:
                reference = leaves
            records.append({"method": m, "ran": info.method, "median_s": float(np.median(times)),
                            "min_s": float(np.min(times)), "max_s": float(np.max(times)),
                            "compile_s": compile_s, "residual": float(info.residual),
                            "fell_back": bool(info.fell_back),
                            "max_abs_diff": float(np.max(np.abs(leaves - reference),
                                                         initial=0.0))})
    device = jax.devices()[0]
    table = Table(title=f"recur bench {rec.model.name}: T={T}, {device.platform} "
                        f"({device.device_kind})")
    for col in ("method", "ran", "median ms", "min ms", "max ms", "compile s", "residual",
                "fell back", "max |diff|", "vs sequential"):
        table.add_column(col)
    seq = next((r["median_s"] for r in records if r["method"] == "sequential"), None)
    for r in records:
        table.add_row(r["method"], r["ran"], f"{r['median_s'] * 1e3:.3f}",
                      f"{r['min_s'] * 1e3:.3f}", f"{r['max_s'] * 1e3:.3f}",
                      f"{r['compile_s']:.2f}", f"{r['residual']:.2e}",
                      "yes" if r["fell_back"] else "no", f"{r['max_abs_diff']:.2e}",
                      f"{seq / r['median_s']:.2f}x" if seq else "-")
    out = _console()
    out.print(table)
    for m, why in skipped:
        out.print(f"skipped {m}: {why}")
    if args.json:
        _atomic_write_text(args.json, json.dumps({"device": device.device_kind,
                                                  "platform": device.platform, "T": T,
                                                  "records": records}, indent=1))
    if args.plot:
        _bench_plot(records, args.plot, f"{rec.model.name}, T={T}, {device.platform}")
        out.print(f"wrote {args.plot}")
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_demo(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ._api import plan as make_plan
    from ._api import scan

    T, D = args.length, 64
    rng = np.random.default_rng(0)
    decay = jnp.asarray(rng.uniform(0.9, 0.999, D), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)

    def step(h, x):
        # A gated linear recurrence (an LRU/EMA-style layer): affine in h, diagonal.
        gate = jax.nn.sigmoid(x)
        return decay * gate * h + (1 - gate) * x

    h0 = jnp.zeros(D, jnp.float32)
    out = _console()
    p = make_plan(step, h0, xs, method="scan")
    out.print(_plan_table(p))
    print(p.explain())
    auto = make_plan(step, h0, xs)
    out.print(f"(method='auto' on this {auto.backend} backend picks {auto.method}: "
              f"{auto.stages[0].why})")
    run_scan = jax.jit(lambda xs: scan(step, h0, xs, method="scan"))
    run_loop = jax.jit(lambda xs: jax.lax.scan(lambda h, x: (step(h, x),) * 2, h0, xs)[1])
    hs, ref = jax.block_until_ready((run_scan(xs), run_loop(xs)))
    t_scan = min(_time(run_scan, xs) for _ in range(3))
    t_loop = min(_time(run_loop, xs) for _ in range(3))
    err = float(jnp.max(jnp.abs(hs - ref)))
    out.print(f"T={T}, D={D}, float32, device {jax.devices()[0].platform}: "
              f"max |scan - lax.scan loop| = {err:.2e}")
    out.print(f"time: recur.scan {t_scan * 1e3:.1f} ms, lax.scan loop {t_loop * 1e3:.1f} ms")
    return 0 if err < 1e-3 else 1


def _time(fn, *args) -> float:
    import jax
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recur", description="A compiler for recurrences.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_file(p):
        p.add_argument("file", help="the .rec file")
        p.add_argument("--name", help="which recurrence of a file that holds several")
        p.add_argument("--dim", action="append", metavar="NAME=VALUE",
                       help="override a dim (repeatable)")
        return p

    p = with_file(sub.add_parser("check", help="parse and check a .rec file"))
    p.set_defaults(func=cmd_check)
    p = with_file(sub.add_parser("explain", help="show the plan"))
    p.add_argument("--length", type=int, default=1024, help="T (default 1024)")
    p.add_argument("--backend", choices=["cpu", "gpu", "tpu"], default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="the plan as JSON")
    g.add_argument("--dot", action="store_true", help="the state graph in Graphviz dot")
    g.add_argument("--passes", action="store_true", help="every analysis pass's output")
    p.set_defaults(func=cmd_explain)
    p = with_file(sub.add_parser("compile", help="emit a standalone JAX module"))
    p.add_argument("-o", "--output", help="write here instead of stdout")
    p.set_defaults(func=cmd_compile)
    p = with_file(sub.add_parser("run", help="run a recurrence on npz inputs"))
    p.add_argument("--inputs", help="npz with one array per declared input (leading axis T)")
    p.add_argument("--params", help="npz with params (defaults from the file otherwise)")
    p.add_argument("--init", help="npz with initial states (the file's otherwise)")
    p.add_argument("--length", type=int, help="T when the file declares no inputs")
    p.add_argument("--method", default="auto")
    p.add_argument("--check", action="store_true", help="compare with the sequential loop")
    p.add_argument("--out", help="output npz (default: FILE.out.npz)")
    p.set_defaults(func=cmd_run)
    p = with_file(sub.add_parser("bench", help="compare methods on a .rec recurrence"))
    p.add_argument("--length", type=int, default=10_000, help="T (default 10000)")
    p.add_argument("--methods", help="comma-separated (default: every method that applies)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the records here")
    p.add_argument("--plot", help="write a bar chart (PNG) here")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("demo", help="parallelise an affine recurrence and check it")
    p.add_argument("--length", type=int, default=100_000)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RecurError as exc:
        print(f"recur: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"recur: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recur: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the command never ends in a traceback
        print(f"recur: internal error ({type(exc).__name__}): {exc}\n"
              "This is a bug in recur; please report it with the command you ran.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
