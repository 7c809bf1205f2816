"""A readable, DSL-like rendering of the sympy expressions of :mod:`._sympy_expr`.

Opaque functions print as the DSL writes them (``a@b``, ``a.T``, ``a[0, 1:]``,
``(a < b)``, ``max(a, 0)``, ``eye(3)``); huge expressions print as their head only.
"""

from __future__ import annotations

import sympy as sp

from ._sympy_expr import CONSTANT_OPS, REDUCE_OPS, data_args, fname, meta_of, tree_size

__all__ = ["dsl_str", "subs_str"]


class _DSLPrinter(sp.printing.str.StrPrinter):
    def __init__(self, subscripts):
        super().__init__({"order": "none"})
        self.subscripts = subscripts

    def _atom(self, a):
        s = self._print(a)
        if isinstance(a, sp.Symbol) or (fname(a) and fname(a) not in ("matmul",)):
            return s
        return f"({s})"

    def _print_Function(self, e):
        name = fname(e)
        if name is None:
            return super()._print_Function(e)
        args = [self._print(a) for a in data_args(e)]
        infix = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=",
                 "and_": "and", "or_": "or"}
        if name == "matmul":
            return f"{self.parenthesize(data_args(e)[0], 60)}@{self.parenthesize(data_args(e)[1], 60)}"
        if name == "transpose":
            return f"{self._atom(data_args(e)[0])}.T"
        if name == "index":
            _, _, k = meta_of(e)
            return f"{self._atom(data_args(e)[0])}[{subs_str(self.subscripts[k])}]"
        if name in infix:
            return f"({args[0]} {infix[name]} {args[1]})"
        if name == "not_":
            return f"(not {args[0]})"
        if name in REDUCE_OPS:
            _, _, ax = meta_of(e)
            shown = {"max_over": "max", "min_over": "min"}.get(name, name)
            axis = "" if ax < 0 else (f", axis={ax}" if shown != name else f", {ax}")
            return f"{shown}({args[0]}{axis})"
        if name in CONSTANT_OPS:
            _, out, _ = meta_of(e)
            return f"{name}({out[0] if name == 'eye' else ', '.join(map(str, out))})"
        return f"{name}({', '.join(args)})"


def subs_str(spec):
    """Checked subscripts (ints and slices) as written in the DSL and in Python: ``0, 1:3``."""
    parts = []
    for s in spec:
        if isinstance(s, slice):
            p = f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"
            if s.step is not None:
                p += f":{s.step}"
            parts.append(p)
        else:
            parts.append(str(s))
    return ", ".join(parts)


def dsl_str(e, subscripts=(), limit: int = 160) -> str:
    """A readable, DSL-like rendering of a sympy expression, cut at ``limit`` characters."""
    if tree_size(e, 4000) > 4000:
        name = fname(e)
        return f"{name}(...)" if name else "(a very large expression)"
    s = _DSLPrinter(subscripts).doprint(e)
    return s if len(s) <= limit else s[:limit - 3] + "..."
