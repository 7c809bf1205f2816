r"""Chunkwise pass: is a ``jax.lax.scan`` body a decayed linear-attention recurrence?

The pass reads the body's jaxpr ``(S, x) -> (S', y)`` once, in order, and gives every
value that reads the state one of these abstract forms (a value that does not read the
state is *free*: a function of ``x`` alone):

* ``Aff(g, Σ)``: ``g ⊙ S_old + Σ_j Π_i f_ij`` -- the old state scaled elementwise by a sum
  of products of free values, plus a sum of products of free values;
* ``View(τ, π, s)``: ``s ⊙ transpose(S_τ, π)`` with ``τ`` old or new (the new state is the
  value the body returns as the carry);
* ``Read``: a contraction of a view with a free ``q`` over one axis (``dot_general``,
  ``reduce_sum`` of a scaled view) -- a *readout*;
* ``Post``: anything computed from readouts and free values.

The rules are algebraic identities: ``add``/``sub``/``neg`` of affine forms of the same
leaf, ``mul``/``div`` by a free value (whose own products and sums are expanded:
``k[:, None] * v[None, :]``, ``jnp.outer``, an ``einsum``/``dot_general`` without
contraction -- an outer product -- or with one contracted axis -- ``Σ_r k_r v_rᵀ``),
``transpose`` of the old or new state, and readouts.  Every other use of the state
(``tanh(S)``, ``S * S``, a decay computed from the state, a state that reads another one,
an output that is the state itself) stops the pass with that reason and its source line.

Then each leaf gets its axes: the key axis ``K`` is the one its readouts contract; the value
axis ``V`` is one along which the decay is constant and every input product splits into a
factor constant along ``V`` (``k``) and one constant along ``K`` (``v``).  Values constant
along an axis are found structurally (a size-1 axis, a ``broadcast_in_dim``, elementwise
operations of such values).  The result is a ``ChunkForm`` (``recur/_chunkform.py``).

The form is used only when value probes confirm it: at the actual inputs (a few steps)
and at random points, the body rebuilt from the extracted pieces -- by the same code the
runtime uses -- must give the body's carry and outputs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax_adapter as jx
from .._chunkform import ChunkForm, Factor, LeafForm, Readout, Term
from .._dtypes import is_inexact
from .._ir import Outputs, StepIR
from ._verify import Values, _random

_MAX_PRODUCTS = 16  # a free value expanded into more products is kept whole


class Refused(Exception):
    """The body has no chunkwise form; the message says why."""


@dataclasses.dataclass(frozen=True)
class _Aff:
    leaf: int
    decay: tuple   # SOP
    terms: tuple   # SOP (products may hold one rank factor)


@dataclasses.dataclass(frozen=True)
class _View:
    leaf: int
    new: bool
    perm: tuple
    scale: tuple   # SOP in the leaf frame


@dataclasses.dataclass(frozen=True)
class _Read:
    index: int


@dataclasses.dataclass(frozen=True)
class _Bad:
    reason: str


_POST = "post"
_ONE = ((),)


def _where(eqn) -> str:
    src = jx.eqn_source(eqn)
    return f" (at {src})" if src else ""


def _neg(sop: tuple) -> tuple:
    out = []
    for p in sop:
        if p:
            f = p[0]
            out.append((dataclasses.replace(f, steps=f.steps + (("neg",),)),) + p[1:])
        else:
            out.append((Factor(-1.0),))
    return tuple(out)


def _mul(a: tuple, b: tuple) -> tuple:
    out = []
    for p in a:
        for q in b:
            if sum(f.rank for f in p + q) > 1:
                raise Refused("a product of two sums over a rank axis")
            out.append(p + q)
    return tuple(out)


class _Analysis:
    def __init__(self, ir: StepIR, outputs: Outputs):
        self.ir, self.outputs = ir, outputs
        self.jaxpr = outputs.jaxpr.jaxpr
        n = len(ir.state)
        self.n = n
        self.producer = {o: e for e in self.jaxpr.eqns for o in e.outvars}
        self.forms: dict = {}
        for i, v in enumerate(self.jaxpr.invars[:n]):
            self.forms[v] = _Aff(i, _ONE, ())
        self.carry_of = {}
        for i, v in enumerate(self.jaxpr.outvars[:n]):
            if not jx.is_literal(v):
                self.carry_of.setdefault(v, i)
        self.readouts: list = []
        self._uniform: dict = {}

    # ------------------------------------------------------------------ free values
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
        out = ones
        if eqn is not None:
            name = eqn.primitive.name
            if name == "broadcast_in_dim":
                (x,) = eqn.invars[:1]
                dims = eqn.params["broadcast_dimensions"]
                ux = self.uniform(x) if not jx.is_literal(x) else frozenset(range(len(dims)))
                xs = tuple(x.aval.shape)
                new = {a for a in range(len(shape)) if a not in dims}
                kept = {d for i, d in enumerate(dims) if i in ux or xs[i] == 1}
                out = ones | new | kept
            elif name in ("transpose",):
                ux = self.uniform(eqn.invars[0])
                perm = eqn.params["permutation"]
                out = ones | {i for i, p in enumerate(perm) if p in ux}
            elif name == "reshape" and _only_unit_axes(eqn.invars[0].aval.shape, shape):
                src = [s for s in eqn.invars[0].aval.shape]
                ux = self.uniform(eqn.invars[0])
                nonunit_in = [a for a, s in enumerate(src) if s != 1]
                nonunit_out = [a for a, s in enumerate(shape) if s != 1]
                out = ones | {o for i, o in zip(nonunit_in, nonunit_out) if i in ux}
            elif name in _ELEMENTWISE and len(eqn.outvars) == 1:
                common = frozenset(range(len(shape)))
                for v in eqn.invars:
                    vs = tuple(v.aval.shape)
                    if len(vs) == 0:
                        continue
                    if len(vs) != len(shape):
                        common = frozenset()
                        break
                    uv = self.uniform(v) | {a for a, s in enumerate(vs) if s == 1}
                    common &= uv
                out = ones | common
        self._uniform[atom] = frozenset(out)
        return self._uniform[atom]

    def label(self, atom) -> str:
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
        f = self._factor(atom, axes_map, rank, rank_axis)
        return dataclasses.replace(f, label=self.label(atom))

    def _factor(self, atom, axes_map, rank: int, rank_axis=None) -> Factor:
        """``atom`` as a factor in the leaf frame: its axis ``i`` is leaf axis
        ``axes_map[i]`` (``rank_axis``: the atom axis that becomes the leading rank axis)."""
        if not jx.is_literal(atom) and not hasattr(atom, "aval"):
            raise Refused(f"unsupported value {atom!r}")
        shape = tuple(atom.aval.shape)
        if not shape:
            return Factor(atom, (("reshape", (1,) * rank),))
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
        return Factor(atom, tuple(steps), rank=rank_axis is not None)

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
                out = _mul(sub(eqn.invars[0]), sub(eqn.invars[1]))
            elif name in ("add", "sub"):
                a, b = sub(eqn.invars[0]), sub(eqn.invars[1])
                out = a + (_neg(b) if name == "sub" else b)
            elif name == "neg":
                out = _neg(sub(eqn.invars[0]))
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
        out_axes = list(range(len(lb) + len(a_free) + len(b_free)))
        amap, bmap = {}, {}
        for j, (ia, ib) in enumerate(zip(lb, rb)):
            amap[ia] = bmap[ib] = axes_map[out_axes[j]]
        for j, i in enumerate(a_free):
            amap[i] = axes_map[len(lb) + j]
        for j, i in enumerate(b_free):
            bmap[i] = axes_map[len(lb) + len(a_free) + j]
        ra = lc[0] if lc else None
        rb_ = rc[0] if rc else None
        fa = self.factor(a, [amap.get(i, -1) for i in range(na)], rank, ra)
        fb = self.factor(b, [bmap.get(i, -1) for i in range(nb)], rank, rb_)
        return ((fa, fb),)

    # ------------------------------------------------------------------ the state path
    def view(self, var, form):
        """``form`` (of ``var``) as a view for a readout or a transpose, or None."""
        if isinstance(form, _View):
            return form
        if isinstance(form, _Aff):
            leaf = self.carry_of.get(var)
            if leaf is not None and leaf == form.leaf:
                return _View(form.leaf, True, tuple(range(len(self.ir.state[leaf].shape))),
                             _ONE)
            if not form.terms:
                return _View(form.leaf, False,
                             tuple(range(len(self.ir.state[form.leaf].shape))), form.decay)
        return None

    def run(self) -> None:
        for eqn in self.jaxpr.eqns:
            forms = [None if jx.is_literal(v) else self.forms.get(v) for v in eqn.invars]
            if all(f is None for f in forms):
                continue
            name = eqn.primitive.name
            bad = [f for f in forms if isinstance(f, _Bad)]
            state = [f for f in forms if isinstance(f, (_Aff, _View))]
            if bad:
                out = bad[0]
                if name == "mul" and state:
                    out = _Bad(f"the state is multiplied by a value computed from the state "
                               f"({bad[0].reason}){_where(eqn)}: a decay or gate that reads "
                               "the state is not linear")
            elif not state:
                out = _POST
            elif any(f is _POST or isinstance(f, _Read) for f in forms):
                out = _Bad(f"`{name}` combines the state with one of its readouts (not "
                           f"linear in the state){_where(eqn)}")
            else:
                try:
                    out = self.rule(name, eqn, forms)
                except Refused as exc:
                    out = _Bad(str(exc))
            for o in eqn.outvars:
                self.forms[o] = out

    def rule(self, name, eqn, forms):
        leaves = {f.leaf for f in forms if isinstance(f, (_Aff, _View))}
        if len(leaves) > 1:
            names = ", ".join(self.ir.state[i].name for i in sorted(leaves))
            raise Refused(f"`{name}` mixes the states {names}{_where(eqn)}: each state must "
                          "be updated from itself alone")
        ins = eqn.invars
        out_shape = tuple(eqn.outvars[0].aval.shape)
        if name in ("add", "sub", "add_any"):
            a, b = forms
            minus = name == "sub"
            if isinstance(a, _Aff) and isinstance(b, _Aff):
                return _Aff(a.leaf, a.decay + (_neg(b.decay) if minus else b.decay),
                            a.terms + (_neg(b.terms) if minus else b.terms))
            s = a if isinstance(a, _Aff) else b if isinstance(b, _Aff) else None
            if s is None or (a is not None and b is not None):
                raise Refused(f"`{name}` of a transposed or new state{_where(eqn)}")
            leaf_shape = tuple(self.ir.state[s.leaf].shape)
            if out_shape != leaf_shape:
                raise Refused(f"`{name}` broadcasts the state to {out_shape}{_where(eqn)}")
            t = self.free_sop(ins[1] if s is a else ins[0], len(leaf_shape), eqn, terms=True)
            if s is a:
                return _Aff(s.leaf, s.decay, s.terms + (_neg(t) if minus else t))
            if minus:  # free - state
                return _Aff(s.leaf, _neg(s.decay), _neg(s.terms) + t)
            return _Aff(s.leaf, s.decay, s.terms + t)
        if name == "neg":
            (a,) = forms
            if isinstance(a, _Aff):
                return _Aff(a.leaf, _neg(a.decay), _neg(a.terms))
            return dataclasses.replace(a, scale=_neg(a.scale))
        if name in ("mul", "div"):
            a, b = forms
            if a is not None and b is not None:
                raise Refused(f"`{name}` of two values that read the state (not linear)"
                              f"{_where(eqn)}")
            if name == "div" and a is None:
                raise Refused(f"division by the state (not linear){_where(eqn)}")
            s, free = (a, ins[1]) if a is not None else (b, ins[0])
            rank = len(self.ir.state[s.leaf].shape)
            if tuple(out_shape) != tuple(np.broadcast_shapes(*[tuple(v.aval.shape)
                                                               for v in ins])):
                raise Refused(f"`{name}` changes the shape of the state{_where(eqn)}")
            if isinstance(s, _Aff) and out_shape != tuple(self.ir.state[s.leaf].shape):
                raise Refused(f"`{name}` broadcasts the state to {out_shape}{_where(eqn)}")
            perm = s.perm if isinstance(s, _View) else tuple(range(rank))
            if name == "div":
                f = self.factor(free, self._axes(free, perm), rank)
                c = ((dataclasses.replace(f, steps=f.steps + (("recip",),)),),)
            else:
                c = self.free_sop(free, rank, eqn, perm)
            if isinstance(s, _Aff):
                return _Aff(s.leaf, _mul(s.decay, c), _mul(s.terms, c))
            return dataclasses.replace(s, scale=_mul(s.scale, c))
        if name in ("convert_element_type", "copy", "copy_p"):
            (a,) = forms
            if name == "convert_element_type" and \
                    eqn.params["new_dtype"] != ins[0].aval.dtype:
                raise Refused(f"the state is converted to {eqn.params['new_dtype']}"
                              f"{_where(eqn)}")
            return a
        if name == "transpose":
            v = self.view(ins[0], forms[0])
            if v is None or (v.scale != _ONE and v.perm != tuple(range(len(v.perm)))):
                raise Refused(f"`transpose` of an intermediate of the state update"
                              f"{_where(eqn)}")
            perm = eqn.params["permutation"]
            return _View(v.leaf, v.new, tuple(v.perm[p] for p in perm), v.scale)
        if name == "dot_general":
            return self.readout_dot(eqn, forms)
        if name == "reduce_sum":
            v = self.view(ins[0], forms[0])
            axes = tuple(eqn.params["axes"])
            if v is None:
                raise Refused(f"a sum over an intermediate of the state update{_where(eqn)}")
            if len(axes) != 1:
                raise Refused(f"a sum of the state over {len(axes)} axes (a readout "
                              f"contracts one){_where(eqn)}")
            key = v.perm[axes[0]]
            rest = [v.perm[i] for i in range(len(v.perm)) if i != axes[0]]
            return self.add_readout(eqn.outvars[0], v, key, v.scale, rest)
        raise Refused(f"`{name}` of the state{_where(eqn)} (not one of the linear operations "
                      "of a decayed linear-attention update)")

    def _axes(self, free, perm):
        shape = tuple(free.aval.shape)
        return () if not shape else tuple(perm)

    def free_sop(self, free, rank, eqn, perm=None, terms=False):
        shape = tuple(free.aval.shape)
        if shape and len(shape) != rank:
            raise Refused(f"`{eqn.primitive.name}` broadcasts a value of shape {shape} "
                          f"against the state{_where(eqn)}")
        axes = () if not shape else (tuple(perm) if perm is not None else tuple(range(rank)))
        return self.sop(free, axes, rank, terms=terms)

    def readout_dot(self, eqn, forms):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        a, b = forms
        if a is not None and b is not None:
            raise Refused(f"`dot_general` of two values that read the state (not linear)"
                          f"{_where(eqn)}")
        if a is not None:
            var, s, q, sc, sb, qc, qb = eqn.invars[0], a, eqn.invars[1], lc, lb, rc, rb
        else:
            var, s, q, sc, sb, qc, qb = eqn.invars[1], b, eqn.invars[0], rc, rb, lc, lb
        v = self.view(var, s)
        if v is None:
            raise Refused(f"`dot_general` of an intermediate of the state update"
                          f"{_where(eqn)}")
        if len(sc) != 1:
            raise Refused(f"the readout contracts {len(sc)} axes of the state (a chunkwise "
                          f"readout contracts one){_where(eqn)}")
        nq = len(q.aval.shape)
        q_free = [i for i in range(nq) if i not in qc and i not in qb]
        if q_free:
            raise Refused(f"the readout's query has axes of its own (a matrix readout such "
                          f"as C h){_where(eqn)}")
        key = v.perm[sc[0]]
        qmap = [None] * nq
        qmap[qc[0]] = key
        for i_s, i_q in zip(sb, qb):
            qmap[i_q] = v.perm[i_s]
        rank = len(v.perm)
        query = _mul(v.scale, self.sop(q, tuple(qmap), rank) if nq else
                     ((self.factor(q, (), rank),),))
        batch = [v.perm[i] for i in sb]
        s_free = [v.perm[i] for i in range(rank) if i not in sc and i not in sb]
        return self.add_readout(eqn.outvars[0], v, key, query, batch + s_free, batch)

    def add_readout(self, var, v: _View, key, query, axes, batch=()):
        heads = set(batch) | {a for p in query for f in p
                              for a, s in enumerate(f.frame_shape()) if s != 1 and a != key}
        self.readouts.append((var, v.leaf, v.new, key, query, tuple(axes), frozenset(heads)))
        return _Read(len(self.readouts) - 1)

    # ------------------------------------------------------------------ the form
    def form(self) -> ChunkForm:
        self.run()
        ir, n = self.ir, self.n
        outs = self.jaxpr.outvars
        leaves = []
        for i, (leaf, v) in enumerate(zip(ir.state, outs[:n])):
            f = None if jx.is_literal(v) else self.forms.get(v)
            rank = len(leaf.shape)
            if f is None:
                f = _Aff(i, (), self.sop(v, tuple(range(rank)), rank, terms=True)
                         if getattr(v.aval, "shape", ()) else
                         ((self.factor(v, (), rank),),))
            if isinstance(f, _Bad):
                raise Refused(f"the new {leaf.name}: {f.reason}")
            if not isinstance(f, _Aff):
                raise Refused(f"the new {leaf.name} is not an update of the state (it is a "
                              f"{'readout' if isinstance(f, _Read) else 'view'} of it)")
            if f.leaf != i:
                raise Refused(f"the new {leaf.name} is computed from {ir.state[f.leaf].name}")
            leaves.append(self.assign(i, f))
        for j, v in enumerate(outs[n:]):
            f = None if jx.is_literal(v) else self.forms.get(v)
            if isinstance(f, _Bad):
                raise Refused(f"the output {self.outputs.leaves[j].name}: {f.reason}")
            if isinstance(f, (_Aff, _View)):
                name = self.outputs.leaves[j].name
                raise Refused(f"the output {name} is the state itself (every state would be "
                              "stored: that is method='scan')")
        readouts = tuple(Readout(r[0], r[1], r[2], r[4], r[5], self.label(r[0]))
                         for r in self.readouts)
        return ChunkForm(self.outputs.jaxpr, n, tuple(leaves), readouts)

    def assign(self, i: int, f: _Aff) -> LeafForm:
        """The leaf's key and value axes (module docstring)."""
        leaf = self.ir.state[i]
        rank = len(leaf.shape)
        if not is_inexact(leaf.dtype):
            raise Refused(f"{leaf.name} is {leaf.describe()}, not a float or complex state")
        if rank == 0:
            raise Refused(f"{leaf.name} is a scalar state (nothing to chunk: method='scan')")
        keys = {r[3] for r in self.readouts if r[1] == i}
        if len(keys) > 1:
            raise Refused(f"the outputs contract {leaf.name} along different axes "
                          f"{sorted(keys)}")
        key_options = sorted(keys) if keys else list(range(rank))
        heads = set().union(*[r[6] for r in self.readouts if r[1] == i])
        reasons = []
        for key in key_options:
            values = sorted((a for a in range(rank) if a != key),
                            key=lambda a: (a in heads, -leaf.shape[a], a))
            for value in values + [None]:
                why = self._fits(i, f, key, value)
                if why is None:
                    terms = tuple(self._split(t, key, value) for t in f.terms)
                    decay = f.decay
                    if decay and all(not p for p in decay) and len(decay) == 1:
                        decay = _ONE
                    lf = LeafForm(i, leaf.name, tuple(leaf.shape), leaf.dtype, key, value,
                                  _simplify(decay), terms)
                    why = self._rank_reason(lf)
                    if why is None:
                        return lf
                reasons.append(why)
        raise Refused(reasons[0] if reasons else f"{leaf.name}: no axes fit")

    def _rank_reason(self, lf: LeafForm):
        if lf.value_axis is None:
            return None
        R = sum(_rank_of(t) for t in lf.terms)
        if R * (lf.K + lf.V) > lf.K * lf.V:
            return (f"the input term of {lf.name} has rank {R}: not low for a {lf.K} × "
                    f"{lf.V} state (its factors would be larger than the state)")
        return None

    def _fits(self, i, f: _Aff, key, value):
        name = self.ir.state[i].name
        if value is None:
            reads = [r for r in self.readouts if r[1] == i]
            rank = len(self.ir.state[i].shape)
            others = set(range(rank)) - {key}
            if rank == 1 or (reads and all(others <= r[6] for r in reads)):
                return None  # every other axis is a head: a vector state per head
            return (f"{name} has no value axis that fits (a vector state per head needs "
                    "every other axis to be a head of its readouts)")
        for p in f.decay:
            for fac in p:
                if fac.rank:
                    return f"the decay of {name} sums over a rank axis"
                if fac.frame_shape()[value] != 1:
                    return (f"the decay of {name} varies along both axes {key} and {value} "
                            f"(elementwise, through {fac.describe()}): only a decay per row "
                            "or per head has a chunkwise form")
        for p in f.terms:
            for fac in p:
                s = fac.frame_shape()
                if s[key] != 1 and s[value] != 1:
                    return (f"the input term of {name} is not a sum of outer products along "
                            f"axes {key} and {value} ({fac.describe()} varies along both)")
        for r in self.readouts:
            if r[1] != i:
                continue
            for p in r[4]:
                for fac in p:
                    if fac.frame_shape()[value] != 1:
                        return (f"the readout of {name} scales it along axis {value} before "
                                "contracting")
        return None

    def _split(self, p, key, value) -> Term:
        if value is None:
            return Term(tuple(p), ())
        k = tuple(f for f in p if f.frame_shape()[value] == 1)
        v = tuple(f for f in p if f.frame_shape()[value] != 1)
        return Term(k, v)


def _rank_of(t: Term) -> int:
    for f in t.k + t.v:
        if f.rank:
            return f.shape()[0]
    return 1


def _simplify(sop: tuple) -> tuple:
    return sop


def _only_unit_axes(a, b) -> bool:
    return [s for s in a if s != 1] == [s for s in b if s != 1]


_ELEMENTWISE = frozenset("""
    abs acos acosh add asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type
    copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
    is_finite le log log1p logistic lt max min mul ne neg nextafter not or pow real rem round
    rsqrt select_n sign sin sinh sqrt square sub tan tanh xor and
""".split())


# ----------------------------------------------------------------------------- probes

def _probe(form: ChunkForm, ir: StepIR, outputs: Outputs, values: Values | None,
           seed: int = 0) -> tuple[bool | None, str]:
    """Compare the body with its rebuild from the pieces at a few points."""
    with jax.ensure_compile_time_eval():  # under jit, arrays made here would be traced
        return _probe_points(form, ir, outputs, values, seed)


def _probe_points(form, ir, outputs, values, seed):
    rng = np.random.default_rng(seed)
    consts = [c if jx.is_concrete(c) else jnp.asarray(_random(rng, c.shape, c.dtype))
              for c in outputs.jaxpr.consts]
    body = outputs.body(consts)
    points = []
    if values is not None:
        for x in values.x_steps:
            points.append(([jnp.asarray(_random(rng, s.shape, s.dtype)) for s in ir.state],
                           [jnp.asarray(v) for v in x]))
    for kind in ("normal", "positive", "normal"):
        points.append(([jnp.asarray(_random(rng, s.shape, s.dtype, kind)) for s in ir.state],
                       [jnp.asarray(_random(rng, s.shape, s.dtype, kind))
                        for s in ir.inputs]))
    eps = max([float(jnp.finfo(s.dtype).eps) for s in (*ir.state, *ir.inputs,
                                                        *outputs.leaves)
               if is_inexact(s.dtype)] or [1e-7])
    tol = min(1e3 * eps, 0.1)
    seen, ok = 0, True
    for h, x in points:
        try:
            carry, ys = body(h, x)
            carry2, ys2 = form.body(consts, h, x)
        except Exception as exc:  # noqa: BLE001 - a rebuild that fails is a refusal
            return False, f"the rebuild from the pieces failed: {type(exc).__name__}: {exc}"
        pairs = [(a, b) for a, b in zip(list(carry) + list(ys), list(carry2) + list(ys2))
                 if is_inexact(jnp.asarray(a).dtype)]
        vals = [(np.asarray(a), np.asarray(b)) for a, b in pairs]
        if not all(np.all(np.isfinite(a)) and np.all(np.isfinite(b)) for a, b in vals):
            continue
        seen += 1
        for a, b in vals:
            scale = float(np.max(np.abs(a), initial=0.0))
            if not np.all(np.abs(a - b) <= tol * (1.0 + scale)):
                ok = False
    if not seen:
        return None, "no probe was conclusive (non-finite values at every point)"
    return ok, f"{seen} value probes: the body rebuilt from the pieces " + (
        "equals the body" if ok else "DIFFERS from the body (a bug in the chunkwise pass; "
                                     "please report it)")


def analyse(ir: StepIR, outputs: Outputs | None, values: Values | None = None,
            verify: bool = True) -> tuple[ChunkForm | None, str]:
    """``(form, text)``: the chunkwise form of the body and the pass's printable output, or
    ``(None, why not)``."""
    if outputs is None:
        return None, "no per-step outputs (recur.scan returns every state): not applicable"
    try:
        form = _Analysis(ir, outputs).form()
    except Refused as exc:
        return None, f"no chunkwise form: {exc}"
    lines = [lf.describe() for lf in form.leaves]
    lines += [f"readout {r.describe(form.leaves[r.leaf])}" for r in form.readouts]
    if not form.readouts:
        lines.append("no readouts: the outputs do not read the state")
    if verify:
        ok, text = _probe(form, ir, outputs, values)
        lines.append(text)
        if ok is not True:
            return None, "no chunkwise form used: " + "\n".join(lines)
    return form, "\n".join(lines)


# ----------------------------------------------------------------------------- lowering

@dataclasses.dataclass(frozen=True)
class Decision:
    """The chunkwise form a plan runs (``form.chunk`` set) and its estimates."""

    form: ChunkForm
    estimates: tuple


def dims(form: ChunkForm) -> list:
    """Per leaf ``(b, K, V, R, m, d)`` for the cost model."""
    out = []
    for i, lf in enumerate(form.leaves):
        R = sum(_rank_of(t) for t in lf.terms) or 1
        m = sum(1 for r in form.readouts if r.leaf == i)
        d = lf.K if lf.kind == "row" else 1
        out.append((lf.b, lf.K, lf.V, R, m, d))
    return out


def _bytes(v: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{int(v)} B"


def decide(ir: StepIR, outputs: Outputs | None, values, wanted, choices, costs, *,
           backend: str, backward: bool, sharded: bool, verify: bool = True,
           chunk: int | None = None):
    """``(Decision or None, choices, text)``: whether the plan runs ``chunked`` -- requested
    (every stage asks for it), or under ``auto`` where the cost model predicts it faster
    than what the stages chose -- with the chunk size the model predicts fastest."""
    from .._errors import PlanError
    from . import _cost
    requested = "chunked" in wanted
    if outputs is None:
        raise PlanError("method='chunked' computes per-step outputs without storing the "
                        "states, so it needs a recur.lax.scan body f(carry, x) -> (carry, y); "
                        "recur.scan returns every state (use method='scan' there).")
    if requested and not all(w == "chunked" for w in wanted):
        raise PlanError("method='chunked' runs the whole body (every state leaf at once); "
                        "it cannot be given to some stages only.")
    form, text = analyse(ir, outputs, values, verify)
    if form is None:
        if requested:
            raise PlanError(f"method='chunked' cannot run this body: "
                            f"{text.removeprefix('no chunkwise form: ')}. Use method='auto'.")
        why = text.splitlines()[0].removeprefix("no chunkwise form: ")
        return None, [(m, w, r + (("chunked", why),)) for m, w, r in choices], text
    T = ir.length
    leaves = dims(form)
    body_flops = _cost.jaxpr_flops(outputs.jaxpr)
    C, t = _cost.choose_chunk(backend, T, leaves, body_flops, backward)
    if chunk is not None:  # the user's chunk= (also the scan kernel's chunk length)
        C = int(chunk)
        t = _cost.predict_chunked(backend, T, C, leaves, body_flops, backward)
    N = -(-max(T, 1) // C)
    itemsize = max(np.dtype(lf.dtype).itemsize for lf in form.leaves)
    y_el = sum(leaf.size for leaf in outputs.leaves)
    mem = _cost.chunked_bytes(T, C, leaves, y_el, itemsize)
    states = float(T) * sum(leaf.size for leaf in ir.state) * itemsize
    budget = costs[0].budget if costs else float("inf")
    source = "chunk=" if chunk else "the cost model's fastest"
    text += (f"\nchunk size C = {C} ({source}), {N} chunks: predicted "
             f"{_cost.fmt_seconds(t)}; temporary memory about {_bytes(mem)} (all T states "
             f"would be {_bytes(states)})")
    estimates = (("chunk", C), ("chunks", N), ("memory", int(mem)),
                 ("predicted time", _cost.fmt_seconds(t)))
    decision = Decision(dataclasses.replace(form, chunk=C), estimates)
    kinds = ", ".join(sorted({lf.kind for lf in form.leaves}))
    head = (f"a decayed linear-attention body (decay {kinds}): its chunkwise form, C = {C}, "
            f"never stores the T states")
    if requested:
        if mem > budget:
            raise PlanError(f"method='chunked' needs about {_bytes(mem)}, over the memory "
                            f"budget of {_bytes(budget)}; raise memory_limit or use "
                            "method='sequential'.")
        return decision, [("chunked", f"requested; {head}", (("sequential", "not requested"),))
                          for _ in choices], text
    if sharded:
        note = "no sequence-parallel form yet (one device only)"
    elif mem > budget:
        note = f"needs about {_bytes(mem)}, over the memory budget of {_bytes(budget)}"
    elif not all(w == "auto" for w in wanted):
        note = "not requested"
    else:
        t_now = sum(cost(m) for cost, (m, _, _) in zip(costs, choices))
        t_loop = _cost.predict_loop_outputs(backend, T, body_flops, backward)
        if all(m == "sequential" for m, _, _ in choices):
            t_now = min(t_now, t_loop)  # the generic model overrates big states' loops
        if t < t_now and t < t_loop:
            src = costs[0].source_short if costs else "the cost model"
            new = []
            for cost, (m, w, r) in zip(costs, choices):
                rej = ((m, f"predicted {_cost.fmt_seconds(cost(m))} for this stage against "
                           f"{_cost.fmt_seconds(t)} for the chunkwise form of the whole body"),)
                new.append(("chunked", f"{head}; predicted fastest on {backend} "
                                       f"({_cost.fmt_seconds(t)}; cost model: {src})",
                            rej + tuple(x for x in r if x[0] != m)))
            return decision, new, text
        note = (f"predicted {_cost.fmt_seconds(t)} (C = {C}) against "
                f"{_cost.fmt_seconds(min(t_now, t_loop))}"
                + (" for the loop of the whole body" if t_loop < t_now else ""))
    return None, [(m, w, r + (("chunked", note),)) for m, w, r in choices], \
        text + f"\nnot used: {note}"


__all__ = ["analyse", "Refused", "decide", "Decision", "dims"]
