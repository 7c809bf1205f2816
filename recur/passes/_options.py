"""The options every method takes, checked once, into plain Python values.

A plan and its compiled program are keyed by the options, so every option is turned into a
hashable Python value here: a concrete JAX or NumPy scalar (``rtol=jnp.asarray(1e-3)``)
becomes a ``float``/``int``; a traced one is refused (it would decide the compiled program,
which cannot depend on a traced value).  ``init`` and ``jacobian`` are values, not
decisions: they travel beside the plan.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .. import _jax_adapter as jx
from .._errors import PlanError

ON_FAILURE = ("sequential", "raise", "ignore")
OPTIONS = ("rtol", "atol", "max_iters", "on_failure", "init", "jacobian", "check", "verify",
           "chunk", "memory_limit", "window", "diagonal", "probes", "lyapunov", "for_grad")
# Options that are values passed to the program, not part of the plan's decisions.
VALUE_OPTIONS = ("init", "jacobian")
# quasi-DEER's diag(J_t): "exact" (from the structure's colouring) or "hutchinson" (an
# unbiased estimate from ``probes`` Rademacher probes; the solver only).
DIAGONALS = ("exact", "hutchinson")
DEFAULT_PROBES = 8


def _scalar(key: str, value: Any):
    """A concrete number as a Python scalar (``None`` stays ``None``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if not jx.is_concrete(value):
        raise PlanError(f"{key} is a traced value; it decides the compiled program, so it must "
                        "be a concrete number (a Python or NumPy scalar), not a function of "
                        "jit/grad arguments.")
    arr = np.asarray(value)
    if arr.shape != ():
        raise PlanError(f"{key} must be a number, got an array of shape {arr.shape}.")
    if arr.dtype.kind == "b":
        return bool(arr)
    if arr.dtype.kind in "iu":
        return int(arr)
    if arr.dtype.kind == "f":
        return float(arr)
    raise PlanError(f"{key} must be a real number, got {value!r}.")


def _positive_int(key: str, value, *, zero_ok: bool = False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise PlanError(f"{key} must be an integer, got {value!r}.")
    if value < (0 if zero_ok else 1):
        raise PlanError(f"{key} must be a {'non-negative' if zero_ok else 'positive'} integer, "
                        f"got {value!r}.")
    return int(value)


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options with every decision a plain, hashable Python value."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PlanError(f"unknown option(s) {', '.join(unknown)}; recur accepts "
                        f"{', '.join(OPTIONS)}.")
    out = {k: (v if k in VALUE_OPTIONS else _scalar(k, v)) for k, v in options.items()}
    of = out.get("on_failure", "sequential")
    if of not in ON_FAILURE:
        raise PlanError(f"on_failure={of!r}; use one of {', '.join(map(repr, ON_FAILURE))}.")
    for key in ("rtol", "atol", "memory_limit"):
        if out.get(key) is not None and (isinstance(out[key], (bool, str))
                                         or not float(out[key]) >= 0):
            raise PlanError(f"{key} must be a non-negative number, got {out[key]!r}.")
        if out.get(key) is not None:
            out[key] = float(out[key])
    out["max_iters"] = _positive_int("max_iters", out.get("max_iters"), zero_ok=True)
    out["window"] = _positive_int("window", out.get("window"))
    out["chunk"] = _positive_int("chunk", out.get("chunk"))
    for key in ("lyapunov", "check", "verify", "for_grad"):
        if key in out and not isinstance(out[key], bool):
            raise PlanError(f"{key} must be True or False, got {out[key]!r}.")
    diagonal = out.get("diagonal", "exact")
    if diagonal not in DIAGONALS:
        raise PlanError(f"diagonal={diagonal!r}; use one of {', '.join(map(repr, DIAGONALS))}.")
    if out.get("probes") is not None:
        out["probes"] = _positive_int("probes", out["probes"])
        if diagonal != "hutchinson":
            raise PlanError("probes= sets the number of Hutchinson probes; it needs "
                            "diagonal='hutchinson'.")
    return {k: v for k, v in out.items() if v is not None or k in VALUE_OPTIONS}


def requested_probes(options: dict[str, Any]) -> int:
    """Rademacher probes asked for with ``diagonal="hutchinson"`` (0: the exact diagonal)."""
    if options.get("diagonal", "exact") != "hutchinson":
        return 0
    probes = options.get("probes")
    return DEFAULT_PROBES if probes is None else int(probes)


def decisions(options: dict[str, Any]) -> tuple:
    """The options that decide the plan and program, sorted (hashable)."""
    return tuple(sorted((k, v) for k, v in options.items() if k not in VALUE_OPTIONS))


__all__ = ["check_options", "requested_probes", "decisions", "OPTIONS", "ON_FAILURE",
           "DIAGONALS", "DEFAULT_PROBES", "VALUE_OPTIONS"]
