"""The plan's Jacobian claims ``identity`` and ``scalar`` hold wherever they are made.

``identity`` comes from the linearity pass's selection (``unit``): it must mean the
derivative is exactly the identity everywhere, never a 0/1 mask such as ``diag(x > 0)``.
Each claim is checked against ``jax.jacfwd`` at random points, restricted to the stage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import recur
from recur.passes._linearity import analyse_linearity
from recur.passes._trace import trace_step

from ._harness import FAST_COMPILE


def _index(x):
    """A state-free index in {0, 1} that varies with the input."""
    return (x[0] > 0).astype(jnp.int32)


def _mask(n):
    return np.arange(n) % 2 == 0  # at least one False once n > 1


NOT_IDENTITY = {
    "where_zero": lambda h, x: jnp.where(x > 0, h, 0.0) + x,
    "where_scaled": lambda h, x: jnp.where(x > 0, h, 2.0 * h),
    "where_known_mask": lambda h, x: jnp.where(_mask(h.shape[0]), h, 0.0) + x,
    "mask_mul": lambda h, x: h * (x > 0).astype(h.dtype) + x,
    "pad_shift": lambda h, x: jnp.pad(h[1:], (0, 1)) + x,
    "pad_value": lambda h, x: jnp.pad(h[1:], (1, 0), constant_values=1.0) + x,
    "scatter_set": lambda h, x: h.at[0].set(x[0]),
    "scatter_set_state": lambda h, x: h.at[0].set(h[-1]) + x,
    "concat_input": lambda h, x: jnp.concatenate([h[:1], x[1:]]),
    "dus_unknown": lambda h, x: lax.dynamic_update_slice(h, x[:1], (_index(x),)),
    "cond_zero": lambda h, x: lax.cond(x[0] > 0, lambda v: v, lambda v: 0.0 * v + x, h),
    "gather_fill": lambda h, x: h.at[jnp.arange(h.shape[0]) + 1].get(mode="fill",
                                                                    fill_value=0.0) + x,
    "switch": lambda h, x: lax.switch(_index(x), [lambda v: v, lambda v: v[::-1]], h),
    "rotate_unknown": lambda h, x: lax.dynamic_slice(jnp.concatenate([h, h]), (_index(x),),
                                                     (h.shape[0],)),
    "negated": lambda h, x: x - h,
    "scaled_by_input": lambda h, x: x[0] * h + x,
    "doubled": lambda h, x: h + h,
}

IDENTITY = {
    "plus": lambda h, x: h + x,
    "where_same": lambda h, x: jnp.where(x > 0, h, h) + x,
    "scatter_add": lambda h, x: h.at[0].add(x[0]),
    "pad_crop": lambda h, x: jnp.pad(h, 1)[1:-1] + x,
    "concat_split": lambda h, x: jnp.concatenate([h[:1], h[1:]]) * 1.0 - x,
    "cond_both": lambda h, x: lax.cond(x[0] > 0, lambda v: v + x, lambda v: v - x, h),
    "dynamic_slice_full": lambda h, x: lax.dynamic_slice(h, (_index(x),), (h.shape[0],)) + x,
    "dus_full": lambda h, x: lax.dynamic_update_slice(x, h, (_index(x),)),
    "jit": lambda h, x: jax.jit(lambda a, b: a + b)(h, x),
    "reshape_roundtrip": lambda h, x: h.reshape(-1, 1).T.ravel() + x,
    "stack_unstack": lambda h, x: jnp.stack(jnp.unstack(h)) + x,
    "tile_slice": lambda h, x: jnp.tile(h, 2)[:h.shape[0]] + x,
}


def _stage_jacobians(step, n, rng, points=4):
    plan = recur.plan(step, jnp.ones(n), jnp.ones((3, n)))
    hs, xs = (jnp.asarray(rng.standard_normal((points, n))) for _ in range(2))
    jacs = np.asarray(jax.jit(jax.vmap(jax.jacfwd(step)), compiler_options=FAST_COMPILE)(hs, xs))
    for stage, data in zip(plan.stages, plan.stage_data):
        elements = np.asarray(data.elements)
        for jac in jacs:
            yield stage.jacobian, jac[np.ix_(elements, elements)]


def _check_claims(step, n, seed):
    for claim, jac in _stage_jacobians(step, n, np.random.default_rng(seed)):
        if claim == "identity":
            np.testing.assert_array_equal(jac, np.eye(len(jac)), err_msg="claimed identity")
        elif claim == "scalar":
            np.testing.assert_array_equal(jac - np.diag(np.diag(jac)), 0 * jac,
                                          err_msg="claimed scalar, not diagonal")
            np.testing.assert_allclose(np.diag(jac), np.diag(jac)[0], rtol=1e-12,
                                       err_msg="claimed scalar, unequal diagonal")


@given(st.sampled_from(sorted(NOT_IDENTITY) + sorted(IDENTITY)), st.integers(1, 4),
       st.integers(0, 2 ** 16))
def test_identity_and_scalar_claims_hold(name, n, seed):
    step = NOT_IDENTITY.get(name) or IDENTITY[name]
    _check_claims(step, n, seed)


def test_the_issue_example_is_not_identity():
    plan = recur.plan(lambda h, x: jnp.where(x > 0, h, 0.0) + x, jnp.ones(3), jnp.ones((4, 3)))
    assert plan.stages[0].jacobian != "identity"
    assert "jacobian  identity" not in plan.explain()


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_identity_is_still_recognised(name):
    plan = recur.plan(IDENTITY[name], jnp.ones(3), jnp.ones((4, 3)))
    assert [st.jacobian for st in plan.stages] == ["identity"], name


def test_identity_needs_the_leaf_own_elements_in_a_partial_stage():
    """``a[1]`` reads ``a[0]`` in one branch and ``a[1]`` in the other: the pattern puts
    ``a[1]`` in a stage of its own whose derivative is 0 or 1, never the identity claim."""
    def step(h, x):
        return lax.cond(x[0] > 0, lambda a: jnp.stack([a[0], a[0]]), lambda a: a, h) + x
    ir = trace_step(step, jnp.ones(2), jnp.ones((3, 2)))
    assert analyse_linearity(ir).unit == (False,)
    _check_claims(step, 2, 0)


@pytest.mark.parametrize("step, why", [
    (lambda h, x: h.at[1].apply(jnp.sin) + x, "apply"),
    (lambda h, x: lax.reduce(h, 0.0, lambda a, b: a * b + b, (0,)) + h, "reduce"),
    (lambda h, x: lax.reduce_window(h, 1.0, lambda a, b: a * b, (2,), (1,), "SAME") + x,
     "reduce_window"),
])
def test_reducers_and_combiners_are_not_read_as_calls(step, why):
    """A primitive that holds a jaxpr (a reducer, a scatter's combiner) is not a call
    whose body decides linearity: ``x * y`` folded over ``h`` is a product."""
    ir = trace_step(step, jnp.ones(3), jnp.ones((4, 3)))
    lin = analyse_linearity(ir)
    assert lin.levels == ("nonlinear",), (why, lin)


def test_reason_names_the_call_the_user_wrote():
    def step(h, x):
        return {"P": jnp.linalg.inv(h["P"]) + x}

    plan = recur.plan(step, {"P": jnp.eye(2)}, jnp.ones((4, 2, 2)))
    evidence = plan.stages[0].evidence
    assert "`inv`" in evidence and "test_linearity_claims.py" in evidence
    assert "solve" not in evidence and "stop_gradient" not in evidence


def test_reason_names_a_jitted_helper_not_its_inside():
    @jax.jit
    def cell(h):
        return jnp.tanh(h)

    plan = recur.plan(lambda h, x: cell(h) + x, jnp.ones(2), jnp.ones((4, 2)))
    assert "`cell`" in plan.stages[0].evidence
    assert "tanh" not in plan.stages[0].evidence


@pytest.mark.parametrize("step, scalar, unit", [
    (lambda h, x: 0.5 * h + x, True, False),
    (lambda h, x: x[0] * h + x, True, False),
    (lambda h, x: x - h, True, False),
    (lambda h, x: jnp.where(x[0] > 0, h, 0.0) + x, True, False),   # c in {0, 1}: uniform
    (lambda h, x: lax.cond(x[0] > 0, lambda v: 2.0 * v, lambda v: -v, h), True, False),
    (lambda h, x: h + x, True, True),
    (lambda h, x: jnp.where(x > 0.4, h, 0.0) + x, False, False),    # diag(x > 0.4)
    (lambda h, x: jnp.where(x > 0, h, 2.0 * h), False, False),
    (lambda h, x: x * h, False, False),
    (lambda h, x: jnp.concatenate([0.5 * h[:1], h[1:]]), False, False),
    # a one-element coefficient broadcast (a (1,)-shaped parameter), and arithmetic on it
    (lambda h, x: jnp.array([0.5]) * h + x, True, False),
    (lambda h, x: jnp.tanh(x[:1] * 2.0) * h + x, True, False),
    (lambda h, x: jnp.broadcast_to(x[:1], (2,)) * h, True, False),
    (lambda h, x: jnp.array([0.5, 0.5]) * h + x, False, False),    # equal, not provably so
    (lambda h, x: (x[:1] + x) * h, False, False),
])
def test_structural_scalar_and_unit_flags(step, scalar, unit):
    ir = trace_step(step, jnp.ones(2), jnp.ones((3, 2)))
    lin = analyse_linearity(ir)
    assert (lin.scalar, lin.unit) == ((scalar,), (unit,))


def test_a_mask_is_never_called_scalar():
    """With 2 elements and 2 probe points, ``diag(x > 0.4)`` looks like ``c I`` often."""
    for threshold in (0.4, 0.6, 1.0):
        step = lambda h, x, t=threshold: jnp.where(x > t, h, 0.0) + x  # noqa: E731
        plan = recur.plan(step, jnp.ones(2), jnp.ones((3, 2)))
        assert plan.stages[0].jacobian != "scalar", threshold
