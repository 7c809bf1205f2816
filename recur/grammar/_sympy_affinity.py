"""Affinity of sympy expressions, for the classification's hints only.

The same structural rules as :mod:`._structure`, on sympy's automatic forms (and, for
rational expressions, on ``sympy.cancel``'s): sums keep affinity, a product keeps it when
at most one factor reads a state, a power of a state breaks it; ``.T``, indexing, ``sum``
and ``mean`` are linear, ``matmul``/``dot``/``outer`` bilinear, ``solve(A, b)`` linear in
``b`` for a state-free ``A``, ``where(c, a, b)`` affine for a state-free ``c``; any other
function of a state breaks it. When the simplified update is of a simpler kind than the
update as written, :func:`simplification_hint` says so: the code runs the formula as
written, so the simpler plan needs the simpler form written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import sympy as sp

from ._structure import classify
from ._sympy_expr import (BILINEAR_OPS, ELEMENTWISE_OPS, LINEAR_OPS, data_args, fname,
                          tree_size)
from ._sympy_print import dsl_str

__all__ = ["Info", "analyze", "simplification_hint"]


@dataclass(frozen=True)
class Info:
    deps: frozenset          # states read
    lin: bool                # affine in the states jointly
    elem: bool               # states read only through elementwise operations
    offender: Optional[object] = None   # first term that breaks affinity
    rational: bool = True    # affinity is broken only by products / powers / quotients


_CONST = Info(frozenset(), True, True)


def analyze(expr, states: frozenset, memo: Optional[dict] = None) -> Info:
    """Structural affinity / elementwise analysis of a sympy expression (memoised, DAG-linear)."""
    memo = {} if memo is None else memo
    stack = [(expr, False)]
    while stack:
        e, ready = stack.pop()
        if e in memo:
            continue
        kids = _kids(e)
        if not ready:
            stack.append((e, True))
            stack.extend((k, False) for k in kids if k not in memo)
            continue
        memo[e] = _combine(e, [memo[k] for k in kids], states)
    return memo[expr]


def _kids(e):
    if isinstance(e, (sp.Add, sp.Mul, sp.Pow)):
        return list(e.args)
    if fname(e) is not None:
        return list(data_args(e))
    return []


def _combine(e, infos, states) -> Info:
    if isinstance(e, sp.Symbol):
        return Info(frozenset([e.name]), True, True) if e.name in states else _CONST
    if not infos:
        return _CONST
    deps = frozenset().union(*[i.deps for i in infos])
    elem_all = all(i.elem for i in infos)
    child_bad = next((i for i in infos if not i.lin), None)
    rational = all(i.rational for i in infos)
    if not deps:
        return _CONST
    if isinstance(e, sp.Add):
        lin = child_bad is None
        return Info(deps, lin, elem_all, None if lin else child_bad.offender, rational)
    if isinstance(e, (sp.Mul, sp.Pow)):
        if isinstance(e, sp.Mul):
            lin = child_bad is None and sum(1 for i in infos if i.deps) <= 1
        else:
            lin = False
        off = None if lin else (child_bad.offender if child_bad is not None else e)
        return Info(deps, lin, elem_all, off, rational)
    name = fname(e)
    if name in ELEMENTWISE_OPS:
        return Info(deps, False, elem_all, child_bad.offender if child_bad else e, False)
    if name == "where":
        c, a, b = infos
        lin = not c.deps and a.lin and b.lin
        off = None if lin else (child_bad.offender if child_bad else e)
        return Info(deps, lin, elem_all, off, rational and not c.deps)
    if name in LINEAR_OPS:
        (a,) = infos
        return Info(deps, a.lin, False, a.offender, rational)
    if name in BILINEAR_OPS:
        a, b = infos
        lin = a.lin and b.lin and not (a.deps and b.deps)
        off = None if lin else (child_bad.offender if child_bad else e)
        return Info(deps, lin, False, off, rational)
    if name == "solve":
        a, b = infos
        lin = not a.deps and b.lin
        off = None if lin else (child_bad.offender if child_bad else e)
        return Info(deps, lin, False, off, rational and not a.deps)
    # matrix functions and anything unknown: nonlinear in whatever they read
    return Info(deps, False, False, child_bad.offender if child_bad else e, False)


def _max_int_exponent(e) -> int:
    best, stack, seen = 0, [e], set()
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        if isinstance(x, sp.Pow) and x.exp.is_Number:
            try:
                best = max(best, abs(int(x.exp)) if x.exp.is_Integer else 0)
            except (TypeError, ValueError):
                pass
        stack.extend(x.args)
    return best


def _try_cancel(e):
    if tree_size(e, 400) > 400 or _max_int_exponent(e) > 12:
        return None
    try:
        return sp.cancel(e)
    except Exception:  # noqa: BLE001 - simplification is best effort
        return None


_RANK = {"affine": 0, "diagonal": 1, "nonlinear": 2}


def simplification_hint(state: str, kind: str, expr, stage, subscripts) -> str:
    """A note when sympy finds the update, simplified, of a simpler kind than as written."""
    if kind == "affine":
        return ""
    states = frozenset(stage)
    info = analyze(expr, states)
    if not info.lin and info.rational:
        cancelled = _try_cancel(expr)
        if cancelled is not None and cancelled != expr:
            info2 = analyze(cancelled, states)
            if _RANK[classify(info2, state)] < _RANK[classify(info, state)]:
                expr, info = cancelled, info2
    simpler = classify(info, state)
    if _RANK[simpler] >= _RANK[kind]:
        return ""
    return (f"; sympy simplifies {state}' to {dsl_str(expr, subscripts, 80)}, which is "
            f"{simpler}, but the formula is evaluated as written (the two differ where a "
            f"cancelled factor is zero or a term is not finite): write the simpler form for "
            f"the {simpler} plan")
