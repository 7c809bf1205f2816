r"""The chunkwise form of a ``jax.lax.scan`` body: what the chunkwise pass found, and how
to evaluate it.  Shared by the pass (``passes/_chunkwise.py``, which finds it and probes it
with exactly this code) and the runtime (``runtime/_chunked.py``).

The form
--------
Each state leaf is ``S_t = g_t ⊙ S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ`` in its canonical frame
and each readout is ``r_t = S_τᵀ q_t`` (the pieces: ``recur/_chunk_pieces.py``).  Each
output leaf of the body is

.. math::
   y_t = φ(r_t, x_t)

for an arbitrary function ``φ`` (the rest of the body: a normaliser's division, a skip
connection, a gate).  ``g``, ``k``, ``v``, ``q`` are functions of ``x_t`` alone: slices of
the body's jaxpr that do not read the state.  ``ChunkForm`` evaluates them: the *pieces
jaxpr* (the body's equations that the factors need, from ``x_t``) gives one step's pieces
in the canonical frames, the *φ jaxpr* (the equations from the readouts and ``x_t`` to the
outputs) the outputs, and the two with one step of the recurrence rebuild the body.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp

from . import _jax_adapter as jx
from ._chunk_pieces import LeafForm, Readout, is_number, product_value
from ._ir import compute_dtype


def _slice_eqns(eqns, wanted: set, stop: set = frozenset()) -> list:
    """The equations ``wanted`` needs, in order (not through ``stop`` vars)."""
    need = {v for v in wanted if not jx.is_literal(v)}
    keep = []
    for eqn in reversed(eqns):
        if any(o in need for o in eqn.outvars) and not all(o in stop for o in eqn.outvars):
            keep.append(eqn)
            need.update(v for v in eqn.invars if not jx.is_literal(v))
    return keep[::-1]


@dataclasses.dataclass(frozen=True, eq=False)
class ChunkForm:
    """The chunkwise form of a whole scan body (module docstring).  ``chunk``: the chunk
    size ``C`` the plan chose; ``group``: chunks evaluated together (0: all at once)."""

    jaxpr: Any = dataclasses.field(repr=False)   # the body's ClosedJaxpr
    n_state: int
    leaves: tuple[LeafForm, ...]
    readouts: tuple[Readout, ...]
    chunk: int = 0
    group: int = 0

    @functools.cached_property
    def key(self) -> tuple:
        return (str(self.jaxpr.jaxpr), self.chunk, self.group,
                tuple((lf.key_axis, lf.value_axis) for lf in self.leaves))

    @property
    def _x_vars(self):
        return self.jaxpr.jaxpr.invars[self.n_state:]

    def _atoms(self):
        out = []
        for lf in self.leaves:
            for p in lf.decay:
                out += [f.atom for f in p]
            for t in lf.terms:
                out += [f.atom for f in t.k + t.v]
        for r in self.readouts:
            for p in r.query:
                out += [f.atom for f in p]
        return list(dict.fromkeys(a for a in out if not jx.is_literal(a) and
                                  not is_number(a)))

    @functools.cached_property
    def _pieces_jaxpr(self):
        j = self.jaxpr.jaxpr
        atoms = self._atoms()
        eqns = _slice_eqns(j.eqns, set(atoms))
        return j.replace(invars=list(self._x_vars), outvars=atoms, eqns=eqns), atoms

    @functools.cached_property
    def _phi_jaxpr(self):
        j = self.jaxpr.jaxpr
        ys = j.outvars[self.n_state:]
        rvars = [r.var for r in self.readouts]
        eqns = _slice_eqns(j.eqns, set(ys), stop=set(rvars))
        return j.replace(invars=rvars + list(self._x_vars), outvars=list(ys), eqns=eqns)

    def _env(self, consts, x_leaves) -> dict:
        sub, atoms = self._pieces_jaxpr
        vals = jx.eval_jaxpr(jx.ClosedJaxpr(sub, list(consts)), *x_leaves) if atoms else []
        return dict(zip(atoms, vals))

    def dtype(self, lf: LeafForm):
        return compute_dtype([lf.dtype])

    def pieces(self, consts, x_leaves) -> tuple[list, list]:
        """One step's pieces in the canonical frames: per leaf ``(g, k, v)`` with ``g``
        ``(b, K|1)`` (or ``None``: no decay; zeros: a reset), ``k`` ``(R, b, K)``, ``v``
        ``(R, b, V)`` (``R = 1`` for a vector state: its input terms summed); per readout
        ``q`` ``(M, b, K)``."""
        env = self._env(consts, x_leaves)
        leaves = []
        for lf in self.leaves:
            dt = self.dtype(lf)
            if lf.kind == "none":
                g = None
            elif lf.kind == "zero":
                g = jnp.zeros((lf.b, 1), dt)
            else:
                g = sum(lf.canon(product_value(p, env, False) if p else jnp.ones(()), 0, False)
                        for p in lf.decay)
                g = jnp.broadcast_to(g, (lf.b, 1 if lf.scalar_decay else lf.K)).astype(dt)
            ks, vs = [], []
            for t in lf.terms:
                lead = t.rank
                one = jnp.ones((1,) * int(lead))  # an empty product (with the rank axis)
                k = lf.canon(product_value(t.k, env, lead) if t.k else one, int(lead), False)
                v = lf.canon(product_value(t.v, env, lead) if t.v else one, int(lead))
                if not lead:
                    k, v = k[None], v[None]
                v = v[..., 0, :]  # (R, b, V): drop the K axis (size 1)
                R = max(k.shape[0], v.shape[0])
                ks.append(jnp.broadcast_to(k, (R, lf.b, lf.K)).astype(dt))
                vs.append(jnp.broadcast_to(v, (R, lf.b, lf.V)).astype(dt))
            if ks:
                k, v = jnp.concatenate(ks, 0), jnp.concatenate(vs, 0)
            else:
                k, v = jnp.zeros((1, lf.b, lf.K), dt), jnp.zeros((1, lf.b, lf.V), dt)
            if lf.value_axis is None and k.shape[0] > 1:  # Σ_r k_r v_r with V = 1
                k, v = jnp.sum(k * v, 0, keepdims=True), jnp.ones((1, lf.b, 1), dt)
            leaves.append((g, k, v))
        return leaves, [self.queries(r, env) for r in self.readouts]

    def queries(self, r: Readout, env: dict):
        """The ``M`` queries of readout ``r`` in the canonical frame: ``(M, b, K)``."""
        lf = self.leaves[r.leaf]
        rank, n = len(lf.shape), len(r.extra)
        q = jnp.asarray(sum(product_value(p, env, False) if p else jnp.ones(()) for p in r.query))
        if q.ndim == 0:
            q = jnp.reshape(q, (1,) * (rank + n))
        q = jnp.broadcast_to(q, q.shape[:rank] + r.extra)
        q = jnp.moveaxis(q, tuple(range(rank, rank + n)), tuple(range(n)))
        q = lf.canon(jnp.reshape(q, (r.M,) + q.shape[n:]), 1, False)
        return jnp.broadcast_to(q, (r.M, lf.b, lf.K)).astype(self.dtype(lf))

    def step(self, lf: LeafForm, S, piece):
        """``g ⊙ S + Σ k vᵀ`` in the canonical frame (``S``: ``(b, K, V)``)."""
        g, k, v = piece
        S = jnp.asarray(S, k.dtype)
        decayed = S if g is None else g[..., None] * S
        return decayed + jnp.einsum("rbk,rbv->bkv", k, v)

    def readout_value(self, r: Readout, S, q):
        """``Sᵀ q`` (``S`` canonical ``(b, K, V)``, ``q`` ``(M, b, K)``) in ``r.var``'s
        axes."""
        return self.arrange(r, jnp.einsum("bkv,mbk->mbv", S, q))

    def arrange(self, r: Readout, val, lead: int = 0):
        """A canonical readout ``(*lead, M, b, V)`` in the axes and dtype of ``r.var``."""
        lf = self.leaves[r.leaf]
        rank = len(lf.shape)
        lead_shape = val.shape[:lead]
        bshape = tuple(lf.shape[a] for a in lf.batch_axes)
        val = jnp.reshape(val, lead_shape + r.extra + bshape + (lf.V,))
        if lf.value_axis is None:
            val = val[..., 0]
        order = tuple(rank + j for j in range(len(r.extra))) + lf.batch_axes + (
            () if lf.value_axis is None else (lf.value_axis,))
        perm = [order.index(a) for a in r.axes]
        val = jnp.transpose(val, tuple(range(lead)) + tuple(lead + p for p in perm))
        aval = r.var.aval
        if not jnp.issubdtype(aval.dtype, jnp.complexfloating) and \
                jnp.issubdtype(val.dtype, jnp.complexfloating):
            val = jnp.real(val)
        return val.astype(aval.dtype)

    def phi(self, consts, readout_values, x_leaves) -> list:
        """The output leaves from the readouts (the rest of the body)."""
        return jx.eval_jaxpr(jx.ClosedJaxpr(self._phi_jaxpr, list(consts)),
                             *readout_values, *x_leaves)

    def body(self, consts, h_leaves, x_leaves):
        """The body rebuilt from the pieces: ``(carry leaves, y leaves)`` (the probe's
        reconstruction, and the step the runtime check compares with)."""
        pieces, qs = self.pieces(consts, x_leaves)
        old = [lf.canon(h, 0) for lf, h in zip(self.leaves, h_leaves)]
        new = [self.step(lf, S, p) for lf, S, p in zip(self.leaves, old, pieces)]
        rs = [self.readout_value(r, (new if r.new else old)[r.leaf], q)
              for r, q in zip(self.readouts, qs)]
        carry = [lf.uncanon(S).astype(lf.dtype) for lf, S in zip(self.leaves, new)]
        return carry, self.phi(consts, rs, x_leaves)


__all__ = ["ChunkForm"]