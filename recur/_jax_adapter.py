"""The one place where recur touches JAX's extension API (``jax.extend``).

Everything recur needs from JAX beyond its public API is imported here and nowhere
else, so that a JAX upgrade breaks one small module (pinned by ``tests/test_adapter.py``)
rather than the passes.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
from jax.extend import core as _jex_core
from jax.extend import source_info_util as _source_info_util

Literal = _jex_core.Literal
Var = _jex_core.Var
DropVar = _jex_core.DropVar
Jaxpr = _jex_core.Jaxpr
ClosedJaxpr = _jex_core.ClosedJaxpr
JaxprEqn = _jex_core.JaxprEqn
Primitive = _jex_core.Primitive
Tracer = jax.core.Tracer


def is_literal(atom: Any) -> bool:
    return isinstance(atom, Literal)


def literal_value(atom: Any) -> Any:
    return atom.val


def is_concrete(value: Any) -> bool:
    """True for a value whose contents are known now (not a tracer of any transformation)."""
    return not isinstance(value, Tracer)


_DIFFERENTIATION_TRACERS = ("JVPTracer", "LinearizeTracer")


def under_differentiation(values) -> bool:
    """True when some value is being traced by forward- or reverse-mode autodiff (directly,
    or under other transformations such as ``vmap``)."""
    for v in values:
        seen = 0
        while isinstance(v, Tracer) and seen < 16:
            if type(v).__name__ in _DIFFERENTIATION_TRACERS:
                return True
            v = getattr(v, "primal", getattr(v, "val", None))
            seen += 1
    return False


def vmap_axes(values) -> tuple[bool, tuple[str, ...]]:
    """``(under vmap, mesh axes of its spmd_axis_name)`` for the values being traced:
    whether some value is batched by ``jax.vmap``, and the mesh axes the batch is split
    over (``jax.vmap(..., spmd_axis_name=...)``, from every enclosing ``vmap``)."""
    batched, axes = False, []
    for v in values:
        seen = 0
        while isinstance(v, Tracer) and seen < 16:
            if type(v).__name__ == "BatchTracer":
                batched = True
                data = getattr(getattr(v, "_trace", None), "axis_data", None)
                spmd = getattr(data, "spmd_name", None)
                names = () if spmd is None else (spmd if isinstance(spmd, tuple) else (spmd,))
                axes.extend(a for a in names if a not in axes)
            v = getattr(v, "primal", getattr(v, "val", None))
            seen += 1
    return batched, tuple(axes)


class _QuietCallbackExceptions(logging.Filter):
    """Drop JAX's log record (with traceback) for exceptions raised on purpose in callbacks."""

    def __init__(self, types):
        super().__init__()
        self.types = types

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, self.types)


def quiet_callback_exceptions(*types) -> None:
    """JAX logs every exception raised inside a host callback, with its traceback, before
    re-raising it; for ``types`` raised on purpose (``on_failure='raise'``) that is noise."""
    for name in ("jax._src.debugging", "jax._src.callback"):
        logging.getLogger(name).addFilter(_QuietCallbackExceptions(types))


def as_closed(jaxpr: Any) -> ClosedJaxpr:
    """A sub-jaxpr parameter as a ``ClosedJaxpr`` (some primitives store open jaxprs)."""
    if isinstance(jaxpr, ClosedJaxpr):
        return jaxpr
    return ClosedJaxpr(jaxpr, ())


def is_jaxpr(obj: Any) -> bool:
    return isinstance(obj, (Jaxpr, ClosedJaxpr))


def sub_jaxprs(eqn: JaxprEqn) -> list[ClosedJaxpr]:
    """The sub-jaxprs of an equation's parameters (call bodies, branches, loop bodies)."""
    out = []
    for value in eqn.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
            if is_jaxpr(sub):
                out.append(as_closed(sub))
    return out


# Primitives that call a jaxpr with their own operands and results (the parameter holding it
# is one of ``_CALL_PARAMS``), as opposed to primitives that merely hold one.
CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
                   "named_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _same_avals(inner, outer) -> bool:
    return len(inner) == len(outer) and all(
        tuple(a.aval.shape) == tuple(b.aval.shape) and a.aval.dtype == b.aval.dtype
        for a, b in zip(inner, outer))


def call_body(eqn: JaxprEqn) -> ClosedJaxpr | None:
    """The body of a call (``jit``, ``checkpoint``, custom derivative calls) whose inputs and
    outputs are the call's own, else None.  A primitive that merely holds a jaxpr — a
    reducer, a scatter's combiner, a per-shard body — is not a call."""
    if eqn.primitive.name not in CALLS:
        return None
    for key in _CALL_PARAMS:
        sub = eqn.params.get(key)
        if sub is not None and is_jaxpr(sub):
            closed = as_closed(sub)
            if _same_avals(closed.jaxpr.invars, eqn.invars) and \
                    _same_avals(closed.jaxpr.outvars, eqn.outvars):
                return closed
    return None


def eqn_source(eqn: JaxprEqn) -> str:
    """``file:line (function)`` of the user code that emitted ``eqn``, or ``""``."""
    try:
        return _source_info_util.summarize(eqn.source_info)
    except Exception:  # source info is best-effort decoration, never a reason to fail
        return ""


def eval_jaxpr(closed: ClosedJaxpr, *args: Any) -> list[Any]:
    return _jex_core.jaxpr_as_fun(closed)(*args)


def bind_eqn(eqn: JaxprEqn, values: list[Any]) -> list[Any]:
    """Evaluate one equation on ``values`` (its operands), as ``eval_jaxpr`` does; always a
    list of results."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


__all__ = [
    "CALLS",
    "call_body",
    "ClosedJaxpr",
    "DropVar",
    "Jaxpr",
    "JaxprEqn",
    "Literal",
    "Primitive",
    "Tracer",
    "Var",
    "as_closed",
    "eqn_source",
    "eval_jaxpr",
    "bind_eqn",
    "is_concrete",
    "is_jaxpr",
    "is_literal",
    "quiet_callback_exceptions",
    "under_differentiation",
    "sub_jaxprs",
    "literal_value",
]
