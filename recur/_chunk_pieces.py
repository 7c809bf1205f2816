r"""The pieces of the chunkwise form of a ``jax.lax.scan`` body: per state leaf its frame,
decay and input terms (``LeafForm``), and the readouts of the state (``Readout``).  The
whole form, which evaluates them, is ``ChunkForm`` (``recur/_chunkform.py``).

The frame
---------
Every float state leaf ``S`` is put in a *canonical frame* ``(b, K, V)``: one key axis
``K`` (the axis the outputs contract), at most one value axis ``V`` (``V = 1`` for a
vector state), all other axes flattened into ``b`` (heads).  In that frame one step is

.. math::
   S_t = g_t \odot S_{t-1} + \sum_{r} k_{t,r}\, v_{t,r}^\top,
   \qquad g_t \in \mathbb{F}^{b \times K} \text{ or } \mathbb{F}^{b \times 1},

with the decay ``g_t`` constant along ``V`` (per row, or one scalar per head), and the
input term a sum of ``R`` outer products of input-derived vectors ``k ∈ F^{b×K}``,
``v ∈ F^{b×V}``.  For a vector state (``V = 1``) the input terms are summed into one:
``Σ_r k_r v_r`` is a vector, a term of rank 1.  A *readout* of the state is

.. math::
   r_t = S_\tau^\top q_t \quad (\text{per head}), \qquad \tau = t \text{ (new state) or } t-1.

A query may have axes of its own: a readout ``C h`` by a constant or input-derived matrix
``C ∈ F^{M × K}`` is ``M`` queries at once (S5 / LRU's linear readout).

Pieces
------
A piece is a product of *factors*, each a value of the body's jaxpr (or a literal) brought
into the leaf's own axes with size-1 axes where it is constant (``Factor.steps``), and
possibly a leading rank axis (a contraction ``Σ_r k_r v_rᵀ`` written as one
``dot_general``).  A decay or a query is a sum of products (``SOP``); an empty sum is zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as jx


def is_number(atom) -> bool:
    """A factor's atom may be a Python number (the ``-1`` of a negated empty product)."""
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
        if is_number(self.atom):
            v = self.atom  # a Python scalar: weakly typed, promotes to the pieces' dtype
        elif jx.is_literal(self.atom):
            v = jnp.asarray(jx.literal_value(self.atom))
        else:
            v = env[self.atom]
        for step in self.steps:
            op = step[0]
            if op == "take0" and not is_number(v):
                v = v[tuple(slice(0, 1) if a in step[1] else slice(None)
                            for a in range(v.ndim))]
            elif op == "transpose":
                v = jnp.transpose(v, step[1])
            elif op == "reshape":
                v = v if is_number(v) else jnp.reshape(v, step[1])
            elif op == "recip":
                v = 1 / v
            elif op == "neg":
                v = -v
        return v

    def shape(self) -> tuple[int, ...]:
        """The shape after ``steps`` (from the atom's aval)."""
        shape = () if is_number(self.atom) else tuple(self.atom.aval.shape)
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
        if not n or is_number(self.atom):
            return self
        return dataclasses.replace(self, steps=self.steps + (
            ("reshape", self.shape() + (1,) * n),))

    def describe(self) -> str:
        name = repr(self.atom) if is_number(self.atom) else \
            f"{jx.literal_value(self.atom)!r}" if jx.is_literal(self.atom) else \
            (self.label or str(self.atom))
        if any(s[0] == "recip" for s in self.steps):
            name = f"1/{name}"
        if any(s[0] == "neg" for s in self.steps):
            name = f"-{name}"
        return name


Product = tuple  # of Factor
SOP = tuple      # of Product; () is zero


def product_value(factors: Sequence[Factor], env: dict, rank_lead: bool):
    """The value of a non-empty product in ``env`` (the pieces jaxpr's values);
    ``rank_lead``: the factors without a rank axis get a size-1 one."""
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

    @property
    def n_products(self) -> int:
        """The number of outer products ``k_r v_rᵀ`` (its rank axis, else 1)."""
        for f in self.k + self.v:
            if f.rank:
                return f.shape()[0]
        return 1


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
    def n_products(self) -> int:
        """The outer products ``k_r v_rᵀ`` of all its input terms."""
        return sum(t.n_products for t in self.terms)

    @property
    def R(self) -> int:
        """The rank of the input term the pieces carry: 1 for a vector state (its terms
        summed into one) or without input terms (a zero term), else ``n_products``."""
        return 1 if self.value_axis is None else self.n_products or 1

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
        rank = f"{self.n_products}"
        if self.value_axis is None and self.n_products > 1:
            rank = f"1 (a vector state: its {self.n_products} products summed into one)"
        terms = " + ".join(
            "·".join(f.describe() for f in t.k) + (
                " ⊗ " + "·".join(f.describe() for f in t.v) if t.v else "")
            + (" (summed over a rank axis)" if t.rank else "") for t in self.terms)
        return (f"{self.name} {self.dtype}{list(self.shape)}: {ax}; decay {decay}; input "
                f"term of rank {rank}" + (f": {terms}" if terms else " (none)"))


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


__all__ = ["Factor", "Product", "SOP", "Term", "LeafForm", "Readout", "is_number",
           "product_value"]
