r"""Verification pass: probe what the analysis claims, numerically, before it is used.

The analysis passes are sound by construction, but a claim that is used must never be
wrong, so each is checked at several points before a plan relies on it:

* **structure** -- at a point ``(h, x, params)`` and a random tangent ``w``, the exact ``J w``
  (one JVP) must equal ``J_s w`` for the Jacobian ``J_s`` *extracted under the claimed
  structure* by the same code the runtime uses (``recur/_coefficients.py``: ``J 1`` for a
  diagonal, colour JVPs for blocks and for a dense Jacobian with a column colouring; a
  plain dense claim needs no probe).  A wrong claim (taking ``J 1`` as the diagonal of a
  matrix that is not diagonal, or a pattern that misses a nonzero, which a colouring then
  mixes into another column's entry) fails this test with probability one.
* **affinity** -- ``f(a u + (1-a) v) = a f(u) + (1-a) f(v)`` for points ``u, v`` and
  ``a = 0.37``, and ``J(u) w = J(v) w``.
* **scalar** -- for a diagonal Jacobian, whether all its entries agree (reported as Jacobian
  ``scalar``; used only for reporting).

Where the probes are taken: at the **actual values** when they are known (``h0``, a few
steps of ``xs`` and the params, with the stage's state moved around ``h0``), so a step that
is only defined on part of the space (``log h``, ``sqrt(p - 3)``) is probed where it runs;
then at random points from a fixed seed (standard normal, and positive values), keeping
closed-over arrays whose values are known.  A probe whose values are not finite is
inconclusive; a claim that no probe could confirm is **not used** (lowering falls back to
the dense structure and to "not affine"): a structure or affinity that is not really there
would give wrong derivatives even where the result itself passes the runtime's check.
Steps that cannot be differentiated in forward mode (a ``custom_vjp`` function) cannot be
probed, and their claims are not used.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax_adapter as jx
from .._coefficients import BlockForm, diagonal_from_jvp, structured_from_jvp
from .._dtypes import is_inexact, is_key
from .._ir import ElementView, Structure, StepIR, jaxpr_step


@dataclasses.dataclass(frozen=True)
class Verification:
    structure_ok: bool | None  # None: inconclusive / not probed
    affine_ok: bool | None
    scalar: bool
    notes: tuple[str, ...] = ()


def _random(rng: np.random.Generator, shape, dtype, kind: str = "normal") -> Any:
    if is_key(dtype):
        keys = jax.random.split(jax.random.key(int(rng.integers(0, 2 ** 31))),
                                int(np.prod(shape, dtype=np.int64)) or 1)
        return keys[:int(np.prod(shape, dtype=np.int64))].reshape(shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 3, size=shape).astype(dtype)
    if kind == "positive":
        real = rng.uniform(0.5, 2.0, shape)
    else:
        real = rng.standard_normal(shape)
    if dtype.kind == "c":
        return (real + 1j * rng.standard_normal(shape)).astype(dtype)
    return np.asarray(real, dtype=np.float32 if dtype.itemsize < 4 else dtype)


class Values:
    """Concrete ``h0``, ``xs`` and params as given; the leaves a probe needs (``h0``, the
    inputs at a few steps, params) are taken only when a plan is made, not on every call."""

    def __init__(self, ir: StepIR, h0, xs, params):
        self.ir, self.trees = ir, (h0, xs, params)

    @property
    def h0_tree(self):
        return self.trees[0]

    @property
    def xs_tree(self):
        return self.trees[1]

    @property
    def params_tree(self):
        return self.trees[2]

    @functools.cached_property
    def h0(self) -> list:
        return [jnp.asarray(v) for v in jax.tree_util.tree_leaves(self.trees[0])]

    @functools.cached_property
    def params(self) -> list:
        return [jnp.asarray(v) for v in jax.tree_util.tree_leaves(self.trees[2])]

    @functools.cached_property
    def x_steps(self) -> list:
        x = [] if self.trees[1] is None else jax.tree_util.tree_leaves(self.trees[1])
        T = self.ir.length
        return [[jnp.asarray(v)[t] for v in x] for t in sorted({0, T // 2, T - 1})]


def values_of(ir: StepIR, h0, xs, params) -> Values | None:
    """The actual values to probe at, when every one is concrete (else None)."""
    leaves = (*jax.tree_util.tree_leaves(h0), *jax.tree_util.tree_leaves(xs),
              *jax.tree_util.tree_leaves(params))
    if ir.length == 0 or not all(jx.is_concrete(v) for v in leaves):
        return None
    return Values(ir, h0, xs, params)


class _Probe:
    """The stage's step as ``z -> z'`` on its flat vector, at some inputs/params."""

    def __init__(self, ir: StepIR, view: ElementView, rng: np.random.Generator):
        self.ir, self.view, self.rng = ir, view, rng
        consts = [c if jx.is_concrete(c) else _random(rng, c.shape, c.dtype)
                  for c in ir.jaxpr.consts]
        self.step = jaxpr_step(ir, consts)

    def at(self, h, x, p):
        self.h, self.x, self.p = h, x, p
        return self

    def random_inputs(self, kind):
        rng = self.rng
        return ([jnp.asarray(_random(rng, s.shape, s.dtype, kind)) for s in self.ir.state],
                [jnp.asarray(_random(rng, s.shape, s.dtype, kind)) for s in self.ir.inputs],
                [jnp.asarray(_random(rng, s.shape, s.dtype, kind)) for s in self.ir.params])

    def __call__(self, z):
        return self.view.gather(self.step(self.view.scatter(z, self.h), self.x, self.p))


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
    return BlockForm(structure, n).apply(a, w)


def _points(probe: _Probe, values: Values | None, rng, n, dtype):
    """``(h, x, p, u, v)`` probe settings: around the actual values first, then random."""
    view = probe.view
    out = []
    if values is not None:
        u0 = np.asarray(view.gather(values.h0))
        spread = 0.1 * (np.abs(u0) + 1.0)
        for x in values.x_steps:
            du, dv = (np.asarray(_random(rng, (n,), dtype)) * spread for _ in range(2))
            out.append((values.h0, x, values.params, jnp.asarray(u0 + du, dtype),
                        jnp.asarray(u0 + dv, dtype)))
    for kind in ("normal", "normal", "positive", "positive"):
        h, x, p = probe.random_inputs(kind)
        out.append((h, x, p, jnp.asarray(_random(rng, (n,), dtype, kind)),
                    jnp.asarray(_random(rng, (n,), dtype, kind))))
    return out


def verify(ir: StepIR, structure: Structure, affine: bool, *, elements=None,
           values: Values | None = None, seed: int = 0, needed: int = 2) -> Verification:
    """Probe ``structure`` and ``affine`` for the stage of the inexact state ``elements``
    (all inexact elements when None), until ``needed`` probes were conclusive."""
    if elements is None:
        elements = np.flatnonzero(~ir.exact_elements)
    if len(elements) == 0:
        return Verification(None, None, False, ("not probed: empty stage",))
    if not ir.has_jvp:
        return Verification(None, None, False, (
            f"not probed: the step calls {', '.join(ir.jvp_blockers)}, which forward-mode "
            "autodiff cannot go through",))
    rng = np.random.default_rng(seed)
    view = ElementView(ir, elements)
    n, dtype = view.n, view.dtype
    eps = max(float(jnp.finfo(s.dtype).eps)
              for s in (*ir.state, *ir.inputs, *ir.params) if is_inexact(s.dtype))
    # rounding in the least precise dtype bounds what a probe can resolve
    tol = min(1e3 * max(eps, float(jnp.finfo(dtype).eps)), 0.1)
    structure_ok: bool | None = None
    affine_ok: bool | None = None
    structure_seen = affine_seen = 0
    diagonals = []
    probe_structure = structure.jacobian != "dense" or structure.colours is not None
    with jax.ensure_compile_time_eval():
        probe = _Probe(ir, view, rng)
        for h, x, p, u, v in _points(probe, values, rng, n, dtype):
            if (structure_seen >= needed or not probe_structure) and \
                    (affine_seen >= needed or not affine):
                break
            probe.at(h, x, p)
            w = jnp.asarray(_random(rng, (n,), dtype))
            try:
                fu, jvp_u = jax.linearize(probe, u)
                exact = jvp_u(w)
            except Exception:  # noqa: BLE001 - a probe that cannot run decides nothing
                continue
            if probe_structure:
                claimed = structured_product(jvp_u, n, dtype, structure, w)
                scale = float(np.max(np.abs(np.asarray(exact)), initial=0.0))
                ok = _close(exact, claimed, scale, tol)
                if ok is not None:
                    structure_seen += 1
                    structure_ok = ok if structure_ok is None else (structure_ok and ok)
            if structure.jacobian == "diagonal":
                d = np.asarray(diagonal_from_jvp(jvp_u, n, dtype))
                if np.all(np.isfinite(d)):
                    diagonals.append(d)
            if affine:
                a = 0.37
                lhs = probe(a * u + (1 - a) * v)
                rhs = a * fu + (1 - a) * probe(v)
                jv = jax.jvp(probe, (v,), (w,))[1]
                scale = float(max(np.max(np.abs(np.asarray(lhs)), initial=0.0),
                                  np.max(np.abs(np.asarray(exact)), initial=0.0)))
                oks = [_close(lhs, rhs, scale, tol), _close(exact, jv, scale, tol)]
                if all(ok is not None for ok in oks):
                    affine_seen += 1
                    affine_ok = all(oks) if affine_ok is None else (affine_ok and all(oks))
    notes = []
    if structure_ok is False:
        notes.append(f"the claimed Jacobian structure {structure.jacobian} failed a probe "
                     "(J w differs from the structured J w)")
    elif probe_structure and structure_ok is None:
        notes.append(f"the Jacobian structure {structure.jacobian} could not be confirmed "
                     "(every probe gave non-finite values)")
    if affine_ok is False:
        notes.append("the claimed affinity failed a value probe "
                     "(f(a u + (1-a) v) != a f(u) + (1-a) f(v) or J(u) != J(v))")
    elif affine and affine_ok is None:
        notes.append("the affinity could not be confirmed (every probe gave non-finite "
                     "values)")
    scalar = bool(diagonals) and all(np.allclose(d, d[0], rtol=tol, atol=tol)
                                     for d in diagonals)
    if not probe_structure:
        structure_ok = True  # plain dense: nothing to confirm
    return Verification(structure_ok, affine_ok, scalar, tuple(notes))


__all__ = ["Verification", "verify", "structured_product", "values_of", "Values"]
