"""Semantic checks: every DSLError of the language, with line, caret and words."""

import pytest

from recur._errors import DSLError, DSLSyntaxError
from recur.grammar import load_model, recurrence_names

BASE = "recurrence r\ndim N = 3\nparam W[N, N], b[N] = 0\ninput x[N]\nstate h[N] = 0\n"


def fail(body, words, line=None, **kw):
    text = BASE + body
    with pytest.raises(DSLError) as e:
        load_model(text, filename="m.rec", **kw)
    assert not isinstance(e.value, DSLSyntaxError)
    msg = str(e.value)
    for w in ([words] if isinstance(words, str) else words):
        assert w in msg, msg
    if line is not None:
        assert e.value.line == line, msg
        assert f"line {line}" in msg
        assert "^" in msg.split("\n")[-1]
    return e.value


def test_ok():
    m = load_model(BASE + "h' = tanh(W @ h + x + b)\n")
    assert m.states == {"h": (3,)} and m.params == {"W": (3, 3), "b": (3,)}


@pytest.mark.parametrize("body, words, line", [
    ("z = 1\nz = 2\nh' = h\n", "'z' is already defined", 7),
    ("b = 1\nh' = h\n", "'b' is already defined", 6),
    ("h' = h\nh' = h\n", "updated twice", 7),
    ("", "state 'h' has no update", 5),
    ("W' = W\nh' = h\n", "'W' is a param, not a state", 6),
    ("x' = x\nh' = h\n", "'x' is an input, not a state", 6),
    ("z = 1\nz' = z\nh' = h\n", "'z' is a local, not a state", 7),
    ("hh' = 1\nh' = h\n", "update of unknown state 'hh'; did you mean 'h'?", 6),
    ("h' = h'\n", "h' may appear only in an output's value", 6),
    ("z = h' + 1\nh' = h\n", "h' may appear only in an output's value", 6),
    ("h' = hh + 1\n", "unknown name 'hh'; did you mean 'h'?", 6),
    ("h' = tanhh(h)\n", "unknown function 'tanhh'; did you mean 'tanh'?", 6),
    ("h' = tanh\n", "'tanh' is a function", 6),
    ("a = b2 + 1\nh' = h + a\n", "unknown name 'b2'; did you mean 'b'?", 6),
    ("a = c + 1\nc = a * 2\nh' = h + a\n", ["definitions form a cycle", "a -> c -> a"], 6),
    ("a = a + 1\nh' = h + a\n", "'a' is defined in terms of itself", 6),
    ("h' = W @ W @ x + ones(4)\n", ["shapes (3,) and (4,) do not broadcast", "'+'"], 6),
    ("h' = x @ ones(4, 2)\n", "shapes (3,) and (4, 2) do not fit for '@'", 6),
    ("h' = 2 @ x\n", "@ needs arrays of at least one dimension", 6),
    ("h' = W\n", "h' has shape (3, 3) but state 'h' is declared with shape (3,)", 6),
    ("h' = h > 0\n", "usable only inside where", 6),
    ("h' = h + (h > 0)\n", "usable only inside where", 6),
    ("c = h > 0\nh' = where(c, h, 0)\n", "usable only inside where", 6),
    ("h' = where(h, h, 0)\n", "the condition of where(c, a, b) must be a comparison", 6),
    ("h' = where(h > 0 and h, h, 0)\n", "'and' combines comparisons", 6),
    ("h' = max(h, h, h)\n", "max takes 1 or 2 arguments, got 3", 6),
    ("h' = h + max(W, axis=2)\n", "axis 2 is out of range", 6),
    ("h' = h + max(W, 0, axis=1)\n", "max(a, b) is elementwise and takes no axis", 6),
    ("h' = h + sum(W, 0, axis=1)\n", "axis is given twice", 6),
    ("h' = h + sum(W, axis=0, axis=1)\n", "axis is given twice", 6),
    ("h' = h + sum(W, axs=0)\n", "unknown keyword 'axs' for sum: the only keyword is axis; did you mean 'axis'?", 6),
    ("h' = tanh(h, axis=0)\n", "tanh takes no keyword arguments", 6),
    ("h' = h + logsumexp(W, b)\n", "must be an integer made of numbers and dims", 6),
    ("h' = logsumexp(W, 0) + ones(4)\n", "do not broadcast", 6),
    ("h' = tanh(h, h)\n", "tanh takes 1 argument, got 2", 6),
    ("h' = h + sum(W, 2)\n", "axis 2 is out of range", 6),
    ("h' = h + sum(W, b)\n", "must be an integer made of numbers and dims", 6),
    ("h' = h + inv(x)\n", "needs a square matrix", 6),
    ("h' = solve(W, ones(4))\n", "does not fit A", 6),
    ("h' = h[3]\n", "index 3 is out of range", 6),
    ("h' = h[0, 0]\n", "too many subscripts", 6),
    ("h' = h[1:1]\n", "selects nothing", 6),
    ("h' = h[::0]\n", "step cannot be zero", 6),
    ("h' = h + dot(W, ones(2, 2, 2))\n", "at most 2 dimensions", 6),
    ("h' = h + eye(b)\n", "'b' is a param", 6),
    ("h' = h + zeros(0)\n", "sizes must be positive", 6),
    ("param q = h\nh' = h\n", "'h' is a state: a param's default may use only numbers and dims", 6),
    ("param q = t\nh' = h\n", "'t' (the step index) can be used only in definitions, updates and outputs", 6),
    ("output y = h > 0\nh' = h\n", "usable only inside where", 6),
    ("output y = h\noutput y = x\nh' = h\n", "'y' is already defined (as an output on line 6)", 7),
    ("output y = h\nh' = h + y\n", "'y' is an output: outputs are results", 7),
    ("output y = h\noutput z = 2 * y\nh' = h\n", "'y' is an output", 7),
    ("output y = hh'\nh' = h\n", "only states are updated", 6),
    ("output y = W @ W @ x + ones(4)\nh' = h\n", "do not broadcast", 6),
    ("state g = x\ng' = g\nh' = h\n", "a state's initial value may use only numbers, dims and params", 6),
    ("input u = 1\nh' = h\n", "input 'u' cannot have a value", 6),
    ("param t = 1\nh' = h\n", "'t' is reserved", 6),
    ("param inf = 1\nh' = h\n", "'inf' is reserved", 6),
    ("param V[N, M]\nh' = h\n", "unknown dim 'M'", 6),
    ("param V[N, 0]\nh' = h\n", "sizes must be positive", 6),
    ("param V[N, 1.5]\nh' = h\n", "must be an integer", 6),
    ("param V[N] = ones(2)\nh' = h\n", "does not fit its declared shape", 6),
    ("state g[2] = W\ng' = g\nh' = h\n", "does not fit its declared shape", 6),
    ("h' = N' + h\n", "only states are updated", 6),
])
def test_semantic_errors(body, words, line):
    fail(body, words, line)


def test_dims_positive_and_overrides():
    with pytest.raises(DSLError, match="dim N must be a positive integer"):
        load_model("recurrence r\ndim N = 0\nstate h[N] = 0\nh' = h\n")
    with pytest.raises(DSLError, match="dim N must be an integer"):
        load_model("recurrence r\ndim N = 2.5\nstate h[N] = 0\nh' = h\n")
    with pytest.raises(DSLError, match="dim N must be a positive integer"):
        load_model("recurrence r\ndim N = 2\nstate h[N] = 0\nh' = h\n", N=-1)
    with pytest.raises(DSLError, match="dim N must be a positive integer"):
        load_model("recurrence r\ndim N = 2\nstate h[N] = 0\nh' = h\n", N=2.0)
    with pytest.raises(DSLError, match="unknown dim 'M'"):
        load_model("recurrence r\ndim N = 2\nstate h[N] = 0\nh' = h\n", M=3)
    m = load_model("recurrence r\ndim N = 2, K = N * 3\nstate h[K] = 0\nh' = h\n", N=5)
    assert m.dims == {"N": 5, "K": 15} and m.states == {"h": (15,)}


def test_shape_mismatch_only_with_loaded_dims():
    text = "recurrence r\ndim N = 3, M = 3\nparam W[N, M]\nstate h[N] = 0\nh' = W @ h\n"
    load_model(text)
    with pytest.raises(DSLError, match=r"shapes \(3, 4\) and \(3,\) do not fit"):
        load_model(text, M=4)


def test_missing_param_value():
    m = load_model("recurrence r\nparam a, b = 2\nstate h = 0\nh' = a * h + b\n")
    assert m.param_defaults["a"] is None and float(m.param_defaults["b"]) == 2.0
    with pytest.raises(DSLError, match="param 'a' of recurrence 'r' has no default"):
        m.fill_params()
    with pytest.raises(DSLError, match="unknown param"):
        m.fill_params({"a": 1.0, "zz": 2.0})
    p = m.fill_params({"a": 3.0})
    assert float(p["a"]) == 3.0 and float(p["b"]) == 2.0
    m2 = load_model("recurrence r\nparam a\nstate h = a\nh' = h\n")
    with pytest.raises(DSLError, match="param 'a' is needed by the initial states"):
        m2.init()
    assert float(m2.init({"a": 4.0})["h"]) == 4.0


def test_multi_recurrence_files():
    text = "recurrence a\nstate h = 0\nh' = h\nrecurrence b\nstate g = 1\ng' = 2 * g\n"
    assert recurrence_names(text) == ["a", "b"]
    with pytest.raises(DSLError, match=r"2 recurrences \(a, b\)"):
        load_model(text)
    assert load_model(text, name="b").states == {"g": ()}
    with pytest.raises(DSLError, match="no recurrence named 'c'"):
        load_model(text, name="c")
    with pytest.raises(DSLError, match="declared twice"):
        load_model(text + "recurrence a\nstate q = 0\nq' = q\n", name="a")


def test_no_recurrence_and_no_state():
    for text in ("", "# only a comment\n", "\n\n"):
        with pytest.raises(DSLError, match="no recurrence"):
            load_model(text)
    with pytest.raises(DSLError, match="declares no state"):
        load_model("recurrence a\nparam r = 1\n")


def test_error_reports_file_name_line_and_caret():
    e = fail("h' = h + q\n", "unknown name 'q'", 6)
    lines = str(e).split("\n")
    assert lines[0].startswith("m.rec, line 6, column 10: unknown name 'q'")
    assert lines[1] == "    h' = h + q"
    assert lines[2] == "             ^"
    assert e.filename == "m.rec" and e.column == 10
