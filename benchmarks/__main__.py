"""The benchmark harness: ``python -m benchmarks [--suite affine,nonlinear,planning]
[--quick] [--out-dir benchmarks/results]``.

Runs the chosen suites of BENCHMARKS.md on the current device (each suite compares its
candidates in the same process, on the same data), writes one JSON file per suite named
after the device (``<platform>-<suite>.json``) and a markdown summary
(``<platform>-summary.md``).
"""

from __future__ import annotations

import argparse
import os

import jax
from rich.progress import Progress

SUITES = ("affine", "nonlinear", "planning")


def _markdown(suite: str, records: list[dict]) -> str:
    if not records:
        return f"## {suite}\n\n(no records)\n"
    keys = [k for k in ("workload", "dtype", "T", "D", "n", "method", "ran", "iterations",
                        "converged", "fell_back", "median_s", "compile_s", "max_abs_err",
                        "speedup_vs_ref") if k in records[0]]
    lines = [f"## {suite}", "", "| " + " | ".join(keys) + " |",
             "|" + "---|" * len(keys)]
    for r in records:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v * 1e3:.3f} ms" if k == "median_s" else
                         f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=",".join(SUITES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    suites = [s for s in args.suite.split(",") if s]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        p.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    os.makedirs(args.out_dir, exist_ok=True)
    platform = jax.devices()[0].platform
    summary = [f"# recur benchmarks on {jax.devices()[0].device_kind} ({platform})", ""]
    with Progress() as progress:
        task = progress.add_task("suites", total=len(suites))
        for suite in suites:
            progress.update(task, description=f"suite {suite}")
            module = __import__(f"benchmarks.{suite}", fromlist=["main"])
            out = os.path.join(args.out_dir, f"{platform}-{suite}.json")
            argv_suite = ["--out", out] + (["--quick"] if args.quick and suite != "planning"
                                           else [])
            if suite == "planning" and args.quick:
                argv_suite += ["--sizes", "64,256"]
            records = module.main(argv_suite) or []
            summary.append(_markdown(suite, records))
            progress.advance(task)
    path = os.path.join(args.out_dir, f"{platform}-summary.md")
    with open(path, "w") as fh:
        fh.write("\n".join(summary))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
