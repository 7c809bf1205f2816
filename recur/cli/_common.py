"""What every ``recur`` command shares: the console, ``--dim`` parsing, loading the
``.rec`` file, warnings on stderr, and timing one call."""

from __future__ import annotations

import sys
import time
from typing import Sequence

from .._errors import RecurError


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
    from .._dsl import load
    return load(args.file, name=getattr(args, "name", None), **_dims(getattr(args, "dim", None)))


def _warn(text: str) -> None:
    print(f"recur: warning: {text}", file=sys.stderr)


def _time(fn, *args) -> float:
    """Seconds of one call of ``fn``, until its result is ready."""
    import jax
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


__all__ = ["_console", "_dims", "_load", "_warn", "_time"]
