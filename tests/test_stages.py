"""Stage decomposition: staged plans, their classification, runtime and derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur

DT = 0.1
F = jnp.array([[1, 0, DT, 0], [0, 1, 0, DT], [0, 0, 1, 0], [0, 0, 0, 1.0]])
H = jnp.array([[1.0, 0, 0, 0], [0, 1, 0, 0]])
Q = 0.01 * jnp.eye(4)
R = 0.25 * jnp.eye(2)


def kalman_step(h, y):
    m, P = h["m"], h["P"]
    Pp = F @ P @ F.T + Q
    S = H @ Pp @ H.T + R
    K = Pp @ H.T @ jnp.linalg.inv(S)
    mp = F @ m
    return {"m": mp + K @ (y - H @ mp), "P": Pp - K @ S @ K.T}


def reference_filter(ys):
    """An independent textbook Kalman filter in numpy."""
    Fn, Hn, Qn, Rn = map(np.asarray, (F, H, Q, R))
    m, P, out = np.zeros(4), np.eye(4), []
    for y in np.asarray(ys):
        m, P = Fn @ m, Fn @ P @ Fn.T + Qn
        S = Hn @ P @ Hn.T + Rn
        K = P @ Hn.T @ np.linalg.inv(S)
        m, P = m + K @ (y - Hn @ m), (np.eye(4) - K @ Hn) @ P
        out.append(m)
    return np.stack(out)


def test_kalman_is_two_stages_covariance_first_mean_affine():
    ys = jnp.asarray(np.random.default_rng(0).standard_normal((60, 2)))
    h0 = {"m": jnp.zeros(4), "P": jnp.eye(4)}
    plan = recur.plan(kalman_step, h0, ys, backend="gpu")
    assert [st.states for st in plan.stages] == [("['P']",), ("['m']",)]
    assert [st.kind for st in plan.stages] == ["nonlinear", "affine"]
    assert plan.stages[1].method == "scan" and plan.method == "staged"
    assert "given the earlier stages" in plan.stages[1].evidence
    hs, info = recur.scan(kalman_step, h0, ys, method={"['m']": "scan"}, return_info=True)
    assert info.method == "staged" and info.converged.shape == (2,)
    np.testing.assert_allclose(hs["m"], reference_filter(ys), rtol=1e-9, atol=1e-10)
    ref = jax.lax.scan(lambda h, y: (kalman_step(h, y),) * 2, h0, ys)[1]
    np.testing.assert_allclose(hs["P"], ref["P"], rtol=1e-12)


def test_staged_gradients_are_exact():
    ys = jnp.asarray(np.random.default_rng(1).standard_normal((20, 2)))
    h0 = {"m": jnp.zeros(4), "P": jnp.eye(4)}

    def loss(ys, run):
        return jnp.sum(jnp.sin(run(ys)["m"]))
    par = jax.grad(loss)(ys, lambda ys: recur.scan(kalman_step, h0, ys, method={"['m']": "scan"}))
    seq = jax.grad(loss)(ys, lambda ys: jax.lax.scan(
        lambda h, y: (kalman_step(h, y),) * 2, h0, ys)[1])
    np.testing.assert_allclose(par, seq, rtol=1e-9, atol=1e-12)


def lstm(h, x, W):
    hh, c = h
    z = W @ jnp.concatenate([hh, x])
    i, f, o, g = jnp.split(z, 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jnp.tanh(c) * jax.nn.sigmoid(o), c


def test_standard_lstm_is_one_dense_stage():
    W = jnp.asarray(np.random.default_rng(0).standard_normal((16, 6)) * 0.3)
    plan = recur.plan(lstm, (jnp.zeros(4), jnp.zeros(4)), jnp.ones((10, 2)), W)
    assert len(plan.stages) == 1 and plan.stages[0].jacobian == "dense"
    assert plan.kind == "nonlinear"


def test_diagonal_rnn_of_64_units_is_one_diagonal_stage():
    a = jnp.asarray(np.random.default_rng(0).uniform(0.5, 0.9, 64))
    plan = recur.plan(lambda h, x: jnp.tanh(a * h + x), jnp.zeros(64), jnp.ones((10, 64)))
    assert len(plan.stages) == 1
    assert (plan.stages[0].kind, plan.stages[0].jacobian) == ("diagonal", "diagonal")


def test_triangular_affine_chain_stays_one_stage():
    plan = recur.plan(lambda h, x: 0.5 * jnp.cumsum(h) + x, jnp.zeros(16), jnp.ones((4, 16)))
    assert len(plan.stages) == 1 and plan.stages[0].kind == "affine"


def test_partial_leaf_stages_are_named_with_ranges_and_run_right():
    def step(h, x):
        first = jnp.tanh(h[:2] + x[:2])          # nonlinear, reads only itself
        rest = 0.5 * h[2:] + first.sum() + x[2:]  # affine given the first two
        return jnp.concatenate([first, rest])
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((30, 5)))
    plan = recur.plan(step, jnp.zeros(5), xs, backend="gpu")
    # linearity is decided per leaf: the elements 2..4 share a leaf with the nonlinear
    # elements 0..1, so they are not claimed affine, and the two element stages merge
    assert [st.states for st in plan.stages] == [("h",)]
    from recur.passes._lower import _stage_names
    from recur.passes._trace import trace_step
    ir = trace_step(step, jnp.zeros(5), xs)
    assert _stage_names(ir, np.array([0, 1, 3])) == ("h[0:2]", "h[3:4]")
    hs = recur.scan(step, jnp.zeros(5), xs)
    ref = jax.lax.scan(lambda h, x: (step(h, x),) * 2, jnp.zeros(5), xs)[1]
    np.testing.assert_allclose(hs, ref, rtol=1e-12)


def test_method_dict_names_must_be_stages():
    h0 = {"m": jnp.zeros(4), "P": jnp.eye(4)}
    with pytest.raises(recur.PlanError, match="no stage"):
        recur.plan(kalman_step, h0, jnp.ones((5, 2)), method={"['q']": "scan"})
    with pytest.raises(recur.PlanError, match=r"stage of \['P'\]"):
        recur.plan(kalman_step, h0, jnp.ones((5, 2)), method="scan")


def test_memory_guard_rejects_and_explains():
    W = jnp.asarray(np.random.default_rng(0).standard_normal((64, 64)) / 8, jnp.float32)
    args = (jax.ShapeDtypeStruct((64,), jnp.float32),
            jax.ShapeDtypeStruct((10**7, 64), jnp.float32))
    with pytest.raises(recur.PlanError, match=r"needs about .* GB.*budget"):
        recur.plan(lambda h, x: W @ h + x, *args, method="scan", backend="gpu")
    plan = recur.plan(lambda h, x: W @ h + x, *args, backend="gpu")
    assert plan.method == "sequential" and "memory budget" in plan.stages[0].rejected[0][1]
    small = recur.plan(lambda h, x: W @ h + x, *args, backend="gpu", memory_limit=1e15)
    assert small.method == "scan"
