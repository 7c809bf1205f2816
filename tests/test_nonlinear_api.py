"""The iterative methods through the public API: pytree states, MCMC, fallbacks, derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur

from ._steps import loop


def close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


RNG = np.random.default_rng(0)
W_LSTM = jnp.asarray(RNG.standard_normal((16, 7)) / np.sqrt(7))


def lstm(h, x):
    hh, c = h
    i, f, o, g = jnp.split(W_LSTM @ jnp.concatenate([hh, x]), 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jnp.tanh(c) * jax.nn.sigmoid(o), c


@pytest.mark.parametrize("method", ["deer", "quasi-deer"])
def test_lstm_tuple_state(method):
    xs = jnp.asarray(RNG.standard_normal((64, 3)))
    h0 = (jnp.zeros(4), jnp.zeros(4))
    hs, info = recur.scan(lstm, h0, xs, method=method, rtol=1e-12, atol=1e-12,
                          return_info=True)
    assert isinstance(hs, tuple) and bool(info.converged) and not bool(info.fell_back)
    close(hs, loop(lstm, h0, xs), 1e-10)
    g = jax.grad(lambda xs: jnp.sum(recur.scan(lstm, h0, xs, method=method)[1] ** 2))(xs)
    g_ref = jax.grad(lambda xs: jnp.sum(loop(lstm, h0, xs)[1] ** 2))(xs)
    np.testing.assert_allclose(g, g_ref, rtol=1e-8, atol=1e-10)


def banana_logp(z):
    return -0.5 * (z[0] ** 2 / 4.0 + (z[1] - 0.25 * z[0] ** 2) ** 2)


def mala(h, x, step_size):
    noise, u = x
    grad = jax.grad(banana_logp)
    prop = h + step_size * grad(h) + jnp.sqrt(2 * step_size) * noise

    def log_q(a, b):  # log q(a | b)
        return -jnp.sum((a - b - step_size * grad(b)) ** 2) / (4 * step_size)
    log_alpha = banana_logp(prop) - banana_logp(h) + log_q(h, prop) - log_q(prop, h)
    return jnp.where(jnp.log(u) < log_alpha, prop, h)


def test_mala_chain_with_pre_drawn_noise_and_where_accept():
    T = 80
    xs = (jnp.asarray(RNG.standard_normal((T, 2))), jnp.asarray(RNG.uniform(size=T)))
    h0 = jnp.array([0.5, -0.3])
    plan = recur.plan(mala, h0, xs, jnp.asarray(0.1), backend="gpu")
    assert plan.kind == "nonlinear"  # accept reads the state through the predicate
    for method in ("deer", "quasi-deer", "jacobi"):
        hs, info = recur.scan(mala, h0, xs, jnp.asarray(0.1), method=method,
                              return_info=True)
        ref = loop(mala, h0, xs, jnp.asarray(0.1))
        # either converged to the loop's chain, or fell back to it: never a wrong chain
        close(hs, ref, 1e-8)
        assert bool(info.converged) or bool(info.fell_back)


def test_running_max_and_hidden_dependences_give_the_loop_answer():
    xs = jnp.asarray(RNG.standard_normal((50, 3)))
    for fn in (lambda h, x: jnp.maximum(h, x),
               lambda h, x: 0.5 * h + jax.lax.stop_gradient(0.1 * h ** 2) + x):
        for method in ("deer", "quasi-deer"):
            hs, info = recur.scan(fn, jnp.zeros(3), xs, method=method, return_info=True)
            close(hs, loop(fn, jnp.zeros(3), xs), 1e-9)


def test_chaotic_logistic_falls_back_and_reports_lyapunov():
    hs, info = recur.scan(lambda h, x: 3.9 * h * (1 - h), jnp.array([0.3]), None, length=300,
                          method="deer", return_info=True)
    assert bool(info.fell_back) and float(info.lyapunov) > 0
    close(hs, loop(lambda h, x: 3.9 * h * (1 - h), jnp.array([0.3]), None, length=300), 0)
    hs, info = recur.scan(lambda h, x: 2.5 * h * (1 - h), jnp.array([0.3]), None, length=300,
                          method="deer", return_info=True)
    assert bool(info.converged) and float(info.lyapunov) < 0


def test_vmap_jit_and_forward_mode():
    W = jnp.asarray(RNG.standard_normal((3, 3)) * 0.4)

    def step(h, x, W):
        return jnp.tanh(W @ h + x)
    xs = jnp.asarray(RNG.standard_normal((2, 30, 3)))
    run = jax.jit(jax.vmap(lambda xs: recur.scan(step, jnp.zeros(3), xs, W, method="deer")))
    out = run(xs)
    for i in range(2):
        close(out[i], loop(step, jnp.zeros(3), xs[i], W), 1e-10)
    _, t_par = jax.jvp(lambda W: recur.scan(step, jnp.zeros(3), xs[0], W, method="deer"),
                       (W,), (jnp.ones_like(W),))
    _, t_seq = jax.jvp(lambda W: loop(step, jnp.zeros(3), xs[0], W), (W,), (jnp.ones_like(W),))
    close(t_par, t_seq, 1e-9)


def test_raise_on_failure():
    with pytest.raises(recur.ConvergenceError):
        recur.scan(lambda h, x: 3.9 * h * (1 - h), jnp.array([0.3]), None, length=300,
                   method="deer", on_failure="raise")


def test_elk_and_windows_through_the_api():
    F, dt = 8.0, 0.01

    def l96(h, x):
        return h + dt * ((jnp.roll(h, -1) - jnp.roll(h, 2)) * jnp.roll(h, 1) - h + F)
    h0 = jnp.asarray(F + np.random.default_rng(2).standard_normal(5))
    ref = loop(l96, h0, None, length=120)
    hs, info = recur.scan(l96, h0, None, length=120, method="deer", window=24,
                          return_info=True)
    assert bool(info.converged) and not bool(info.fell_back)
    np.testing.assert_allclose(hs, ref, rtol=1e-6, atol=1e-6)
    hs, info = recur.scan(l96, h0, None, length=120, method="elk", return_info=True)
    close(hs, ref, 1e-6)  # converged or fell back: never a wrong trajectory
    with pytest.raises(recur.PlanError, match="window"):
        recur.scan(l96, h0, None, length=120, method="elk", window=8)


def test_plan_reports_contractivity_from_concrete_values():
    for r, sign in ((2.5, -1), (3.9, 1)):
        plan = recur.plan(lambda h, x: r * h * (1 - h), jnp.array([0.3]), None, length=400)
        (note,) = [n for n in plan.notes if "Lyapunov" in n]
        lam = float(note.split(": ")[1].split()[0])
        assert np.sign(lam) == sign
        assert "explain" and note in plan.explain()
    shapes_only = recur.plan(lambda h, x: 3.9 * h * (1 - h),
                             jax.ShapeDtypeStruct((1,), jnp.float64), None, length=400)
    assert not any("Lyapunov" in n for n in shapes_only.notes)


def test_auto_keeps_the_loop_for_a_chaotic_step_given_concrete_values():
    def logistic(r):
        return lambda h, x: r * h * (1 - h)
    long = dict(length=100_000, backend="gpu")   # long enough for Newton to pay on a GPU
    assert recur.plan(logistic(2.5), jnp.array([0.3]), None, **long).method == "deer"
    chaotic = recur.plan(logistic(3.9), jnp.array([0.3]), None, **long)
    assert chaotic.method == "sequential" and "chaotic" in chaotic.stages[0].why
    shapes_only = recur.plan(logistic(3.9), jax.ShapeDtypeStruct((1,), jnp.float64), None, **long)
    assert shapes_only.method == "deer"   # values unknown: the runtime's early stop decides


def test_info_counts_step_evaluations():
    W = jnp.asarray(RNG.standard_normal((3, 3)) / 3)
    xs = jnp.asarray(RNG.standard_normal((40, 3)))

    def rnn(h, x):
        return jnp.tanh(W @ h + x)
    _, seq = recur.scan(rnn, jnp.zeros(3), xs, method="sequential", return_info=True)
    _, deer = recur.scan(rnn, jnp.zeros(3), xs, method="deer", return_info=True)
    _, aff = recur.scan(lambda h, x: 0.5 * h + x, jnp.zeros(3), xs, method="scan",
                        return_info=True)
    assert int(seq.evaluations) == 40 and int(aff.evaluations) == 2 * 40 + 1
    # the initial guess, the pass at it, one pass per iteration
    assert bool(deer.converged) and int(deer.evaluations) == 40 * (int(deer.iterations) + 2)
    _, win = recur.scan(rnn, jnp.zeros(3), xs, method="deer", window=8, return_info=True)
    assert int(win.evaluations) == 40 + 8 * int(win.iterations)


def test_lyapunov_false_skips_the_estimate_not_the_check():
    W = jnp.asarray(RNG.standard_normal((4, 4)) / 4)
    xs = jnp.asarray(RNG.standard_normal((30, 4)))

    def rnn(h, x):
        return jnp.tanh(W @ h + x)
    hs, info = recur.scan(rnn, jnp.zeros(4), xs, method="deer", lyapunov=False,
                          return_info=True)
    close(hs, loop(rnn, jnp.zeros(4), xs), 1e-10)
    assert bool(info.converged) and np.isnan(float(info.lyapunov))
    # a chaotic map still never returns a wrong trajectory: it runs to max_iters, falls back
    logistic = lambda h, x: 3.9 * h * (1 - h)  # noqa: E731
    hs, info = recur.scan(logistic, jnp.array([0.3]), None, length=200, method="deer",
                          lyapunov=False, max_iters=10, return_info=True)
    close(hs, loop(logistic, jnp.array([0.3]), None, length=200), 0)
    assert bool(info.fell_back) and int(info.iterations) == 10
    with pytest.raises(recur.PlanError, match="lyapunov"):
        recur.scan(rnn, jnp.zeros(4), xs, method="deer", lyapunov="no")


def test_complex_nonlinear_state_under_strict_promotion():
    # the contractivity estimate normalises a complex tangent by its real norm.  Its own
    # generator: complex tanh has poles, and about one draw in ten (of the module's shared
    # generator, whose state depends on test order) is not contractive along its trajectory
    rng = np.random.default_rng(1)
    P, H, T = 4, 3, 40
    lam = jnp.asarray(0.5 * np.exp(1j * rng.uniform(0, 2 * np.pi, P)))
    B = jnp.asarray(0.3 * (rng.standard_normal((P, H)) + 1j * rng.standard_normal((P, H))))
    xs = jnp.asarray(rng.standard_normal((T, H)))
    h0 = jnp.asarray(0.1 * (rng.standard_normal(P) + 1j * rng.standard_normal(P)))

    def step(h, x):
        return lam * jnp.tanh(h) * h + B @ x.astype(B.dtype)

    def body(h, x):
        h = step(h, x)
        return h, jnp.real(h)

    with jax.numpy_dtype_promotion("strict"):
        ref = jax.lax.scan(body, h0, xs)
        plan = recur.lax.plan(body, h0, xs, method="auto")
        assert any("Lyapunov" in n for n in plan.notes), plan.explain()
        close(recur.lax.scan(body, h0, xs, method="auto"), ref, 1e-10)
        plan = recur.plan(step, h0, xs, method="auto")
        assert any("Lyapunov" in n for n in plan.notes), plan.explain()
        close(recur.scan(step, h0, xs, method="auto"), loop(step, h0, xs), 1e-10)
        hs, info = recur.scan(step, h0, xs, method="deer", return_info=True)
        assert bool(info.converged) and float(info.lyapunov) < 0
        close(hs, loop(step, h0, xs), 1e-10)
