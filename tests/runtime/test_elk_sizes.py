"""ELK / quasi-ELK at the sizes that deadlocked (issue 16, item 1).

A dense tanh RNN with D = 32, T >= 200 (or D = 16, T = 300) hung forever on a 2-core machine:
the Kalman combine solved two independent batched systems with LAPACK custom calls whose
batch-parallel kernels deadlock XLA:CPU's intra-op thread pool
(``benchmarks/repro_elk_hang.py``).  Each test carries a tight ``timeout`` so that a hang
fails here (pytest-timeout, method "thread": a deadlock inside an XLA call never returns to
Python, so a signal-based timeout would never fire) instead of stalling the suite.

Float64 (tests/conftest.py); references are ``jax.lax.scan`` loops written here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur

from .._steps import loop

TOL = dict(rtol=1e-13, atol=1e-13)
# elk agrees with the loop to ~2e-15 here, quasi-elk to ~2e-13 (linear convergence stops
# at the 1e-13 residual test; the errors add up along the trajectory)
AGREE = {"elk": 1e-12, "quasi-elk": 1e-11}
HANG_TIMEOUT = 120  # seconds; each case takes a few (mostly compilation) when it works


def tanh_rnn(D, T, seed=0):
    rng = np.random.default_rng(seed)
    params = {"W": jnp.asarray(rng.standard_normal((D, D)) / np.sqrt(D)),
              "U": jnp.asarray(rng.standard_normal((D, D)) / np.sqrt(D)),
              "b": jnp.asarray(0.1 * rng.standard_normal(D))}

    def step(h, x, p):
        return jnp.tanh(p["W"] @ h + p["U"] @ x + p["b"])

    return step, params, jnp.zeros(D), jnp.asarray(rng.standard_normal((T, D)))


@pytest.mark.timeout(HANG_TIMEOUT)
@pytest.mark.parametrize("method", ["elk", "quasi-elk"])
@pytest.mark.parametrize("D, T", [(32, 300), (16, 300), (8, 1000)])
def test_elk_at_sizes_that_hung_agrees_with_loop(method, D, T):
    step, params, h0, xs = tanh_rnn(D, T)
    hs, info = recur.scan(step, h0, xs, params, method=method, return_info=True, **TOL)
    assert info.method == method
    assert bool(info.converged) and not bool(info.fell_back), info
    np.testing.assert_allclose(hs, loop(step, h0, xs, params), rtol=0, atol=AGREE[method])


@pytest.mark.timeout(HANG_TIMEOUT)
def test_elk_gradients_at_a_size_that_hung():
    step, params, h0, xs = tanh_rnn(16, 300, seed=1)

    def loss(params, h0, xs, solver):
        hs = (recur.scan(step, h0, xs, params, method="elk", **TOL) if solver
              else loop(step, h0, xs, params))
        return jnp.sum(jnp.sin(hs))

    g = jax.grad(loss, argnums=(0, 1, 2))(params, h0, xs, True)
    ref = jax.grad(loss, argnums=(0, 1, 2))(params, h0, xs, False)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
