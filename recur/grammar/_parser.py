"""Text -> AST: the lark LALR parser of ``recur.lark`` and syntax errors in words."""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Optional

import lark
from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from . import _ast as A
from ._diag import syntax_error

__all__ = ["parse", "RESERVED", "MAX_DEPTH", "MAX_BRACKETS"]

RESERVED = frozenset("recurrence dim param input state output and or not inf t".split())
_KEYWORDS = frozenset("recurrence dim param input state output and or not".split())
MAX_DEPTH = 100        # deepest expression accepted (keeps every later pass far from limits)
MAX_BRACKETS = 60      # deepest bracket nesting accepted


class _NodeError(Exception):
    def __init__(self, message, line, column):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class _BracketNewlines(lark.lark.PostLex):
    """Drops newlines inside open ``(``/``[`` so that lines continue inside brackets."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
                if depth > MAX_BRACKETS:
                    raise _NodeError(f"brackets nested too deeply (more than {MAX_BRACKETS})",
                                     tok.line, tok.column)
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth > 0:
                continue
            yield tok


def _pos(x):
    return {"line": getattr(x, "line", 0) or 0, "column": getattr(x, "column", 0) or 0}


def _depth(node) -> int:
    return getattr(node, "_depth", 1)


def _mk(cls, *args, pos, children=()):
    node = cls(*args, **pos)
    d = 1 + max((_depth(c) for c in children if c is not None), default=0)
    if d > MAX_DEPTH:
        raise _NodeError(f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                         pos["line"], pos["column"])
    object.__setattr__(node, "_depth", d)
    return node


def _check_name(tok: Token) -> str:
    if str(tok) in _KEYWORDS:                      # cannot happen with the basic lexer
        raise _NodeError(f"'{tok}' is a reserved word", tok.line, tok.column)
    return str(tok)


class _Build(Transformer):
    """Inline LALR callbacks: build the AST while parsing (no recursion over a tree)."""

    # statements ------------------------------------------------------------------------
    def start(self, c):
        return [x for x in c if not isinstance(x, Token)]

    def recurrence_stmt(self, c):
        return A.RecurrenceStmt(_check_name(c[1]), **_pos(c[0]))

    def dim_item(self, c):
        return A.DimItem(_check_name(c[0]), c[2], **_pos(c[0]))

    def dim_stmt(self, c):
        return A.DimStmt(tuple(x for x in c if isinstance(x, A.DimItem)), **_pos(c[0]))

    def _decl_stmt(self, kind, c):
        return A.DeclStmt(kind, tuple(x for x in c if isinstance(x, A.VarDecl)), **_pos(c[0]))

    def param_stmt(self, c):
        return self._decl_stmt("param", c)

    def input_stmt(self, c):
        return self._decl_stmt("input", c)

    def state_stmt(self, c):
        return self._decl_stmt("state", c)

    def shape(self, c):
        return tuple(x for x in c if x is not None and not isinstance(x, Token))

    def decl(self, c):
        name, shape = c[0], c[1]
        value = c[3] if len(c) > 3 else None
        return A.VarDecl(_check_name(name), shape, value, **_pos(name))

    def define_stmt(self, c):
        return A.Define(_check_name(c[0]), c[2], **_pos(c[0]))

    def update_stmt(self, c):
        return A.Update(_check_name(c[0]), c[3], **_pos(c[0]))

    def output_stmt(self, c):
        return A.Output(_check_name(c[1]), c[3], **_pos(c[1]))

    # expressions -----------------------------------------------------------------------
    def number(self, c):
        text = str(c[0])
        if text.isdigit():
            value = int(text)
        else:
            try:
                value = float(text)
            except (OverflowError, ValueError):
                value = math.inf
        return _mk(A.Number, value, text, pos=_pos(c[0]))

    def name(self, c):
        tok = c[0]
        if str(tok) == "inf":
            return _mk(A.Number, math.inf, "inf", pos=_pos(tok))
        return _mk(A.Name, _check_name(tok), pos=_pos(tok))

    def primed(self, c):
        return _mk(A.Primed, str(c[0]), pos=_pos(c[0]))

    def kwarg(self, c):
        return _mk(A.Keyword, _check_name(c[0]), c[2], pos=_pos(c[0]), children=(c[2],))

    def call(self, c):
        items = [x for x in c[2:-1] if x is not None and not isinstance(x, Token)]
        args = tuple(x for x in items if not isinstance(x, A.Keyword))
        kwargs = tuple(x for x in items if isinstance(x, A.Keyword))
        seen_keyword = False
        for x in items:
            if isinstance(x, A.Keyword):
                seen_keyword = True
            elif seen_keyword:
                raise _NodeError("a positional argument cannot follow a keyword argument",
                                 x.line, x.column)
        return _mk(A.Call, str(c[0]), args, kwargs, pos=_pos(c[0]), children=items)

    def paren(self, c):
        return c[1]

    def unop(self, c):
        op = "not" if c[0].type == "NOT" else "-"
        return _mk(A.UnaryOp, op, c[1], pos=_pos(c[0]), children=(c[1],))

    def binop(self, c):
        left, op, right = c
        return _mk(A.BinOp, str(op), left, right, pos=_pos(op), children=(left, right))

    def transpose(self, c):
        return _mk(A.Transpose, c[0], pos=_pos(c[1]), children=(c[0],))

    def subscripts(self, c):
        return tuple(x for x in c if not isinstance(x, Token))

    def slice(self, c):
        # children: [start] COLON [stop] [COLON [step]]  (placeholders are None)
        start = c[0]
        colon = c[1]
        stop = c[2] if len(c) > 2 else None
        step = c[4] if len(c) > 4 else None
        return _mk(A.Slice, start, stop, step, pos=_pos(start if start is not None else colon),
                   children=(start, stop, step))

    def index(self, c):
        operand, lsqb, subs = c[0], c[1], c[2]
        return _mk(A.Index, operand, subs, pos=_pos(lsqb), children=(operand,) + subs)


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files(__package__).joinpath("recur.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="basic", postlex=_BracketNewlines(),
                transformer=_Build(), keep_all_tokens=True, maybe_placeholders=True,
                propagate_positions=True)


# ------------------------------------------------------------------------ errors in words

_EXPR_START = {"NAME", "NUMBER", "LPAR", "MINUS", "NOT"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AT", "POW", "COMP", "AND", "OR",
              "TRANSPOSE", "LSQB"}
_STMT_START = {"RECURRENCE", "DIM", "PARAM", "INPUT", "STATE", "OUTPUT"}
_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "_NL": "end of line", "$END": "end of file",
    "TRANSPOSE": "'.T'", "COMP": "a comparison", "PRIME": '"\'"',
}


@functools.lru_cache(maxsize=None)
def _terminal_word(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        pattern = _lark().get_terminal(name).pattern
        if pattern.type == "str":
            return f"'{pattern.value}'"
    except (KeyError, AttributeError):
        pass
    return name.lower()


def _expected_words(expected) -> str:
    exp = set(expected)
    words = []
    if _STMT_START <= exp:
        exp -= _STMT_START | {"NAME"}
        words.append("a statement")
    if {"NAME", "NUMBER", "LPAR"} <= exp:
        exp -= _EXPR_START
        words.append("an expression")
    if {"PLUS", "STAR", "AT"} <= exp:
        exp -= _OPERATORS
        words.append("an operator")
    order = ["EQUAL", "COMMA", "PRIME", "LSQB", "RSQB", "RPAR", "COLON", "NAME", "NUMBER",
             "_NL", "$END"]
    rest = sorted(exp, key=lambda n: (order.index(n) if n in order else len(order), n))
    words += [_terminal_word(n) for n in rest]
    words = list(dict.fromkeys(words))
    if not words:
        return "something else"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _found_words(tok) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    s = str(tok)
    if "'" in s:
        return '"' + s + '"'
    hint = f" ('{s}' is a reserved word)" if s in _KEYWORDS else ""
    return f"'{s}'{hint}"


def _end_position(text: str):
    lines = text.split("\n")
    if lines and lines[-1] == "" and len(lines) > 1:
        lines = lines[:-1]
    return len(lines), len(lines[-1]) + 1


def parse(text, filename: Optional[str] = None) -> A.Program:
    """Parse ``.rec`` text into a :class:`~recur.grammar._ast.Program`.

    Raises :class:`recur.DSLSyntaxError` (with ``.line``/``.column``) when the text does not
    parse, and nothing else.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise syntax_error(f"the file is not valid UTF-8 ({e.reason})", None, filename)
    if not isinstance(text, str):
        raise syntax_error(f"expected .rec text (str), got {type(text).__name__}", None, filename)
    src = text if text.endswith("\n") else text + "\n"
    try:
        stmts = _lark().parse(src)
    except _NodeError as e:
        raise syntax_error(e.message, text, filename, e.line, e.column) from None
    except UnexpectedCharacters as e:
        msg = _unexpected_character(text, e.pos_in_stream)
        raise syntax_error(msg, text, filename, e.line, e.column) from None
    except UnexpectedToken as e:
        msg, line, col = _unexpected_token(text, e)
        raise syntax_error(msg, text, filename, line, col) from None
    except (UnexpectedInput, LarkError) as e:
        line, col = getattr(e, "line", None), getattr(e, "column", None)
        raise syntax_error(f"cannot parse: {e.__class__.__name__}", text, filename,
                           line if isinstance(line, int) and line > 0 else None,
                           col if isinstance(col, int) and col > 0 else None) from None
    except RecursionError:
        raise syntax_error("the text is nested too deeply", text, filename) from None
    return A.Program(_recurrences(stmts, text, filename), text=text, filename=filename,
                     line=1, column=1)


def _unexpected_character(text: str, pos: int) -> str:
    ch = text[pos] if 0 <= pos < len(text) else ""
    if ch in "'\"":
        return f"unexpected {ch!r}: only a state update may be written NAME' = ..."
    if not ch.isascii():
        return (f"unexpected character {ch!r} (U+{ord(ch):04X}): names use ASCII letters, "
                "digits and '_'")
    if not ch.isprintable():
        return f"unexpected character {ch!r}"
    if ch == ".":
        return "unexpected character '.' (a transpose is written x.T)"
    return f"unexpected character '{ch}'"


def _unexpected_token(text: str, e: UnexpectedToken):
    """``(message, line, column)`` for a token the grammar does not expect there."""
    tok = e.token
    if tok.type == "$END":
        line, col = _end_position(text)
    else:
        line, col = tok.line, tok.column
    expected = set(e.expected)
    try:
        accepted = e.interactive_parser.accepts()
        if accepted:
            expected = set(accepted)
    except Exception:  # noqa: BLE001 - the plain expected set is a fine fallback
        pass
    if tok.type == "COMP" and "COMP" not in expected:
        msg = ("comparisons do not chain: write (a < b) and (b < c), "
               f"found {_found_words(tok)}")
    else:
        msg = f"expected {_expected_words(expected)}, found {_found_words(tok)}"
    return msg, line, col


def _recurrences(stmts, text, filename) -> tuple:
    """The statements grouped by the ``recurrence NAME`` line that opens each group."""
    recurrences = []
    current = None
    body: list = []
    for st in stmts:
        if isinstance(st, A.RecurrenceStmt):
            if current is not None:
                recurrences.append(A.Recurrence(current.name, tuple(body), line=current.line,
                                                column=current.column))
            current, body = st, []
        elif current is None:
            raise syntax_error("expected 'recurrence NAME' before the first statement",
                               text, filename, st.line, st.column)
        else:
            body.append(st)
    if current is not None:
        recurrences.append(A.Recurrence(current.name, tuple(body), line=current.line,
                                        column=current.column))
    return tuple(recurrences)
