r"""Linearisations of the step at a trajectory: ``f(P_t)`` and ``Ã_t`` for all ``t`` at once.

A ``Linearisation`` is what one iteration of a Newton-family method evaluates at
``P = shift(Z̃)``: the step ``f(P_t, x_t)`` for every ``t`` (one batched evaluation), the
coefficients ``Ã_t`` of the method in their form (``recur/_coefficients.py``), and, for the
Lyapunov estimate, ``V -> (J_t V_t)_t`` with the *true* Jacobians.

==================== ======================================================================
``Ã``                how it is read off ``f``
==================== ======================================================================
``jacobian``         the structure's colour JVPs: diagonal 1, ``block(k)`` ``k``, dense
                     ``n``, a coloured dense pattern ``c``; ``cols[t, :, c] = J_t e_c`` is
                     kept time-major (``(T, n, B)``: measured 6 ms against 17 ms for
                     ``(B, T, n)``, GRU D = 32, T = 4096, CPU)
``diagonal``         ``diag(J_t) = Σ_c e_c ⊙ (J_t e_c)`` over the colours, processed in
                     groups so at most ``_DIAG_CHUNK_ELEMENTS`` entries ``T × group × n``
                     exist at once; or the user's ``jacobian(z, x)``; or Hutchinson's
                     estimate ``mean_s v_s ⊙ (J_t v_s)`` from ``p`` Rademacher probes
``identity``         ``1`` (Picard)
``zero``             nothing (Jacobi)
==================== ======================================================================

A coloured structure reads ``diag(J)_i = (J e_{colour(i)})_i`` only where ``S[i, i]``
(column ``i`` holds row ``i``, so no other column of its colour does); elsewhere 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._coefficients import (BlockForm, DiagForm, Form, ZeroForm, jacobian_form,
                             structure_tangents)
from .._ir import Structure
from .._methods import Method

Flat = Callable[[jax.Array, Any], jax.Array]

# Largest number of Jacobian entries (T x colours x n) materialised at once by the
# diagonal extraction.
_DIAG_CHUNK_ELEMENTS = 1 << 24
# Seed of quasi-DEER's Hutchinson probes (fixed: plans and results are deterministic).
_HUTCHINSON_SEED = 20240607


def map_steps(fn: Callable, P: jax.Array, xs: Any) -> jax.Array:
    """``fn(P_t, x_t)`` for every ``t`` (``x_t = None`` when ``xs is None``)."""
    if xs is None:
        return jax.vmap(lambda p: fn(p, None))(P)
    return jax.vmap(fn)(P, xs)


def tangent_columns(f: Flat, P: jax.Array, xs: Any) -> Callable:
    """``U (B, n) -> (T, n, B)`` with ``J_t u_b``, ``J_t = ∂f/∂z(P_t, x_t)``: forward-mode
    JVPs batched over the tangents at every step, as ``jacfwd`` does (3x faster on CPU than
    applying a ``jax.linearize``-d function to broadcast tangents)."""
    def per_step(U):
        def at(p, x):
            return jax.vmap(lambda u: jax.jvp(lambda z: f(z, x), (p,), (u,))[1],
                            out_axes=1)(U)
        return map_steps(at, P, xs)
    return per_step


def diagonal_mask(structure: Structure) -> np.ndarray | None:
    """Where ``diag(J)`` may be nonzero for a coloured structure (``None``: everywhere)."""
    if structure.colours is None:
        return None
    return np.diagonal(structure.pattern).copy()


def diagonal_from_columns(per_step: Callable, E: np.ndarray, T: int, n: int, dtype,
                          mask: np.ndarray | None = None) -> jax.Array:
    """``diag(J_t) = Σ_c e_c ⊙ (J_t e_c)`` with at most ``_DIAG_CHUNK_ELEMENTS`` entries of
    ``J`` alive at once (colours in groups, by a ``lax.scan``); ``mask`` zeroes the
    elements outside it (``diagonal_mask``)."""
    k = E.shape[0]
    g = max(1, min(k, _DIAG_CHUNK_ELEMENTS // max(1, T * n)))
    keep = None if mask is None else jnp.asarray(mask)

    def contribution(e):
        cols = per_step(e)  # (T, n, g)
        on = e.T != 0       # (n, g)
        if keep is not None:
            on = on & keep[:, None]
        return jnp.sum(jnp.where(on, cols, 0), axis=-1)

    if g >= k:
        return contribution(jnp.asarray(E, dtype))
    groups = -(-k // g)
    Ep = np.zeros((groups * g, n), dtype=E.dtype)
    Ep[:k] = E

    def body(acc, e):
        return acc + contribution(e), None

    acc, _ = lax.scan(body, jnp.zeros((T, n), dtype),
                      jnp.asarray(Ep.reshape(groups, g, n), dtype))
    return acc


def rademacher(s: jax.Array, T: int, n: int, dtype) -> jax.Array:
    """``(len(s), T, n)`` signs ``±1``: bit 31 of a murmur3-finalised hash of ``(seed, s,
    t, i)``.  Deterministic on every backend, and cheap to compile inside the solver's
    loop (threefry's ``jax.random`` doubled quasi-DEER's compile time on CPU)."""
    u32 = jnp.uint32
    x = (s.astype(u32)[:, None, None] * u32(0x9E3779B1)
         + jnp.arange(T, dtype=u32)[None, :, None] * u32(0x85EBCA77)
         + jnp.arange(n, dtype=u32)[None, None, :] * u32(0xC2B2AE3D)
         + u32(_HUTCHINSON_SEED))
    x = x ^ (x >> u32(16))
    x = x * u32(0x85EBCA6B)
    x = x ^ (x >> u32(13))
    x = x * u32(0xC2B2AE35)
    x = x ^ (x >> u32(16))
    sign = 1 - 2 * (x >> u32(31)).astype(jnp.int32)
    return sign.astype(dtype)


def diagonal_hutchinson(jvp_all: Callable, probes: int, T: int, n: int, dtype) -> jax.Array:
    """Hutchinson's ``diag(J_t) ≈ (1/p) Σ_s v_{s,t} ⊙ (J_t v_{s,t})`` with ``p`` Rademacher
    probes (independent over steps, fixed seed), in groups of at most
    ``_DIAG_CHUNK_ELEMENTS`` entries.  Unbiased, not exact: only the solver uses it."""
    g = max(1, min(probes, _DIAG_CHUNK_ELEMENTS // max(1, T * n)))
    groups = -(-probes // g)

    def group(i):
        s = jnp.asarray(i, jnp.int32) * g + jnp.arange(g, dtype=jnp.int32)
        V = rademacher(s, T, n, dtype)  # (g, T, n)
        JV = jax.vmap(jvp_all)(V)  # (g, T, n)
        return jnp.sum(jnp.where((s < probes)[:, None, None], V * JV,
                                 jnp.zeros((), dtype)), axis=0)

    total = group(0) if groups == 1 else lax.fori_loop(
        0, groups, lambda i, acc: acc + group(i), jnp.zeros((T, n), dtype))
    return total / jnp.asarray(probes, jnp.finfo(dtype).dtype).astype(dtype)


def hutchinson_probes(method: Method, structure: Structure, user: bool) -> int:
    """Rademacher probes for ``diag(J_t)`` (0: the exact diagonal): only for quasi-DEER
    (quasi-ELK's damped steps lose the "k steps exact after k iterations" guarantee, and did
    not converge with an estimated diagonal on Lorenz-96), only where the exact diagonal
    costs more JVPs."""
    p = int(structure.hutchinson or 0)
    if method.name != "quasi-deer" or user or p <= 0 \
            or structure.jacobian in ("zero", "diagonal"):
        return 0
    exact = structure.n_colours if structure.colours is not None else structure.blocks.shape[1]
    return p if p < exact else 0


@dataclasses.dataclass(frozen=True, eq=False)
class Linearisation:
    """How a method linearises the step: ``form`` of ``Ã``; ``exact``: ``Ã`` is the true
    Jacobian (Newton); ``lyapunov_exact``: ``Ã`` is the true *diagonal* Jacobian, so the
    Lyapunov exponent is read off ``Ã`` exactly; ``evaluate(P, xs) -> (f(P), Ã at P, V ->
    (J_t V_t)_t or None)`` (the last for the Lyapunov sweeps)."""

    form: Form
    exact: bool
    lyapunov_exact: bool
    evaluate: Callable


def linearise(f: Flat, method: Method, structure: Structure, n: int, dtype, *,
              jacobian: Callable | None = None, want_jvp: bool = True) -> Linearisation:
    """The linearisation of ``method`` (registry) on a stage of this ``structure``."""
    kind = method.linearisation
    true_form = jacobian_form(structure, n)
    if kind == "zero" or isinstance(true_form, ZeroForm):
        form: Form = ZeroForm(n)
    elif kind == "identity":
        form = DiagForm(n, scalar=True)
    elif kind == "diagonal" or isinstance(true_form, DiagForm):
        form = DiagForm(n)
    else:
        form = true_form
    user = jacobian is not None and isinstance(form, DiagForm) and kind != "identity"
    lyap_exact = isinstance(form, DiagForm) and structure.jacobian == "diagonal" \
        and kind != "identity" and not user
    exact = kind == "jacobian" or (kind == "diagonal" and structure.jacobian in
                                   ("zero", "diagonal") and not user)
    needs_jvp = isinstance(form, (DiagForm, BlockForm)) and kind != "identity" and not user
    probes = hutchinson_probes(method, structure, user)
    E = structure_tangents(structure, n, dtype) if needs_jvp and not probes else None
    mask = diagonal_mask(structure)

    def evaluate(P, xs):
        L = P.shape[0]
        if not needs_jvp:
            if lyap_exact or not want_jvp:
                fz, jvp_all = map_steps(f, P, xs), None
            else:
                fz, jvp_all = jax.linearize(lambda Z: map_steps(f, Z, xs), P)
            if isinstance(form, ZeroForm):
                a = form.zeros(L, dtype)
            elif kind == "identity":
                a = jnp.ones((L, 1), dtype)
            else:
                a = jnp.broadcast_to(
                    map_steps(lambda p, x: jnp.asarray(jacobian(p, x)).astype(dtype), P, xs),
                    (L, n))
            return fz, a, jvp_all
        if isinstance(form, BlockForm) or (lyap_exact and not probes):
            # Ã is the true Jacobian: the Lyapunov sweeps multiply by it directly (one
            # batched product instead of a JVP through f), so no linearisation
            fz = map_steps(f, P, xs)
            per_step = tangent_columns(f, P, xs)
            if isinstance(form, DiagForm):
                return fz, diagonal_from_columns(per_step, E, L, n, dtype, mask=mask), None
            a = form.from_columns(per_step(jnp.asarray(E)))
            return fz, a, (lambda V: form.apply(a, V)) if want_jvp else None
        fz, jvp_all = jax.linearize(lambda Z: map_steps(f, Z, xs), P)
        per_step = tangent_columns(f, P, xs)
        if probes:
            a = diagonal_hutchinson(jvp_all, probes, L, n, dtype)
        else:
            a = diagonal_from_columns(per_step, E, L, n, dtype, mask=mask)
        return fz, a, jvp_all if want_jvp else None

    return Linearisation(form=form, exact=exact, lyapunov_exact=lyap_exact, evaluate=evaluate)


__all__ = ["Linearisation", "linearise", "map_steps", "tangent_columns", "diagonal_mask",
           "diagonal_from_columns", "diagonal_hutchinson", "hutchinson_probes", "rademacher"]
