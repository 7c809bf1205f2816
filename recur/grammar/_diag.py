"""Error messages for ``.rec`` files: file name, line, column, the line and a caret."""

from __future__ import annotations

from typing import Optional

from .._errors import DSLError, DSLSyntaxError

__all__ = ["format_message", "dsl_error", "syntax_error"]


def _source_line(text: str, line: int) -> Optional[str]:
    lines = text.split("\n")
    if 1 <= line <= len(lines):
        return lines[line - 1].rstrip("\r")
    return None


def format_message(message: str, text: Optional[str], filename: Optional[str],
                   line: Optional[int], column: Optional[int]) -> str:
    """``file, line L, column C: message`` followed by the source line and a caret."""
    where = filename or "<string>"
    if line is None:
        return f"{where}: {message}"
    head = f"{where}, line {line}" + (f", column {column}" if column else "") + f": {message}"
    src = _source_line(text, line) if text is not None else None
    if src is None:
        return head
    if len(src) > 200:                       # keep very long lines readable around the spot
        lo = max(0, (column or 1) - 100)
        src_shown, col = src[lo:lo + 200], (column or 1) - lo
    else:
        src_shown, col = src, column or 1
    col = max(1, min(col, len(src_shown) + 1))
    prefix = "".join("\t" if ch == "\t" else " " for ch in src_shown[:col - 1])
    return f"{head}\n    {src_shown}\n    {prefix}^"


def dsl_error(message: str, text: Optional[str] = None, filename: Optional[str] = None,
              line: Optional[int] = None, column: Optional[int] = None, cls=DSLError):
    """Build (not raise) a ``DSLError`` whose message shows the spot."""
    line = line or None
    column = column or None
    return cls(format_message(message, text, filename, line, column),
               line=line, column=column, filename=filename)


def syntax_error(message, text=None, filename=None, line=None, column=None):
    return dsl_error(message, text, filename, line, column, cls=DSLSyntaxError)
