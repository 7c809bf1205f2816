"""Parsing: statements, operators and precedence, syntax errors in words."""

import math

import pytest

from recur._errors import DSLError, DSLSyntaxError
from recur.grammar import parse
from recur.grammar import ast as A


def expr(src):
    prog = parse(f"recurrence r\nstate h = 0\nh' = {src}\n")
    return prog.recurrences[0].statements[-1].value


def show(e):
    """Fully parenthesised rendering of an AST expression."""
    if isinstance(e, A.Number):
        return e.text
    if isinstance(e, A.Name):
        return e.name
    if isinstance(e, A.UnaryOp):
        return f"({e.op} {show(e.operand)})" if e.op == "not" else f"(-{show(e.operand)})"
    if isinstance(e, A.BinOp):
        return f"({show(e.left)} {e.op} {show(e.right)})"
    if isinstance(e, A.Transpose):
        return f"{show(e.operand)}.T"
    if isinstance(e, A.Index):
        subs = []
        for s in e.subscripts:
            if isinstance(s, A.Slice):
                parts = ["" if x is None else show(x) for x in (s.start, s.stop)]
                if s.step is not None:
                    parts.append(show(s.step))
                subs.append(":".join(parts))
            else:
                subs.append(show(s))
        return f"{show(e.operand)}[{', '.join(subs)}]"
    if isinstance(e, A.Primed):
        return f"{e.name}'"
    if isinstance(e, A.Call):
        args = [show(a) for a in e.args] + [f"{k.name}={show(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(args)})"
    raise TypeError(e)


@pytest.mark.parametrize("src, tree", [
    ("-x**2", "(-(x ** 2))"),
    ("x ** -1", "(x ** (-1))"),
    ("a ** b ** c", "(a ** (b ** c))"),
    ("-a ** -b ** c", "(-(a ** (-(b ** c))))"),
    ("a + b * c", "(a + (b * c))"),
    ("a - b - c", "((a - b) - c)"),
    ("a / b * c", "((a / b) * c)"),
    ("A @ B @ x", "((A @ B) @ x)"),
    ("a * B @ x", "((a * B) @ x)"),
    ("-a * b", "((-a) * b)"),
    ("- -a", "(-(-a))"),
    ("(a + b) * c", "((a + b) * c)"),
    ("W.T @ x", "(W.T @ x)"),
    ("x[0] ** 2", "(x[0] ** 2)"),
    ("M[0, :]", "M[0, :]"),
    ("x[1:3].T", "x[1:3].T"),
    ("x[::2]", "x[:2]".replace(":", "::")),
    ("x[-1]", "x[(-1)]"),
    ("M[1:, :2]", "M[1:, :2]"),
    ("f(a, b + c)", "f(a, (b + c))"),
    ("where(a < b and not c >= d or e == f, x, y)",
     "where((((a < b) and (not (c >= d))) or (e == f)), x, y)"),
    ("where(not a < b + 1, x, y)", "where((not (a < (b + 1))), x, y)"),
    ("where(a != b, x, y)", "where((a != b), x, y)"),
    ("where(a <= b, x, y)", "where((a <= b), x, y)"),
    ("where(a > b, x, y)", "where((a > b), x, y)"),
    ("1e-3 + .5 + 2. + 3", "(((1e-3 + .5) + 2.) + 3)"),
    ("max(x, axis=0) + 1", "(max(x, axis=0) + 1)"),
    ("logsumexp(a + b, axis=N - 1)", "logsumexp((a + b), axis=(N - 1))"),
    ("f(a, b, k=c == d)", "f(a, b, k=(c == d))"),
])
def test_precedence(src, tree):
    assert show(expr(src)) == tree


def test_inf_and_numbers():
    e = expr("inf")
    assert isinstance(e, A.Number) and e.value == math.inf
    assert expr("3").value == 3 and isinstance(expr("3").value, int)
    assert expr("0.5").value == 0.5
    assert expr("1e-3").value == 1e-3


def test_statements_and_positions():
    text = ("# comment\n\nrecurrence one  # trailing\n"
            "dim N = 4, M = 2\n"
            "param W[N, N], b[N] = 0, r = 3.7\n"
            "input x[M], u\n"
            "state h[N] = 0, P[N, N] = eye(N)\n"
            "z = (W @ h +\n    b)\n"
            "h' = z\nP' = P\n"
            "recurrence two\nstate s = 1\ns' = s\n")
    prog = parse(text, "f.rec")
    assert prog.names == ["one", "two"]
    one = prog.recurrences[0]
    kinds = [type(s).__name__ for s in one.statements]
    assert kinds == ["DimStmt", "DeclStmt", "DeclStmt", "DeclStmt", "Define", "Update", "Update"]
    dim = one.statements[0]
    assert [i.name for i in dim.items] == ["N", "M"]
    param = one.statements[1]
    assert param.kind == "param" and [i.name for i in param.items] == ["W", "b", "r"]
    assert param.items[2].shape is None and param.items[2].value.value == 3.7
    assert one.statements[2].items[1].shape is None
    d = one.statements[4]
    assert d.name == "z" and (d.line, d.column) == (8, 1)
    upd = one.statements[5]
    assert upd.name == "h" and (upd.line, upd.column) == (10, 1)
    plus = d.value
    assert plus.op == "+" and (plus.line, plus.column) == (8, 12)


def test_output_statements_and_keywords():
    text = ("recurrence r\nstate h[2] = 0\nh' = h\n"
            "output y = sum(h', axis=0) + h[0]\noutput z = max(\n  h,\n  axis=0)\n")
    st = parse(text).recurrences[0].statements
    assert [type(s).__name__ for s in st] == ["DeclStmt", "Update", "Output", "Output"]
    y = st[2]
    assert y.name == "y" and (y.line, y.column) == (4, 8)
    assert show(y.value) == "(sum(h', axis=0) + h[0])"
    call = y.value.left
    assert call.kwargs[0].name == "axis" and (call.kwargs[0].line, call.kwargs[0].column) == (4, 20)
    assert A.unparse(y.value) == "sum(h', axis=0) + h[0]"
    assert show(st[3].value) == "max(h, axis=0)"


@pytest.mark.parametrize("src, back", [
    ("-x**2", "-x ** 2"), ("(-x)**2", "(-x) ** 2"), ("a - (b - c)", "a - (b - c)"),
    ("(a - b) - c", "a - b - c"), ("a ** b ** c", "a ** b ** c"),
    ("(a ** b) ** c", "(a ** b) ** c"),
    ("x ** -1", "x ** -1"), ("(a + b).T @ M[0, 1:]", "(a + b).T @ M[0, 1:]"),
    ("where(not a < b, x, y)", "where(not a < b, x, y)"), ("max(x, axis=1)", "max(x, axis=1)"),
])
def test_unparse_round_trips(src, back):
    assert A.unparse(expr(src)) == back
    assert show(expr(A.unparse(expr(src)))) == show(expr(src))


def test_lines_continue_inside_brackets_only():
    parse("recurrence r\nstate h = 0\nh' = max(h,\n  # comment inside\n\n 1)\n")
    parse("recurrence r\nstate h[2] = 0\nh' = h[\n0\n]\n")
    with pytest.raises(DSLSyntaxError) as e:
        parse("recurrence r\nstate h = 0\nh' = h +\n 1\n")
    assert e.value.line == 3


def test_empty_and_comments_only():
    assert parse("").recurrences == ()
    assert parse("# nothing\n\n   \n").recurrences == ()


def test_crlf_and_tabs():
    prog = parse("recurrence r\r\nstate h = 0\r\nh' =\th + 1\r\n")
    assert prog.recurrences[0].statements[-1].name == "h"


def err(text, filename=None):
    with pytest.raises(DSLSyntaxError) as e:
        parse(text, filename)
    return e.value


@pytest.mark.parametrize("text, line, column, words", [
    ("recurrence a\nh' = * h", 2, 6, "expected an expression"),
    ("recurrence a\nparam W[D, D] b", 2, 15, "expected '=', ',' or end of line"),
    ("recurrence a\nx = 1 2", 2, 7, "expected an operator or end of line"),
    ("recurrence a\nx = (1 +\n", 2, 9, "expected an expression, found end of file"),
    ("recurrence a\nx = f(axis=0, y)", 2, 15, "a positional argument cannot follow a keyword"),
    ("recurrence a\nx = f(axis=)", 2, 12, "expected an expression"),
    ("recurrence a\noutput = 1", 2, 8, "expected a name"),
    ("recurrence a\nstate output = 0", 2, 7, "'output' is a reserved word"),
    ("recurrence a\noutput y' = 1", 2, 9, "expected '='"),
    ("recurrence a\nx = a < b < c", 2, 11, "comparisons do not chain"),
    ("recurrence a\nx = dim", 2, 5, "'dim' is a reserved word"),
    ("recurrence a\nx = y.Tz", 2, 6, "unexpected character '.'"),
    ("recurrence a\nx = é", 2, 5, "unexpected character"),
    ("recurrence a\nh 3", 2, 3, "expected '=' or \"'\""),
    ("recurrence a\nx = f(1 2)", 2, 9, "expected an operator, ',' or ')'"),
    ("recurrence\n", 1, 11, "expected a name"),
    ("x = 1\n", 1, 1, "expected 'recurrence NAME'"),
    ("recurrence a\nstate = 1", 2, 7, "expected a name"),
    ("recurrence a\nx = (1))", 2, 8, "found ')'"),
    ("recurrence a\nx = 1 +", 2, 8, "expected an expression, found end of line"),
])
def test_syntax_errors_in_words(text, line, column, words):
    e = err(text, "m.rec")
    assert (e.line, e.column) == (line, column)
    msg = str(e)
    assert words in msg
    assert msg.startswith(f"m.rec, line {line}, column {column}:")
    src_line = text.split("\n")[line - 1]
    lines = msg.split("\n")
    assert lines[1].strip() == src_line.strip()
    assert lines[2].index("^") - lines[1].index(src_line[:1] or " ") == column - 1 or \
        lines[2].rstrip().endswith("^")
    for junk in ("LPAR", "RPAR", "__ANON", "_NL", "$END", "NUMBER", "COMMA"):
        assert junk not in msg


def test_caret_position_exact():
    e = err("recurrence a\nh' = * h")
    lines = str(e).split("\n")
    assert lines[0] == "<string>, line 2, column 6: expected an expression, found '*'"
    assert lines[1] == "    h' = * h"
    assert lines[2] == "         ^"


def test_nesting_limits_are_syntax_errors():
    err("recurrence a\nx = " + "(" * 500 + "1" + ")" * 500)
    err("recurrence a\nx = " + "-" * 5000 + "1")
    err("recurrence a\nx = " + "+".join(["1"] * 3000))
    err("recurrence a\nx = " + "2 ** " * 2000 + "2")


def test_bytes_and_non_text():
    assert parse(b"recurrence a\nstate h = 0\nh' = h\n").names == ["a"]
    err(b"recurrence \xff\n")
    with pytest.raises(DSLError):
        parse(None)
