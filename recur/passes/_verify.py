r"""Verification pass: probe what the analysis claims, with random values.

The analysis passes are sound by construction, but a claim that is used must never be
wrong, so each is checked numerically at random points (never only at zero) before a
plan relies on it:

* **structure** — at a random ``(h, x, params)`` and a random tangent ``w``, the exact
  ``J w`` (one JVP) must equal ``J_s w`` for the Jacobian ``J_s`` *extracted under the
  claimed structure* by the same code the runtime uses (``J 1`` for a diagonal, colour
  JVPs for blocks and for a dense Jacobian with a column colouring of its sparse pattern;
  a plain dense claim needs no probe).  A wrong claim (the classic one: taking ``J 1`` as
  the diagonal of a matrix that is not diagonal; or a pattern that misses a nonzero, which
  a colouring then mixes into another column's entry) mixes columns and fails this test
  with probability one.
* **affinity** — ``f(a u + (1-a) v) = a f(u) + (1-a) f(v)`` for random ``u, v, a``, and
  ``J(u) w = J(v) w``.
* **scalar** — for a diagonal Jacobian, whether all its entries agree at random points
  (reported as Jacobian ``scalar``; used only for reporting).

Random values are drawn from a fixed seed, so plans are deterministic.  Closed-over
arrays whose values are known are kept; those that are tracers (inside a user's ``jit``)
are replaced by random values too.  A probe that produces non-finite values is
inconclusive, never a failure.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax_adapter as jx
from ..runtime._flat import FlatStep, jaxpr_step
from ..runtime._jacobian import diagonal_from_jvp, permute_in, permute_out, structured_from_jvp
from .._dtypes import is_inexact
from ._structure import Structure
from ._trace import StepIR


@dataclasses.dataclass(frozen=True)
class Verification:
    structure_ok: bool | None  # None: inconclusive / not probed
    affine_ok: bool | None
    scalar: bool
    notes: tuple[str, ...] = ()


def _random(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 3, size=shape).astype(dtype)
    real = rng.standard_normal(shape)
    if dtype.kind == "c":
        return (real + 1j * rng.standard_normal(shape)).astype(dtype)
    return np.asarray(real, dtype=np.float32 if dtype.itemsize < 4 else dtype)


class _Probe:
    """The step as ``z -> z'`` on the flat state at random inputs/params."""

    def __init__(self, ir: StepIR, rng: np.random.Generator, elements=None):
        self.ir = ir
        self.elements = None if elements is None else jnp.asarray(elements)
        consts = [c if jx.is_concrete(c) else _random(rng, c.shape, c.dtype)
                  for c in ir.jaxpr.consts]
        self.flat = FlatStep(ir, jaxpr_step(ir, consts))
        self.dtype = self.flat.dtype
        self.rng = rng
        self.new_inputs()

    def new_inputs(self):
        self.x, self.p = [[jnp.asarray(_random(self.rng, s.shape, s.dtype)).astype(s.dtype)
                           for s in group] for group in (self.ir.inputs, self.ir.params)]

        self.others = jnp.asarray(_random(self.rng, (self.ir.n_state,), self.dtype))

    @property
    def n(self) -> int:
        return self.ir.n_state if self.elements is None else int(self.elements.shape[0])

    def point(self):
        return jnp.asarray(_random(self.rng, (self.n,), self.dtype))

    def __call__(self, z):
        if self.elements is None:
            return self.flat(z, self.x, self.p)
        full = self.others.at[self.elements].set(z)
        return self.flat(full, self.x, self.p)[self.elements]


def _close(a, b, scale, tol) -> bool | None:
    a, b = np.asarray(a), np.asarray(b)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    return bool(np.all(np.abs(a - b) <= tol * (1.0 + scale)))


def structured_product(jvp, n, dtype, structure: Structure, w):
    """``J_s w`` with ``J_s`` extracted under the claimed ``structure``."""
    if structure.jacobian == "zero":
        return jnp.zeros_like(w)
    if structure.jacobian == "diagonal":
        return diagonal_from_jvp(jvp, n, dtype) * w
    a = structured_from_jvp(jvp, n, dtype, structure)
    wb = permute_in(w, structure.blocks)
    return permute_out(jnp.einsum("mij,mj->mi", a, wb), structure.blocks, n)


def verify(ir: StepIR, structure: Structure, affine: bool, *, seed: int = 0,
           points: int = 2, elements=None) -> Verification:
    """Probe ``structure`` and ``affine`` for the step, or for the stage made of the flat
    state ``elements`` (the other elements held at random values)."""
    if ir.n_state == 0 or not all(is_inexact(leaf.dtype) for leaf in ir.state):
        return Verification(None, None, False, ("not probed: integer or empty state",))
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    with jax.ensure_compile_time_eval():
        probe = _Probe(ir, rng, elements)
        n, dtype = probe.n, probe.dtype
        # Rounding in the least precise dtype the step computes in bounds what a probe can
        # resolve; for 16-bit floats only gross violations are detectable.
        eps = max(float(jnp.finfo(s.dtype).eps)
                  for s in (*ir.state, *ir.inputs, *ir.params) if is_inexact(s.dtype))
        tol = min(1e3 * max(eps, float(jnp.finfo(dtype).eps)), 0.1)
        structure_ok: bool | None = None
        affine_ok: bool | None = None
        diagonals = []
        for _ in range(points):
            probe.new_inputs()
            u, v, w = probe.point(), probe.point(), probe.point()
            fu, jvp_u = jax.linearize(probe, u)
            exact = jvp_u(w)
            if structure.jacobian != "dense" or structure.colours is not None:
                claimed = structured_product(jvp_u, n, dtype, structure, w)
                scale = float(np.max(np.abs(np.asarray(exact)), initial=0.0))
                ok = _close(exact, claimed, scale, tol)
                if ok is not None:
                    structure_ok = ok if structure_ok is None else (structure_ok and ok)
            if structure.jacobian == "diagonal":
                diagonals.append(np.asarray(diagonal_from_jvp(jvp_u, n, dtype)))
            if affine:
                a = 0.37
                lhs = probe(a * u + (1 - a) * v)
                rhs = a * fu + (1 - a) * probe(v)
                jv = jax.jvp(probe, (v,), (w,))[1]
                scale = float(max(np.max(np.abs(np.asarray(lhs)), initial=0.0),
                                  np.max(np.abs(np.asarray(exact)), initial=0.0)))
                oks = [_close(lhs, rhs, scale, tol), _close(exact, jv, scale, tol)]
                for ok in oks:
                    if ok is not None:
                        affine_ok = ok if affine_ok is None else (affine_ok and ok)
    if structure_ok is False:
        notes.append(f"the claimed Jacobian structure {structure.jacobian} failed a random "
                     "probe (J w differs from the structured J w)")
    if affine_ok is False:
        notes.append("the claimed affinity failed a value probe "
                     "(f(a u + (1-a) v) != a f(u) + (1-a) f(v) or J(u) != J(v))")
    scalar = bool(diagonals) and all(
        np.all(np.isfinite(d)) and np.allclose(d, d[0], rtol=tol, atol=tol) for d in diagonals
    )
    return Verification(structure_ok, affine_ok, scalar, tuple(notes))


__all__ = ["Verification", "verify", "structured_product"]
