"""Regression tests for the adversarial audit: no silent wrong result, no NaN gradient where
the loop's is finite, no crash on valid input (issue "Never silently wrong, for real")."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur
from recur.passes import _dependency
from recur.runtime import _program

from ._steps import loop

ITERATIVE = ("deer", "quasi-deer", "picard", "jacobi", "elk", "quasi-elk")


def gpu_methods(fn, h0, xs, params=None, **kw):
    """The per-stage methods of the plan a GPU would run (forced on this CPU)."""
    plan = recur.plan(fn, h0, xs, params, backend="gpu", **kw)
    return {st.states[0]: st.method for st in plan.stages}


# ----------------------------------------------------------------------------- 1. whole step

def _dropping_edges(real):
    """A dependency pass that misses that the new first leaf reads the old second one (an
    analysis bug): the first leaf becomes a stage of its own, run before the second."""
    def wrong(ir):
        sp = real(ir)
        pattern = sp.pattern.toarray()
        offs = list(ir.offsets) + [ir.n_state]
        pattern[offs[0]:offs[1], offs[1]:offs[2]] = False
        return dataclasses.replace(sp, pattern=pattern, primal=pattern, tangent=None)
    return wrong


def audit_step(h, x):
    b = 0.5 * h["b"] + 0.3 * h["a"].ravel(order="F")[1]
    a = (0.5 * jnp.tanh(h["a"]) + x).at[1, 0].add(0.3 * h["b"][0])
    return {"a": a, "b": b}


@pytest.mark.parametrize("method", ["auto", "sequential", "deer", "quasi-deer", "jacobi"])
def test_whole_step_check_catches_a_missed_dependency(monkeypatch, method):
    """With a dependency pass that misses the cross-leaf edges, the stages run in a wrong
    order; the whole-step check must catch it and fall back to the loop."""
    from recur.passes import _lower
    monkeypatch.setattr(_lower, "jacobian_sparsity", _dropping_edges(_dependency.jacobian_sparsity))
    _program._programs.clear()
    recur._api._plans.clear()
    h0 = {"a": jnp.asarray([[0.1, 0.2], [0.3, 0.4]]), "b": jnp.asarray([0.5, -0.5])}
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((12, 2, 2)))
    ref = loop(audit_step, h0, xs, None, length=12)
    for m in [method, gpu_methods(audit_step, h0, xs)] if method == "auto" else [method]:
        hs, info = recur.scan(audit_step, h0, xs, method=m, return_info=True)
        for k in ref:
            np.testing.assert_allclose(hs[k], ref[k], atol=1e-10)
        if info.method == "sequential":  # the whole loop ran: nothing to catch
            continue
        assert bool(np.all(info.fell_back)) and not bool(np.any(info.converged))
        assert set(np.ravel(info.reason)) == {recur.Reason.WHOLE_STEP}
    _program._programs.clear()
    recur._api._plans.clear()


def test_audit_reproducer_every_method_and_gpu_plan():
    h0 = {"a": jnp.asarray([[0.1, 0.2], [0.3, 0.4]]), "b": jnp.asarray([0.5, -0.5])}
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((12, 2, 2)))
    ref = loop(audit_step, h0, xs, None, length=12)
    for m in ("sequential",) + ITERATIVE + (gpu_methods(audit_step, h0, xs),):
        hs, info = recur.scan(audit_step, h0, xs, method=m, return_info=True)
        for k in ref:
            np.testing.assert_allclose(hs[k], ref[k], atol=1e-9, err_msg=str(m))
        assert bool(np.all(info.converged)) or bool(np.all(info.fell_back))


# ----------------------------------------------------------------------------- 2. exact leaves

def lcg_step(h, x):
    """A uint32 LCG counter above 2**24 driving a float state."""
    c = h["c"] * jnp.uint32(1664525) + jnp.uint32(1013904223)
    u = (c >> jnp.uint32(8)).astype(jnp.float64) / 2.0 ** 24
    return {"c": c, "x": 0.5 * h["x"] + u + x}


def test_integer_leaves_are_exact_and_do_not_cost_parallelism():
    h0 = {"c": jnp.uint32(4_000_000_000), "x": jnp.asarray(0.0)}
    xs = jnp.asarray(np.random.default_rng(2).standard_normal(40))
    ref = loop(lcg_step, h0, xs, None, length=40)
    plan = recur.plan(lcg_step, h0, xs, method="deer")
    assert [st.method for st in plan.stages] == ["sequential", "scan"]
    for m in ("auto", "sequential", "scan") + ITERATIVE + (gpu_methods(lcg_step, h0, xs),):
        hs, info = recur.scan(lcg_step, h0, xs, method=m, return_info=True)
        np.testing.assert_array_equal(hs["c"], ref["c"], err_msg=str(m))
        np.testing.assert_allclose(hs["x"], ref["x"], atol=1e-12, err_msg=str(m))


def metropolis(h, x):
    """A random-walk Metropolis chain that carries its own (new-style) key."""
    key, k1, k2 = jax.random.split(h["key"], 3)
    prop = h["x"] + 0.5 * jax.random.normal(k1, h["x"].shape)
    logp = lambda v: -0.5 * jnp.sum(v ** 2)  # noqa: E731
    accept = jnp.log(jax.random.uniform(k2)) < logp(prop) - logp(h["x"])
    return {"key": key, "x": jnp.where(accept, prop, h["x"])}


def test_key_leaves_are_exact():
    h0 = {"key": jax.random.key(3), "x": jnp.zeros(2)}
    ref = loop(metropolis, h0, None, None, length=30)
    plan = recur.plan(metropolis, h0, None, length=30, method="quasi-deer")
    assert plan.stages[0].states == ("['key']",) and plan.stages[0].method == "sequential"
    assert plan.stages[-1].method == "quasi-deer"
    for m in ("auto", "sequential", "deer", "quasi-deer", "jacobi"):
        hs, info = recur.scan(metropolis, h0, None, length=30, method=m, return_info=True)
        np.testing.assert_array_equal(jax.random.key_data(hs["key"]),
                                      jax.random.key_data(ref["key"]))
        np.testing.assert_allclose(hs["x"], ref["x"], atol=1e-12, err_msg=m)


def test_raw_uint32_key_chain():
    def step(h, x):
        key, sub = jax.random.split(h["key"])
        return {"key": key, "x": 0.9 * h["x"] + jax.random.normal(sub)}
    h0 = {"key": jax.random.PRNGKey(4), "x": jnp.asarray(0.0)}
    ref = loop(step, h0, None, None, length=25)
    for m in ("auto", "deer", "quasi-deer", "scan"):
        hs = recur.scan(step, h0, None, length=25, method=m)
        np.testing.assert_array_equal(hs["key"], ref["key"])
        np.testing.assert_allclose(hs["x"], ref["x"], atol=1e-12)


# ----------------------------------------------------------------------------- 3. infinities

def test_infinite_iterate_never_passes_against_a_finite_step():
    def step(h, x):
        return jnp.where(x[0] > 0, jnp.exp(x[1] * h), x[2])
    T = 8
    xs = jnp.asarray([[-1.0, 0.0, 3.0]] * T).at[3].set(jnp.asarray([1.0, 1.0, 0.0]))
    h0 = jnp.asarray(0.0)
    ref = loop(step, h0, xs, None, length=T)
    for m in ITERATIVE:
        hs, info = recur.scan(step, h0, xs, method=m, return_info=True,
                              init=jnp.full((T,), 800.0))
        np.testing.assert_allclose(hs, ref, rtol=1e-12, err_msg=m)
        assert np.isfinite(float(info.residual)) or bool(info.fell_back)


def test_scan_does_not_overflow_where_the_loop_does_not():
    """A chunk product 5**64 overflows float32; the loop's state 5**t * 1e-33 does not."""
    def step(h, x):
        return 5.0 * h + x
    T = 70
    xs = jnp.zeros((T, 1), jnp.float32)
    h0 = jnp.asarray([1e-33], jnp.float32)
    ref = loop(step, h0, xs, None, length=T)
    assert bool(jnp.all(jnp.isfinite(ref)))
    hs, info = recur.scan(step, h0, xs, method="scan", chunk=64, return_info=True)
    assert not bool(info.fell_back)
    np.testing.assert_allclose(hs, ref, rtol=1e-5)


# ----------------------------------------------------------------------------- 4. accuracy

def test_float32_slowly_contracting_is_as_accurate_as_the_loop():
    def step(h, x):
        return h + 1e-3 * jnp.tanh(x - h)
    T = 4000
    xs64 = jnp.asarray(np.sin(np.arange(T) / 50.0) + 2.0)
    truth = loop(step, jnp.asarray([0.0]), xs64[:, None], None, length=T)[:, 0]
    xs = xs64.astype(jnp.float32)[:, None]
    h0 = jnp.zeros(1, jnp.float32)
    loop_err = float(jnp.max(jnp.abs(
        loop(step, h0, xs, None, length=T)[:, 0].astype(jnp.float64) - truth)))
    for m in ("deer", "quasi-deer", "picard"):
        hs, info = recur.scan(step, h0, xs, method=m, return_info=True)
        err = float(jnp.max(jnp.abs(hs[:, 0].astype(jnp.float64) - truth)))
        assert err <= 10 * max(loop_err, 1e-6), (m, err, loop_err, info)


def test_mixed_precision_leaves_keep_their_own_tolerance():
    def step(h, x):
        return {"a": 0.5 * jnp.tanh(h["a"]) + x.astype(jnp.float32),
                "b": 0.9 * jnp.tanh(h["b"]) + x + 0.1 * h["a"].astype(jnp.float64)}
    T = 200
    xs = jnp.asarray(np.random.default_rng(5).standard_normal(T))
    h0 = {"a": jnp.zeros((), jnp.float32), "b": jnp.zeros(())}
    ref = loop(step, h0, xs, None, length=T)
    for m in ("deer", "quasi-deer"):
        hs = recur.scan(step, h0, xs, method=m)
        np.testing.assert_allclose(hs["b"], ref["b"], atol=1e-10, err_msg=m)


# ----------------------------------------------------------------------------- 5. gradients

@pytest.mark.parametrize("method", ["deer", "quasi-deer"])
def test_no_nan_gradient_after_a_fallback(method):
    def run(r, m):
        return recur.scan(lambda h, x: r * h * (1 - h), jnp.asarray([0.2]), None, length=60,
                          method=m)[-1, 0]
    g_loop = jax.grad(run)(jnp.asarray(3.9), "sequential")
    g = jax.grad(run)(jnp.asarray(3.9), method)
    assert np.isfinite(float(g)) and np.isclose(float(g), float(g_loop), rtol=1e-8)
    gv = jax.vmap(jax.grad(run), in_axes=(0, None))(jnp.asarray([2.5, 3.9]), method)
    assert bool(jnp.all(jnp.isfinite(gv)))


def test_unconfirmed_structure_is_not_used(monkeypatch):
    """A pattern that misses a nonzero (an analysis bug) at a step whose random probes are all
    NaN: the probe at the actual values catches it, and gradients stay the loop's."""
    W = jnp.asarray([[0.3, 0.2], [0.1, 0.4]])

    def step(h, x, p):
        return jnp.sqrt(p - 3.0) * jnp.tanh(W @ h + x)

    real = _dependency.jacobian_sparsity

    def diagonal_only(ir):
        eye = np.eye(ir.n_state, dtype=bool)
        return dataclasses.replace(real(ir), pattern=eye, primal=eye, tangent=None)
    from recur.passes import _lower
    monkeypatch.setattr(_lower, "jacobian_sparsity", diagonal_only)
    recur._api._plans.clear()
    _program._programs.clear()
    h0, p = jnp.asarray([0.1, -0.2]), jnp.asarray(4.0)
    xs = jnp.asarray(np.random.default_rng(6).standard_normal((20, 2)))
    plan = recur.plan(step, h0, xs, p, method="deer")
    assert plan.stages[0].jacobian == "dense"
    loss = lambda h0, m: jnp.sum(recur.scan(step, h0, xs, p, method=m) ** 2)  # noqa: E731
    np.testing.assert_allclose(jax.grad(loss)(h0, "deer"), jax.grad(loss)(h0, "sequential"),
                               rtol=1e-9)
    recur._api._plans.clear()
    _program._programs.clear()


# ----------------------------------------------------------------------------- 7-9. valid input

def test_affine_step_with_cond_on_the_input():
    W = jnp.asarray([[0.5, 0.1], [0.2, 0.3]])

    def step(h, x):
        return jax.lax.cond(x[0] > 0, lambda h: 0.5 * h, lambda h: W @ h, h) + x
    xs = jnp.asarray(np.random.default_rng(7).standard_normal((16, 2)))
    h0 = jnp.zeros(2)
    ref = loop(step, h0, xs, None, length=16)
    for m in ("scan", gpu_methods(step, h0, xs, length=None)):
        np.testing.assert_allclose(recur.scan(step, h0, xs, method=m), ref, atol=1e-12)
    f = lambda xs, m: jnp.sum(jnp.sin(recur.scan(step, h0, xs, method=m)))  # noqa: E731
    np.testing.assert_allclose(jax.grad(f)(xs, "scan"), jax.grad(f)(xs, "sequential"),
                               atol=1e-12)


@jax.custom_vjp
def soft(x):
    return jnp.tanh(x)


soft.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))


def test_custom_vjp_step_runs_the_loop_and_says_why_others_cannot():
    def step(h, x):
        return soft(0.5 * h + x)
    xs = jnp.asarray(np.random.default_rng(8).standard_normal((10, 3)))
    h0 = jnp.zeros(3)
    ref = loop(step, h0, xs, None, length=10)
    for m in ("auto", "sequential"):
        np.testing.assert_allclose(recur.scan(step, h0, xs, method=m), ref)
    plan = recur.plan(step, h0, xs, backend="gpu")
    assert plan.method == "sequential" and "custom_vjp" in plan.explain()
    for m in ("deer", "quasi-deer", "picard"):
        with pytest.raises(recur.PlanError, match="custom_vjp"):
            recur.scan(step, h0, xs, method=m)
    g = jax.grad(lambda xs: jnp.sum(recur.scan(step, h0, xs)))(xs)
    g_ref = jax.grad(lambda xs: jnp.sum(loop(step, h0, xs, None, length=10)))(xs)
    np.testing.assert_allclose(g, g_ref)


def test_options_as_jax_scalars_and_chunk_reaches_the_scan(monkeypatch):
    def step(h, x):
        return 0.9 * jnp.tanh(h) + x
    xs = jnp.asarray(np.random.default_rng(9).standard_normal((12, 2)))
    h0 = jnp.zeros(2)
    hs = recur.scan(step, h0, xs, method="deer", rtol=jnp.asarray(1e-12),
                    atol=np.float64(1e-12), max_iters=jnp.int32(12))
    np.testing.assert_allclose(hs, loop(step, h0, xs, None, length=12), atol=1e-10)
    with pytest.raises(recur.PlanError, match="traced"):
        jax.jit(lambda r: recur.scan(step, h0, xs, method="deer", rtol=r))(1e-6)
    from recur.runtime import _scan
    seen = []
    real = _scan.diagonal_scan
    monkeypatch.setattr(_scan, "diagonal_scan",
                        lambda *a, chunk=None, **k: seen.append(chunk) or real(*a, chunk=chunk,
                                                                               **k))
    _program._programs.clear()
    recur.scan(lambda h, x: 0.5 * h + x, h0, xs, method="scan", chunk=4)
    assert seen and set(seen) == {4}
    _program._programs.clear()


def test_window_one_converges():
    def step(h, x):
        return 0.5 * jnp.tanh(h) + x
    xs = jnp.asarray(np.random.default_rng(10).standard_normal((9, 2)))
    hs, info = recur.scan(step, jnp.zeros(2), xs, method="deer", window=1, return_info=True)
    assert bool(info.converged) and not bool(info.fell_back)
    np.testing.assert_allclose(hs, loop(step, jnp.zeros(2), xs, None, length=9), atol=1e-12)


def test_raise_under_jit_names_convergence_error_without_a_traceback(capfd):
    f = jax.jit(lambda h0: recur.scan(lambda h, x: 3.9 * h * (1 - h), h0, None, length=300,
                                      method="deer", on_failure="raise"))
    with pytest.raises(Exception, match="ConvergenceError: method 'deer'"):
        jax.block_until_ready(f(jnp.asarray([0.3])))
    assert "Traceback" not in capfd.readouterr().err


def test_unknown_name_in_a_method_dict_lists_real_stage_names():
    def step(h, x):
        return (0.5 * h[0] + x, jnp.tanh(h[1]) + h[0])
    with pytest.raises(recur.PlanError) as err:
        recur.scan(step, (jnp.zeros(()), jnp.zeros(())), jnp.ones(4), method={"nope": "deer"})
    text = str(err.value)
    assert "[0]" in text and "[1]" in text and ", ," not in text and "hold , " not in text
