"""Typed abstract syntax tree of a ``.rec`` file: frozen dataclasses with 1-based positions.

Every node has ``line`` and ``column`` (keyword-only, 1-based, of its first token; for a
binary operator, of the operator itself, so that errors point at it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

__all__ = [
    "Node", "Expr", "Number", "Name", "Primed", "UnaryOp", "BinOp", "Transpose", "Slice",
    "Index", "Call", "Stmt", "RecurrenceStmt", "DimItem", "DimStmt", "VarDecl", "DeclStmt",
    "Define", "Update", "Recurrence", "Program",
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
    """``h'`` inside an expression: always an error (updates are simultaneous)."""
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
class Call(Node):
    func: str
    args: tuple      # of Expr


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


Stmt = Union[RecurrenceStmt, DimStmt, DeclStmt, Define, Update]


@dataclass(frozen=True)
class Recurrence(Node):
    """One ``recurrence NAME`` block and the statements below it."""
    name: str
    statements: tuple   # of DimStmt | DeclStmt | Define | Update


@dataclass(frozen=True)
class Program(Node):
    """A whole file: its recurrences in order, and the text it was parsed from."""
    recurrences: tuple  # of Recurrence
    text: str = field(default="", compare=False, repr=False)
    filename: Optional[str] = field(default=None, compare=False)

    @property
    def names(self) -> list:
        return [r.name for r in self.recurrences]
