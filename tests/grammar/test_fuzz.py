"""No input, however malformed, makes parse/load_model fail other than with DSLError."""

import pathlib

from hypothesis import HealthCheck, given, settings, strategies as st

from recur._errors import DSLError, DSLSyntaxError
from recur.grammar import compile_source, load_model, parse

EXAMPLES = {p.stem: p.read_text()
            for p in sorted((pathlib.Path(__file__).parents[2] / "examples").glob("*.rec"))}
ALPHABET = "abhxWtTN01239.e+-*/@()[],:='#<>!= \n\t_λ\x00"
TOKENS = ["recurrence", "dim", "param", "input", "state", "and", "or", "not", "inf", "t",
          "h", "h'", "x", "W", "N", "D", "=", ",", "(", ")", "[", "]", ":", "+", "-", "*",
          "/", "@", "**", ".T", "<", "<=", "==", "!=", "\n", "0", "1", "2.5", "1e-3",
          "tanh", "sum", "where", "eye", "zeros", "inv", "max", "#", "'", "é", " "]
SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def only_dsl_errors(text, **kw):
    try:
        parse(text)
    except DSLSyntaxError as e:
        assert isinstance(e.line, int) and e.line >= 1 and isinstance(e.column, int)
        assert "^" in str(e)
    try:
        load_model(text, **kw)
    except DSLError as e:
        assert str(e)


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    text = EXAMPLES[name]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "substitute"]))
        ch = draw(st.sampled_from(ALPHABET))
        if op == "delete":
            text = text[:i] + text[i + 1:]
        elif op == "insert":
            text = text[:i] + ch + text[i:]
        else:
            text = text[:i] + ch + text[i + 1:]
    return text


@SETTINGS
@given(mutated())
def test_mutated_examples(text):
    only_dsl_errors(text)


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_token_soup(tokens):
    only_dsl_errors("recurrence r\n" + " ".join(tokens))
    only_dsl_errors(" ".join(tokens))


@SETTINGS
@given(st.text(max_size=80))
def test_arbitrary_text(text):
    only_dsl_errors(text)


@st.composite
def expressions(draw, depth=0):
    if depth > 3 or draw(st.booleans()):
        return draw(st.sampled_from(["h", "x", "W", "b", "r", "t", "N", "1", "0", "2.5",
                                     "inf", "-1", "h[0]", "W[0, :]", "W.T", "eye(N)",
                                     "ones(N)", "x[1:]"]))
    op = draw(st.sampled_from(["+", "-", "*", "/", "@", "**", "<", "and", "f1", "f2", "neg"]))
    a = draw(expressions(depth + 1))
    b = draw(expressions(depth + 1))
    if op == "f1":
        f = draw(st.sampled_from(["tanh", "exp", "sum", "inv", "sigmoid", "sqrt", "log",
                                  "cholesky", "logdet", "mean", "relu", "abs"]))
        return f"{f}({a})"
    if op == "f2":
        f = draw(st.sampled_from(["max", "min", "dot", "outer", "solve", "sum"]))
        return f"{f}({a}, {b})"
    if op == "neg":
        return f"-{a}"
    return f"({a} {op} {b})"


@SETTINGS
@given(expressions(), expressions())
def test_random_well_formed_expressions(e1, e2):
    text = ("recurrence r\ndim N = 3\nparam W[N, N], b[N] = 0, r = 2\ninput x[N]\n"
            f"state h[N] = 0\nq = {e1}\nh' = {e2} + 0 * q\n")
    only_dsl_errors(text)
    try:
        compile_source(text)
    except DSLError:
        pass


@SETTINGS
@given(expressions(), expressions())
def test_symbolic_form_code_equals_ast_form_code(e1, e2):
    """Where an update is generated from its sympy form, it computes what the file says."""
    import jax.numpy as jnp
    import numpy as np
    from recur.grammar._check import check
    from recur.grammar._codegen import generate
    from recur.grammar._symbolic import build_symbolic

    text = ("recurrence r\ndim N = 3\nparam W[N, N], b[N] = 0, r = 2\ninput x[N]\n"
            f"state h[N] = 0\nq = {e1}\nh' = {e2} + 0 * q\n")
    try:
        m = load_model(text)
    except DSLError:
        return
    chk = check(parse(text).recurrences[0], text, None, {})
    src, _ = generate(chk, build_symbolic(chk), dtype=jnp.float64, _force_ast=True)
    ns = {}
    exec(compile(src, "ast_form", "exec"), ns)
    rng = np.random.default_rng(0)
    h = {"h": jnp.asarray(rng.uniform(0.5, 1.5, 3))}
    x = {"x": jnp.asarray(rng.uniform(0.5, 1.5, 3)), "t": jnp.asarray(2)}
    W = rng.uniform(0.5, 1.5, (3, 3))
    p = m.fill_params({"W": W @ W.T + 3 * np.eye(3)})
    a = np.asarray(m.step(h, x, p)["h"])
    b = np.asarray(ns["step"](h, x, p)["h"])
    ok = np.isfinite(a) & np.isfinite(b)
    np.testing.assert_allclose(a[ok], b[ok], rtol=1e-6, atol=1e-8)
