"""The reductions for semiring recurrences: logsumexp, and max/min over an axis (keyword
axis=, since max(a, b) is elementwise), shapes and values against NumPy/scipy."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from recur._errors import DSLError
from recur.grammar import load_model

HEAD = "recurrence r\ndim N = 3, M = 4\nparam W[N, M], v[M]\nstate h = 0\nh' = h\n"


def outputs(*exprs):
    """A model whose outputs are the given expressions (y0, y1, ...)."""
    body = "".join(f"output y{i} = {e}\n" for i, e in enumerate(exprs))
    return load_model(HEAD + body, dtype=jnp.float64)


def evaluate(m, W, v):
    _, ys = m.lax_step(m.init(), None, m.fill_params({"W": W, "v": v}))
    return [np.asarray(ys[f"y{i}"]) for i in range(len(ys))]


CASES = [  # expression, shape, NumPy
    ("logsumexp(W)", (), lambda W, v: logsumexp(W)),
    ("logsumexp(W, 0)", (4,), lambda W, v: logsumexp(W, axis=0)),
    ("logsumexp(W, axis=1)", (3,), lambda W, v: logsumexp(W, axis=1)),
    ("logsumexp(W, -1)", (3,), lambda W, v: logsumexp(W, axis=-1)),
    ("logsumexp(v)", (), lambda W, v: logsumexp(v)),
    ("max(W)", (), lambda W, v: np.max(W)),
    ("max(W, axis=0)", (4,), lambda W, v: np.max(W, axis=0)),
    ("min(W, axis=1)", (3,), lambda W, v: np.min(W, axis=1)),
    ("min(v, axis=N - 3)", (), lambda W, v: np.min(v, axis=0)),
    ("max(W, v)", (3, 4), lambda W, v: np.maximum(W, v)),             # elementwise
    ("max(W, 0)", (3, 4), lambda W, v: np.maximum(W, 0.0)),           # relu, not axis 0
    ("min(v, 1)", (4,), lambda W, v: np.minimum(v, 1.0)),
    ("sum(W, axis=0)", (4,), lambda W, v: np.sum(W, axis=0)),
    ("mean(W, axis=1)", (3,), lambda W, v: np.mean(W, axis=1)),
    ("logsumexp(W.T + v[0], 0) + max(W, axis=1)", (3,),
     lambda W, v: logsumexp(W.T + v[0], axis=0) + np.max(W, axis=1)),
]


def special_arrays(rng):
    W = rng.normal(size=(3, 4)) * 3
    v = rng.normal(size=4)
    yield W, v
    W2 = W.copy()
    W2[0, :] = -np.inf                 # a row that is all -inf: logsumexp is -inf
    W2[1, 2] = np.inf
    W2[2, 1] = -np.inf
    yield W2, np.array([-np.inf, -np.inf, -np.inf, -np.inf])
    W3 = W.copy()
    W3[1, 1] = np.nan
    yield W3, np.array([1e3, -1e3, 0.0, 700.0])     # large: computed stably


def test_shapes_and_values_match_numpy_and_scipy():
    m = outputs(*[e for e, _, _ in CASES])
    assert m.outputs == {f"y{i}": s for i, (_, s, _) in enumerate(CASES)}
    for W, v in special_arrays(np.random.default_rng(0)):
        got = evaluate(m, W, v)
        for (expr, shape, ref), g in zip(CASES, got):
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = np.asarray(ref(W, v), np.float64)
            assert g.shape == shape, expr
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12, err_msg=expr)


def test_generated_code_spells_the_reductions():
    m = outputs("logsumexp(W, 0)", "max(W, axis=1)", "min(W)", "max(W, 0)")
    src = m.source
    assert "jax.nn.logsumexp(p_W, axis=0)" in src
    assert "jnp.max(p_W, axis=1)" in src and "jnp.min(p_W)" in src
    assert "jnp.maximum(p_W, 0.0)" in src


@pytest.mark.parametrize("expr, words", [
    ("max(W, 0, axis=1)", "max(a, b) is elementwise and takes no axis"),
    ("logsumexp(W, 2)", "axis 2 is out of range for shape (3, 4)"),
    ("max(W, axis=-3)", "axis -3 is out of range"),
    ("logsumexp(W, axis=v)", "must be an integer made of numbers and dims"),
    ("logsumexp()", "logsumexp takes 1 to 2 arguments, got 0"),
    ("max()", "max takes 1 or 2 arguments, got 0"),
    ("min(W, axes=0)", "unknown keyword 'axes' for min"),
    ("exp(W, axis=0)", "exp takes no keyword arguments"),
])
def test_reduction_errors(expr, words):
    with pytest.raises(DSLError) as e:
        outputs(expr)
    assert words in str(e.value) and e.value.line == 6


def test_semiring_steps_are_nonlinear_in_ordinary_arithmetic():
    text = ("recurrence hmm\ndim K = 3\nparam logA[K, K]\ninput logB[K]\nstate a[K] = 0\n"
            "a' = {} + logB\n")
    for update in ("logsumexp(logA.T + a, 1)", "max(logA.T + a, axis=1)",
                   "min(logA.T + a, axis=1)"):
        m = load_model(text.format(update))
        kind, why = m.classification["a"]
        assert kind == "nonlinear" and f"through {update} (line 6, column 6)" in why
