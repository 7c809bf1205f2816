"""method="scan" against the sequential loop: values, derivatives, vmap, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import recur

from ._steps import STRUCTURES, loop, make_case

TOL = {np.float64: 1e-10, np.complex128: 1e-10, np.float32: 2e-4, np.complex64: 2e-4}


def assert_trees_close(a, b, tol):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.shape == y.shape and x.dtype == y.dtype
        scale = 1.0 + float(np.max(np.abs(np.asarray(y)), initial=0.0))
        err = float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
        assert err <= tol * scale, (err, scale)


cases = st.fixed_dictionaries({
    "seed": st.integers(0, 10_000),
    "structure": st.sampled_from(STRUCTURES),
    "n": st.sampled_from([1, 3, 4, 6]),
    "k": st.sampled_from([1, 2, 3]),
    "T": st.sampled_from([0, 1, 2, 7, 64, 257, 2048]),
    "dtype": st.sampled_from([np.float64, np.float32, np.complex128, np.complex64]),
    "with_inputs": st.booleans(),
    "pytree": st.booleans(),
    "reverse": st.booleans(),
})


@given(cases)
def test_scan_equals_loop(c):
    case = make_case(c["seed"], c["structure"], n=c["n"], k=c["k"], T=c["T"], dtype=c["dtype"],
                     with_inputs=c["with_inputs"], pytree=c["pytree"])
    hs, info = recur.scan(case.fn, case.h0, case.xs, case.params, length=case.length,
                          reverse=c["reverse"], method="scan", return_info=True)
    ref = loop(case.fn, case.h0, case.xs, case.params, length=case.length, reverse=c["reverse"])
    assert_trees_close(hs, ref, TOL[c["dtype"]])
    assert bool(info.converged) and not bool(info.fell_back)
    assert info.method == "scan"
    if case.length:
        p = recur.plan(case.fn, case.h0, case.xs, case.params, length=case.length, backend="gpu")
        assert p.stages[0].jacobian == case.expected_jacobian
        long_xs = jax.tree_util.tree_map(
            lambda v: jax.ShapeDtypeStruct((1 << 16,) + v.shape[1:], v.dtype), case.xs)
        p = recur.plan(case.fn, case.h0, long_xs, case.params, length=1 << 16, backend="gpu")
        assert p.method == "scan"   # long sequences: the cost model picks the parallel scan


@settings(max_examples=8)
@given(cases.filter(lambda c: 1 <= c["T"] <= 257))
def test_scan_gradients_equal_loop(c):
    case = make_case(c["seed"], c["structure"], n=c["n"], k=c["k"], T=c["T"], dtype=np.float64,
                     with_inputs=True, pytree=c["pytree"])
    w = jnp.asarray(np.random.default_rng(c["seed"]).standard_normal(case.length))

    def loss(run, h0, xs, params):
        hs = run(h0, xs, params)
        return sum(jnp.sum(jnp.sin(leaf.reshape(case.length, -1)) * w[:, None])
                   for leaf in jax.tree_util.tree_leaves(hs))

    def par(h0, xs, params):
        return recur.scan(case.fn, h0, xs, params, method="scan", reverse=c["reverse"])

    def seq(h0, xs, params):
        return loop(case.fn, h0, xs, params, length=case.length, reverse=c["reverse"])

    args = (case.h0, case.xs, case.params)
    g_par = jax.grad(lambda *a: loss(par, *a), argnums=(0, 1, 2))(*args)
    g_seq = jax.grad(lambda *a: loss(seq, *a), argnums=(0, 1, 2))(*args)
    assert_trees_close(g_par, g_seq, 1e-9)
    tangents = jax.tree_util.tree_map(lambda v: jnp.ones_like(v) * 0.1, args)
    _, t_par = jax.jvp(lambda *a: loss(par, *a), args, tangents)
    _, t_seq = jax.jvp(lambda *a: loss(seq, *a), args, tangents)
    np.testing.assert_allclose(t_par, t_seq, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_check_grads_both_modes(structure):
    case = make_case(1, structure, n=4, k=2, T=5)

    def run(h0, xs, params):
        return recur.scan(case.fn, h0, xs, params, method="scan")

    check_grads(run, (case.h0, case.xs, case.params), order=1, modes=("fwd", "rev"))


def test_closure_gradients():
    rng = np.random.default_rng(3)
    W = jnp.asarray(rng.standard_normal((3, 3)) * 0.3)
    xs = jnp.asarray(rng.standard_normal((20, 3)))

    def loss(W, run):
        def step(h, x):
            return W @ h + x
        return jnp.sum(run(step) ** 2)

    g_par = jax.grad(loss)(W, lambda s: recur.scan(s, jnp.ones(3), xs, method="scan"))
    g_seq = jax.grad(loss)(W, lambda s: loop(s, jnp.ones(3), xs, None, length=20))
    np.testing.assert_allclose(g_par, g_seq, rtol=1e-10)


@pytest.mark.parametrize("structure", ["diagonal", "block", "dense"])
def test_vmap_and_jit_agree(structure):
    case = make_case(2, structure, n=4, k=2, T=33)
    xs_b = jnp.stack([case.xs, 2.0 * case.xs, -case.xs])

    def run(xs):
        return recur.scan(case.fn, case.h0, xs, case.params, method="scan")

    batched = jax.vmap(run)(xs_b)
    jitted = jax.jit(jax.vmap(run))(xs_b)
    for i in range(3):
        ref = loop(case.fn, case.h0, xs_b[i], case.params, length=33)
        assert_trees_close(batched[i] if not isinstance(batched, dict) else
                           jax.tree_util.tree_map(lambda v: v[i], batched), ref, 1e-10)
    assert_trees_close(jitted, batched, 1e-12)


def test_vmap_info_per_example():
    case = make_case(4, "diagonal", n=3, T=10)
    xs_b = jnp.stack([case.xs, case.xs])
    _, info = jax.vmap(lambda xs: recur.scan(case.fn, case.h0, xs, case.params,
                                             return_info=True, method="scan"))(xs_b)
    assert info.converged.shape == (2,) and info.fell_back.shape == (2,)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_state_accumulates_in_float32(dtype):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0.5, 0.99, (300, 8))).astype(dtype)
    b = jnp.asarray(rng.standard_normal((300, 8))).astype(dtype)

    def step(h, x):
        return x[0] * h + x[1]

    h0 = jnp.zeros(8, dtype)
    hs, info = recur.scan(step, h0, (a, b), method="scan", return_info=True)
    assert hs.dtype == dtype
    # float32 reference of the same recurrence: the scan must be at least as close to it
    # as the low-precision loop is.
    ref32 = loop(lambda h, x: x[0].astype(jnp.float32) * h + x[1].astype(jnp.float32),
                 jnp.zeros(8, jnp.float32), (a, b), None, length=300)
    seq = loop(step, h0, (a, b), None, length=300)
    err_scan = float(jnp.max(jnp.abs(hs.astype(jnp.float32) - ref32)))
    err_seq = float(jnp.max(jnp.abs(seq.astype(jnp.float32) - ref32)))
    assert err_scan <= err_seq + 1e-6
    assert bool(info.converged)


def test_no_inputs_with_length():
    def step(h, x):
        assert x is None
        return 0.5 * h + 1.0
    hs = recur.scan(step, jnp.zeros(2), None, length=6, method="scan")
    ref = loop(step, jnp.zeros(2), None, None, length=6)
    np.testing.assert_allclose(hs, ref, rtol=1e-14)


def test_overflow_matches_loop():
    def step(h, x):
        return 1e200 * h + x
    xs = jnp.ones((5, 2))
    hs = recur.scan(step, jnp.ones(2), xs, method="scan")
    ref = loop(step, jnp.ones(2), xs, None, length=5)
    np.testing.assert_array_equal(np.isinf(hs), np.isinf(ref))
    np.testing.assert_allclose(np.where(np.isfinite(ref), hs, 0), np.where(np.isfinite(ref), ref, 0),
                               rtol=1e-12)


def test_nan_input_comes_out_where_the_loop_puts_it():
    xs = jnp.ones((6, 2)).at[2, 0].set(jnp.nan)

    def step(h, x):
        return 0.5 * h + x
    hs = recur.scan(step, jnp.zeros(2), xs, method="scan")
    ref = loop(step, jnp.zeros(2), xs, None, length=6)
    np.testing.assert_array_equal(np.isnan(hs), np.isnan(ref))
    np.testing.assert_allclose(np.nan_to_num(hs), np.nan_to_num(ref), rtol=1e-14)
