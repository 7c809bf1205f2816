"""The symbolic pass: classification, reasons, simplification, agreement with the code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

from recur.grammar import load_model


def model(body, head="dim N = 3\nparam W[N, N], b[N] = 0, r = 2\ninput x[N]\nstate h[N] = 0\n",
          **kw):
    return load_model("recurrence m\n" + head + body, **kw)


def random_args(m, rng, scale=1.0):
    h = {k: jnp.asarray(rng.uniform(-2.0, 2.0, s) * scale) for k, s in m.states.items()}
    x = {k: jnp.asarray(rng.normal(size=s)) for k, s in m.inputs.items()}
    if m.uses_step_index:
        x["t"] = jnp.asarray(3)
    given = {k: rng.normal(size=s) for k, s in m.params.items() if m.param_defaults[k] is None}
    return h, x, m.fill_params(given)


def is_affine_numerically(m, rng):
    h1, x, p = random_args(m, rng)
    h2, _, _ = random_args(m, rng, 2.0)
    a = 0.3
    mix = jax.tree.map(lambda u, v: a * u + (1 - a) * v, h1, h2)
    lhs = m.step(mix, x, p)
    rhs = jax.tree.map(lambda u, v: a * u + (1 - a) * v, m.step(h1, x, p), m.step(h2, x, p))
    return all(np.allclose(lhs[k], rhs[k], rtol=1e-9, atol=1e-9) for k in lhs)


@pytest.mark.parametrize("body, kind, words", [
    ("h' = W @ h + x\n", "affine", "affine in h"),
    ("h' = x * 2\n", "affine", "does not read the state"),
    ("h' = 0\n", "affine", "does not read the state"),
    ("h' = (W @ h).T + h[0] + sum(h) + mean(h) - solve(W, h)\n", "affine", "affine"),
    ("h' = where(x > 0, h, -h)\n", "affine", "affine"),
    ("h' = outer(x, h) @ x + dot(x, h)\n", "affine", "affine"),
    ("h' = h / r + h / exp(x)\n", "affine", "affine"),
    ("h' = tanh(W @ h + x)\n", "nonlinear", "h' is nonlinear in h through tanh(x + W@h)"),
    ("h' = tanh(h) + x\n", "diagonal", "through tanh(h)"),
    ("h' = r * h * (1 - h)\n", "diagonal", "reading only h"),
    ("h' = max(h, x)\n", "diagonal", "max(h, x)"),
    ("h' = where(h > 0, h, 0)\n", "diagonal", "through (h > 0)"),
    ("h' = h * h[0]\n", "nonlinear", "nonlinear in h"),
    ("h' = tanh(sum(h))\n", "nonlinear", "tanh"),
    ("h' = h ** 2 + W @ h\n", "nonlinear", "h**2"),
    ("h' = h / (1 + x) + 1 / h\n", "diagonal", "1/h"),
    ("h' = inv(W + outer(h, h)) @ x\n", "nonlinear", "through outer(h, h)"),
    ("h' = (h**2 - 1)/(h - 1)\n", "affine", "affine in h"),
    ("h' = h * (h + 1) - h**2 + x\n", "affine", "affine"),
    ("h' = (h + 1)**2 - h**2\n", "affine", "affine"),
    ("h' = h ** 1\n", "affine", "affine"),
    ("h' = h + 0 * tanh(h)\n", "affine", "affine"),
    ("q = tanh(h)\nh' = h + q - q\n", "affine", "affine"),
    ("h' = h + t * x\n", "affine", "affine"),
])
def test_classification_agrees_with_generated_step(body, kind, words):
    m = model(body)
    k, reason = m.classification["h"]
    assert k == kind, reason
    assert words in reason
    rng = np.random.default_rng(0)
    assert is_affine_numerically(m, rng) == (kind == "affine")


def test_simplified_form_is_the_generated_code():
    m = model("h' = (h**2 - 1)/(h - 1)\n")
    assert m.forms["h"] == "sympy"
    assert "from its simplified symbolic form" in m.source
    jaxpr = str(jax.make_jaxpr(m.step)(*random_args(m, np.random.default_rng(1))))
    assert "div" not in jaxpr and "integer_pow" not in jaxpr
    h, x, p = random_args(m, np.random.default_rng(2))
    np.testing.assert_allclose(m.step(h, x, p)["h"], h["h"] + 1)


def test_shrunk_arguments_are_broadcast_back():
    m = model("h' = W @ (x - x) + outer(h - h, x) @ x + sum(b - b) + h\n")
    assert m.classification["h"][0] == "affine"
    h, x, p = random_args(m, np.random.default_rng(3))
    np.testing.assert_allclose(m.step(h, x, p)["h"], h["h"])


def test_two_states_jointly():
    m = load_model("recurrence a\nstate x = 1, y = 2\nx' = x * y\ny' = y + x\n")
    assert m.classification["x"][0] == "nonlinear"
    assert "in x, y" in m.classification["x"][1]
    assert m.classification["y"][0] == "affine"
    assert m.reads == {"x": ("x", "y"), "y": ("x", "y")}
    m = load_model("recurrence a\nparam A[2, 2]\nstate u[2] = 1, v[2] = 0\n"
                   "u' = tanh(u)\nv' = A @ v + tanh(u)\n")
    assert m.kinds == {"u": "diagonal", "v": "nonlinear"}
    assert "affine in v when u is held fixed" in m.classification["v"][1]


def test_sympy_builtin_names_are_plain_symbols():
    text = ("recurrence b\nparam I = 2, N = 3, E = 4, S = 5, Q = 6, pi = 7, oo = 8, beta = 1\n"
            "state x = 1\nx' = I * x + N + E + S + Q + pi + oo + beta\n")
    m = load_model(text)
    assert m.kinds["x"] == "affine"
    e = m.sympy_exprs["x"]
    assert e.has(sp.Symbol("I")) and not e.has(sp.I) and not e.has(sp.E)
    out = m.step({"x": jnp.asarray(1.0)}, None, m.fill_params())
    assert float(out["x"]) == 2 + 3 + 4 + 5 + 6 + 7 + 8 + 1


def test_kalman_reason_mentions_conditional_affinity():
    m = load_model(open("examples/kalman.rec").read())
    assert "affine in m when P is held fixed" in m.classification["m"][1]
    assert m.reads["P"] == ("P",)
