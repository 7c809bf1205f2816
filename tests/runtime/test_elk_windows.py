"""ELK / quasi-ELK (Levenberg--Marquardt steps as a parallel Kalman smoother) and sliding
windows against ``lax.scan`` loops (float64: tests/conftest.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recur._errors import PlanError
from recur.runtime._iterative import solve_nonlinear
from recur.runtime._windows import default_sweeps

from .._steps import loop, structure_of, true_residual

TOL = dict(rtol=1e-13, atol=1e-13)


def gru_step(D, seed=0):
    rng = np.random.default_rng(seed)
    W = jnp.asarray(rng.standard_normal((3, D, D)) / np.sqrt(D))
    U = jnp.asarray(rng.standard_normal((3, D, D)) / np.sqrt(D))

    def step(h, x):
        z = jax.nn.sigmoid(W[0] @ h + U[0] @ x)
        r = jax.nn.sigmoid(W[1] @ h + U[1] @ x)
        n = jnp.tanh(W[2] @ (r * h) + U[2] @ x)
        return (1 - z) * h + z * n

    return step


def tanh_problem(T, seed=1):
    rng = np.random.default_rng(seed)
    p = {"w": jnp.asarray(rng.uniform(-1.2, 1.2, 4)), "u": jnp.asarray(rng.standard_normal(4)),
         "b": jnp.asarray(0.1 * rng.standard_normal(4))}

    def step(h, x, p=p):
        return jnp.tanh(p["w"] * h + p["u"] * x + p["b"])

    return step, p, jnp.asarray(rng.standard_normal(4)), jnp.asarray(rng.standard_normal((T, 4)))


def lorenz96_problem(T=200):  # as tests/runtime/test_newton.py: T steps from the attractor
    rng = np.random.default_rng(1)
    h = 8.0 + rng.standard_normal(5)
    for _ in range(500):
        h = h + 0.01 * ((np.roll(h, -1) - np.roll(h, 2)) * np.roll(h, 1) - h + 8.0)

    def step(h, x):
        return h + 0.01 * ((jnp.roll(h, -1) - jnp.roll(h, 2)) * jnp.roll(h, 1) - h + 8.0)

    return step, jnp.asarray(h), jnp.zeros((T, 5))


# ----------------------------------------------------------------------------- ELK

def test_elk_gru_dense_agrees_with_loop():
    rng = np.random.default_rng(2)
    step = gru_step(4)
    h0, xs = jnp.asarray(0.1 * rng.standard_normal(4)), jnp.asarray(rng.standard_normal((64, 4)))
    s = structure_of(step, h0, xs)
    assert s.jacobian == "dense"
    zs, st, hist = solve_nonlinear(step, h0, xs, method="elk", structure=s, length=64, **TOL)
    assert bool(st.converged) and int(st.iterations) <= 8, st
    np.testing.assert_allclose(zs, loop(step, h0, xs), rtol=0, atol=1e-12)
    assert true_residual(step, h0, zs, xs) <= float(st.residual) + 1e-15
    assert int(st.iterations) == int(st.iterations)
    assert int(st.evaluations) == 64 * (int(st.iterations) + 2)


@pytest.mark.parametrize("method", ["elk", "quasi-elk"])
def test_elk_tanh_agrees_with_loop_and_gradients(method):
    T = 32
    step, p, h0, xs = tanh_problem(T)
    s = structure_of(step, h0, xs)
    assert s.jacobian == "diagonal"

    def loss(p, h0, xs, solver):
        f = lambda h, x: step(h, x, p)  # noqa: E731
        if solver:
            zs, st, hist = solve_nonlinear(f, h0, xs, method=method, structure=s, length=T, **TOL)
        else:
            zs, st = loop(f, h0, xs), None
        return jnp.sum(jnp.sin(zs)), (zs, st)

    (_, (zs, st)), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(p, h0, xs, True)
    (_, (ref_zs, _)), ref = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        p, h0, xs, False)
    assert bool(st.converged), st
    np.testing.assert_allclose(zs, ref_zs, rtol=0, atol=1e-13)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_elk_lorenz96_is_honest_and_windows_converge():
    # ELK (damped Newton) does NOT converge on Lorenz-96 T=200 from the default guess: the
    # merit decreases but the iterate stays wrong from step 0 (see the module docstring).
    # It must say so; sliding-window DEER converges on the same problem.
    T = 200
    step, h0, xs = lorenz96_problem(T)
    s = structure_of(step, h0, xs)
    ref = loop(step, h0, xs)
    zs, st, hist = solve_nonlinear(step, h0, xs, method="elk", structure=s, length=T, max_iters=20,
                             **TOL)
    real = true_residual(step, h0, zs, xs)
    assert not bool(st.converged)
    assert real > 1e-6 and abs(real - float(st.residual)) <= 1e-12 * max(1.0, real)
    assert float(st.lyapunov) > 0
    zs, st, hist = solve_nonlinear(step, h0, xs, method="deer", structure=s, length=T, window=32, **TOL)
    assert bool(st.converged), st
    assert true_residual(step, h0, zs, xs) <= float(st.residual) + 1e-15 <= 1e-12
    np.testing.assert_allclose(zs, ref, atol=1e-9)
    assert int(st.evaluations) == T + 32 * int(st.iterations)


# ----------------------------------------------------------------------------- windows

def test_window_picard_euler():
    rng = np.random.default_rng(3)
    W = jnp.asarray(rng.standard_normal((4, 4)) / 2)

    def step(h, x):
        return h + 0.05 * (jnp.tanh(W @ h + x) - h)

    T = 256
    h0, xs = jnp.zeros(4), jnp.asarray(rng.standard_normal((T, 4)))
    s = structure_of(step, h0, xs)
    zs, st, hist = solve_nonlinear(step, h0, xs, method="picard", structure=s, length=T, window=32,
                             **TOL)
    assert bool(st.converged), st
    np.testing.assert_allclose(zs, loop(step, h0, xs), rtol=0, atol=1e-11)
    assert true_residual(step, h0, zs, xs) <= float(st.residual) + 1e-15
    sweeps = int(st.iterations)
    assert T // 32 <= sweeps <= default_sweeps(T, 32)
    assert int(st.evaluations) == T + 32 * sweeps
    assert hist.shape == (default_sweeps(T, 32),)


def test_window_deer_tanh_and_gradients():
    T = 256
    step, p, h0, xs = tanh_problem(T)
    s = structure_of(step, h0, xs)

    def loss(p):
        f = lambda h, x: step(h, x, p)  # noqa: E731
        zs, st, hist = solve_nonlinear(f, h0, xs, method="deer", structure=s, length=T, window=32,
                                 **TOL)
        return jnp.sum(jnp.sin(zs)), (zs, st)

    (_, (zs, st)), g = jax.value_and_grad(loss, has_aux=True)(p)
    assert bool(st.converged), st
    np.testing.assert_allclose(zs, loop(step, h0, xs), rtol=0, atol=1e-12)
    assert 8 <= int(st.iterations) <= default_sweeps(T, 32)
    assert int(st.evaluations) == T + 32 * int(st.iterations)
    # derivatives come from custom_root on the full trajectory, not from the windows
    ref = jax.grad(lambda p: jnp.sum(jnp.sin(loop(lambda h, x: step(h, x, p), h0, xs))))(p)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_window_validation():
    step, p, h0, xs = tanh_problem(8)
    s = structure_of(step, h0, xs)
    kw = dict(structure=s, length=8, **TOL)
    with pytest.raises(PlanError):
        solve_nonlinear(step, h0, xs, method="deer", window=0, **kw)
    with pytest.raises(PlanError):
        solve_nonlinear(step, h0, xs, method="elk", window=4, **kw)
    # a window covering the sequence is the whole-sequence solver
    zs, st, hist = solve_nonlinear(step, h0, xs, method="jacobi", window=8, **kw)
    assert bool(st.converged) and hist.shape == (8,)
