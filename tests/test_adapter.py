"""Pins the JAX extension API that recur uses, all of it behind recur/_jax_adapter.py."""

import pathlib

import jax
import jax.numpy as jnp

from recur import _jax_adapter as jx


def test_adapter_names_exist_and_work():
    closed = jax.make_jaxpr(lambda x: jnp.sin(x) + 1.0)(jnp.ones(2))
    assert isinstance(closed, jx.ClosedJaxpr)
    eqn = closed.jaxpr.eqns[-1]
    assert any(jx.is_literal(a) for a in eqn.invars)
    assert float(jx.literal_value(next(a for a in eqn.invars if jx.is_literal(a)))) == 1.0
    assert isinstance(closed.jaxpr.invars[0], jx.Var)
    assert "test_adapter" in jx.eqn_source(eqn)
    (out,) = jx.eval_jaxpr(closed, jnp.zeros(2))
    assert float(out[0]) == 1.0
    assert jx.is_concrete(jnp.ones(1))
    # one equation at a time (the semiring scan's interpreter), calls included
    (sin,) = jx.bind_eqn(closed.jaxpr.eqns[0], [jnp.zeros(2)])
    assert float(sin[0]) == 0.0
    lse = jax.make_jaxpr(lambda a, b: jnp.logaddexp(a, b))(jnp.zeros(2), jnp.zeros(2))
    (out,) = jx.bind_eqn(lse.jaxpr.eqns[0], [jnp.zeros(2), jnp.zeros(2)])
    assert abs(float(out[0]) - float(jnp.log(2.0))) < 1e-6


def test_vmap_axes_reads_spmd_axis_name():
    seen = []

    def probe(x):
        seen.append(jx.vmap_axes([x]))
        return x
    jax.vmap(probe)(jnp.ones((2, 3)))
    jax.vmap(jax.vmap(probe, spmd_axis_name="b"), spmd_axis_name="a")(jnp.ones((2, 2, 3)))
    probe(jnp.ones(3))
    assert seen == [(True, ()), (True, ("b", "a")), (False, ())]


def test_only_the_adapter_imports_jax_internals():
    root = pathlib.Path(__file__).resolve().parents[1] / "recur"
    offenders = [p for p in root.rglob("*.py") if p.name != "_jax_adapter.py"
                 and ("jax._src" in p.read_text() or "jax.extend" in p.read_text())]
    assert offenders == []
