"""What a new user hits in the first hour: caches that are fast and never stale, non-finite
results said as such, clear diagnostics, plans that count the backward pass."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur
from recur import _trace_cache

from ._steps import loop

W_GLOBAL = jnp.asarray([[0.5, 0.0], [0.0, 0.5]])


def global_step(h, x):
    return jnp.tanh(W_GLOBAL @ h) + x


def helper(h):
    return W_GLOBAL @ h


def step_with_helper(h, x):
    return jnp.tanh(helper(h)) + x


@pytest.mark.parametrize("fn", [global_step, step_with_helper])
def test_trace_cache_never_serves_a_replaced_global(fn):
    global W_GLOBAL
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((10, 2)))
    h0 = jnp.zeros(2)
    old = W_GLOBAL
    try:
        first = recur.scan(fn, h0, xs, method="deer")
        np.testing.assert_allclose(first, loop(fn, h0, xs, None, length=10), atol=1e-12)
        W_GLOBAL = jnp.asarray([[0.5, 0.3], [-0.2, 0.5]])  # a new array, now dense
        second = recur.scan(fn, h0, xs, method="deer")
        np.testing.assert_allclose(second, loop(fn, h0, xs, None, length=10), atol=1e-12)
        assert not np.allclose(first, second)
        g = jax.grad(lambda xs: jnp.sum(recur.scan(fn, h0, xs, method="deer") ** 2))(xs)
        g_ref = jax.grad(lambda xs: jnp.sum(loop(fn, h0, xs, None, length=10) ** 2))(xs)
        np.testing.assert_allclose(g, g_ref, atol=1e-10)
    finally:
        W_GLOBAL = old


def test_trace_cache_sees_closures_and_numpy_arrays_changed_in_place():
    W = np.asarray([[0.5, 0.0], [0.0, 0.5]])

    def make():
        state = {"W": jnp.asarray(W)}

        def step(h, x):
            return jnp.tanh(state["W"] @ h) + jnp.asarray(W) @ x
        return step, state
    step, state = make()
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((8, 2)))
    h0 = jnp.zeros(2)
    a = recur.scan(step, h0, xs)
    state["W"] = jnp.asarray([[0.1, 0.2], [0.3, 0.4]])  # a dict item replaced
    np.testing.assert_allclose(recur.scan(step, h0, xs), loop(step, h0, xs, None, length=8))
    W[0, 1] = 0.7  # a NumPy array changed in place
    np.testing.assert_allclose(recur.scan(step, h0, xs), loop(step, h0, xs, None, length=8))
    assert not np.allclose(a, recur.scan(step, h0, xs))


def test_fresh_lambdas_over_the_same_arrays_share_the_trace():
    _trace_cache.clear()
    W = jnp.asarray([[0.5, 0.1], [0.0, 0.5]])
    xs = jnp.ones((5, 2))
    for _ in range(3):
        recur.scan(lambda h, x: jnp.tanh(W @ h) + x, jnp.zeros(2), xs)
    assert len(_trace_cache._cache) == 1


def test_plan_cache_is_keyed_by_the_constants_the_dependency_pass_reads():
    xs = jnp.asarray(np.random.default_rng(2).standard_normal((8, 2)))
    h0 = jnp.zeros(2)
    for W in (jnp.asarray([[0.5, 0.0], [0.0, 0.4]]), jnp.asarray([[0.5, 0.2], [0.1, 0.4]])):
        step = lambda h, x, W=W: jnp.tanh(W @ h) + x  # noqa: E731
        plan = recur.plan(step, h0, xs)
        assert plan.stages[0].jacobian == ("diagonal" if W[0, 1] == 0 else "dense")
        g = jax.grad(lambda xs: jnp.sum(recur.scan(step, h0, xs, method="deer") ** 2))(xs)
        g_ref = jax.grad(lambda xs: jnp.sum(loop(step, h0, xs, None, length=8) ** 2))(xs)
        np.testing.assert_allclose(g, g_ref, atol=1e-10)


def test_non_finite_states_are_reported_where_they_start():
    def step(h, x):
        return 0.5 * jnp.tanh(h) + x
    xs = jnp.asarray(np.random.default_rng(3).standard_normal((12, 2))).at[5, 1].set(jnp.nan)
    for m in ("sequential", "deer", "quasi-deer"):
        hs, info = recur.scan(step, jnp.zeros(2), xs, method=m, return_info=True)
        assert int(info.first_nonfinite) == 5, m
        np.testing.assert_array_equal(np.isnan(hs), np.isnan(loop(step, jnp.zeros(2), xs, None,
                                                                   length=12)))
    hs, info = recur.scan(step, jnp.zeros(2), xs[::-1], method="deer", reverse=True,
                          return_info=True)
    assert int(info.first_nonfinite) == 6  # reversed: the NaN enters at t = 6 and runs to t = 0
    hs, info = recur.scan(step, jnp.zeros(2), xs[:5], method="deer", return_info=True)
    assert int(info.first_nonfinite) == -1


def test_a_scan_body_gets_pointed_to_recur_lax():
    with pytest.raises(recur.StepFunctionError, match="recur.lax.scan"):
        recur.scan(lambda h, x: (h + x, h), jnp.zeros(2), jnp.ones((3, 2)))


def test_python_float_params_stay_weak():
    def step(h, x, p):
        return p["a"] * h + x
    h0 = jnp.zeros(2, jnp.float32)
    xs = jnp.ones((4, 2), jnp.float32)
    hs = recur.scan(step, h0, xs, {"a": 0.5})  # x64 is on in the tests: 0.5 is weak
    assert hs.dtype == jnp.float32
    np.testing.assert_allclose(hs, loop(step, h0, xs, {"a": 0.5}, length=4))


def test_numpy_float64_inputs_with_x64_off_give_no_warning():
    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("error")
        import numpy as np, jax.numpy as jnp, recur
        xs = np.random.default_rng(0).standard_normal((50, 3))
        hs = recur.scan(lambda h, x: 0.9 * jnp.tanh(h) + x, jnp.zeros(3), xs, method="deer")
        hs = recur.scan(lambda h, x: 0.9 * h + x, jnp.zeros(3), xs)
        print(hs.dtype)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "float32"


def test_user_jacobian_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(recur.PlanError, match="jacobian="):
        recur.scan(lambda h, x: jnp.tanh(h) + x, jnp.zeros(3), jnp.ones((5, 3)),
                   method="quasi-deer", jacobian=lambda h, x, p: jnp.ones(4))


def test_contractivity_note_does_not_promise_quick_convergence_it_cannot_keep():
    K = 3
    logA = jnp.log(jnp.asarray(np.random.default_rng(4).dirichlet(np.ones(K), size=K)))

    def hmm(alpha, logb):  # the HMM forward step in log space: marginal (λ = 0)
        return jax.nn.logsumexp(alpha[:, None] + logA, axis=0) + logb
    logbs = jnp.log(jnp.asarray(np.random.default_rng(5).uniform(0.1, 1.0, (200, K))))
    note = " ".join(recur.plan(hmm, jnp.zeros(K), logbs).notes)
    assert "marginal" in note and "converge quickly" not in note

    def lif(v, x):  # a leaky integrate-and-fire neuron with a reset
        v = 0.9 * v + x
        return jnp.where(v > 1.0, 0.0, v)
    xs = jnp.asarray(np.random.default_rng(6).uniform(0, 0.3, 300))
    note = " ".join(recur.plan(lif, jnp.asarray(0.0), xs).notes)
    assert "not smooth" in note


def test_auto_counts_the_backward_pass_when_differentiated():
    def step(h, x, p):
        a, b = p
        return a * jax.nn.sigmoid(x) * h + b * x
    T, D = 10_000, 64
    xs = jnp.asarray(np.random.default_rng(7).standard_normal((T, D)), jnp.float32)
    p = (jnp.full(D, 0.99, jnp.float32), jnp.full(D, 0.1, jnp.float32))
    h0 = jnp.zeros(D, jnp.float32)
    plan = recur.plan(step, jax.ShapeDtypeStruct(h0.shape, h0.dtype),
                      jax.ShapeDtypeStruct(xs.shape, xs.dtype), p, backend="cpu")
    assert plan.method == "sequential"
    plan_grad = recur.plan(step, h0, xs, p, backend="cpu", for_grad=True)
    assert plan_grad.method == "scan" and "reverse" in plan_grad.stages[0].why
    seen = []

    def loss(p):
        hs, info = recur.scan(step, h0, xs, p, return_info=True)
        seen.append(info.method)
        return jnp.sum(hs)
    jax.grad(loss)(p)
    assert seen == ["scan"]
