"""Every examples/*.rec loads, classifies as its header says, and steps (and emits its
outputs) like a hand-written reference; generated modules are standalone."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from recur.grammar import compile_source, load_model

EXAMPLES = sorted((pathlib.Path(__file__).parents[2] / "examples").glob("*.rec"))
REQUIRED = {"gru", "lstm", "tanh_rnn", "logistic", "lorenz96", "kalman",
            "gated_linear_attention", "running_max"}


def test_required_examples_exist():
    assert REQUIRED <= {p.stem for p in EXAMPLES}


def header_kinds(text):
    first = text.splitlines()[0]
    m = re.fullmatch(r"# kind: (.*)", first)
    assert m, f"first line must be '# kind: ...', got {first!r}"
    return dict(item.strip().split("=") for item in m.group(1).split(","))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_loads_and_classifies_as_its_header(path):
    text = path.read_text()
    m = load_model(text, filename=path.name)
    assert m.kinds == header_kinds(text)
    assert m.dtype == jnp.zeros(()).dtype == jnp.float64      # x64 in the test suite
    h0 = m.init(random_params(m, np.random.default_rng(0)))
    for k, s in m.states.items():
        assert h0[k].shape == s and h0[k].dtype == m.dtype


def random_params(m, rng):
    return {k: rng.normal(size=s) * 0.5 for k, s in m.params.items()}


def sig(z):
    return 1 / (1 + np.exp(-z))


def ref_gru(h, x, p):
    z = sig(p["Wz"] @ h["h"] + p["Uz"] @ x["x"] + p["bz"])
    r = sig(p["Wr"] @ h["h"] + p["Ur"] @ x["x"] + p["br"])
    n = np.tanh(p["Wn"] @ (r * h["h"]) + p["Un"] @ x["x"] + p["bn"])
    return {"h": (1 - z) * h["h"] + z * n}


def ref_lstm(h, x, p):
    g = {k: (p["W" + k] @ h["h"] + p["U" + k] @ x["x"] + p["b" + k]) for k in "ifog"}
    c = sig(g["f"]) * h["c"] + sig(g["i"]) * np.tanh(g["g"])
    return {"h": sig(g["o"]) * np.tanh(c), "c": c}


def ref_tanh_rnn(h, x, p):
    return {"h": np.tanh(p["W"] @ h["h"] + p["U"] @ x["x"] + p["b"])}


def ref_logistic(h, x, p):
    return {"x": p["r"] * h["x"] * (1 - h["x"])}


def ref_lorenz96(h, x, p):
    v = h["x"]
    d = (np.roll(v, -1) - np.roll(v, 2)) * np.roll(v, 1) - v + p["F"]
    return {"x": v + p["dt"] * d}


def ref_kalman(h, x, p):
    F, H, Q, R = p["F"], p["H"], p["Q"], p["R"]
    Pp = F @ h["P"] @ F.T + Q
    S = H @ Pp @ H.T + R
    K = Pp @ H.T @ np.linalg.inv(S)
    m = F @ h["m"] + K @ (x["y"] - H @ F @ h["m"])
    return {"m": m, "P": Pp - K @ S @ K.T}


def ref_gla(h, x, p):
    k = p["Wk"] @ x["x"] / np.sqrt(p["Wk"].shape[0])
    v = p["Wv"] @ x["x"]
    a = sig(p["Wa"] @ x["x"] + p["ba"])
    return {"S": a[:, None] * h["S"] + np.outer(k, v)}


def ref_running_max(h, x, p):
    return {"m": np.maximum(h["m"], x["x"])}


def ref_ema(h, x, p):
    a = sig(p["w"] * x["x"] + p["b"])
    return {"h": a * h["h"] + (1 - a) * x["x"]}


def ref_hmm_forward(h, x, p):
    return {"alpha": logsumexp(h["alpha"][:, None] + p["logA"], axis=0) + x["logB"]}


def ref_viterbi(h, x, p):
    return {"delta": np.max(h["delta"][:, None] + p["logA"], axis=0) + x["logB"]}


REF_OUTPUTS = {
    "hmm_forward": lambda new: {"loglik": logsumexp(new["alpha"])},
    "viterbi": lambda new: {"best": np.max(new["delta"])},
}

REFS = {"hmm_forward": ref_hmm_forward, "viterbi": ref_viterbi, "gru": ref_gru,
        "lstm": ref_lstm, "tanh_rnn": ref_tanh_rnn, "logistic": ref_logistic,
        "lorenz96": ref_lorenz96, "kalman": ref_kalman, "gated_linear_attention": ref_gla,
        "running_max": ref_running_max, "ema": ref_ema}


def special_params(name, m, rng):
    p = random_params(m, rng)
    if name == "lorenz96":
        n = m.dims["N"]
        eye = np.eye(n)
        p.update(Sp=np.roll(eye, -1, axis=0), Sm=np.roll(eye, 1, axis=0),
                 Sm2=np.roll(eye, 2, axis=0), F=8.0, dt=0.01)
    if name == "kalman":
        n, k = m.dims["N"], m.dims["M"]
        p["Q"] = np.eye(n) * 0.1
        p["R"] = np.eye(k) * 0.2
    if name == "logistic":
        p["r"] = 3.7
    if name in ("hmm_forward", "viterbi"):
        a = rng.uniform(size=m.params["logA"])
        p["logA"] = np.log(a / a.sum(axis=1, keepdims=True))
    return p


def random_states(name, m, rng):
    h = {k: rng.normal(size=s) for k, s in m.states.items()}
    if name == "kalman":
        a = rng.normal(size=m.states["P"])
        h["P"] = a @ a.T + np.eye(a.shape[0])
    if name == "logistic":
        h["x"] = rng.uniform(0, 1)
    return h


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem in REFS], ids=lambda p: p.stem)
def test_example_step_matches_reference(path):
    name = path.stem
    m = load_model(path.read_text(), filename=path.name)
    rng = np.random.default_rng(42)
    for _ in range(3):
        p = m.fill_params(special_params(name, m, rng))
        h = random_states(name, m, rng)
        x = {k: rng.normal(size=s) for k, s in m.inputs.items()}
        out = jax.jit(m.step)({k: jnp.asarray(v) for k, v in h.items()},
                              {k: jnp.asarray(v) for k, v in x.items()} or None, p)
        ref = REFS[name](h, x, {k: np.asarray(v) for k, v in p.items()})
        assert set(out) == set(m.states)
        for k in m.states:
            assert out[k].shape == m.states[k] and out[k].dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(out[k]), ref[k], rtol=1e-10, atol=1e-10)
        new, ys = jax.jit(m.lax_step)({k: jnp.asarray(v) for k, v in h.items()},
                                      {k: jnp.asarray(v) for k, v in x.items()} or None, p)
        ref_ys = REF_OUTPUTS.get(name, lambda new: {})(ref)
        assert set(ys) == set(m.outputs) == set(ref_ys)
        for k in ys:
            assert ys[k].shape == m.outputs[k]
            np.testing.assert_allclose(np.asarray(ys[k]), ref_ys[k], rtol=1e-10, atol=1e-10)


def test_float32_models_under_x64():
    path = [p for p in EXAMPLES if p.stem == "gru"][0]
    m = load_model(path.read_text(), dtype=jnp.float32, D=4)
    assert m.dtype == jnp.float32 and m.param_defaults["bz"].dtype == jnp.float32
    p = m.fill_params(random_params(m, np.random.default_rng(0)))
    assert all(v.dtype == jnp.float32 for v in p.values())
    out = m.step(m.init(), {"x": jnp.ones(8, jnp.float32)}, p)
    assert out["h"].dtype == jnp.float32 and out["h"].shape == (4,)


def test_dims_override_and_scalar_broadcast():
    m = load_model("recurrence z\ndim D = 2\nstate h[D] = 1\nh' = 0\n", D=5)
    out = m.step(m.init(), None, {})
    assert out["h"].shape == (5,) and out["h"].dtype == m.dtype
    assert np.all(np.asarray(out["h"]) == 0)


def test_step_index_t_is_an_input_leaf():
    m = load_model("recurrence c\nparam w = 0.5\nstate s = 0\ns' = s + w * t\n")
    assert m.uses_step_index and m.inputs == {}
    xs = {"t": jnp.arange(5)}
    _, hs = jax.lax.scan(lambda h, x: (m.step(h, x, m.fill_params()),) * 2, m.init(), xs)
    np.testing.assert_allclose(hs["s"], 0.5 * np.cumsum(np.arange(5)))
    with pytest.raises(KeyError, match="step index t"):
        m.step(m.init(), {}, m.fill_params())
    assert not load_model(EXAMPLES[0].read_text()).uses_step_index


def test_compiled_module_is_standalone_and_same_code():
    path = [p for p in EXAMPLES if p.stem == "kalman"][0]
    src = compile_source(path.read_text(), plan_text='the plan: "two stages" """ \\ ok',
                         dims={"N": 3}, M=2)
    imports = [ln for ln in src.splitlines() if ln.startswith(("import", "from"))]
    assert imports == ["import math", "import jax", "import jax.numpy as jnp"]
    assert "the plan" in src and "DTYPE = jnp.zeros(()).dtype" in src
    ns = {}
    exec(compile(src, "kalman_generated.py", "exec"), ns)
    assert ns["STATE_SHAPES"] == {"m": (3,), "P": (3, 3)} and ns["USES_STEP_INDEX"] is False
    assert ns["__doc__"] is None or True
    m = load_model(path.read_text(), N=3, M=2)
    assert m.source.split("import math", 1)[1] == src.split("import math", 1)[1].replace(
        "DTYPE = jnp.zeros(()).dtype  # JAX's default float", "DTYPE = jnp.dtype('float64')")
    rng = np.random.default_rng(0)
    p = special_params("kalman", m, rng)
    h = random_states("kalman", m, rng)
    x = {"y": rng.normal(size=2)}
    a = ns["step"](h, x, ns["fill_params"](p))
    b = m.step(h, x, m.fill_params(p))
    for k in a:
        np.testing.assert_allclose(a[k], b[k])
    with pytest.raises(ValueError, match="no default"):
        ns["fill_params"]({})
