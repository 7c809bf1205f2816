"""The DSL through the public API: load/loads/compile, plans that point into the .rec file,
the agreement of the symbolic verdict with the staged plan, errors a new user hits, and
per-step outputs (lax_step, lax_scan, compiled modules)."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.rec"))


# the plan's stage kinds in the DSL's words
DSL_KIND = {"linear": "affine", "affine": "affine", "diagonal": "diagonal",
            "block-diagonal": "nonlinear", "nonlinear": "nonlinear"}


def stage_kinds(plan):
    """state -> the kind of the plan's stage that holds it (its own stage, earlier given)."""
    return {s: DSL_KIND[st.kind] for st in plan.stages for s in st.states}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_symbolic_and_staged_plan_verdicts_agree(path):
    rec = recur.load(path)
    plan = rec.plan(length=3)
    assert stage_kinds(plan) == rec.model.kinds, (plan.explain(), rec.model.classification)
    assert {n for st in plan.stages for n in st.states} == set(rec.model.states)
    assert "<recur:" not in plan.explain() + plan.explain_passes()


@pytest.mark.parametrize("body, kind", [
    ("h' = (h**2 - 1)/(h - 1) * x\n", "diagonal"),     # as written; sympy's h + 1 is a hint
    ("h' = (h + 1) * x\n", "affine"),
    ("h' = h + 0 * tanh(h) + x\n", "diagonal"),
    ("h' = h - h + x\n", "affine"),
    ("h' = h ** 1 * x\n", "affine"),
    ("h' = h ** 0 * x + h\n", "diagonal"),
    ("h' = logsumexp(h, 0) + x\n", "nonlinear"),
    ("h' = max(h + x, axis=0) + x\n", "nonlinear"),
    ("h' = max(h, x)\n", "diagonal"),
])
def test_symbolic_verdict_is_the_plans_on_the_formula_as_written(body, kind):
    rec = recur.loads("recurrence r\ndim N = 3\ninput x[N]\nstate h[N] = 2\n" + body)
    assert rec.model.kinds == {"h": kind}, rec.model.classification
    assert stage_kinds(rec.plan(length=16)) == {"h": kind}


def test_kalman_mean_is_affine_given_the_covariance_everywhere():
    path = EXAMPLES[[p.stem for p in EXAMPLES].index("kalman")]
    rec = recur.load(path)
    assert rec.model.kinds == {"m": "affine", "P": "nonlinear"}
    assert path.read_text().splitlines()[0] == "# kind: m=affine, P=nonlinear"
    plan = rec.plan(length=8)
    assert stage_kinds(plan) == {"m": "affine", "P": "nonlinear"}
    assert [st.states for st in plan.stages] == [("P",), ("m",)]
    assert "affine in m given P" in rec.model.classification["m"][1]
    assert rec.model.kind_labels["m"] == "affine given P"


def test_plans_point_into_the_rec_file():
    path = EXAMPLES[[p.stem for p in EXAMPLES].index("gru")]
    plan = recur.load(path).plan(length=3)
    where = (f"(at {path}, line 12, column 5: `z = sigmoid(Wz @ h + Uz @ x + bz)`)")
    assert where in plan.stages[0].evidence, plan.stages[0].evidence
    assert where in dict(plan.stages[0].rejected)["scan"]
    rec = recur.loads("recurrence r\nparam r = 3.9\nstate x = 0.5\nx' = r * x * (1 - x)\n")
    with pytest.raises(recur.PlanError) as e:
        rec.scan(rec.init(), None, length=5, method="scan")
    # the product of two state-dependent values is the second '*', not r * x
    assert "(at <string>, line 4, column 12: `x' = r * x * (1 - x)`)" in str(e.value)


def test_source_map_finds_the_operation():
    m = recur.loads("recurrence r\ndim N = 2\nparam W[N, N]\nstate h[N] = 0\n"
                    "a = W @ h\nh' = tanh(a) * h + a\n", filename="m.rec").model
    line = next(i + 1 for i, ln in enumerate(m.source.splitlines()) if "'h': _out(jnp" in ln)
    col = m.source.splitlines()[line - 1].index("jnp.tanh")
    assert m.locate(line, col, "tanh") == (6, 6, "h' = tanh(a) * h + a")
    assert m.locate(line, col, "mul") == (6, 14, "h' = tanh(a) * h + a")
    assert m.locate(line) == (6, 1, "h' = tanh(a) * h + a")
    assert m.locate(1) is None
    text = f"through `tanh` (at {m.code_file}:{line}:{col} (step)); left alone (at x.py:3 (f))"
    assert m.point_to_source(text) == ("through `tanh` (at m.rec, line 6, column 6: "
                                       "`h' = tanh(a) * h + a`); left alone (at x.py:3 (f))")


def test_loaded_recurrence_scans_like_the_loop():
    rec = recur.load(EXAMPLES[[p.stem for p in EXAMPLES].index("ema")], D=4, dtype=jnp.float64)
    h0 = rec.init()
    xs = {"x": jnp.asarray(np.random.default_rng(0).standard_normal((20, 4)))}
    params = rec.model.fill_params(None)
    ref = jax.lax.scan(lambda h, x: (rec.model.step(h, x, params),) * 2, h0, xs)[1]
    for method in ("scan", "sequential", "auto"):
        hs = rec.scan(h0, xs, method=method)
        np.testing.assert_allclose(hs["h"], ref["h"], rtol=1e-12)
    assert rec.plan(h0, xs).stages[0].states == ("h",)
    with pytest.raises(recur.DSLError, match="missing input"):
        rec.scan(h0, {})


def test_step_index_and_no_inputs():
    rec = recur.loads("recurrence c\nstate h = 0\nh' = 0.5 * h + t\n", dtype=jnp.float64)
    hs = rec.scan(rec.init(), None, length=5, method="scan")
    ref, h = [], 0.0
    for t in range(5):
        h = 0.5 * h + t
        ref.append(h)
    np.testing.assert_allclose(hs["h"], ref, rtol=1e-12)


def test_compile_imports_and_equals_the_loaded_recurrence(tmp_path):
    path = EXAMPLES[[p.stem for p in EXAMPLES].index("gru")]
    out = tmp_path / "gru_model.py"
    r = subprocess.run([sys.executable, "-m", "recur", "compile", str(path), "--dim", "D=3",
                        "--dim", "I=2", "-o", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "recur plan" in text  # the plan is in the docstring
    spec = importlib.util.spec_from_file_location("gru_model", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rec = recur.load(path, D=3, I=2)
    rng = np.random.default_rng(1)
    params = {k: jnp.asarray(rng.standard_normal(s), rec.model.dtype)
              for k, s in rec.model.params.items()}
    h = {"h": jnp.asarray(rng.standard_normal(3), rec.model.dtype)}
    x = {"x": jnp.asarray(rng.standard_normal(2), rec.model.dtype)}
    np.testing.assert_allclose(module.step(h, x, params)["h"], rec(h, x, params)["h"],
                               rtol=1e-6)


def test_dsl_errors_are_recur_errors():
    with pytest.raises(recur.DSLSyntaxError) as info:
        recur.loads("recurrence r\nstate h = 0\nh' = h +\n")
    assert info.value.line == 3
    with pytest.raises(recur.DSLError, match="did you mean|closest|hh"):
        recur.loads("recurrence r\nstate hh = 0\nhh' = h + 1\n")
    with pytest.raises(recur.DSLError):
        recur.load("/nonexistent/model.rec")


def test_plan_errors_use_declared_names():
    rec = recur.loads("recurrence r\nparam r = 3.9\nstate x = 0.5\nx' = r * x * (1 - x)\n")
    with pytest.raises(recur.PlanError, match=r"stage of x: x is nonlinear"):
        rec.scan(rec.init(), None, length=5, method="scan")


# ----------------------------------------------------------------- errors a new user hits

def ema():
    return recur.load(EXAMPLES[[p.stem for p in EXAMPLES].index("ema")], D=4)


def test_xs_as_an_array_names_the_declared_inputs():
    rec = ema()
    with pytest.raises(recur.DSLError) as e:
        rec.scan(rec.init(), jnp.zeros((8, 4)))
    msg = str(e.value)
    assert "xs must be a dict of the declared inputs {'x': (T, 4)}" in msg
    assert "got an array of shape (8, 4)" in msg and "xs={'x': array}" in msg
    with pytest.raises(recur.DSLError, match="declares no inputs: pass xs=None and length=T"):
        recur.loads("recurrence c\nstate h = 0\nh' = h + 1\n").scan({"h": 0.0},
                                                                     jnp.zeros(3))


def test_h0_not_a_dict_names_the_declared_states():
    rec = ema()
    xs = {"x": jnp.zeros((8, 4))}
    with pytest.raises(recur.DSLError) as e:
        rec.scan(jnp.zeros(4), xs)
    assert "h0 must be a dict of the declared states {'h': (4,)} (rec.init() gives one), " \
        "got an array of shape (4,)" in str(e.value)
    with pytest.raises(recur.DSLError, match="missing state.s. h; unknown state.s. g"):
        rec.scan({"g": jnp.zeros(4)}, xs)
    with pytest.raises(recur.DSLError, match=r"state 'h' in h0 has shape \(3,\); declared h\[4\]"):
        rec.scan({"h": jnp.zeros(3)}, xs)
    with pytest.raises(recur.DSLError, match="h0 must be a dict"):
        rec.plan([0.0] * 4, xs)


def test_float64_without_x64_says_how_to_turn_it_on():
    code = ("import jax.numpy as jnp, recur\n"
            "try:\n"
            "    recur.loads('recurrence r\\nstate h = 0\\nh\\' = h\\n', dtype=jnp.float64)\n"
            "except recur.DSLError as e:\n"
            "    print('DSLError:', e)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_ENABLE_X64"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "DSLError: dtype float64 needs JAX's 64-bit mode, which is off" in r.stdout
    assert 'jax.config.update("jax_enable_x64", True)' in r.stdout
    assert "internal error" not in r.stdout and "Warning" not in r.stderr


# ------------------------------------------------------------------------ per-step outputs

READOUT = """recurrence readout
dim N = 3, K = 2
param A[N, N], C[K, N]
input u[N]
state h[N] = 0, s = 1
z = tanh(A @ h + u)
h' = z
s' = 0.5 * s + sum(u)
output y = C @ h'
output e = sum(z * h) + s' - s
output k = t
"""


def hand_written_lax_scan(rec, h0, xs, p, reverse=False):
    def body(h, x):
        z = jnp.tanh(p["A"] @ h["h"] + x["u"])
        new = {"h": z, "s": 0.5 * h["s"] + jnp.sum(x["u"])}
        ys = {"y": p["C"] @ z, "e": jnp.sum(z * h["h"]) + new["s"] - h["s"],
              "k": x["t"].astype(z.dtype)}
        return new, ys
    T = xs["u"].shape[0]
    return jax.lax.scan(body, h0, {**xs, "t": jnp.arange(T)}, reverse=reverse)


def readout_args():
    rec = recur.loads(READOUT, dtype=jnp.float64)
    rng = np.random.default_rng(0)
    p = {"A": rng.normal(size=(3, 3)), "C": rng.normal(size=(2, 3))}
    xs = {"u": jnp.asarray(rng.normal(size=(7, 3)))}
    return rec, rec.init(), xs, rec.model.fill_params(p)


def test_outputs_are_declared_with_shapes_and_kinds():
    rec = recur.loads(READOUT)
    assert rec.model.outputs == {"y": (2,), "e": (), "k": ()}
    kinds = {y: k for y, (k, _) in rec.model.output_classification.items()}
    assert kinds == {"y": "affine", "e": "nonlinear", "k": "affine"}
    assert "y is affine in h'" in rec.model.output_classification["y"][1]
    assert rec.model.output_classification["e"][1] == (
        "e is nonlinear through tanh(A @ h + u) (line 6, column 5) (it reads h, s, s')")
    assert rec.model.kinds == {"h": "nonlinear", "s": "affine"}   # outputs change no state


@pytest.mark.parametrize("reverse", [False, True])
def test_lax_step_is_the_body_of_jax_lax_scan(reverse):
    rec, h0, xs, p = readout_args()
    xs_t = {**xs, "t": jnp.arange(7)}
    got = jax.lax.scan(lambda h, x: rec.model.lax_step(h, x, p), h0, xs_t, reverse=reverse)
    ref = hand_written_lax_scan(rec, h0, xs, p, reverse=reverse)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    new, ys = rec.model.lax_step(h0, {"u": xs["u"][0], "t": jnp.asarray(0)}, p)
    step = rec.model.step(h0, {"u": xs["u"][0], "t": jnp.asarray(0)}, p)
    assert set(ys) == {"y", "e", "k"} and all(v is not None for v in ys.values())
    for k in step:
        np.testing.assert_array_equal(new[k], step[k])
    assert "def lax_step(h, x, p):" in rec.model.source


def test_no_outputs_gives_an_empty_dict():
    m = recur.loads("recurrence r\nstate h = 1\nh' = 0.5 * h\n").model
    new, ys = m.lax_step(m.init(), None, {})
    assert ys == {} and float(new["h"]) == 0.5


def test_lax_scan_equals_jax_lax_scan():
    pytest.importorskip("recur.lax")
    rec, h0, xs, p = readout_args()
    for reverse in (False, True):
        ref = hand_written_lax_scan(rec, h0, xs, p, reverse=reverse)
        for method in ("auto", "sequential"):
            got = rec.lax_scan(h0, xs, p, reverse=reverse, method=method)
            assert jax.tree.structure(got) == jax.tree.structure(ref)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    (final, ys), info = rec.lax_scan(h0, xs, p, return_info=True)
    assert ys["y"].shape == (7, 2) and final["h"].shape == (3,)


def test_compiled_module_has_the_outputs(tmp_path):
    src = recur.compile(READOUT, with_plan=False)
    ns = {}
    exec(compile(src, "readout.py", "exec"), ns)
    assert ns["OUTPUT_SHAPES"] == {"y": (2,), "e": (), "k": ()}
    rec, h0, xs, p = readout_args()
    x0 = {"u": xs["u"][0], "t": jnp.asarray(3)}
    a, b = ns["lax_step"](h0, x0, p), rec.model.lax_step(h0, x0, p)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-12)
