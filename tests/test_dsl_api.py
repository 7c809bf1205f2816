"""The DSL through the public API: load/loads/compile, plans, and the agreement of the
symbolic verdict with the jaxpr analysis of the generated step."""

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


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_symbolic_and_jaxpr_verdicts_agree(path):
    rec = recur.load(path)
    plan = rec.plan(length=3)
    assert dict(plan.state_kinds) == rec.model.kinds, (plan.explain(), rec.model.classification)
    assert {n for st in plan.stages for n in st.states} == set(rec.model.states)


def test_simplification_makes_affine_and_both_analyses_agree():
    rec = recur.loads("recurrence r\ninput x\nstate h = 2\nh' = (h**2 - 1)/(h - 1) * x\n")
    assert rec.model.kinds == {"h": "affine"}
    plan = rec.plan(length=4096, backend="gpu")
    assert dict(plan.state_kinds) == {"h": "affine"} and plan.method == "scan"


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
