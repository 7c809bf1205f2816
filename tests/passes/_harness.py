"""Differential harness: the dependency pass's pattern against ``jax.jacfwd``.

A primitive under test ``prim(a0, a1, ..., [x])`` becomes a step whose state is
``{"a0": ..., "a1": ..., "y": out}`` with ``a_i' = 0.5 a_i`` and ``y' = prim(a_i...)``
(outputs raveled and concatenated), so the rows of ``y`` in the pattern are exactly what
the rule says the primitive's output reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from recur.passes._dependency import jacobian_sparsity
from recur.passes._trace import trace_step

# the reference derivatives run once per drawn example: compile fast, not well
FAST_COMPILE = {"xla_backend_optimization_level": "0", "xla_llvm_disable_expensive_passes": True}


def _vector(out) -> jnp.ndarray:
    leaves = jax.tree_util.tree_leaves(out)
    return jnp.concatenate([jnp.ravel(o).astype(jnp.float64) for o in leaves]) if leaves \
        else jnp.zeros(0)


class Case:
    """``prim`` on state operands of ``shapes`` (float64), with an optional per-step input
    ``x`` drawn by ``x_sampler(rng)``."""

    def __init__(self, prim, shapes, x_sampler=None, *, seed=0):
        self.prim, self.shapes, self.x_sampler = prim, [tuple(s) for s in shapes], x_sampler
        self.rng = np.random.default_rng(seed)
        self.k = len(self.shapes)
        ops = [jax.ShapeDtypeStruct(s, jnp.float64) for s in self.shapes]
        x0 = None if x_sampler is None else jnp.asarray(x_sampler(self.rng))
        self.out_size = int(jax.eval_shape(self.apply, ops, x0).shape[0])
        self.h0 = {f"a{i}": np.zeros(s) for i, s in enumerate(self.shapes)}
        self.h0["y"] = np.zeros(self.out_size)
        self.x0 = x0
        self.n = sum(v.size for v in self.h0.values())

    def apply(self, ops, x):
        return _vector(self.prim(*ops) if self.x_sampler is None else self.prim(*ops, x))

    def step(self, h, x):
        new = {f"a{i}": 0.5 * h[f"a{i}"] for i in range(self.k)}
        new["y"] = self.apply([h[f"a{i}"] for i in range(self.k)], x)
        return new

    def pattern(self) -> np.ndarray:
        xs = None if self.x0 is None else jnp.stack([self.x0, self.x0])
        ir = trace_step(self.step, self.h0, xs, None, length=None if xs is not None else 2)
        return jacobian_sparsity(ir).pattern.toarray()

    def _unravel(self, z):
        out, start = {}, 0
        for key in sorted(self.h0):
            size = self.h0[key].size
            out[key] = z[start:start + size].reshape(self.h0[key].shape)
            start += size
        return out

    def _flat(self, x):
        return lambda z: ravel_pytree(self.step(self._unravel(z), x))[0]

    def _draw(self, count):
        """``count`` random states (standard normal) and inputs, stacked."""
        zs = jnp.asarray(self.rng.standard_normal((count, self.n)))
        xs = None if self.x_sampler is None else \
            jnp.stack([jnp.asarray(self.x_sampler(self.rng)) for _ in range(count)])
        return zs, xs

    def _batched(self, fn, zs, xs):
        """``fn(flat_step)`` at every stacked point, vmapped and compiled once."""
        def one(z, x):
            return fn(self._flat(x))(z)
        if xs is None:
            return np.asarray(jax.jit(jax.vmap(lambda z: one(z, None)),
                                      compiler_options=FAST_COMPILE)(zs))
        return np.asarray(jax.jit(jax.vmap(one), compiler_options=FAST_COMPILE)(zs, xs))

    def _columns(self, zs, xs):
        """The Jacobian one JVP column at a time (where JAX cannot batch the derivative,
        e.g. a generic ``reduce_window``'s JVP)."""
        n = zs.shape[1]
        jvp = jax.jit(lambda z, x, t: jax.jvp(self._flat(x), (z,), (t,))[1],
                      compiler_options=FAST_COMPILE)
        eye = jnp.eye(n)
        return np.stack([np.stack([np.asarray(jvp(zs[p], None if xs is None else xs[p], eye[j]))
                                   for j in range(n)], axis=1) for p in range(zs.shape[0])])

    def jacobian_support(self, count=3, reverse=False) -> np.ndarray:
        """Union over random points of the true Jacobian's nonzeros."""
        jac = jax.jacrev if reverse else jax.jacfwd
        zs, xs = self._draw(count)
        try:
            js = self._batched(jac, zs, xs)
        except ValueError:  # "got axis spec None but output was batched"
            if reverse:
                raise
            js = self._columns(zs, xs)
        return np.any(js != 0, axis=0)

    def perturbation_support(self, count=2) -> np.ndarray:
        """Union over random points of which outputs change when one state element moves
        up or down a lot (the primal dependence, for integer-valued outputs whose
        derivative is zero: an argmax moves one way or the other)."""
        zs, xs = self._draw(count)
        n = zs.shape[1]
        kicks = np.concatenate([np.diag(self.rng.uniform(8, 9, n)),
                                -np.diag(self.rng.uniform(8, 9, n)), np.zeros((1, n))])

        def moved(f):
            return lambda z: jax.vmap(f)(z[None, :] + kicks)

        out = self._batched(moved, zs, xs)  # [point, kick, output]
        changed = out[:, :-1, :] != out[:, -1:, :]
        return np.any(changed[:, :n] | changed[:, n:], axis=0).T


def check(case: Case, *, exact: bool, points: int = 3, reverse: bool = False,
          perturb: bool = False) -> np.ndarray:
    """Soundness (every true nonzero is in the pattern) and, for ``exact`` rules, precision
    (nothing in the pattern that no random point shows).  Returns the pattern."""
    pattern = case.pattern()
    support = case.perturbation_support() if perturb else case.jacobian_support(points, reverse)
    missed = support & ~pattern
    assert not missed.any(), f"pattern misses {np.argwhere(missed).tolist()}"
    if exact:
        extra = pattern & ~support
        assert not extra.any(), f"pattern wider than the Jacobian at {np.argwhere(extra).tolist()}"
    return pattern


def output_rows(case: Case, pattern: np.ndarray) -> np.ndarray:
    """The pattern's rows of the primitive's output, columns of its operands."""
    n_ops = sum(int(np.prod(s, dtype=np.int64)) for s in case.shapes)
    return pattern[n_ops:, :n_ops]
