"""The nonlinear solvers (DEER, quasi-DEER, Picard, Jacobi) against ``lax.scan`` loops.

Every converged result must equal the sequential loop; every claimed residual must be the
real one; derivatives (reverse and forward) must be those of the loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from recur.runtime._iterative import default_max_iters, solve_nonlinear

from .._steps import gru, loop, structure_of, true_residual

TOL = dict(rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- problems

def gru_params(D, seed=0):
    rng = np.random.default_rng(seed)
    return {"W": jnp.asarray(rng.standard_normal((3, D, D)) / np.sqrt(D)),
            "U": jnp.asarray(rng.standard_normal((3, D, D)) / np.sqrt(D))}


def tanh_rnn(h, x, p):
    return jnp.tanh(p["w"] * h + p["u"] * x + p["b"])


def heads_rnn(h, x, p):  # 4 interleaved heads of 3 (head j: h[j], h[j+4], h[j+8]): block(3)
    hp = h.reshape(3, 4).T
    new = jnp.tanh(jnp.einsum("hij,hj->hi", p["W"], hp) + x.reshape(4, 3))
    return new.T.reshape(-1)


def lorenz96(h, x, p):
    F, dt = 8.0, 0.01
    g = (jnp.roll(h, -1) - jnp.roll(h, 2)) * jnp.roll(h, 1) - h + F
    return h + dt * g


def leaky(h, x, p):  # h + dt * g(h, x): the form Picard is for
    return h + 0.1 * (jnp.tanh(p["W"] @ h + x) - h)


def running_max(h, x, p):
    return jnp.maximum(h, x)


def make(name, T=48, seed=1):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape))  # noqa: E731
    if name == "gru":
        return gru, gru_params(5, seed), 0.1 * normal(5), normal(T, 5)
    if name == "tanh":
        p = {"w": jnp.asarray(rng.uniform(-1.2, 1.2, 4)), "u": normal(4), "b": 0.1 * normal(4)}
        return tanh_rnn, p, normal(4), normal(T, 4)
    if name == "heads":
        return heads_rnn, {"W": normal(4, 3, 3) / np.sqrt(3)}, 0.1 * normal(12), normal(T, 12)
    if name == "lorenz96":  # T steps from a point on the attractor (after 500 steps of spin-up)
        h = 8.0 + rng.standard_normal(5)
        for _ in range(500):
            h = h + 0.01 * ((np.roll(h, -1) - np.roll(h, 2)) * np.roll(h, 1) - h + 8.0)
        return lorenz96, {}, jnp.asarray(h), jnp.zeros((T, 5))
    if name == "leaky":
        return leaky, {"W": normal(4, 4) / 2.0}, jnp.zeros(4), normal(T, 4)
    if name == "max":
        return running_max, {}, normal(3), normal(T, 3)
    raise KeyError(name)


CASES = [
    ("gru", "deer"), ("gru", "quasi-deer"), ("gru", "jacobi"),
    ("tanh", "deer"), ("tanh", "jacobi"),  # quasi-deer on a diagonal structure is deer
    ("heads", "deer"), ("heads", "quasi-deer"),
    ("lorenz96", "deer"), ("lorenz96", "quasi-deer"), ("lorenz96", "picard"),
    ("leaky", "picard"), ("max", "deer"), ("max", "jacobi"),
]
EXPECTED = {"gru": "dense", "tanh": "diagonal", "heads": "block(3)", "lorenz96": "dense",
            "leaky": "dense", "max": "diagonal"}


@pytest.mark.parametrize("name,method", CASES)
def test_agrees_with_loop(name, method):
    fn, p, h0, xs = make(name, T=25 if name == "lorenz96" else 48)
    step = lambda h, x: fn(h, x, p)  # noqa: E731
    T = xs.shape[0]
    s = structure_of(step, h0, xs)
    assert s.jacobian == EXPECTED[name]
    zs, st, hist = jax.jit(lambda h0, xs: solve_nonlinear(step, h0, xs, method=method, structure=s,
                                                    length=T, **TOL))(h0, xs)
    ref = loop(step, h0, xs, length=T)
    assert zs.shape == ref.shape and zs.dtype == ref.dtype
    assert bool(st.converged), (name, method, st)
    assert 0 < int(st.iterations) <= default_max_iters(method, T)
    scale = 1 + float(jnp.max(jnp.abs(ref)))
    assert float(jnp.max(jnp.abs(zs - ref))) <= 1e-10 * scale
    # the residual claim is honest, and the history ends with it
    real = true_residual(step, h0, zs, xs)
    assert real <= 2 * float(st.residual) + 1e-15
    assert float(st.residual) <= 1e-13 * (1 + scale)
    hist = np.asarray(hist)
    k = int(st.iterations)
    assert hist.shape == (default_max_iters(method, T),)
    assert hist[k - 1] == float(st.residual) and np.all(np.isnan(hist[k:]))
    if name != "max":  # J = 0 steps make the estimate log(tiny)
        assert float(st.lyapunov) < 0.05


def test_lorenz96_long_is_honest():
    # T=200 from the attractor (about 0.03 per step): from the default guess the iterations
    # blow up and must stop early, saying so; from a close guess Newton converges at once.
    fn, p, h0, xs = make("lorenz96", T=200)
    step = lambda h, x: fn(h, x, p)  # noqa: E731
    T = 200
    s = structure_of(step, h0, xs)
    ref = loop(step, h0, xs, length=T)
    for method in ("deer", "quasi-deer", "picard", "jacobi"):
        zs, st, hist = solve_nonlinear(step, h0, xs, method=method, structure=s, length=T, **TOL)
        real = true_residual(step, h0, zs, xs)
        if bool(st.converged):
            assert real <= 2 * float(st.residual) + 1e-15
            np.testing.assert_allclose(zs, ref, atol=1e-9)
        else:  # jacobi runs out of iterations (one exact step per iteration)
            assert real > 1e-13
            assert float(st.lyapunov) > 0 or method == "jacobi"
    zs, st, hist = solve_nonlinear(step, h0, xs, method="deer", structure=s, length=T, init=ref + 1e-3,
                             **TOL)
    assert bool(st.converged) and int(st.iterations) <= 3
    np.testing.assert_allclose(zs, ref, atol=1e-10)


@pytest.mark.parametrize("r,contractive", [(2.5, True), (3.9, False)])
def test_logistic(r, contractive):
    step = lambda h, x: r * h * (1 - h)  # noqa: E731
    h0 = jnp.asarray([0.3])
    T = 400
    s = structure_of(step, h0, None, length=T)
    ref = loop(step, h0, None, length=T)
    for method in ("deer", "quasi-deer", "jacobi"):
        zs, st, hist = solve_nonlinear(step, h0, None, method=method, structure=s, length=T, **TOL)
        real = true_residual(step, h0, zs, None)
        if contractive:
            assert bool(st.converged) and float(st.lyapunov) < 0
            np.testing.assert_allclose(zs, ref, rtol=0, atol=1e-12)
        else:
            # chaotic: 400 steps cannot be done in <= 50 Newton iterations; the solver must
            # say so (and see the positive exponent), never claim a wrong trajectory
            assert not bool(st.converged), method
            assert float(st.lyapunov) > 0.05, (method, st)
            assert real > 1e-13
            if method == "deer":  # stopped early, well before max_iters
                assert int(st.iterations) < default_max_iters("deer", T)
        if bool(st.converged):
            assert real <= 2 * float(st.residual) + 1e-15


def test_logistic_chaotic_short_is_honest():
    # short enough that Newton can finish: then the residual claim must hold
    step = lambda h, x: 3.9 * h * (1 - h)  # noqa: E731
    h0 = jnp.asarray([0.3])
    T = 30
    s = structure_of(step, h0, None, length=T)
    zs, st, hist = solve_nonlinear(step, h0, None, method="deer", structure=s, length=T,
                             rtol=1e-12, atol=1e-12)
    if bool(st.converged):
        real = true_residual(step, h0, zs, None)
        assert real <= 1e-12 * 2
        # a pseudo-orbit: the first steps agree with the float loop
        np.testing.assert_allclose(zs[:10], loop(step, h0, None, length=T)[:10], atol=1e-8)


def test_nan_input_matches_loop():
    fn, p, h0, xs = make("tanh")
    xs = xs.at[20, 1].set(jnp.nan)
    step = lambda h, x: fn(h, x, p)  # noqa: E731
    T = xs.shape[0]
    s = structure_of(step, h0, xs)
    ref = loop(step, h0, xs, length=T)
    for method in ("deer", "quasi-deer"):
        zs, st, hist = solve_nonlinear(step, h0, xs, method=method, structure=s, length=T, **TOL)
        assert bool(st.converged) and np.isfinite(float(st.residual))
        np.testing.assert_array_equal(np.isnan(zs), np.isnan(ref))
        fin = ~np.isnan(np.asarray(ref))
        np.testing.assert_allclose(np.asarray(zs)[fin], np.asarray(ref)[fin], atol=1e-12)


def test_nan_jacobian_does_not_leak():
    # d/dh sqrt(h*h) at h = 0 is NaN: the first linearisation point is z0 = 0
    step = lambda h, x: 0.5 * jnp.sqrt(h * h) + x  # noqa: E731
    h0 = jnp.zeros(3)
    xs = jnp.asarray(np.random.default_rng(3).standard_normal((40, 3)))
    s = structure_of(step, h0, xs)
    for method in ("deer", "quasi-deer"):
        zs, st, hist = solve_nonlinear(step, h0, xs, method=method, structure=s, length=40, **TOL)
        assert bool(st.converged) and bool(jnp.all(jnp.isfinite(zs)))
        np.testing.assert_allclose(zs, loop(step, h0, xs, length=40), atol=1e-12)


def test_overflowing_newton_iterate_is_reset():
    # expansive early steps: a bad initial guess makes the linear solve overflow
    step = lambda h, x: jnp.tanh(h) * 0.5 + jnp.exp(x) * 1e-3  # noqa: E731
    h0 = jnp.zeros(2)
    xs = jnp.asarray(np.random.default_rng(4).standard_normal((30, 2)))
    s = structure_of(step, h0, xs)
    init = jnp.full((30, 2), 1e300)
    zs, st, hist = solve_nonlinear(step, h0, xs, method="deer", structure=s, length=30, init=init,
                             **TOL)
    assert bool(st.converged)
    np.testing.assert_allclose(zs, loop(step, h0, xs, length=30), atol=1e-12)


def test_user_jacobian_and_init():
    fn, p, h0, xs = make("gru")
    step = lambda h, x: fn(h, x, p)  # noqa: E731
    T = xs.shape[0]
    s = structure_of(step, h0, xs)
    ref = loop(step, h0, xs, length=T)
    jac = lambda z, x: 0.5 * jnp.ones_like(z)  # noqa: E731  (a crude diagonal guess)
    zs, st, hist = solve_nonlinear(step, h0, xs, method="quasi-deer", structure=s, length=T,
                             jacobian=jac, **TOL)
    assert bool(st.converged)
    np.testing.assert_allclose(zs, ref, atol=1e-11)
    zs, st, hist = solve_nonlinear(step, h0, xs, method="deer", structure=s, length=T, init=ref, **TOL)
    assert int(st.iterations) <= 1 and bool(st.converged)


# ----------------------------------------------------------------------------- derivatives

def _losses(name, method, T=16):
    fn, p, h0, xs = make(name, T=T, seed=2)
    s = structure_of(lambda h, x: fn(h, x, p), h0, xs)

    def par(h0, xs, p):
        zs, _, _ = solve_nonlinear(lambda h, x: fn(h, x, p), h0, xs, method=method, structure=s,
                                length=T, **TOL)
        return jnp.sum(jnp.sin(zs) * jnp.arange(1.0, T + 1.0)[:, None])

    def seq(h0, xs, p):
        zs = loop(lambda h, x: fn(h, x, p), h0, xs, length=T)
        return jnp.sum(jnp.sin(zs) * jnp.arange(1.0, T + 1.0)[:, None])

    return par, seq, (h0, xs, p)


# derivatives depend on the structure only (the tangent solve never uses the method's Ã):
# one case per structure, quasi-DEER where it differs from DEER; dense DEER is covered by
# test_check_grads and test_vmap_and_jit_agree
@pytest.mark.parametrize("name,method", [("gru", "quasi-deer"), ("tanh", "deer"),
                                         ("heads", "quasi-deer")])
def test_derivatives_equal_loop(name, method):
    par, seq, args = _losses(name, method)
    both = lambda fun: jax.jit(  # noqa: E731  reverse and forward mode, one compile
        lambda a: (jax.grad(fun, argnums=(0, 1, 2))(*a), jax.jvp(fun, a, a)))
    (g1, t1), (g2, t2) = both(par)(args), both(seq)(args)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(t1[0], t2[0], rtol=1e-11)
    np.testing.assert_allclose(t1[1], t2[1], rtol=1e-10)


def test_check_grads():
    # quasi-DEER shares the tangent solve (compared with the loop in the test above)
    par, _, args = _losses("gru", "deer", T=5)
    check_grads(jax.jit(par), args, order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- transformations

def test_vmap_and_jit_agree():
    fn, p, h0, xs = make("gru", T=16)
    T = xs.shape[0]
    s = structure_of(lambda h, x: fn(h, x, p), h0, xs)
    rng = np.random.default_rng(7)
    H0 = jnp.asarray(rng.standard_normal((2,) + h0.shape) * 0.3)
    XS = jnp.asarray(rng.standard_normal((2,) + xs.shape))
    Ws = jnp.stack([p["W"], -2 * p["W"]])

    def run(h0, xs, W):
        return solve_nonlinear(lambda h, x: fn(h, x, {"W": W, "U": p["U"]}), h0, xs,
                               method="deer", structure=s, length=T, **TOL)

    def seq(h0, xs, W):
        return loop(lambda h, x: fn(h, x, {"W": W, "U": p["U"]}), h0, xs, length=T)

    zb, stb, hist = jax.jit(jax.vmap(run))(H0, XS, Ws)
    z1, st1, _ = jax.jit(run)(H0[1], XS[1], Ws[1])
    np.testing.assert_allclose(zb[1], z1, atol=1e-12)
    assert int(st1.iterations) == int(stb.iterations[1])
    assert stb.iterations.shape == (2,) and hist.shape[0] == 2
    assert bool(jnp.all(stb.converged))
    np.testing.assert_allclose(zb, jax.vmap(seq)(H0, XS, Ws), atol=1e-11)
    # gradients under vmap (w.r.t. h0, xs and the closed-over W)
    loss = lambda fun: lambda h0, xs, W: jnp.sum(fun(h0, xs, W) ** 2)  # noqa: E731
    gp = jax.jit(jax.vmap(jax.grad(loss(lambda *a: run(*a)[0]), argnums=(0, 1, 2))))(H0, XS, Ws)
    gs = jax.jit(jax.vmap(jax.grad(loss(seq), argnums=(0, 1, 2))))(H0, XS, Ws)
    for a, b in zip(gp, gs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_float32_and_complex():
    fn, p, h0, xs = make("tanh")
    p32 = {k: v.astype(jnp.float32) for k, v in p.items()}
    step = lambda h, x: fn(h, x, p32)  # noqa: E731
    h32, x32 = h0.astype(jnp.float32), xs.astype(jnp.float32)
    s = structure_of(step, h32, x32)
    zs, st, hist = solve_nonlinear(step, h32, x32, method="deer", structure=s, length=xs.shape[0],
                             rtol=1e-5, atol=1e-5)
    assert zs.dtype == jnp.float32 and bool(st.converged)
    assert st.residual.dtype == jnp.float32
    np.testing.assert_allclose(zs, loop(step, h32, x32, length=xs.shape[0]), atol=1e-5)

    a = jnp.asarray([0.5 + 0.3j, -0.4j])
    cstep = lambda h, x: a * h + 0.1 * jnp.sin(h) + x  # noqa: E731
    ch0 = jnp.asarray([1 + 1j, 0.5 + 0j])
    cxs = jnp.asarray(np.random.default_rng(5).standard_normal((30, 2)) * (1 + 0.5j))
    s = structure_of(cstep, ch0, cxs)
    zs, st, hist = solve_nonlinear(cstep, ch0, cxs, method="deer", structure=s, length=30, **TOL)
    assert zs.dtype == jnp.complex128 and bool(st.converged)
    assert st.residual.dtype == jnp.float64 and st.lyapunov.dtype == jnp.float32  # as Info
    np.testing.assert_allclose(zs, loop(cstep, ch0, cxs, length=30), atol=1e-12)


def test_dense_quasi_diagonal_in_chunks(monkeypatch):
    import recur.runtime._jacobian as jac
    monkeypatch.setattr(jac, "_DIAG_CHUNK_ELEMENTS", 48 * 5 * 2)  # groups of 2 columns
    fn, p, h0, xs = make("gru")
    step = lambda h, x: fn(h, x, p)  # noqa: E731
    s = structure_of(step, h0, xs)
    zs, st, hist = solve_nonlinear(step, h0, xs, method="quasi-deer", structure=s, length=48, **TOL)
    monkeypatch.undo()
    zs2, st2, _ = solve_nonlinear(step, h0, xs, method="quasi-deer", structure=s, length=48, **TOL)
    assert int(st.iterations) == int(st2.iterations)
    np.testing.assert_allclose(zs, zs2, atol=1e-13)
    np.testing.assert_allclose(zs, loop(step, h0, xs, length=48), atol=1e-11)


def test_empty_and_bad_arguments():
    step = lambda h, x: jnp.tanh(h) + x  # noqa: E731
    s = structure_of(step, jnp.zeros(2), jnp.zeros((3, 2)))
    zs, st, hist = solve_nonlinear(step, jnp.zeros(2), jnp.zeros((0, 2)), method="deer", structure=s,
                             length=0, **TOL)
    assert zs.shape == (0, 2) and bool(st.converged)
    from recur._errors import PlanError, StepFunctionError
    with pytest.raises(PlanError):
        solve_nonlinear(step, jnp.zeros(2), jnp.zeros((3, 2)), method="newton", structure=s,
                        length=3, **TOL)
    with pytest.raises(StepFunctionError):
        solve_nonlinear(step, jnp.zeros(2), jnp.zeros((3, 2)), method="deer", structure=s,
                        length=3, init=jnp.zeros((2, 2)), **TOL)
