r"""Free values of a scan body as sums of products of factors in a state leaf's frame.

A value of the body's jaxpr that does not read the state is *free* (a function of ``x``
and of closed-over arrays alone).  The chunkwise pass (``_chunkwise.py``) needs each free
value that scales the state, adds to it or queries it as a *sum of products*

.. math::
   f = \sum_j \prod_i f_{ij},

each factor ``f_ij`` a value of the jaxpr brought into the leaf's axes, with size-1 axes
where it is constant (``recur._chunk_pieces.Factor``).  The expansion follows ``mul``,
``add``/``sub``/``neg`` and ``dot_general`` (an outer product with batch axes, or, in an
input term, one contracted axis that becomes a leading rank axis: ``Σ_r k_r v_rᵀ``) -- up
to ``_MAX_PRODUCTS`` products; any other value is one factor.

A value is *constant along an axis* when that is visible from its equations alone: a
size-1 axis, a new axis of ``broadcast_in_dim``, a permuted or unit-reshaped such axis,
and elementwise operations of values all constant along it.  The factor then keeps only
index 0 there, so that the axis assignment (``_chunk_axes.py``) sees which axes it varies
along.
"""

from __future__ import annotations

import dataclasses

from .. import _jax_adapter as jx
from .._chunk_pieces import Factor
from .._ir import StepIR

_MAX_PRODUCTS = 16  # a free value expanded into more products is kept whole

ONE = ((),)  # the sum of one empty product


class Refused(Exception):
    """The body has no chunkwise form; the message says why."""


def where(eqn) -> str:
    """`` (at file:line)`` of an equation, or ``""``."""
    src = jx.eqn_source(eqn)
    return f" (at {src})" if src else ""


def neg(sop: tuple) -> tuple:
    """``-Σ_j Π_i f_ij`` (the first factor of each product negated)."""
    out = []
    for p in sop:
        if p:
            f = p[0]
            out.append((dataclasses.replace(f, steps=f.steps + (("neg",),)),) + p[1:])
        else:
            out.append((Factor(-1.0),))
    return tuple(out)


def mul(a: tuple, b: tuple) -> tuple:
    """The product of two sums of products, expanded (at most one of two products may
    sum over a rank axis: its factors from both sides of one contraction share it)."""
    out = []
    for p in a:
        for q in b:
            if any(f.rank for f in p) and any(f.rank for f in q):
                raise Refused("a product of two sums over a rank axis")
            out.append(p + q)
    return tuple(out)


def _only_unit_axes(a, b) -> bool:
    return [s for s in a if s != 1] == [s for s in b if s != 1]


_ELEMENTWISE = frozenset("""
    abs acos acosh add asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type
    copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
    is_finite le log log1p logistic lt max min mul ne neg nextafter not or pow real rem round
    rsqrt select_n sign sin sinh sqrt square sub tan tanh xor and
""".split())


class FreeValues:
    """The free values of one body's jaxpr: where each is constant, its label, and its
    factors and sums of products in a leaf frame."""

    def __init__(self, ir: StepIR, jaxpr):
        self.ir, self.jaxpr = ir, jaxpr
        self.n = len(ir.state)
        self.producer = {o: e for e in jaxpr.eqns for o in e.outvars}
        self._uniform: dict = {}

    def uniform(self, atom) -> frozenset:
        """Axes along which the free value ``atom`` is constant (structurally)."""
        shape = tuple(getattr(atom.aval, "shape", ()))
        ones = frozenset(a for a, s in enumerate(shape) if s == 1)
        if jx.is_literal(atom):
            return frozenset(range(len(shape)))
        if atom in self._uniform:
            return self._uniform[atom]
        self._uniform[atom] = ones
        eqn = self.producer.get(atom)
        out = ones if eqn is None else ones | self._uniform_axes(eqn, shape)
        self._uniform[atom] = frozenset(out)
        return self._uniform[atom]

    def _uniform_axes(self, eqn, shape) -> set:
        name = eqn.primitive.name
        if name == "broadcast_in_dim":
            (x,) = eqn.invars[:1]
            dims = eqn.params["broadcast_dimensions"]
            ux = self.uniform(x) if not jx.is_literal(x) else frozenset(range(len(dims)))
            xs = tuple(x.aval.shape)
            new = {a for a in range(len(shape)) if a not in dims}
            return new | {d for i, d in enumerate(dims) if i in ux or xs[i] == 1}
        if name == "transpose":
            ux = self.uniform(eqn.invars[0])
            return {i for i, p in enumerate(eqn.params["permutation"]) if p in ux}
        if name == "reshape" and _only_unit_axes(eqn.invars[0].aval.shape, shape):
            src = eqn.invars[0].aval.shape
            ux = self.uniform(eqn.invars[0])
            nonunit_in = [a for a, s in enumerate(src) if s != 1]
            nonunit_out = [a for a, s in enumerate(shape) if s != 1]
            return {o for i, o in zip(nonunit_in, nonunit_out) if i in ux}
        if name in _ELEMENTWISE and len(eqn.outvars) == 1:
            common = frozenset(range(len(shape)))
            for v in eqn.invars:
                vs = tuple(v.aval.shape)
                if len(vs) == 0:
                    continue
                if len(vs) != len(shape):
                    return set()
                common &= self.uniform(v) | {a for a, s in enumerate(vs) if s == 1}
            return set(common)
        return set()

    def label(self, atom) -> str:
        """A name for ``atom`` in the pass's report."""
        if jx.is_literal(atom):
            return repr(jx.literal_value(atom))
        j = self.jaxpr
        shape = "[" + ",".join(map(str, atom.aval.shape)) + "]"
        if atom in j.invars:
            i = list(j.invars).index(atom)
            if i < self.n:
                return f"h{self.ir.state[i].name}"
            return "x" + (self.ir.inputs[i - self.n].name or "")
        if atom in j.constvars:
            return f"a closed-over array{shape}"
        eqn = self.producer.get(atom)
        if eqn is None:
            return str(atom)
        src = jx.eqn_source(eqn)
        return f"{eqn.primitive.name}{shape}" + (f" at {src}" if src else "")

    def factor(self, atom, axes_map, rank: int, rank_axis=None) -> Factor:
        """``atom`` as a factor in the leaf frame: its axis ``i`` is leaf axis
        ``axes_map[i]`` (``rank_axis``: the atom axis that becomes the leading rank axis)."""
        if not jx.is_literal(atom) and not hasattr(atom, "aval"):
            raise Refused(f"unsupported value {atom!r}")
        label = self.label(atom)
        shape = tuple(atom.aval.shape)
        if not shape:
            return Factor(atom, (("reshape", (1,) * rank),), label=label)
        steps = []
        uni = sorted(a for a in self.uniform(atom) if shape[a] > 1 and a != rank_axis)
        if uni:
            steps.append(("take0", tuple(uni)))
            shape = tuple(1 if a in uni else s for a, s in enumerate(shape))
        mapped = [i for i in range(len(shape)) if i != rank_axis]
        order = sorted(mapped, key=lambda i: axes_map[i])
        if rank_axis is not None:
            order = [rank_axis] + order
        if order != list(range(len(shape))):
            steps.append(("transpose", tuple(order)))
        target = [1] * rank
        for i in mapped:
            target[axes_map[i]] = shape[i]
        target = ([shape[rank_axis]] if rank_axis is not None else []) + target
        steps.append(("reshape", tuple(target)))
        return Factor(atom, tuple(steps), rank=rank_axis is not None, label=label)

    def sop(self, atom, axes_map, rank: int, budget: int = _MAX_PRODUCTS,
            terms: bool = False) -> tuple:
        """The free value ``atom`` as a sum of products of factors (leaf frame); a
        contraction becomes a sum over a rank axis only in an input term (``terms``)."""
        eqn = None if jx.is_literal(atom) else self.producer.get(atom)
        whole = ((self.factor(atom, axes_map, rank),),)
        if eqn is None:
            return whole
        name = eqn.primitive.name
        shape = tuple(atom.aval.shape)

        def sub(v):
            vs = tuple(v.aval.shape)
            if not vs:
                return self.sop(v, (), rank, budget, terms)
            if len(vs) != len(shape):
                raise Refused("shape")
            return self.sop(v, axes_map, rank, budget, terms)

        try:
            if name == "mul":
                out = mul(sub(eqn.invars[0]), sub(eqn.invars[1]))
            elif name in ("add", "sub"):
                a, b = sub(eqn.invars[0]), sub(eqn.invars[1])
                out = a + (neg(b) if name == "sub" else b)
            elif name == "neg":
                out = neg(sub(eqn.invars[0]))
            elif name == "dot_general" and (terms or not eqn.params["dimension_numbers"][0][0]):
                out = self._outer(eqn, axes_map, rank)
            else:
                return whole
        except Refused:
            return whole
        return out if len(out) <= budget else whole

    def _outer(self, eqn, axes_map, rank):
        """A ``dot_general`` with no contraction (an outer product with batch axes), or
        with one contracted axis (a sum over a rank axis), as one product of two factors."""
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        a, b = eqn.invars
        if len(lc) > 1:
            raise Refused("contraction over several axes")
        na, nb = len(a.aval.shape), len(b.aval.shape)
        a_free = [i for i in range(na) if i not in lc and i not in lb]
        b_free = [i for i in range(nb) if i not in rc and i not in rb]
        amap, bmap = {}, {}
        for j, (ia, ib) in enumerate(zip(lb, rb)):
            amap[ia] = bmap[ib] = axes_map[j]
        for j, i in enumerate(a_free):
            amap[i] = axes_map[len(lb) + j]
        for j, i in enumerate(b_free):
            bmap[i] = axes_map[len(lb) + len(a_free) + j]
        fa = self.factor(a, [amap.get(i, -1) for i in range(na)], rank,
                         lc[0] if lc else None)
        fb = self.factor(b, [bmap.get(i, -1) for i in range(nb)], rank,
                         rc[0] if rc else None)
        return ((fa, fb),)

    def free_sop(self, free, rank, eqn, perm=None, terms=False):
        """The free operand of ``eqn`` (broadcast against a state of ``rank`` axes seen
        through ``perm``) as a sum of products in the leaf frame."""
        shape = tuple(free.aval.shape)
        if shape and len(shape) != rank:
            raise Refused(f"`{eqn.primitive.name}` broadcasts a value of shape {shape} "
                          f"against the state{where(eqn)}")
        axes = () if not shape else (tuple(perm) if perm is not None else tuple(range(rank)))
        return self.sop(free, axes, rank, terms=terms)


__all__ = ["FreeValues", "ONE", "Refused", "mul", "neg", "where"]
