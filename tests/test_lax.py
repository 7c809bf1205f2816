"""``recur.lax.scan``: a drop-in for ``jax.lax.scan``, for every applicable method."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import recur

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.standard_normal((3, 3)) * 0.4)
A = jnp.asarray(RNG.uniform(0.5, 0.95, 3))


def tanh_rnn(c, x):
    h = jnp.tanh(W @ c + x)
    return h, {"sum": jnp.sum(h), "twice": 2 * h}


def ema_no_output(c, x):
    return A * c + x, None


def pytree_carry(c, x):
    h = {"a": 0.5 * c["a"] + x, "b": jnp.tanh(c["b"] + c["a"][0])}
    return h, (h["a"] - h["b"], c["b"])


def integer_carry(c, x):
    count, acc = c
    return (count + 1, 0.9 * acc + x * count.astype(x.dtype)), acc


def matrix_state(S, kv):
    k, v, q = kv
    S = 0.9 * S + jnp.outer(k, v)
    return S, S.T @ q


def no_inputs(c, _):
    return 0.5 * c + 1.0, c ** 2


PROGRAMS = {
    "tanh_rnn": (tanh_rnn, lambda T: (jnp.zeros(3), jnp.asarray(RNG.standard_normal((T, 3))))),
    "ema_none": (ema_no_output, lambda T: (jnp.zeros(3), jnp.asarray(RNG.standard_normal((T, 3))))),
    "pytree": (pytree_carry, lambda T: ({"a": jnp.zeros(2), "b": jnp.zeros(())},
                                        jnp.asarray(RNG.standard_normal((T, 2))))),
    "integer": (integer_carry, lambda T: ((jnp.int32(0), jnp.zeros(())),
                                          jnp.asarray(RNG.standard_normal(T)))),
    "matrix": (matrix_state, lambda T: (jnp.zeros((2, 2)),
                                        tuple(jnp.asarray(RNG.standard_normal((T, 2)))
                                              for _ in range(3)))),
}
METHODS = ("auto", "sequential", "scan", "deer", "quasi-deer", "jacobi")


def close(a, b, tol=1e-10):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert jax.tree.structure(a) == jax.tree.structure(b)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("reverse", [False, True])
def test_equal_to_jax_lax_scan_for_every_applicable_method(name, reverse):
    f, make = PROGRAMS[name]
    init, xs = make(12)
    ref = jax.lax.scan(f, init, xs, reverse=reverse)
    for method in METHODS:
        try:
            out = recur.lax.scan(f, init, xs, reverse=reverse, method=method)
        except recur.PlanError:
            assert method in ("scan", "deer", "quasi-deer", "jacobi")  # not applicable here
            continue
        close(out, ref)
    gpu = recur.lax.plan(f, init, xs, reverse=reverse, backend="gpu")
    close(recur.lax.scan(f, init, xs, reverse=reverse,
                         method={st.states[0]: st.method for st in gpu.stages}), ref)


def test_the_loop_is_bit_for_bit_and_honours_unroll_and_length():
    init, xs = PROGRAMS["tanh_rnn"][1](9)
    for unroll in (1, 3, True):
        ref = jax.lax.scan(tanh_rnn, init, xs, unroll=unroll)
        out = recur.lax.scan(tanh_rnn, init, xs, unroll=unroll, method="sequential")
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(a, b)
    close(recur.lax.scan(no_inputs, jnp.ones(2), None, length=7),
          jax.lax.scan(no_inputs, jnp.ones(2), None, length=7))
    assert recur.lax.scan(no_inputs, jnp.ones(2), None, length=0)[1].shape == (0, 2)


def test_derivatives_vmap_jit_and_info():
    init, xs = PROGRAMS["tanh_rnn"][1](15)

    def loss(run, init, xs, W2):
        f = lambda c, x: tanh_rnn(c, x @ W2)  # noqa: E731
        carry, ys = run(f, init, xs)
        return jnp.sum(carry ** 2) + jnp.sum(jnp.sin(ys["sum"]))
    W2 = jnp.eye(3)
    ref = jax.grad(loss, argnums=(1, 2, 3))(jax.lax.scan, init, xs, W2)
    for method in ("sequential", "deer", "quasi-deer"):
        run = lambda f, i, x, m=method: recur.lax.scan(f, i, x, method=m)  # noqa: E731
        close(jax.grad(loss, argnums=(1, 2, 3))(run, init, xs, W2), ref, 1e-9)
    _, t_ref = jax.jvp(lambda xs: jax.lax.scan(tanh_rnn, init, xs)[1]["sum"], (xs,), (xs,))
    _, t = jax.jvp(lambda xs: recur.lax.scan(tanh_rnn, init, xs, method="deer")[1]["sum"],
                   (xs,), (xs,))
    close(t, t_ref, 1e-9)
    batch = jnp.stack([xs, -xs])
    out = jax.jit(jax.vmap(lambda x: recur.lax.scan(tanh_rnn, init, x, method="deer")))(batch)
    close(out, jax.vmap(lambda x: jax.lax.scan(tanh_rnn, init, x))(batch))
    (carry, ys), info = recur.lax.scan(tanh_rnn, init, xs.at[4, 0].set(jnp.nan),
                                       method="deer", return_info=True)
    assert int(info.first_nonfinite) == 4


def test_a_body_that_is_not_a_scan_body_is_a_clear_error():
    with pytest.raises(recur.StepFunctionError, match="f\\(carry, x\\) -> \\(carry, y\\)"):
        recur.lax.scan(lambda c, x: c + x, jnp.zeros(2), jnp.ones((3, 2)))


def test_plan_shows_the_outputs_path():
    init, xs = PROGRAMS["tanh_rnn"][1](50)
    text = recur.lax.plan(tanh_rnn, init, xs).explain()
    assert "outputs:" in text and "no state is stored" in text
    text = recur.lax.plan(tanh_rnn, init, xs, method="deer").explain()
    assert "hold all T states" in text


@given(st.integers(1, 16), st.booleans(), st.sampled_from(["sequential", "deer", "scan"]))
def test_affine_bodies_property(T, reverse, method):
    def body(c, x):
        c = A * c + x[:3] * x[3]
        return c, (jnp.dot(c, x[:3]), c[0])
    xs = jnp.asarray(np.random.default_rng(T).standard_normal((T, 4)))
    close(recur.lax.scan(body, jnp.ones(3), xs, reverse=reverse, method=method),
          jax.lax.scan(body, jnp.ones(3), xs, reverse=reverse))
