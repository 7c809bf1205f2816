r"""The state path of a scan body, interpreted abstractly: the chunkwise pass's first half.

The body's jaxpr ``(S, x) -> (S', y)`` is read once, in order, and every value that reads
the state gets one of these abstract forms (a value that does not read the state is
*free*, ``_chunk_free.py``):

* ``Aff(g, Σ)``: ``g ⊙ S_old + Σ_j Π_i f_ij`` -- the old state scaled elementwise by a sum
  of products of free values, plus a sum of products of free values;
* ``View(τ, π, s)``: ``s ⊙ transpose(S_τ, π)`` with ``τ`` old or new (the new state is the
  value the body returns as the carry);
* ``Read``: a contraction of a view with a free ``q`` over one axis (``dot_general``,
  ``reduce_sum`` of a scaled view) -- a *readout*; ``q`` may have axes of its own (a
  matrix ``C`` in ``C h``, constant or input-derived: several queries at once);
* ``POST``: anything computed from readouts and free values.

The rules are algebraic identities: ``add``/``sub``/``neg`` of affine forms of the same
leaf, ``mul``/``div`` by a free value (whose own products and sums are expanded:
``k[:, None] * v[None, :]``, ``jnp.outer``, an ``einsum``/``dot_general`` without
contraction -- an outer product -- or with one contracted axis -- ``Σ_r k_r v_rᵀ``),
``transpose`` of the old or new state, and readouts.  Every other use of the state
(``tanh(S)``, ``S * S``, a decay computed from the state, a state that reads another one,
an output that is the state itself) becomes ``Bad`` with that reason and its source line;
the axis assignment (``_chunk_axes.py``) reports it where it reaches the carry or an
output.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import _jax_adapter as jx
from .._ir import Outputs, StepIR
from ._chunk_free import ONE, FreeValues, Refused, mul, neg, where


@dataclasses.dataclass(frozen=True)
class Aff:
    leaf: int
    decay: tuple   # SOP
    terms: tuple   # SOP (products may hold one rank factor)


@dataclasses.dataclass(frozen=True)
class View:
    leaf: int
    new: bool
    perm: tuple
    scale: tuple   # SOP in the leaf frame


@dataclasses.dataclass(frozen=True)
class Read:
    index: int


@dataclasses.dataclass(frozen=True)
class Bad:
    reason: str


POST = "post"


@dataclasses.dataclass(frozen=True)
class FoundReadout:
    """A readout the interpretation found: ``var = S_τᵀ q`` of leaf ``leaf`` over the leaf
    axis ``key``; ``axes``: the axes of ``var`` in its order (leaf axes, and ``rank + j``
    for the query's own axis ``j``, of size ``extra[j]``); ``heads``: the leaf axes the
    readout keeps per entry (batch axes, and axes the query varies along)."""

    var: object
    leaf: int
    new: bool
    key: int
    query: tuple   # SOP in the leaf frame
    axes: tuple
    heads: frozenset
    extra: tuple = ()


class StatePath:
    """The abstract interpretation of one body (module docstring): ``forms`` per jaxpr
    value, and the ``readouts`` found."""

    def __init__(self, ir: StepIR, outputs: Outputs):
        self.ir, self.outputs = ir, outputs
        self.jaxpr = outputs.jaxpr.jaxpr
        self.n = len(ir.state)
        self.free = FreeValues(ir, self.jaxpr)
        self.forms: dict = {}
        for i, v in enumerate(self.jaxpr.invars[:self.n]):
            self.forms[v] = Aff(i, ONE, ())
        self.carry_of = {}
        for i, v in enumerate(self.jaxpr.outvars[:self.n]):
            if not jx.is_literal(v):
                self.carry_of.setdefault(v, i)
        self.readouts: list[FoundReadout] = []

    def form_of(self, atom):
        return None if jx.is_literal(atom) else self.forms.get(atom)

    def view(self, var, form):
        """``form`` (of ``var``) as a view for a readout or a transpose, or None."""
        if isinstance(form, View):
            return form
        if isinstance(form, Aff):
            identity = tuple(range(len(self.ir.state[form.leaf].shape)))
            if self.carry_of.get(var) == form.leaf:
                return View(form.leaf, True, identity, ONE)
            if not form.terms:
                return View(form.leaf, False, identity, form.decay)
        return None

    def run(self) -> None:
        for eqn in self.jaxpr.eqns:
            forms = [self.form_of(v) for v in eqn.invars]
            if all(f is None for f in forms):
                continue
            out = self._interpret(eqn, forms)
            for o in eqn.outvars:
                self.forms[o] = out

    def _interpret(self, eqn, forms):
        name = eqn.primitive.name
        bad = [f for f in forms if isinstance(f, Bad)]
        state = [f for f in forms if isinstance(f, (Aff, View))]
        if bad:
            if name == "mul" and state:
                return Bad(f"the state is multiplied by a value computed from the state "
                           f"({bad[0].reason}){where(eqn)}: a decay or gate that reads "
                           "the state is not linear")
            if name == "dot_general" and state:
                return Bad(f"the readout's query is computed from the state "
                           f"({bad[0].reason}){where(eqn)}: a readout C h needs a C that "
                           "does not read the state")
            return bad[0]
        if not state:
            return POST
        if any(f is POST or isinstance(f, Read) for f in forms):
            return Bad(f"`{name}` combines the state with one of its readouts (not "
                       f"linear in the state){where(eqn)}")
        try:
            return self.rule(name, eqn, forms)
        except Refused as exc:
            return Bad(str(exc))

    def rule(self, name, eqn, forms):
        leaves = {f.leaf for f in forms if isinstance(f, (Aff, View))}
        if len(leaves) > 1:
            names = ", ".join(self.ir.state[i].name for i in sorted(leaves))
            raise Refused(f"`{name}` mixes the states {names}{where(eqn)}: each state must "
                          "be updated from itself alone")
        if name in ("add", "sub", "add_any"):
            return self._add(name, eqn, forms)
        if name == "neg":
            (a,) = forms
            if isinstance(a, Aff):
                return Aff(a.leaf, neg(a.decay), neg(a.terms))
            return dataclasses.replace(a, scale=neg(a.scale))
        if name in ("mul", "div"):
            return self._scale(name, eqn, forms)
        if name in ("convert_element_type", "copy", "copy_p"):
            if name == "convert_element_type" and \
                    eqn.params["new_dtype"] != eqn.invars[0].aval.dtype:
                raise Refused(f"the state is converted to {eqn.params['new_dtype']}"
                              f"{where(eqn)}")
            return forms[0]
        if name == "transpose":
            v = self.view(eqn.invars[0], forms[0])
            if v is None or (v.scale != ONE and v.perm != tuple(range(len(v.perm)))):
                raise Refused(f"`transpose` of an intermediate of the state update"
                              f"{where(eqn)}")
            perm = eqn.params["permutation"]
            return View(v.leaf, v.new, tuple(v.perm[p] for p in perm), v.scale)
        if name == "dot_general":
            return self.readout_dot(eqn, forms)
        if name == "reduce_sum":
            return self._readout_sum(eqn, forms)
        raise Refused(f"`{name}` of the state{where(eqn)} (not one of the linear operations "
                      "of a decayed linear-attention update)")

    def _add(self, name, eqn, forms):
        """``add``/``sub`` of two affine forms, or of an affine form and a free value."""
        a, b = forms
        minus = name == "sub"
        if isinstance(a, Aff) and isinstance(b, Aff):
            return Aff(a.leaf, a.decay + (neg(b.decay) if minus else b.decay),
                       a.terms + (neg(b.terms) if minus else b.terms))
        s = a if isinstance(a, Aff) else b if isinstance(b, Aff) else None
        if s is None or (a is not None and b is not None):
            raise Refused(f"`{name}` of a transposed or new state{where(eqn)}")
        leaf_shape = tuple(self.ir.state[s.leaf].shape)
        out_shape = tuple(eqn.outvars[0].aval.shape)
        if out_shape != leaf_shape:
            raise Refused(f"`{name}` broadcasts the state to {out_shape}{where(eqn)}")
        ins = eqn.invars
        t = self.free.free_sop(ins[1] if s is a else ins[0], len(leaf_shape), eqn, terms=True)
        if s is a:
            return Aff(s.leaf, s.decay, s.terms + (neg(t) if minus else t))
        if minus:  # free - state
            return Aff(s.leaf, neg(s.decay), neg(s.terms) + t)
        return Aff(s.leaf, s.decay, s.terms + t)

    def _scale(self, name, eqn, forms):
        """``mul``/``div`` of an affine form or a view by a free value."""
        a, b = forms
        ins = eqn.invars
        out_shape = tuple(eqn.outvars[0].aval.shape)
        if a is not None and b is not None:
            raise Refused(f"`{name}` of two values that read the state (not linear)"
                          f"{where(eqn)}")
        if name == "div" and a is None:
            raise Refused(f"division by the state (not linear){where(eqn)}")
        (s, var), free = ((a, ins[0]), ins[1]) if a is not None else ((b, ins[1]), ins[0])
        if isinstance(s, Aff) and self.carry_of.get(var) == s.leaf:
            s = self.view(var, s)  # the new state scaled, as in a readout sum(h * q)
        leaf_shape = tuple(self.ir.state[s.leaf].shape)
        rank = len(leaf_shape)
        if out_shape != tuple(np.broadcast_shapes(*[tuple(v.aval.shape) for v in ins])):
            raise Refused(f"`{name}` changes the shape of the state{where(eqn)}")
        perm = s.perm if isinstance(s, View) else tuple(range(rank))
        if out_shape != tuple(leaf_shape[p] for p in perm):
            raise Refused(f"`{name}` broadcasts the state to {out_shape}{where(eqn)}")
        if name == "div":
            axes = () if not free.aval.shape else tuple(perm)
            f = self.free.factor(free, axes, rank)
            c = ((dataclasses.replace(f, steps=f.steps + (("recip",),)),),)
        else:
            c = self.free.free_sop(free, rank, eqn, perm)
        if isinstance(s, Aff):
            return Aff(s.leaf, mul(s.decay, c), mul(s.terms, c))
        return dataclasses.replace(s, scale=mul(s.scale, c))

    def _readout_sum(self, eqn, forms):
        """``reduce_sum`` of a scaled view over one axis: a readout."""
        v = self.view(eqn.invars[0], forms[0])
        axes = tuple(eqn.params["axes"])
        if v is None:
            raise Refused(f"a sum over an intermediate of the state update{where(eqn)}")
        if len(axes) != 1:
            raise Refused(f"a sum of the state over {len(axes)} axes (a readout "
                          f"contracts one){where(eqn)}")
        key = v.perm[axes[0]]
        rest = [v.perm[i] for i in range(len(v.perm)) if i != axes[0]]
        return self.add_readout(eqn.outvars[0], v, key, v.scale, rest)

    def readout_dot(self, eqn, forms):
        """``dot_general`` of a view with a free query, contracting one state axis."""
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        a, b = forms
        if a is not None and b is not None:
            raise Refused(f"`dot_general` of two values that read the state (not linear)"
                          f"{where(eqn)}")
        if a is not None:
            var, s, q, sc, sb, qc, qb = eqn.invars[0], a, eqn.invars[1], lc, lb, rc, rb
        else:
            var, s, q, sc, sb, qc, qb = eqn.invars[1], b, eqn.invars[0], rc, rb, lc, lb
        v = self.view(var, s)
        if v is None:
            raise Refused(f"`dot_general` of an intermediate of the state update"
                          f"{where(eqn)}")
        if len(sc) != 1:
            raise Refused(f"the readout contracts {len(sc)} axes of the state (a chunkwise "
                          f"readout contracts one){where(eqn)}")
        rank = len(v.perm)
        key = v.perm[sc[0]]
        # the query's own axes (a matrix C in C h: several queries) follow the leaf axes
        q_own = [i for i in range(len(q.aval.shape)) if i not in qc and i not in qb]
        qmap = [None] * len(q.aval.shape)
        qmap[qc[0]] = key
        for i_s, i_q in zip(sb, qb):
            qmap[i_q] = v.perm[i_s]
        for j, i_q in enumerate(q_own):
            qmap[i_q] = rank + j
        extra = tuple(q.aval.shape[i] for i in q_own)
        width = rank + len(extra)
        scale = tuple(tuple(f.widened(len(extra)) for f in p) for p in v.scale)
        query = mul(scale, self.free.sop(q, tuple(qmap), width))
        batch = [v.perm[i] for i in sb]
        s_free = [v.perm[i] for i in range(rank) if i not in sc and i not in sb]
        own = [rank + j for j in range(len(extra))]
        axes = batch + (s_free + own if a is not None else own + s_free)  # dot_general's order
        return self.add_readout(eqn.outvars[0], v, key, query, axes, batch, extra)

    def add_readout(self, var, v: View, key, query, axes, batch=(), extra=()):
        rank = len(v.perm)
        heads = set(batch) | {a for p in query for f in p for a in range(rank)
                              if a != key and f.varies(a)}
        self.readouts.append(FoundReadout(var, v.leaf, v.new, key, query, tuple(axes),
                                          frozenset(heads), tuple(extra)))
        return Read(len(self.readouts) - 1)


__all__ = ["Aff", "Bad", "FoundReadout", "POST", "Read", "StatePath", "View"]
