"""``recur.lax.scan(..., method="scan")`` with outputs keeps only chunk-boundary states
(``runtime/_scan_outputs.py``): equal to ``jax.lax.scan`` for every structure closed under
products, differentiable, checked where chunks meet, and lean in compiled memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import recur
from recur.runtime import _scan_outputs

RNG = np.random.default_rng(3)
W = jnp.asarray(RNG.standard_normal((4, 4)) * 0.4)
BLOCKS = jnp.asarray(RNG.standard_normal((2, 2, 2)) * 0.5)


def diagonal(h, x):
    a, b = x
    h2 = a * h + b
    return h2, {"dot": jnp.sum(h * b), "first": h2[0]}


def scalar(h, x):
    return 0.9 * h + x[1], jnp.tanh(h)            # output of the old state, nonlinear


def blocks(h, x):                                  # two independent 2 x 2 blocks
    hb = jnp.reshape(h, (2, 2))
    return jnp.reshape(jnp.einsum("bij,bj->bi", BLOCKS.astype(h.dtype), hb), (4,)) + x[1], h @ x[0]


def dense(h, x):
    return W.astype(h.dtype) @ h + x[1], None


def zero_jacobian(h, x):
    return x[1] * 2.0, h[1:]


def pytree(c, x):
    return {"u": 0.5 * c["u"] + x[1][:2], "v": x[0][2:] * c["v"] - c["u"]}, c["v"][0]


def inputs(T, dtype=jnp.float64):
    return (jnp.asarray(RNG.uniform(0.5, 1.0, (T, 4)), dtype),
            jnp.asarray(RNG.standard_normal((T, 4)), dtype))


CASES = {"diagonal": (diagonal, jnp.ones(4)), "scalar": (scalar, jnp.ones(4)),
         "blocks": (blocks, jnp.ones(4)), "dense": (dense, jnp.ones(4)),
         "zero": (zero_jacobian, jnp.ones(4)),
         "pytree": (pytree, {"u": jnp.ones(2), "v": jnp.zeros(2)})}


def close(a, b, tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("reverse", [False, True])
def test_equal_to_lax_scan_with_boundary_states_only(name, reverse):
    f, init = CASES[name]
    xs = inputs(37)
    plan = recur.lax.plan(f, init, xs, method="scan", chunk=8, reverse=reverse)
    assert plan.boundary_chunk == 8
    assert name == "dense" or "keeps one state per chunk" in plan.explain()
    ref = jax.lax.scan(f, init, xs, reverse=reverse)
    out, info = recur.lax.scan(f, init, xs, method="scan", chunk=8, reverse=reverse,
                               return_info=True)
    close(out, ref, 1e-12)
    assert bool(info.converged) and not bool(info.fell_back)
    assert int(info.reason) == int(recur.Reason.CONVERGED)


def test_chunk_sizes_lengths_and_no_inputs():
    xs = inputs(50)
    ref = jax.lax.scan(diagonal, jnp.ones(4), xs)
    for C in (1, 3, 25):  # 25: exactly two chunks, no tail
        close(recur.lax.scan(diagonal, jnp.ones(4), xs, method="scan", chunk=C), ref, 1e-12)
    assert recur.lax.plan(diagonal, jnp.ones(4), xs, method="scan", chunk=26).boundary_chunk \
        is None  # one chunk: all states (nothing to gain)
    f = lambda h, _: (0.8 * h + 1.0, h ** 2)  # noqa: E731
    close(recur.lax.scan(f, jnp.ones(3), None, length=40, method="scan", chunk=6),
          jax.lax.scan(f, jnp.ones(3), None, length=40), 1e-12)


@pytest.mark.parametrize("name", ["diagonal", "dense", "pytree"])
def test_float32(name):
    f, init = CASES[name]
    xs = inputs(300, jnp.float32)
    init = jax.tree.map(lambda v: v.astype(jnp.float32), init)
    ref = jax.lax.scan(f, init, xs)
    out, info = recur.lax.scan(f, init, xs, method="scan", return_info=True)
    assert recur.lax.plan(f, init, xs, method="scan").boundary_chunk == 17  # ≈ √300
    scale = max(1.0, max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(ref)))
    close(out, ref, 3e-5 * scale)
    assert bool(info.converged)


def test_gradients_jvp_and_vmap():
    xs = inputs(29)
    w = jnp.asarray(RNG.standard_normal(4))

    def loss(run, init, xs, w):
        f = lambda h, x: diagonal(h * w, x)  # noqa: E731
        carry, ys = run(f, init, xs)
        return jnp.sum(carry ** 2) + jnp.sum(jnp.sin(ys["dot"])) + jnp.sum(ys["first"])
    ref = jax.grad(loss, argnums=(1, 2, 3))(jax.lax.scan, jnp.ones(4), xs, w)
    run = lambda f, i, x: recur.lax.scan(f, i, x, method="scan", chunk=4)  # noqa: E731
    close(jax.grad(loss, argnums=(1, 2, 3))(run, jnp.ones(4), xs, w), ref, 1e-10)
    tangent = jax.tree.map(jnp.ones_like, xs)
    _, t_ref = jax.jvp(lambda xs: jax.lax.scan(dense, jnp.ones(4), xs), (xs,), (tangent,))
    _, t = jax.jvp(lambda xs: recur.lax.scan(dense, jnp.ones(4), xs, method="scan", chunk=5),
                   (xs,), (tangent,))
    close(t, t_ref, 1e-10)
    inits = jnp.stack([jnp.ones(4), -2 * jnp.ones(4)])
    out = jax.jit(jax.vmap(lambda i: recur.lax.scan(blocks, i, xs, method="scan", chunk=5)))(
        inits)
    close(out, jax.vmap(lambda i: jax.lax.scan(blocks, i, xs))(inits), 1e-12)


def test_a_disagreement_where_chunks_meet_falls_back_to_the_loop(monkeypatch):
    xs = inputs(40)
    ref = jax.lax.scan(diagonal, jnp.ones(4), xs)
    wrong = _scan_outputs.solve_affine
    monkeypatch.setattr(_scan_outputs, "solve_affine", lambda *a, **k: wrong(*a, **k) + 1e-3)
    out, info = recur.lax.scan(diagonal, jnp.ones(4), xs, method="scan", chunk=8,
                               return_info=True)
    close(out, ref, 1e-12)
    assert bool(info.fell_back) and not bool(info.converged)
    assert int(info.reason) == int(recur.Reason.CHECK_FAILED)
    assert float(info.residual) > 1e-4
    with pytest.raises(recur.ConvergenceError):
        recur.lax.scan(diagonal, jnp.ones(4), xs, method="scan", chunk=8, on_failure="raise")
    _, info = recur.lax.scan(diagonal, jnp.ones(4), xs, method="scan", chunk=8, check=False,
                             return_info=True)
    assert int(info.reason) == int(recur.Reason.NOT_CHECKED)


def test_non_finite_inputs_give_the_loops_values():
    a, b = inputs(40)
    xs = (a, b.at[13, 2].set(jnp.nan).at[30, 0].set(jnp.inf))
    ref = jax.lax.scan(diagonal, jnp.ones(4), xs)
    out, info = recur.lax.scan(diagonal, jnp.ones(4), xs, method="scan", chunk=8,
                               return_info=True)
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12)
    assert int(info.first_nonfinite) == 13


def test_compiled_memory_is_a_fraction_of_all_states():
    T, n = 4096, 64
    xs = (jnp.full((T, n), 0.9, jnp.float32), jnp.ones((T, n), jnp.float32))
    h0 = jnp.zeros(n, jnp.float32)
    all_states = T * n * 4

    def temp(**options):
        run = jax.jit(lambda h0, xs: recur.lax.scan(diagonal, h0, xs, method="scan",
                                                   **options))
        return run.lower(h0, xs).compile().memory_analysis().temp_size_in_bytes

    assert temp() < all_states / 4
    assert temp(chunk=T) >= all_states  # one chunk: the all-states path, for contrast


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 40), st.integers(1, 9), st.sampled_from(sorted(CASES)), st.booleans())
def test_boundary_path_property(T, C, name, reverse):
    f, init = CASES[name]
    xs = inputs(T)
    close(recur.lax.scan(f, init, xs, method="scan", chunk=C, reverse=reverse),
          jax.lax.scan(f, init, xs, reverse=reverse), 1e-11)


def test_memory_budget_counts_boundary_states_only():
    """The lowering's memory estimate knows the lean path: under a budget that all ``T``
    states exceed but ``T / C`` do not, ``recur.plan`` (all states) refuses ``scan`` while
    ``recur.lax.plan`` (outputs, boundary states) runs it, equal to ``jax.lax.scan``."""
    T = 4096
    xs = inputs(T)
    h0 = jnp.ones(4)

    def step(h, x):
        return diagonal(h, x)[0]

    limit = 200e3        # all states: about T · 5 n · 8 B = 655 kB; T / 64 chunk maps: 10 kB
    with pytest.raises(recur.PlanError, match="but the budget is"):
        recur.plan(step, h0, xs, method="scan", memory_limit=limit)
    plan = recur.lax.plan(diagonal, h0, xs, method="scan", memory_limit=limit)
    assert plan.method == "scan" and plan.boundary_chunk == 64
    auto = recur.plan(step, h0, xs, method="auto", memory_limit=limit)
    assert "memory budget" in dict(auto.stages[0].rejected).get("scan", "")
    got = recur.lax.scan(diagonal, h0, xs, method="scan", memory_limit=limit)
    close(got, jax.lax.scan(diagonal, h0, xs), 1e-12)
