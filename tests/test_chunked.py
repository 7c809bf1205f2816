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


def complex_reset(S, x):           # complex per-row decay times a real gate that resets
    q, k, v, theta, a = x
    lam = a.astype(S.dtype) * 0.9 * jax.lax.complex(jnp.cos(theta), jnp.sin(theta))
    S = lam[:, None] * S + jnp.outer(k, v)
    return S, jnp.real(S.T @ q)


@pytest.mark.parametrize("name", ("gla", "complex_reset", "mlstm"))
def test_zero_gates_have_exact_derivatives(name):
    """Resets (a gate of exactly zero: a document boundary in packed sequences), alone, two in
    one chunk, at a chunk's first step, and a whole row: values, gradients w.r.t. every input
    (the gates included) and a JVP equal the loop's -- never NaN."""
    if name == "complex_reset":
        _, init, xs = make("complex_gla", 24)
        f, xs = complex_reset, xs + (sigmoid(randn(24, 4) + 2),)
    else:
        f, init, xs = make(name, 24)
    xs = list(xs)
    gate = 3 if name == "mlstm" else len(xs) - 1
    g = xs[gate]
    if g.ndim == 1:  # one scalar gate per step
        g = g.at[5].set(0.0).at[9].set(0.0).at[10].set(0.0).at[8].set(0.0)
    else:
        g = g.at[5].set(0.0).at[9, 1].set(0.0).at[10, 1].set(0.0).at[8].set(0.0) \
            .at[12, 3].set(0.0)
    xs[gate] = g
    xs = tuple(xs)
    plan = recur.lax.plan(f, init, xs, method="chunked", chunk=4)
    assert plan.method == "chunked"

    def loss(run, xs):
        carry, ys = run(f, init, xs)
        return sum(jnp.sum(jnp.abs(jnp.sin(v)) ** 2) for v in jax.tree.leaves((carry, ys)))

    chunked = lambda h, i, x: recur.lax.scan(h, i, x, method="chunked", chunk=4)  # noqa: E731
    out, info = recur.lax.scan(f, init, xs, method="chunked", chunk=4, return_info=True)
    close(out, jax.lax.scan(f, init, xs), 1e-11)
    assert not bool(np.any(info.fell_back))
    grad = jax.grad(loss, argnums=1)(chunked, xs)
    assert not any(bool(jnp.any(jnp.isnan(v))) for v in jax.tree.leaves(grad))
    close(grad, jax.grad(loss, argnums=1)(jax.lax.scan, xs), 1e-9)
    t = jax.jvp(lambda xs: chunked(f, init, xs)[1], (xs,), (xs,))[1]
    close(t, jax.jvp(lambda xs: jax.lax.scan(f, init, xs)[1], (xs,), (xs,))[1], 1e-9)


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


# ------------------------------------------------------------------ matrix readouts (C h)

def lru_params(P, H, O, dtype=jnp.float64, seed=1):
    """S5 / LRU parameters: ``lam`` complex on a ring inside the unit disc, ``B``, ``C``
    complex, ``D`` real ``(O, H)``."""
    rng = np.random.default_rng(seed)
    ct = jnp.complex128 if dtype == jnp.float64 else jnp.complex64

    def c(*s):
        return jnp.asarray((rng.standard_normal(s) + 1j * rng.standard_normal(s))
                           / np.sqrt(2 * s[-1]), ct)

    lam = jnp.asarray(rng.uniform(0.5, 0.95, P) * np.exp(1j * rng.uniform(0, np.pi, P)), ct)
    return lam, c(P, H), c(O, P), jnp.asarray(rng.standard_normal((O, H)), dtype)


def lru_body(lam, B, C, D):
    def lru(h, x):                          # h: (P,) complex; B: (P, H), C: (O, P)
        h = lam * h + B @ x.astype(B.dtype)
        return h, jnp.real(C @ h) + D @ x
    return lru


def lru_case(T, P=6, H=3, O=2, dtype=jnp.float64):
    lam, B, C, D = lru_params(P, H, O, dtype)
    h0 = jnp.asarray(RNG.standard_normal(P) + 1j * RNG.standard_normal(P), lam.dtype)
    return lru_body(lam, B, C, D), h0, randn(T, H, dtype=dtype)


def test_lru_matrix_readout_detected_and_equal_to_lax_scan():
    f, h0, xs = lru_case(37)
    text = recur.lax.plan(f, h0, xs, method="chunked").explain_passes()
    assert "decay per row" in text and "2 queries: q has axes of its own [2]" in text
    assert "input term of rank 1 (a vector state: its 3 products summed into one)" in text
    assert "equals the body" in text
    ref = jax.lax.scan(f, h0, xs)
    out, info = recur.lax.scan(f, h0, xs, method="chunked", return_info=True)
    close(out, ref, 1e-12)
    assert bool(np.all(info.converged)) and not bool(np.any(info.fell_back))
    for C in (1, 4, 64):
        close(recur.lax.scan(f, h0, xs, method="chunked", chunk=C), ref, 1e-12)
    close(recur.lax.scan(f, h0, xs, method="chunked", reverse=True),
          jax.lax.scan(f, h0, xs, reverse=True), 1e-12)


def test_lru_readout_forms():
    lam, B, C, _ = lru_params(5, 4, 4)
    D = randn(4)
    h0 = jnp.zeros(5, lam.dtype)
    xs = randn(29, 4)

    def elementwise_skip(h, x):             # y = (C h).real + D * x, scaled input
        h = lam * h + 0.5 * (B @ x.astype(B.dtype))
        return h, (C @ h).real + D * x

    def old_state(h, x):                    # the readout of h_{t-1}, written h @ C.T
        y = (h @ C.T).real
        return lam * h + B @ x.astype(B.dtype), y

    def two_readouts(h, x):                 # a matrix readout and a vector one
        h = lam * h + B @ x.astype(B.dtype)
        return h, {"y": jnp.real(C @ h), "s": jnp.imag(jnp.sum(h * x[0].astype(h.dtype)))}

    for f in (elementwise_skip, old_state, two_readouts):
        text = recur.lax.plan(f, h0, xs, method="chunked").explain_passes()
        assert "4 queries" in text
        for C_ in (1, 4, 64):
            close(recur.lax.scan(f, h0, xs, method="chunked", chunk=C_),
                  jax.lax.scan(f, h0, xs), 1e-12)


def test_lru_float32_complex64_and_reverse():
    f, h0, xs = lru_case(50, P=8, H=4, O=3, dtype=jnp.float32)
    assert h0.dtype == jnp.complex64
    for reverse in (False, True):
        ref = jax.lax.scan(f, h0, xs, reverse=reverse)
        out, info = recur.lax.scan(f, h0, xs, reverse=reverse, method="chunked",
                                   return_info=True)
        assert not bool(np.any(info.fell_back))
        scale = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(ref))
        close(out, ref, 2e-5 * max(scale, 1.0))


def test_lru_grad_jvp_vmap():
    T = 23
    lam, B, C, D = lru_params(5, 3, 2)
    h0 = jnp.asarray(RNG.standard_normal(5) + 1j * RNG.standard_normal(5))
    xs = randn(T, 3)

    def loss(scan, h0, xs, lam, B, C):
        carry, ys = scan(lru_body(lam, B, C, D), h0, xs)
        return jnp.sum(jnp.abs(carry) ** 2) + jnp.sum(jnp.sin(ys))

    chunked = lambda g, i, x: recur.lax.scan(g, i, x, method="chunked")  # noqa: E731
    args = (h0, xs, lam, B, C)
    ref = jax.grad(loss, argnums=(1, 2, 3, 4, 5))(jax.lax.scan, *args)
    close(jax.grad(loss, argnums=(1, 2, 3, 4, 5))(chunked, *args), ref, 1e-10)
    f = lru_body(lam, B, C, D)
    t_ref = jax.jvp(lambda h, x: jax.lax.scan(f, h, x), (h0, xs), (1j * h0, xs))[1]
    t = jax.jvp(lambda h, x: recur.lax.scan(f, h, x, method="chunked"), (h0, xs),
                (1j * h0, xs))[1]
    close(t, t_ref, 1e-11)
    dlam = 0.1 * lam * jnp.exp(1j * jnp.arange(5.0, dtype=lam.dtype))
    t_ref = jax.jvp(lambda lam: jax.lax.scan(lru_body(lam, B, C, D), h0, xs), (lam,),
                    (dlam,))[1]
    t = jax.jvp(lambda lam: recur.lax.scan(lru_body(lam, B, C, D), h0, xs,
                                           method="chunked"), (lam,), (dlam,))[1]
    close(t, t_ref, 1e-11)
    batch = jnp.stack([xs, -0.5 * xs])
    out = jax.jit(jax.vmap(lambda x: recur.lax.scan(f, h0, x, method="chunked")))(batch)
    close(out, jax.vmap(lambda x: jax.lax.scan(f, h0, x))(batch), 1e-12)


def test_lru_fast_decays_underflow_without_overflow():
    lam, B, C, D = lru_params(6, 3, 2, jnp.float32)
    lam = lam / jnp.abs(lam).astype(lam.dtype) * jnp.asarray([1e-3, 0.02, 0.1, 0.5, 0.9, 0.999], lam.dtype)
    f = lru_body(lam, B, C, D)
    h0, xs = jnp.ones(6, lam.dtype), randn(300, 3, dtype=jnp.float32)
    ref = jax.lax.scan(f, h0, xs)
    out, info = recur.lax.scan(f, h0, xs, method="chunked", chunk=64, return_info=True)
    assert not bool(np.any(info.fell_back))
    scale = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(ref))
    close(out, ref, 2e-5 * max(scale, 1.0))


def test_matrix_readouts_with_heads_and_matrix_states():
    Hh, P, N, O, T = 3, 4, 5, 2, 31
    lam = jnp.asarray(0.9 * np.exp(1j * RNG.uniform(0, 3, (Hh, P))))
    Ch = jnp.asarray(RNG.standard_normal((Hh, O, P)) + 0j)

    def s5_heads(h, x):                     # h: (heads, P) complex, C per head
        h = lam * h + x.astype(h.dtype)
        return h, jnp.real(jnp.einsum("hop,hp->ho", Ch, h))

    def ssd_matrix_query(h, x):             # h (P, N), an input-derived C (N, O): h @ C
        xx, B, Cx, dt = x
        h = jnp.exp(-0.7 * dt) * h + dt * jnp.outer(xx, B)
        return h, h @ Cx + 0.5 * xx[:, None]

    cases = [(s5_heads, jnp.zeros((Hh, P), jnp.complex128), randn(T, Hh, P)),
             (ssd_matrix_query, jnp.ones((P, N)),
              (randn(T, P), randn(T, N), randn(T, N, O), jnp.abs(randn(T))))]
    for f, init, xs in cases:
        assert "queries" in recur.lax.plan(f, init, xs, method="chunked").explain_passes()
        ref = jax.lax.scan(f, init, xs)
        for C in (1, 4, 64):
            close(recur.lax.scan(f, init, xs, method="chunked", chunk=C), ref, 1e-11)
        batch = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), xs)
        out = jax.vmap(lambda x: recur.lax.scan(f, init, x, method="chunked"))(batch)
        close(out, jax.vmap(lambda x: jax.lax.scan(f, init, x))(batch), 1e-11)


def test_new_state_read_by_a_scaled_sum():
    def f(S, x):                            # S_tᵀ q written sum(S_t * q), both ways round
        S = 0.9 * S + jnp.outer(x[0], x[1])
        return S, {"a": jnp.sum(S * x[0][:, None], axis=0), "b": jnp.sum(S.T * x[0], axis=1)}

    init, xs = jnp.zeros((4, 3)), (randn(13, 4), randn(13, 3))
    assert "equals the body" in recur.lax.plan(f, init, xs).explain_passes()
    close(recur.lax.scan(f, init, xs, method="chunked", chunk=4), jax.lax.scan(f, init, xs),
          1e-12)


LRU_NEAR_MISSES = {
    "query reads the state": (
        lambda lam, B, C: lambda h, x: (lam * h + B @ x.astype(B.dtype),
                                        jnp.real((C * jnp.abs(h).astype(C.dtype)) @ h)),
        "the readout's query is computed from the state (`abs` of the state"),
    "query is the state": (
        lambda lam, B, C: lambda h, x: (lam * h + B @ x.astype(B.dtype),
                                        jnp.real(jnp.outer(C[0], h) @ h)),
        "the readout's query is computed from the state"),
    "dense transition": (
        lambda lam, B, C: lambda h, x: (jnp.outer(lam, lam) @ h + B @ x.astype(B.dtype),
                                        jnp.real(C @ h)),
        "a dense transition such as A h"),
}


@pytest.mark.parametrize("name", sorted(LRU_NEAR_MISSES))
def test_lru_near_misses_say_why(name):
    make_body, reason = LRU_NEAR_MISSES[name]
    lam, B, C, _ = lru_params(4, 3, 2)
    f = make_body(lam, B, C)
    h0, xs = jnp.zeros(4, lam.dtype) + 0.1, randn(9, 3)
    with pytest.raises(recur.PlanError, match="method='chunked' cannot run"):
        recur.lax.plan(f, h0, xs, method="chunked")
    assert reason in recur.lax.plan(f, h0, xs).explain_passes()
    close(recur.lax.scan(f, h0, xs), jax.lax.scan(f, h0, xs), 1e-10)


def test_readout_contracting_two_state_axes_is_refused():
    W = randn(2, 4, 3)

    def f(S, x):
        S = 0.9 * S + jnp.outer(x[0], x[1])
        return S, jnp.einsum("okv,kv->o", W, S)

    xs = (randn(9, 4), randn(9, 3))
    assert "contracts 2 axes" in recur.lax.plan(f, jnp.zeros((4, 3)), xs).explain_passes()


@settings(max_examples=8, deadline=None)  # every shape compiles its own chunked program
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(1, 12),
       st.booleans())
def test_lru_shapes_property(P, H, O, T, reverse):
    lam, B, C, D = lru_params(P, H, O, seed=P * 100 + H * 10 + O)
    f = lru_body(lam, B, C, D)
    h0 = jnp.asarray(RNG.standard_normal(P) + 1j * RNG.standard_normal(P))
    xs = randn(T, H)
    close(recur.lax.scan(f, h0, xs, reverse=reverse, method="chunked", chunk=4),
          jax.lax.scan(f, h0, xs, reverse=reverse), 1e-11)


@pytest.mark.parametrize("name", ("gla", "mlstm"))    # a decay per row; scalar, two leaves
def test_chunks_in_groups_equal_lax_scan(name, monkeypatch):
    """A budget that holds the masked products of ``G`` chunks makes the run a ``lax.scan``
    over groups of ``G`` chunks (the last group padded): values, reverse and gradients as
    the loop's."""
    from recur.passes import _cost
    f, init, xs = make(name, 37)
    ref = jax.lax.scan(f, init, xs)
    per_chunk = _cost._chunk_products_bytes(4, [(1, 5, 5, 2, 1, 5)], 8)
    for budget, G in ((1, 1), (3 * per_chunk, 3)):
        monkeypatch.setitem(_cost.CHUNK_GROUP_BYTES, "cpu", budget)
        plan = recur.lax.plan(f, init, xs, method="chunked", chunk=4)
        together = dict(plan.stages[0].estimates)["chunks together"]
        assert plan.chunked.group == together and 1 <= together <= G
        close(recur.lax.scan(f, init, xs, method="chunked", chunk=4), ref, 1e-11)
    close(recur.lax.scan(f, init, xs, method="chunked", chunk=4, reverse=True),
          jax.lax.scan(f, init, xs, reverse=True), 1e-11)

    def loss(run, xs):
        return sum(jnp.sum(jnp.abs(v) ** 2) for v in jax.tree.leaves(run(f, init, xs)))

    grouped = lambda g, i, x: recur.lax.scan(g, i, x, method="chunked", chunk=4)  # noqa: E731
    close(jax.grad(loss, argnums=1)(grouped, xs), jax.grad(loss, argnums=1)(jax.lax.scan, xs),
          1e-9)
