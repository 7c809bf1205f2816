"""The source map: from a location in the generated code back to the ``.rec`` file.

Each generated line that evaluates a ``.rec`` expression is recorded with the statement it
evaluates and the column span of every operation on it, so that a location in the
generated code (what JAX's source info gives: line, start column, primitive) leads back to
the ``.rec`` line and column. Operations that start at the same column (``tanh(h) * h``:
the product and the ``tanh``) are told apart by the JAX primitives each may emit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import _ast as A

__all__ = ["SourceMap"]

# JAX primitives an operation of the DSL may emit, to tell apart operations that start at
# the same generated column (``tanh(h) * h``: the product and the tanh)
_OP_PRIMITIVES = {
    "+": {"add"}, "-": {"sub", "neg"}, "*": {"mul"}, "/": {"div"}, "@": {"dot_general"},
    "**": {"pow", "integer_pow", "sqrt", "square", "rsqrt", "exp", "log"},
    "<": {"lt"}, "<=": {"le"}, ">": {"gt"}, ">=": {"ge"}, "==": {"eq"}, "!=": {"ne"},
    "and": {"and"}, "or": {"or"}, "not": {"not"},
}
_CALL_PRIMITIVES = {
    "sigmoid": {"logistic"}, "softplus": {"logaddexp", "log1p", "exp", "max"},
    "relu": {"max", "custom_jvp_call"}, "max": {"max", "reduce_max"},
    "min": {"min", "reduce_min"}, "clip": {"clamp", "max", "min"}, "where": {"select_n"},
    "sum": {"reduce_sum"}, "mean": {"reduce_sum", "div"},
    "logsumexp": {"reduce_max", "reduce_sum", "exp", "log", "sub", "stop_gradient"},
    "inv": {"solve", "lu", "triangular_solve", "custom_linear_solve", "lu_pivots_to_permutation"},
    "solve": {"lu", "triangular_solve", "custom_linear_solve", "lu_pivots_to_permutation"},
    "cholesky": {"cholesky"}, "logdet": {"lu", "slogdet", "log", "abs", "reduce_sum"},
    "dot": {"dot_general"}, "outer": {"mul", "dot_general"},
}


def _emits(node, primitive: str) -> bool:
    if isinstance(node, (A.BinOp, A.UnaryOp)):
        return primitive in _OP_PRIMITIVES.get(node.op, ())
    if isinstance(node, A.Call):
        return primitive == node.func or primitive in _CALL_PRIMITIVES.get(node.func, ())
    if isinstance(node, A.Transpose):
        return primitive == "transpose"
    if isinstance(node, A.Index):
        return primitive in ("slice", "gather", "squeeze", "dynamic_slice", "reshape", "rev")
    return False


@dataclass(frozen=True)
class SourceMap:
    """Generated line (1-based) -> ``(statement, spans)``: the ``.rec`` statement the line
    evaluates and ``(start, end, AST node, origin)`` of its operations (0-based columns;
    ``origin``: the operation itself breaks affinity in the states)."""
    lines: dict

    def locate(self, line: int, column: Optional[int] = None,
               primitive: Optional[str] = None):
        """The ``.rec`` node behind a generated location: among the operations starting at
        ``column`` (JAX's start column, 0-based; nested operations may share it), those
        that can emit ``primitive``, preferring one that breaks affinity, innermost first;
        else the statement. ``None`` when the line does not evaluate ``.rec`` code."""
        entry = self.lines.get(line)
        if entry is None:
            return None
        stmt, spans = entry
        if column is None:
            return stmt
        here = [s for s in spans if s[0] == column]
        if primitive:
            here = [s for s in here if _emits(s[2], primitive)] or here
        here.sort(key=lambda s: (not s[3], s[1] - s[0]))
        return here[0][2] if here else stmt
