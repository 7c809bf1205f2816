"""The ``recur`` argument parser and entry point: each subcommand's flags, and ``main``,
which turns every error into one line on stderr and exit status 1 (never a traceback)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .._errors import RecurError
from ._bench import cmd_bench
from ._demo import cmd_demo
from ._run import cmd_run
from ._static import cmd_check, cmd_compile, cmd_explain


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
    p.add_argument("--out", help="output npz (default: FILE.out.npz in the current directory)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out file recur did not write (never an input "
                        "or the .rec file)")
    p.set_defaults(func=cmd_run)
    p = with_file(sub.add_parser("bench", help="compare methods on a .rec recurrence"))
    p.add_argument("--length", type=int, default=10_000, help="T (default 10000)")
    p.add_argument("--methods", help="comma-separated (default: every method that applies)")
    p.add_argument("--reps", type=int, default=5,
                   help="timed runs per method after the compiling run (at least 1; default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the records here")
    p.add_argument("--plot", help="write a bar chart (PNG) here")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("demo", help="what recur runs here and on a GPU, timed and checked")
    p.add_argument("--length", type=int, default=100_000, help="T (default 100000)")
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


__all__ = ["build_parser", "main"]
