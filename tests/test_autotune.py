"""method="autotune": measured choice, cached by shapes, never stale, usable under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur
from recur import _autotune


def test_autotune_picks_a_measured_method_and_caches_it():
    _autotune._choices.clear()
    a = jnp.full((3,), 0.5)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((50, 3)))

    def step(h, x):
        return a * h + x
    hs, info = recur.scan(step, jnp.zeros(3), xs, method="autotune", return_info=True)
    ref = jax.lax.scan(lambda h, x: (step(h, x),) * 2, jnp.zeros(3), xs)[1]
    np.testing.assert_allclose(hs, ref, rtol=1e-12)
    assert info.method in ("sequential", "scan")
    assert len(_autotune._choices) == 1
    plan = recur.plan(step, jnp.zeros(3), xs, method="autotune")
    assert any(n.startswith("autotune:") for n in plan.notes)
    assert len(_autotune._choices) == 1  # same shapes: the cached choice
    # a changed closed-over array with the same shapes reuses the choice, never a stale value
    a = jnp.full((3,), 0.25)
    hs2 = recur.scan(step, jnp.zeros(3), xs, method="autotune")
    np.testing.assert_allclose(hs2, jax.lax.scan(lambda h, x: (step(h, x),) * 2,
                                                 jnp.zeros(3), xs)[1], rtol=1e-12)
    # under jit nothing is timed: the cached choice (or auto) runs
    out = jax.jit(lambda xs: recur.scan(step, jnp.zeros(3), xs, method="autotune"))(xs)
    np.testing.assert_allclose(out, hs2, rtol=1e-12)


def test_autotune_plan_needs_arrays():
    with pytest.raises(recur.PlanError, match="autotune"):
        recur.plan(lambda h, x: h, jax.ShapeDtypeStruct((2,), jnp.float32),
                   jax.ShapeDtypeStruct((4, 2), jnp.float32), method="autotune")
