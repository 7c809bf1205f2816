"""No input, however malformed, makes parse/load_model fail other than with DSLError; and
the generated code evaluates every formula exactly as written (against NumPy)."""

import pathlib
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from recur._errors import DSLError, DSLSyntaxError
from recur.grammar import compile_source, load_model, parse

EXAMPLES = {p.stem: p.read_text()
            for p in sorted((pathlib.Path(__file__).parents[2] / "examples").glob("*.rec"))}
ALPHABET = "abhxWtTN01239.e+-*/@()[],:='#<>!= \n\t_λ\x00"
TOKENS = ["recurrence", "dim", "param", "input", "state", "and", "or", "not", "inf", "t",
          "h", "h'", "x", "W", "N", "D", "=", ",", "(", ")", "[", "]", ":", "+", "-", "*",
          "/", "@", "**", ".T", "<", "<=", "==", "!=", "\n", "0", "1", "2.5", "1e-3",
          "tanh", "sum", "where", "eye", "zeros", "inv", "max", "#", "'", "é", " ", "output",
          "y", "axis", "logsumexp", "min"]
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
                                  "cholesky", "logdet", "mean", "relu", "abs", "logsumexp",
                                  "max", "min"]))
        return f"{f}({a})"
    if op == "f2":
        f = draw(st.sampled_from(["max", "min", "dot", "outer", "solve", "sum", "logsumexp"]))
        if draw(st.booleans()) and f in ("max", "min", "sum", "logsumexp"):
            return f"{f}({a}, axis={draw(st.sampled_from(['0', '-1', '1', 'N']))})"
        return f"{f}({a}, {b})"
    if op == "neg":
        return f"-{a}"
    return f"({a} {op} {b})"


@SETTINGS
@given(expressions(), expressions())
def test_random_well_formed_expressions(e1, e2):
    text = ("recurrence r\ndim N = 3\nparam W[N, N], b[N] = 0, r = 2\ninput x[N]\n"
            f"state h[N] = 0\nq = {e1}\nh' = {e2} + 0 * q\noutput y = {e1} * h'\n")
    only_dsl_errors(text)
    try:
        compile_source(text)
    except DSLError:
        pass


# ------------------------------------------ the generated step is the formula as written

# Values stay in the normal range: XLA on CPU flushes subnormal results to zero (and may
# divide by a broadcast scalar through its reciprocal), where NumPy underflows gradually.
VALUES = [0.0, 1.0, -1.0, 0.5, -2.0, 3.0, 1e-3, 2.5, np.inf, -np.inf, np.nan]
W_FIXED = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.125]])


def _scipy_logsumexp(v):
    from scipy.special import logsumexp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return logsumexp(v, axis=0)


# leaf -> NumPy evaluation (env: h, x, r, W); transcendental functions appear only here,
# applied to a declared name, so that their last-ulp differences cannot cancel to an
# exact zero in one library and not the other
LEAVES = {
    "h": lambda e: e["h"], "x": lambda e: e["x"], "r": lambda e: e["r"],
    "h[0]": lambda e: e["h"][0], "x[2]": lambda e: e["x"][2],
    "W @ h": lambda e: W_FIXED @ e["h"], "W.T @ x": lambda e: W_FIXED.T @ e["x"],
    "sum(h)": lambda e: np.sum(e["h"]), "mean(x)": lambda e: np.mean(e["x"]),
    "max(h, axis=0)": lambda e: np.max(e["h"], axis=0), "min(x)": lambda e: np.min(e["x"]),
    "logsumexp(h, 0)": lambda e: _scipy_logsumexp(e["h"]),
    "tanh(h)": lambda e: np.tanh(e["h"]), "exp(x)": lambda e: np.exp(e["x"]),
    "log(h)": lambda e: np.log(e["h"]), "log1p(x)": lambda e: np.log1p(e["x"]),
    "expm1(h)": lambda e: np.expm1(e["h"]), "sin(x)": lambda e: np.sin(e["x"]),
    "cos(h)": lambda e: np.cos(e["h"]), "sigmoid(x)": lambda e: 1 / (1 + np.exp(-e["x"])),
    "softplus(h)": lambda e: np.logaddexp(e["h"], 0.0),
}
NUMBERS = ["0", "1", "2", "0.5", "3", "1e-3", "inf"]
BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}
POWERS = ["2", "3", "0.5", "-1", "1", "0"]
UNARY = {"abs": np.abs, "sqrt": np.sqrt, "relu": lambda v: np.maximum(v, 0.0)}


@st.composite
def formulas(draw, depth=0):
    """``(text, numpy_fn)``: a random ``.rec`` expression of shape (3,) or () and its
    direct NumPy evaluation (``fn(env, record)``; ``record`` sees every intermediate)."""
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        if draw(st.booleans()):
            n = draw(st.sampled_from(NUMBERS))
            return n, lambda e, rec, v=float(n): rec(np.float64(v))
        leaf = draw(st.sampled_from(sorted(LEAVES)))
        return leaf, lambda e, rec, f=LEAVES[leaf]: rec(f(e))
    kind = draw(st.sampled_from(["bin", "bin", "bin", "pow", "neg", "unary", "maxmin",
                                 "where"]))
    a_text, a = draw(formulas(depth + 1))
    if kind == "pow":
        k = draw(st.sampled_from(POWERS))
        return f"({a_text}) ** {k}", lambda e, rec: rec(np.power(a(e, rec), float(k)))
    if kind == "neg":
        return f"-({a_text})", lambda e, rec: rec(-a(e, rec))
    if kind == "unary":
        f = draw(st.sampled_from(sorted(UNARY)))
        return f"{f}({a_text})", lambda e, rec: rec(UNARY[f](a(e, rec)))
    b_text, b = draw(formulas(depth + 1))
    if kind == "bin":
        op = draw(st.sampled_from(sorted(BINARY)))
        return f"({a_text}) {op} ({b_text})", lambda e, rec: rec(BINARY[op](a(e, rec),
                                                                             b(e, rec)))
    if kind == "maxmin":
        f = draw(st.sampled_from(["max", "min"]))
        g = np.maximum if f == "max" else np.minimum
        return f"{f}({a_text}, {b_text})", lambda e, rec: rec(g(a(e, rec), b(e, rec)))
    c_text, c = draw(formulas(depth + 1))
    return (f"where(({a_text}) > ({b_text}), {c_text}, {b_text})",
            lambda e, rec: rec(np.where(a(e, rec) > b(e, rec), c(e, rec), b(e, rec))))


def _agree(got, ref, scale, what):
    got = np.asarray(got)
    ref = np.broadcast_to(np.asarray(ref, np.float64), got.shape)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), (what, got, ref)
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(got), inf) and np.array_equal(got[inf], ref[inf]), \
        (what, got, ref)
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-9, atol=1e-12 * scale,
                               err_msg=what)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(formulas(), st.lists(st.sampled_from(VALUES), min_size=3, max_size=3),
       st.lists(st.sampled_from(VALUES[:8]), min_size=3, max_size=3),
       st.sampled_from([0.0, 1.0, 2.0, -0.5, np.inf]))
def test_generated_step_is_the_formula_as_written(formula, h, x, r):
    """The generated step and output equal a direct NumPy evaluation of the same
    formula, NaN and inf included (no simplification: (h*h - 1)/(h - 1) at h = 1 is NaN)."""
    import jax.numpy as jnp
    text, fn = formula
    src = ("recurrence r\ndim N = 3\nparam W[N, N], r\ninput x[N]\nstate h[N] = 0\n"
           f"h' = {text}\noutput y = {text}\n")
    m = load_model(src, dtype=jnp.float64)
    env = {"h": np.array(h), "x": np.array(x), "r": np.float64(r)}
    seen = [1.0]

    def record(v):
        finite = np.abs(np.asarray(v, np.float64))[np.isfinite(v)]
        seen.append(float(finite.max()) if finite.size else 0.0)
        return v
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fn(env, record)
    args = ({"h": jnp.asarray(env["h"])}, {"x": jnp.asarray(env["x"])},
            m.fill_params({"W": W_FIXED, "r": r}))
    _agree(m.step(*args)["h"], ref, max(seen), f"step: h' = {text}")
    new, ys = m.lax_step(*args)
    _agree(new["h"], ref, max(seen), f"lax_step: h' = {text}")
    _agree(ys["y"], ref, max(seen), f"output y = {text}")
