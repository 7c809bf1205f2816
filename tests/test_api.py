"""The public contract of API.md: entry points, pytrees, options, errors."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur

from ._steps import loop


def test_public_names():
    for name in ["recurrence", "Recurrence", "scan", "plan", "Plan", "Stage", "RecurError",
                 "StepFunctionError", "DSLError", "DSLSyntaxError", "ConvergenceError",
                 "load", "loads", "compile"]:
        assert hasattr(recur, name), name
    for cls in [recur.StepFunctionError, recur.DSLError, recur.DSLSyntaxError,
                recur.ConvergenceError, recur.PlanError]:
        assert issubclass(cls, recur.RecurError)


def test_decorator_keeps_the_step_and_adds_scan():
    @recur.recurrence
    def step(h, x, p):
        return p * h + x

    assert isinstance(step, recur.Recurrence)
    assert float(step(2.0, 1.0, 3.0)) == 7.0
    xs = jnp.arange(5.0)
    np.testing.assert_allclose(step.scan(jnp.asarray(1.0), xs, jnp.asarray(0.5)),
                               loop(step.fn, jnp.asarray(1.0), xs, jnp.asarray(0.5)))
    long_xs = jax.ShapeDtypeStruct((4096,), xs.dtype)   # long enough for a GPU scan to pay
    assert step.plan(jnp.asarray(1.0), long_xs, jnp.asarray(0.5), backend="gpu").method == "scan"

    @recur.recurrence(method="sequential")
    def step2(h, x):
        return 0.5 * h + x

    hs, info = step2.scan(jnp.zeros(2), jnp.ones((3, 2)), return_info=True)
    assert info.method == "sequential"


class State(NamedTuple):
    a: jax.Array
    b: jax.Array


def test_pytrees_namedtuple_state_dict_inputs_tuple_params():
    def step(h, x, p):
        w, c = p
        return State(a=w * h.a + x["u"], b=h.b * c + h.a[0])

    h0 = State(jnp.ones(3), jnp.zeros((2, 2)))
    xs = {"u": jnp.asarray(np.random.default_rng(0).standard_normal((7, 3)))}
    params = (jnp.asarray(0.3), jnp.asarray(0.8))
    hs, info = recur.scan(step, h0, xs, params, return_info=True, method="scan")
    ref = loop(step, h0, xs, params)
    assert isinstance(hs, State)
    for a, b in zip(hs, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert info.method == "scan"
    plan = recur.plan(step, h0, xs, params)
    assert plan.stages[0].states == (".a", ".b")


def test_reverse_and_length_and_zero_length():
    def step(h, x):
        return 0.9 * h + x
    xs = jnp.arange(6.0)
    np.testing.assert_allclose(recur.scan(step, jnp.asarray(0.0), xs, reverse=True),
                               loop(step, jnp.asarray(0.0), xs, reverse=True), rtol=1e-12)
    hs, info = recur.scan(step, jnp.zeros(3), jnp.zeros((0, 3)), return_info=True)
    assert hs.shape == (0, 3) and bool(info.converged) and int(info.iterations) == 0
    hs = recur.scan(lambda h, x: h + 1.0, jnp.zeros(2), None, length=4)
    np.testing.assert_allclose(hs[:, 0], [1, 2, 3, 4])


def test_info_is_a_pytree_returnable_from_jit():
    f = jax.jit(lambda xs: recur.scan(lambda h, x: 0.5 * h + x, jnp.zeros(2), xs,
                                      return_info=True, method="scan"))
    hs, info = f(jnp.ones((4, 2)))
    assert isinstance(info, recur.Info) and info.method == "scan"
    assert bool(info.converged) and not bool(info.fell_back)


def test_closure_over_changing_arrays_is_never_stale():
    xs = jnp.ones((4, 2))
    for scale in (0.5, 0.25):
        a = jnp.full((2,), scale)
        hs = recur.scan(lambda h, x: a * h + x, jnp.zeros(2), xs)
        np.testing.assert_allclose(hs, loop(lambda h, x: a * h + x, jnp.zeros(2), xs))

    W = {"w": jnp.eye(2) * 0.5}

    def step(h, x):
        return W["w"] @ h + x
    first = recur.scan(step, jnp.zeros(2), xs)
    W["w"] = jnp.array([[0.1, 0.7], [0.2, 0.3]])  # block structure changes: dense now
    second = recur.scan(step, jnp.zeros(2), xs)
    np.testing.assert_allclose(second, loop(step, jnp.zeros(2), xs), rtol=1e-12)
    assert not np.allclose(first, second)


def test_wrong_structure_shape_dtype_are_step_function_errors():
    with pytest.raises(recur.StepFunctionError, match="structure"):
        recur.scan(lambda h, x: (h, h), jnp.zeros(2), jnp.ones((3, 2)))
    with pytest.raises(recur.StepFunctionError, match=r"h with shape \(3,\).*\(2,\)"):
        recur.scan(lambda h, x: jnp.zeros(3), jnp.zeros(2), jnp.ones((3, 2)))
    with pytest.raises(recur.StepFunctionError, match=r"\['b'\].*float64.*float32"):
        recur.scan(lambda h, x: {"a": h["a"], "b": h["b"].astype(jnp.float64) * 2.0},
                   {"a": jnp.zeros(1), "b": jnp.zeros(2, jnp.float32)}, None, length=3)


def test_unequal_lengths_and_missing_length():
    with pytest.raises(recur.StepFunctionError, match=r"unequal lengths.*\[0\]: 3.*\[1\]: 4"):
        recur.scan(lambda h, x: h, jnp.zeros(2), (jnp.ones((3, 2)), jnp.ones((4, 2))))
    with pytest.raises(recur.StepFunctionError, match="length"):
        recur.scan(lambda h, x: h, jnp.zeros(2), None)
    with pytest.raises(recur.StepFunctionError, match="length=5"):
        recur.scan(lambda h, x: h, jnp.zeros(2), jnp.ones((3, 2)), length=5)


def test_python_control_flow_and_arity():
    def bad(h, x):
        if h[0] > 0:
            return h
        return -h
    with pytest.raises(recur.StepFunctionError, match="jnp.where"):
        recur.scan(bad, jnp.zeros(2), jnp.ones((3, 2)))
    with pytest.raises(recur.StepFunctionError, match=r"fn\(h, x, params\)"):
        recur.scan(lambda h, x: h, jnp.zeros(2), jnp.ones((3, 2)), jnp.ones(2))
    with pytest.raises(recur.StepFunctionError, match=r"params=None"):
        recur.scan(lambda h, x, p: h, jnp.zeros(2), jnp.ones((3, 2)))

    def raises(h, x):
        raise ValueError("boom")
    with pytest.raises(recur.StepFunctionError, match="ValueError.*boom"):
        recur.scan(raises, jnp.zeros(2), jnp.ones((3, 2)))
    with pytest.raises(recur.StepFunctionError, match="not an array|numeric"):
        recur.scan(lambda h, x: h, "hello", jnp.ones((3, 2)))


def test_methods_and_options_are_checked():
    def tanh_step(h, x):
        return jnp.tanh(h + x)
    with pytest.raises(recur.PlanError, match=r"method='scan' needs an affine.*tanh"):
        recur.scan(tanh_step, jnp.zeros(2), jnp.ones((3, 2)), method="scan")
    with pytest.raises(recur.PlanError, match="unknown method"):
        recur.scan(tanh_step, jnp.zeros(2), jnp.ones((3, 2)), method="fast")
    with pytest.raises(recur.PlanError, match="window must be a positive"):
        recur.scan(tanh_step, jnp.zeros(2), jnp.ones((3, 2)), method="deer", window=0)
    with pytest.raises(recur.PlanError, match="unknown option"):
        recur.scan(tanh_step, jnp.zeros(2), jnp.ones((3, 2)), tolerance=1e-3)
    with pytest.raises(recur.PlanError, match="on_failure"):
        recur.scan(tanh_step, jnp.zeros(2), jnp.ones((3, 2)), on_failure="retry")
    hs = recur.scan(tanh_step, jnp.zeros(2), jnp.ones((3, 2)))
    np.testing.assert_allclose(hs, loop(tanh_step, jnp.zeros(2), jnp.ones((3, 2))))


def test_integer_state_runs_sequentially():
    plan = recur.plan(lambda h, x: h + x, jnp.zeros(2, jnp.int32), jnp.ones((3, 2), jnp.int32))
    assert plan.kind == "affine" and plan.method == "sequential"
    assert "not float" in plan.stages[0].rejected[0][1]
    hs = recur.scan(lambda h, x: h + x, jnp.zeros(2, jnp.int32), jnp.ones((3, 2), jnp.int32))
    np.testing.assert_array_equal(hs[:, 0], [1, 2, 3])


def test_explain_to_dict_graph():
    plan = recur.plan(lambda h, x: 0.5 * h + x, jnp.zeros(3), jnp.ones((8, 3)), backend="gpu")
    text = plan.explain()
    for word in ["affine", "Jacobian does not depend on h", "scan", "reads", "jacobian"]:
        assert word in text
    import json
    d = json.loads(plan.to_json())
    assert d["stages"][0]["method"] == "scan" and d["kind"] == "affine"
    g = plan.graph()
    assert list(g.nodes) == ["h"] and g.has_edge("h", "h")
    assert "== dependency ==" in plan.explain_passes()


class _Residual:
    """A step whose affine analysis is right but whose values we corrupt via check."""


def test_residual_check_and_fallback_and_raise(monkeypatch):
    from recur.runtime import _affine

    real = _affine.solve_affine

    def corrupted(*args, **kwargs):
        return real(*args, **kwargs) + 1.0  # an analysis/runtime bug in disguise
    monkeypatch.setattr(_affine, "solve_affine", corrupted)
    from recur.runtime import _program, _stages
    monkeypatch.setattr(_stages, "solve_affine", corrupted)
    _program._programs.clear()

    def step(h, x):
        return 0.5 * h + x
    xs = jnp.ones((5, 2))
    hs, info = recur.scan(step, jnp.zeros(2), xs, return_info=True, method="scan")
    np.testing.assert_allclose(hs, loop(step, jnp.zeros(2), xs))
    assert bool(info.fell_back) and not bool(info.converged)
    with pytest.raises(recur.ConvergenceError):
        recur.scan(step, jnp.zeros(2), xs, on_failure="raise", method="scan")
    hs = recur.scan(step, jnp.zeros(2), xs, on_failure="ignore", method="scan")
    assert not np.allclose(hs, loop(step, jnp.zeros(2), xs))
    # under vmap, only failed examples take the loop's answer
    batched = jax.vmap(lambda x: recur.scan(step, jnp.zeros(2), x, method="scan"))(
        jnp.stack([xs, 2 * xs]))
    np.testing.assert_allclose(batched[1], loop(step, jnp.zeros(2), 2 * xs))
    _program._programs.clear()


def test_raise_under_jit_fails_at_run_time(monkeypatch):
    from recur.runtime import _program, _stages
    real = _stages.solve_affine
    monkeypatch.setattr(_stages, "solve_affine", lambda *a, **k: real(*a, **k) * 2.0)
    _program._programs.clear()
    f = jax.jit(lambda xs: recur.scan(lambda h, x: 0.5 * h + x, jnp.zeros(2), xs,
                                      on_failure="raise", method="scan"))
    with pytest.raises(Exception, match="ConvergenceError"):
        jax.block_until_ready(f(jnp.ones((5, 2))))
    _program._programs.clear()


def test_axis_name_without_a_mesh_is_refused_clearly():
    with pytest.raises(recur.PlanError, match="mesh"):
        recur.scan(lambda h, x: h, jnp.zeros(2), jnp.ones((3, 2)), axis_name="t")  # needs a mesh
