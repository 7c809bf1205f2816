r"""The chunkwise form of a ``jax.lax.scan`` body: what the chunkwise pass found, and how
to evaluate its pieces.  Shared by the pass (``passes/_chunkwise.py``, which finds it and
probes it with exactly this code) and the runtime (``runtime/_chunked.py``).

The form
--------
Every float state leaf ``S`` is put in a *canonical frame* ``(b, K, V)``: one key axis
``K`` (the axis the outputs contract), at most one value axis ``V`` (``V = 1`` for a
vector state), all other axes flattened into ``b`` (heads).  In that frame one step is

.. math::
   S_t = g_t \odot S_{t-1} + \sum_{r} k_{t,r}\, v_{t,r}^\top,
   \qquad g_t \in \mathbb{F}^{b \times K} \text{ or } \mathbb{F}^{b \times 1},

with the decay ``g_t`` constant along ``V`` (per row, or one scalar per head), and the
input term a sum of ``R`` outer products of input-derived vectors ``k ∈ F^{b×K}``,
``v ∈ F^{b×V}``.  Each output leaf of the body is ``y_t = φ(r_t, x_t)`` for *readouts*

.. math::
   r_t = S_\tau^\top q_t \quad (\text{per head}), \qquad \tau = t \text{ (new state) or } t-1,

and an arbitrary function ``φ`` (the rest of the body: a normaliser's division, a skip
connection, a gate).  ``g``, ``k``, ``v``, ``q`` are functions of ``x_t`` alone: slices of
the body's jaxpr that do not read the state.  A query may have axes of its own: a readout
``C h`` by a constant or input-derived matrix ``C ∈ F^{M × K}`` is ``M`` queries at once
(S5 / LRU's linear readout).  For a vector state (``V = 1``) the input terms are summed
into one: ``Σ_r k_r v_r`` is a vector.

Pieces
------
A piece is a product of *factors*, each a value of the body's jaxpr (or a literal) brought
into the leaf's own axes with size-1 axes where it is constant (``Factor.steps``), and
possibly a leading rank axis (a contraction ``Σ_r k_r v_rᵀ`` written as one
``dot_general``).  A decay or a query is a sum of products (``SOP``); an empty sum is zero.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as jx
from ._ir import compute_dtype


def _is_number(atom) -> bool:
    return isinstance(atom, (int, float, complex))


@dataclasses.dataclass(frozen=True)
class Factor:
    """``atom`` (a jaxpr ``Var`` or ``Literal``) transformed by ``steps``: ``("take0",
    axes)`` (the value is constant along them: keep index 0), ``("transpose", perm)``,
    ``("reshape", shape)``, ``("recip",)``, ``("neg",)``.  ``rank``: the result has a
    leading rank axis."""

    atom: Any
    steps: tuple = ()
    rank: bool = False
    label: str = dataclasses.field(default="", compare=False)

    def value(self, env: dict) -> jax.Array:
        if _is_number(self.atom):
            v = self.atom  # a Python scalar: weakly typed, promotes to the pieces' dtype
        elif jx.is_literal(self.atom):
            v = jnp.asarray(jx.literal_value(self.atom))
        else:
            v = env[self.atom]
        for step in self.steps:
            op = step[0]
            if op == "take0" and not _is_number(v):
                v = v[tuple(slice(0, 1) if a in step[1] else slice(None)
                            for a in range(v.ndim))]
            elif op == "transpose":
                v = jnp.transpose(v, step[1])
            elif op == "reshape":
                v = v if _is_number(v) else jnp.reshape(v, step[1])
            elif op == "recip":
                v = 1 / v
            elif op == "neg":
                v = -v
        return v

    def shape(self) -> tuple[int, ...]:
        """The shape after ``steps`` (from the atom's aval)."""
        shape = () if _is_number(self.atom) else tuple(self.atom.aval.shape)
        for step in self.steps:
            if step[0] == "take0":
                shape = tuple(1 if a in step[1] else s for a, s in enumerate(shape))
            elif step[0] == "transpose":
                shape = tuple(shape[p] for p in step[1])
            elif step[0] == "reshape":
                shape = tuple(step[1])
        return shape

    def frame_shape(self) -> tuple[int, ...]:
        """The shape in the leaf's axes (without the rank axis)."""
        s = self.shape()
        return s[1:] if self.rank else s

    def varies(self, axis: int) -> bool:
        """Whether the factor varies along the frame axis ``axis`` (a Python number, such
        as the ``-1`` of a negated empty product, varies along none)."""
        s = self.frame_shape()
        return axis < len(s) and s[axis] != 1

    def widened(self, n: int) -> "Factor":
        """The factor with ``n`` more trailing size-1 axes (numbers stay numbers)."""
        if not n or _is_number(self.atom):
            return self
        return dataclasses.replace(self, steps=self.steps + (
            ("reshape", self.shape() + (1,) * n),))

    def describe(self) -> str:
        name = repr(self.atom) if _is_number(self.atom) else \
            f"{jx.literal_value(self.atom)!r}" if jx.is_literal(self.atom) else \
            (self.label or str(self.atom))
        if any(s[0] == "recip" for s in self.steps):
            name = f"1/{name}"
        if any(s[0] == "neg" for s in self.steps):
            name = f"-{name}"
        return name


Product = tuple  # of Factor
SOP = tuple      # of Product; () is zero


def _product(factors: Sequence[Factor], env: dict, rank_lead: bool):
    vals = []
    for f in factors:
        v = f.value(env)
        if rank_lead and not f.rank:
            v = jnp.asarray(v)[None]  # a Python number stays weakly typed
        vals.append(v)
    out = vals[0]
    for v in vals[1:]:
        out = out * v
    return out


@dataclasses.dataclass(frozen=True)
class Term:
    """One input term ``Σ_r k_r v_rᵀ``: the factors that vary along ``K`` (or along neither
    axis) and those that vary along ``V``."""

    k: Product
    v: Product

    @property
    def rank(self) -> bool:
        return any(f.rank for f in self.k + self.v)


@dataclasses.dataclass(frozen=True)
class LeafForm:
    """One state leaf in the canonical frame (module docstring)."""

    leaf: int
    name: str
    shape: tuple[int, ...]
    dtype: Any
    key_axis: int
    value_axis: int | None
    decay: SOP             # () = zero (a reset); ((),) = one (no decay)
    terms: tuple[Term, ...]

    @property
    def batch_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.shape)) if a not in (self.key_axis,
                                                                    self.value_axis))

    @property
    def perm(self) -> tuple[int, ...]:
        return self.batch_axes + (self.key_axis,) + (
            () if self.value_axis is None else (self.value_axis,))

    @property
    def b(self) -> int:
        return int(np.prod([self.shape[a] for a in self.batch_axes], dtype=np.int64))

    @property
    def K(self) -> int:
        return self.shape[self.key_axis]

    @property
    def V(self) -> int:
        return 1 if self.value_axis is None else self.shape[self.value_axis]

    @property
    def scalar_decay(self) -> bool:
        """One decay per head: every decay factor is constant along ``K``."""
        return not any(f.varies(self.key_axis) for p in self.decay for f in p)

    @property
    def kind(self) -> str:
        if not self.decay:
            return "zero"
        if self.decay == ((),):
            return "none"
        return "scalar" if self.scalar_decay else "row"

    def canon(self, x, lead: int = 0, keep_value: bool = True):
        """A leaf-frame array (keepdims, ``lead`` leading axes) -> ``(*lead, b, K|1, V|1)``
        (``keep_value=False`` drops the value axis)."""
        x = jnp.asarray(x)
        if x.ndim == lead:  # a scalar literal
            x = jnp.reshape(x, x.shape + (1,) * len(self.shape))
        axes = tuple(range(lead)) + tuple(lead + p for p in self.perm)
        x = jnp.transpose(x, axes)
        lead_shape = x.shape[:lead]
        nb = len(self.batch_axes)
        bshape = tuple(self.shape[a] for a in self.batch_axes)
        x = jnp.broadcast_to(x, lead_shape + bshape + x.shape[lead + nb:])
        x = jnp.reshape(x, lead_shape + (self.b,) + x.shape[lead + nb:])
        if self.value_axis is None:
            x = x[..., None]
        return x if keep_value else x[..., 0]

    def uncanon(self, x, lead: int = 0):
        """``(*lead, b, K, V)`` -> the leaf's own axes."""
        lead_shape = x.shape[:lead]
        x = jnp.reshape(x, lead_shape + tuple(self.shape[a] for a in self.perm))
        inv = np.argsort(self.perm)
        return jnp.transpose(x, tuple(range(lead)) + tuple(lead + int(i) for i in inv))

    def describe(self) -> str:
        ax = f"K = axis {self.key_axis} ({self.K})"
        ax += "" if self.value_axis is None else f", V = axis {self.value_axis} ({self.V})"
        if self.batch_axes:
            ax += f", heads = axes {list(self.batch_axes)} ({self.b})"
        decay = {"zero": "zero (the state is reset every step)",
                 "none": "none (g = 1: plain linear attention)",
                 "scalar": "one scalar per head" if self.b > 1 else "one scalar",
                 "row": "per row (per K entry" + (", per head)" if self.b > 1 else ")")}[
            self.kind]
        if self.kind in ("scalar", "row"):
            decay += ": " + " + ".join("·".join(f.describe() for f in p) or "1"
                                       for p in self.decay)
        rank = sum(_term_rank(t) for t in self.terms)
        terms = " + ".join(
            "·".join(f.describe() for f in t.k) + (
                " ⊗ " + "·".join(f.describe() for f in t.v) if t.v else "")
            + (" (summed over a rank axis)" if t.rank else "") for t in self.terms)
        return (f"{self.name} {self.dtype}{list(self.shape)}: {ax}; decay {decay}; input "
                f"term of rank {rank}" + (f": {terms}" if terms else " (none)"))


def _term_rank(t: Term) -> int:
    for f in t.k + t.v:
        if f.rank:
            return f.shape()[0]
    return 1


@dataclasses.dataclass(frozen=True)
class Readout:
    """``var`` (a value of the body) is ``S_τᵀ q`` of leaf ``leaf`` (``new``: ``τ = t``,
    else ``t - 1``), with ``q`` the sum of products ``query`` (leaf frame, constant along
    ``V``, then the query's own axes of sizes ``extra``: ``M = Π extra`` queries at once,
    as in a readout ``C h`` by a matrix ``C``); ``axes``: the axes of ``var``, in its
    order -- leaf axes (all but ``K``), and ``rank + j`` for the query's own axis ``j``."""

    var: Any
    leaf: int
    new: bool
    query: SOP
    axes: tuple[int, ...]
    label: str = dataclasses.field(default="", compare=False)
    extra: tuple[int, ...] = ()

    @property
    def M(self) -> int:
        return int(np.prod(self.extra, dtype=np.int64))

    def describe(self, leaf: LeafForm) -> str:
        q = " + ".join("·".join(f.describe() for f in p) or "1" for p in self.query)
        s = f"{leaf.name}_{'t' if self.new else 't-1'}"
        many = f" ({self.M} queries: q has axes of its own {list(self.extra)})" \
            if self.extra else ""
        return f"{self.label or self.var} = {s}ᵀ q over axis {leaf.key_axis}, q = {q}{many}"


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
    size ``C`` the plan chose."""

    jaxpr: Any = dataclasses.field(repr=False)   # the body's ClosedJaxpr
    n_state: int
    leaves: tuple[LeafForm, ...]
    readouts: tuple[Readout, ...]
    chunk: int = 0

    @functools.cached_property
    def key(self) -> tuple:
        return (str(self.jaxpr.jaxpr), self.chunk,
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
                                  not _is_number(a)))

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
                g = sum(lf.canon(_product(p, env, False) if p else jnp.ones(()), 0, False)
                        for p in lf.decay)
                g = jnp.broadcast_to(g, (lf.b, 1 if lf.scalar_decay else lf.K)).astype(dt)
            ks, vs = [], []
            for t in lf.terms:
                lead = t.rank
                one = jnp.ones((1,) * int(lead))  # an empty product (with the rank axis)
                k = lf.canon(_product(t.k, env, lead) if t.k else one, int(lead), False)
                v = lf.canon(_product(t.v, env, lead) if t.v else one, int(lead))
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
        q = jnp.asarray(sum(_product(p, env, False) if p else jnp.ones(()) for p in r.query))
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


__all__ = ["Factor", "Term", "LeafForm", "Readout", "ChunkForm"]
