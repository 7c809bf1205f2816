"""Typed abstract syntax tree of a ``.rec`` file: frozen dataclasses with 1-based positions.

Every node has ``line`` and ``column`` (keyword-only, 1-based, of its first token; for a
binary operator, of the operator itself, so that errors point at it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

__all__ = [
    "Node", "Expr", "Number", "Name", "Primed", "UnaryOp", "BinOp", "Transpose", "Slice",
    "Index", "Keyword", "Call", "Stmt", "RecurrenceStmt", "DimItem", "DimStmt", "VarDecl",
    "DeclStmt", "Define", "Update", "Output", "Recurrence", "Program", "unparse", "walk",
]


@dataclass(frozen=True)
class Node:
    line: int = field(default=0, kw_only=True, compare=False)
    column: int = field(default=0, kw_only=True, compare=False)


# ----------------------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Number(Node):
    """A numeric literal; ``value`` is an ``int`` for integer literals, else a ``float``
    (``inf`` is ``Number(math.inf, "inf")``)."""
    value: Union[int, float]
    text: str


@dataclass(frozen=True)
class Name(Node):
    """A reference to a dim, param, input, state, local definition, or ``t``."""
    name: str


@dataclass(frozen=True)
class Primed(Node):
    """``h'`` inside an expression: the new state, allowed only in an ``output``'s value
    (updates are simultaneous)."""
    name: str


@dataclass(frozen=True)
class UnaryOp(Node):
    op: str          # "-" or "not"
    operand: "Expr"


@dataclass(frozen=True)
class BinOp(Node):
    op: str          # + - * / @ ** < <= > >= == != and or
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Transpose(Node):
    operand: "Expr"


@dataclass(frozen=True)
class Slice(Node):
    start: Optional["Expr"]
    stop: Optional["Expr"]
    step: Optional["Expr"]


@dataclass(frozen=True)
class Index(Node):
    operand: "Expr"
    subscripts: tuple  # of Expr | Slice


@dataclass(frozen=True)
class Keyword(Node):
    """``name = value`` among a call's arguments (e.g. ``axis=0``)."""
    name: str
    value: "Expr"


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple      # of Expr
    kwargs: tuple = ()   # of Keyword, after the positional arguments


Expr = Union[Number, Name, Primed, UnaryOp, BinOp, Transpose, Index, Call]


# ------------------------------------------------------------------------------ statements

@dataclass(frozen=True)
class RecurrenceStmt(Node):
    name: str


@dataclass(frozen=True)
class DimItem(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class DimStmt(Node):
    items: tuple     # of DimItem


@dataclass(frozen=True)
class VarDecl(Node):
    name: str
    shape: Optional[tuple]   # of Expr; None = scalar
    value: Optional[Expr]


@dataclass(frozen=True)
class DeclStmt(Node):
    kind: str        # "param", "input" or "state"
    items: tuple     # of VarDecl


@dataclass(frozen=True)
class Define(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Update(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Output(Node):
    """``output y = EXPR``: a per-step output."""
    name: str
    value: Expr


Stmt = Union[RecurrenceStmt, DimStmt, DeclStmt, Define, Update, Output]


@dataclass(frozen=True)
class Recurrence(Node):
    """One ``recurrence NAME`` block and the statements below it."""
    name: str
    statements: tuple   # of DimStmt | DeclStmt | Define | Update | Output


@dataclass(frozen=True)
class Program(Node):
    """A whole file: its recurrences in order, and the text it was parsed from."""
    recurrences: tuple  # of Recurrence
    text: str = field(default="", compare=False, repr=False)
    filename: Optional[str] = field(default=None, compare=False)

    @property
    def names(self) -> list:
        return [r.name for r in self.recurrences]


# --------------------------------------------------------------------------------- unparse

def walk(expr, subscripts: bool = True):
    """Every node of an expression, depth first (the last child first), ``expr`` included;
    with ``subscripts=False``, not what stands inside ``[...]``."""
    stack = [expr]
    while stack:
        e = stack.pop()
        if e is None:
            continue
        yield e
        if isinstance(e, (UnaryOp, Transpose)):
            stack.append(e.operand)
        elif isinstance(e, BinOp):
            stack += [e.left, e.right]
        elif isinstance(e, Index):
            stack.append(e.operand)
            if subscripts:
                stack += list(e.subscripts)
        elif isinstance(e, Slice):
            stack += [e.start, e.stop, e.step]
        elif isinstance(e, Call):
            stack += list(e.args) + [k.value for k in e.kwargs]


_PREC = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "@": 6, "neg": 7, "**": 8}
_ATOM = 9


def unparse(expr, limit: Optional[int] = None) -> str:
    """The ``.rec`` text of an expression (normalised spacing, minimal parentheses); cut
    to ``limit`` characters with ``...`` when given."""
    text = _unparse(expr)[0]
    if limit is not None and len(text) > limit:
        text = text[:max(0, limit - 3)] + "..."
    return text


def _wrap(part, need):
    text, prec = part
    return f"({text})" if prec < need else text


def _unparse(e) -> tuple:
    if isinstance(e, Number):
        return e.text, _ATOM
    if isinstance(e, Name):
        return e.name, _ATOM
    if isinstance(e, Primed):
        return f"{e.name}'", _ATOM
    if isinstance(e, UnaryOp):
        if e.op == "not":
            return f"not {_wrap(_unparse(e.operand), 3)}", 3
        return f"-{_wrap(_unparse(e.operand), 7)}", 7
    if isinstance(e, BinOp):
        p = _PREC[e.op]
        if e.op == "**":
            left, right = _wrap(_unparse(e.left), _ATOM), _wrap(_unparse(e.right), 7)
        elif p == 4:
            left, right = _wrap(_unparse(e.left), 5), _wrap(_unparse(e.right), 5)
        else:
            left, right = _wrap(_unparse(e.left), p), _wrap(_unparse(e.right), p + 1)
        return f"{left} {e.op} {right}", p
    if isinstance(e, Transpose):
        return f"{_wrap(_unparse(e.operand), _ATOM)}.T", _ATOM
    if isinstance(e, Index):
        subs = ", ".join(_unparse_sub(s) for s in e.subscripts)
        return f"{_wrap(_unparse(e.operand), _ATOM)}[{subs}]", _ATOM
    if isinstance(e, Call):
        args = [_unparse(a)[0] for a in e.args]
        args += [f"{k.name}={_unparse(k.value)[0]}" for k in e.kwargs]
        return f"{e.func}({', '.join(args)})", _ATOM
    raise TypeError(f"cannot unparse {type(e).__name__}")  # pragma: no cover


def _unparse_sub(s) -> str:
    if not isinstance(s, Slice):
        return _unparse(s)[0]
    parts = ["" if x is None else _unparse(x)[0] for x in (s.start, s.stop)]
    text = ":".join(parts)
    return text if s.step is None else f"{text}:{_unparse(s.step)[0]}"
