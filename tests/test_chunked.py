"""Method ``chunked``: the chunkwise pass finds decayed linear-attention bodies, and the
chunkwise-parallel form equals ``jax.lax.scan`` (values, reverse, vmap, grad, jvp)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import recur

RNG = np.random.default_rng(0)


def randn(*shape, dtype=jnp.float64):
    return jnp.asarray(RNG.standard_normal(shape), dtype)


def gla(S, x):                      # per-row gates (gated linear attention)
    q, k, v, a = x
    S = a[:, None] * S + jnp.outer(k, v)
    return S, S.T @ q


def retnet(S, x):                   # one scalar decay per head, several heads, einsum
    q, k, v = x
    gamma = jnp.asarray([0.9, 0.6, 0.3], S.dtype)
    S = gamma[:, None, None] * S + jnp.einsum("hk,hv->hkv", k, v)
    return S, jnp.einsum("hkv,hk->hv", S, q)


def ssd(h, x):                      # Mamba-2 / SSD: h (P, N), scalar exp(dt A), h @ C
    xx, B, C, dt = x
    A = -0.7
    h = jnp.exp(dt * A) * h + dt * jnp.outer(xx, B)
    return h, h @ C + 0.5 * xx


def linear_attention(S, x):         # no decay; the output reads the old state
    q, k, v = x
    y = S.T @ q
    return S + k[:, None] * v[None, :], y


def mlstm(c, x):                    # a normaliser state with the same gates, a division
    C, n = c
    q, k, v, f, i = x
    C = f * C + i * jnp.outer(k, v)
    n = f * n + i * k
    return (C, n), C.T @ q / jnp.maximum(jnp.abs(n @ q), 1.0)


def rank2(S, x):                    # Σ_r k_r v_rᵀ written as one contraction
    q, K, V, a = x
    S = a * S + jnp.einsum("rk,rv->kv", K, V)
    return S, {"o": S.T @ q, "skip": jnp.sum(q)}


def complex_gla(S, x):              # complex per-row decay (an LRU-like rotation)
    q, k, v, theta = x
    lam = 0.9 * jax.lax.complex(jnp.cos(theta), jnp.sin(theta))
    S = lam[:, None] * S + jnp.outer(k, v)
    return S, jnp.real(S.T @ q)


def sigmoid(x):
    return 1 / (1 + jnp.exp(-x))


def make(name, T, dtype=jnp.float64):
    r = lambda *s: randn(T, *s, dtype=dtype)  # noqa: E731
    if name == "gla":
        return gla, jnp.zeros((5, 3), dtype), (r(5), r(5), r(3), sigmoid(r(5) + 2))
    if name == "retnet":
        return retnet, jnp.zeros((3, 4, 2), dtype), (r(3, 4), r(3, 4), r(3, 2))
    if name == "ssd":
        return ssd, jnp.ones((3, 4), dtype), (r(3), r(4), r(4), jnp.abs(r()))
    if name == "linear_attention":
        return linear_attention, jnp.zeros((4, 4), dtype), (r(4), r(4) / 4, r(4))
    if name == "mlstm":
        return mlstm, (jnp.zeros((4, 3), dtype), jnp.zeros(4, dtype)), (
            r(4), r(4), r(3), sigmoid(r() + 2), jnp.exp(r() / 2))
    if name == "rank2":
        return rank2, jnp.zeros((6, 5), dtype), (r(6), r(2, 6), r(2, 5), sigmoid(r() + 1))
    if name == "complex_gla":
        ct = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
        return complex_gla, jnp.zeros((4, 3), ct), (r(4).astype(ct), r(4).astype(ct),
                                                    r(3).astype(ct), r(4))
    raise KeyError(name)


FAMILY = ("gla", "retnet", "ssd", "linear_attention", "mlstm", "rank2", "complex_gla")
DECAY = {"gla": "per row", "retnet": "scalar per head", "ssd": "one scalar",
         "linear_attention": "none", "mlstm": "one scalar", "rank2": "one scalar",
         "complex_gla": "per row"}


def close(a, b, tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", FAMILY)
def test_family_detected_and_equal_to_lax_scan(name):
    f, init, xs = make(name, 37)
    plan = recur.lax.plan(f, init, xs, method="chunked")
    assert plan.method == "chunked"
    text = plan.explain_passes()
    assert "== chunkwise ==" in text and "value probes" in text and "readout" in text
    assert {"per row": "per row", "scalar per head": "one scalar per head",
            "one scalar": "one scalar", "none": "decay none"}[DECAY[name]] in text
    ref = jax.lax.scan(f, init, xs)
    (out, info) = recur.lax.scan(f, init, xs, method="chunked", return_info=True)
    close(out, ref, 1e-11)
    assert bool(np.all(info.converged)) and not bool(np.any(info.fell_back))
    for C in (1, 4, 64):  # chunk sizes below, between and above T
        close(recur.lax.scan(f, init, xs, method="chunked", chunk=C), ref, 1e-11)


@pytest.mark.parametrize("name", ("gla", "ssd", "mlstm"))
def test_float32_and_reverse(name):
    f, init, xs = make(name, 50, jnp.float32)
    for reverse in (False, True):
        ref = jax.lax.scan(f, init, xs, reverse=reverse)
        out = recur.lax.scan(f, init, xs, reverse=reverse, method="chunked")
        scale = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(ref))
        close(out, ref, 2e-5 * max(scale, 1.0))


@pytest.mark.parametrize("name", ("gla", "retnet", "mlstm", "complex_gla"))
def test_grad_jvp_vmap(name):
    f, init, xs = make(name, 23)

    def loss(run, init, xs, w):
        g = lambda c, x: f(c, jax.tree.map(lambda a: a * w, x[:-1]) + x[-1:])  # noqa: E731
        carry, ys = run(g, init, xs)
        leaves = jax.tree.leaves((carry, ys))
        return sum(jnp.sum(jnp.abs(jnp.sin(v)) ** 2) for v in leaves)

    w = jnp.asarray(1.1)
    chunked = lambda g, i, x: recur.lax.scan(g, i, x, method="chunked")  # noqa: E731
    ref = jax.grad(loss, argnums=(1, 2, 3))(jax.lax.scan, init, xs, w)
    close(jax.grad(loss, argnums=(1, 2, 3))(chunked, init, xs, w), ref, 1e-9)
    t_ref = jax.jvp(lambda xs: jax.lax.scan(f, init, xs)[1], (xs,), (xs,))[1]
    t = jax.jvp(lambda xs: recur.lax.scan(f, init, xs, method="chunked")[1], (xs,), (xs,))[1]
    close(t, t_ref, 1e-9)
    batch = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), xs)
    out = jax.jit(jax.vmap(lambda x: recur.lax.scan(f, init, x, method="chunked")))(batch)
    close(out, jax.vmap(lambda x: jax.lax.scan(f, init, x))(batch), 1e-11)


def test_closed_over_parameters_get_gradients():
    T, d = 20, 4
    W = randn(d, d)
    xs = randn(T, d)

    def run(scan, W):
        def body(S, x):
            k, v, q = W @ x, jnp.tanh(x), W.T @ x
            S = 0.8 * S + jnp.outer(k, v)
            return S, S.T @ q
        return jnp.sum(scan(body, jnp.zeros((d, d)), xs)[1] ** 2)

    ref = jax.grad(lambda W: run(jax.lax.scan, W))(W)
    got = jax.grad(lambda W: run(lambda f, i, x: recur.lax.scan(f, i, x, method="chunked"),
                                 W))(W)
    close(got, ref, 1e-9)


NEAR_MISSES = {
    "tanh readout": (lambda S, x: (0.9 * S + jnp.outer(x[0], x[1]),
                                   jnp.tanh(S).T @ x[0]), "`tanh` of the state"),
    "decay reads the state": (lambda S, x: (jax.nn.sigmoid(jnp.sum(S)) * S
                                            + jnp.outer(x[0], x[1]), S.T @ x[0]),
                              "computed from the state"),
    "full-rank input": (lambda S, x: (0.9 * S + x[2], S.T @ x[0]),
                        "not a sum of outer products"),
    "elementwise decay": (lambda S, x: (x[2] * S + jnp.outer(x[0], x[1]), S.T @ x[0]),
                          "varies along both axes"),
    "state as output": (lambda S, x: (0.9 * S + jnp.outer(x[0], x[1]), S),
                        "the state itself"),
    "quadratic readout": (lambda S, x: (0.9 * S + jnp.outer(x[0], x[1]),
                                        S.T @ (S @ x[1])), "combines the state with one of its readouts"),
    "states mixed": (lambda c, x: ((0.9 * c[0] + jnp.outer(x[0], x[1]), c[1] + c[0]),
                                   c[0].T @ x[0]), "mixes the states"),
}


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_near_misses_are_refused_with_their_reason(name):
    f, reason = NEAR_MISSES[name]
    T = 9
    xs = (randn(T, 4), randn(T, 4), randn(T, 4, 4))
    init = (jnp.zeros((4, 4)), jnp.zeros((4, 4))) if name == "states mixed" else \
        jnp.zeros((4, 4))
    with pytest.raises(recur.PlanError, match="method='chunked' cannot run"):
        recur.lax.plan(f, init, xs, method="chunked")
    plan = recur.lax.plan(f, init, xs)
    assert plan.method != "chunked"
    assert reason in plan.explain_passes()
    close(recur.lax.scan(f, init, xs), jax.lax.scan(f, init, xs), 1e-10)


def test_chunked_needs_outputs_and_one_device():
    with pytest.raises(recur.PlanError, match="recur.lax.scan"):
        recur.plan(lambda S, x: 0.9 * S + jnp.outer(x, x), jnp.zeros((2, 2)), randn(4, 2),
                   method="chunked")


def test_auto_picks_chunked_where_the_model_predicts_it_fastest():
    T, d, H = 4096, 64, 4
    s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731

    def ssd_heads(S, x):
        q, k, v, a = x
        S = a[:, None, None] * S + jnp.einsum("hk,hv->hkv", k, v)
        return S, jnp.einsum("hkv,hk->hv", S, q)

    xs = (s(T, H, d), s(T, H, d), s(T, H, d), s(T, H))
    plan = recur.lax.plan(ssd_heads, s(H, d, d), xs, backend="gpu")
    assert plan.method == "chunked", plan.explain()
    text = plan.explain()
    assert "never all T states" in text and "chunk" in text
    # on this 2-core CPU the loop of such a layer is measured fastest, and the model says so
    small = recur.lax.plan(ssd_heads, s(1, 8, 8), (s(64, 1, 8), s(64, 1, 8), s(64, 1, 8),
                                                  s(64, 1)))
    assert small.method == "sequential"
    assert "rejected  chunked: predicted" in small.explain()


def test_non_finite_inputs_fall_back_to_the_loop():
    f, init, xs = make("gla", 30)
    xs = (xs[0], xs[1].at[11, 2].set(jnp.inf), xs[2], xs[3])
    ref = jax.lax.scan(f, init, xs)
    out, info = recur.lax.scan(f, init, xs, method="chunked", return_info=True)
    close(out, ref, 1e-11)
    assert bool(np.any(info.fell_back))


@settings(max_examples=6)  # every length compiles its own chunked program
@given(st.integers(1, 40), st.booleans(), st.sampled_from(["gla", "retnet", "mlstm"]))
def test_lengths_property(T, reverse, name):
    f, init, xs = make(name, T)
    close(recur.lax.scan(f, init, xs, reverse=reverse, method="chunked"),
          jax.lax.scan(f, init, xs, reverse=reverse), 1e-10)
