r"""Key and value axes of each state leaf: the chunkwise pass's second half.

Given the abstract forms of the state path (``_chunk_state.py``), each state leaf whose new
value is ``Aff(g, Σ)`` of itself gets its axes (``recur/_chunk_pieces.py``):

* the key axis ``K`` is the one its readouts contract (every readout of a leaf must
  contract the same one; a leaf without readouts tries each axis); a readout's query may
  have axes of its own (``C h``), which are not axes of the leaf;
* the value axis ``V`` is one along which the decay is constant and every input product
  splits into a factor constant along ``V`` (``k``) and one constant along ``K`` (``v``),
  and along which no readout scales the state before contracting; or none (``V = 1``)
  when every other axis is a head of the leaf's readouts (a vector state per head);
* the input term's rank ``R`` must be low: ``R (K + V) ≤ K V``, else its factors would be
  larger than the state.

The value axes are tried heads last and largest first; the first that fits is taken, and
when none does the first reason is reported.  The result is a ``ChunkForm``.
"""

from __future__ import annotations

from .._chunk_pieces import LeafForm, Readout, Term
from .._chunkform import ChunkForm
from .._dtypes import is_inexact
from ._chunk_free import ONE, Refused
from ._chunk_state import Aff, Bad, StatePath, View


def build_form(path: StatePath) -> ChunkForm:
    """The ``ChunkForm`` of the interpreted body, or ``Refused`` with the reason."""
    path.run()
    ir, n = path.ir, path.n
    outs = path.jaxpr.outvars
    leaves = []
    for i, (leaf, v) in enumerate(zip(ir.state, outs[:n])):
        f = path.form_of(v)
        rank = len(leaf.shape)
        if f is None:  # the new state does not read the old one
            f = Aff(i, (), path.free.sop(v, tuple(range(rank)), rank, terms=True)
                    if getattr(v.aval, "shape", ()) else
                    ((path.free.factor(v, (), rank),),))
        if isinstance(f, Bad):
            raise Refused(f"the new {leaf.name}: {f.reason}")
        if isinstance(f, View):
            raise Refused(f"the new {leaf.name} is not an update of the state (it is a "
                          "view of it)")
        if not isinstance(f, Aff):  # a readout, or a function of readouts
            raise Refused(f"the new {leaf.name} is computed from a contraction of the state "
                          "(a dense transition such as A h mixes its entries: no chunkwise "
                          "form)")
        if f.leaf != i:
            raise Refused(f"the new {leaf.name} is computed from {ir.state[f.leaf].name}")
        leaves.append(assign(path, i, f))
    for j, v in enumerate(outs[n:]):
        f = path.form_of(v)
        if isinstance(f, Bad):
            raise Refused(f"the output {path.outputs.leaves[j].name}: {f.reason}")
        if isinstance(f, (Aff, View)):
            name = path.outputs.leaves[j].name
            raise Refused(f"the output {name} is the state itself (every state would be "
                          "stored: that is method='scan')")
    readouts = tuple(Readout(r.var, r.leaf, r.new, r.query, r.axes, path.free.label(r.var),
                             r.extra) for r in path.readouts)
    return ChunkForm(path.outputs.jaxpr, n, tuple(leaves), readouts)


def assign(path: StatePath, i: int, f: Aff) -> LeafForm:
    """The leaf's key and value axes (module docstring)."""
    leaf = path.ir.state[i]
    rank = len(leaf.shape)
    if not is_inexact(leaf.dtype):
        raise Refused(f"{leaf.name} is {leaf.describe()}, not a float or complex state")
    if rank == 0:
        raise Refused(f"{leaf.name} is a scalar state (nothing to chunk: method='scan')")
    reads = [r for r in path.readouts if r.leaf == i]
    keys = {r.key for r in reads}
    if len(keys) > 1:
        raise Refused(f"the outputs contract {leaf.name} along different axes "
                      f"{sorted(keys)}")
    heads = set().union(*[r.heads for r in reads])
    reasons = []
    for key in (sorted(keys) if keys else list(range(rank))):
        values = sorted((a for a in range(rank) if a != key),
                        key=lambda a: (a in heads, -leaf.shape[a], a))
        for value in values + [None]:
            why = _misfit(leaf, f, reads, key, value)
            if why is None:
                decay = f.decay
                if decay and all(not p for p in decay) and len(decay) == 1:
                    decay = ONE
                lf = LeafForm(i, leaf.name, tuple(leaf.shape), leaf.dtype, key, value,
                              decay, tuple(_split(t, value) for t in f.terms))
                why = _rank_reason(lf)
                if why is None:
                    return lf
            reasons.append(why)
    raise Refused(reasons[0] if reasons else f"{leaf.name}: no axes fit")


def _rank_reason(lf: LeafForm):
    if lf.value_axis is None:
        return None
    R = lf.n_products
    if R * (lf.K + lf.V) > lf.K * lf.V:
        return (f"the input term of {lf.name} has rank {R}: not low for a {lf.K} × "
                f"{lf.V} state (its factors would be larger than the state)")
    return None


def _misfit(leaf, f: Aff, reads, key, value):
    """Why ``(key, value)`` are not the leaf's axes, or None."""
    name = leaf.name
    if value is None:
        others = set(range(len(leaf.shape))) - {key}
        if len(leaf.shape) == 1 or (reads and all(others <= r.heads for r in reads)):
            return None  # every other axis is a head: a vector state per head
        return (f"{name} has no value axis that fits (a vector state per head needs "
                "every other axis to be a head of its readouts)")
    for p in f.decay:
        for fac in p:
            if fac.rank:
                return f"the decay of {name} sums over a rank axis"
            if fac.varies(value):
                return (f"the decay of {name} varies along both axes {key} and {value} "
                        f"(elementwise, through {fac.describe()}): only a decay per row "
                        "or per head has a chunkwise form")
    for p in f.terms:
        for fac in p:
            if fac.varies(key) and fac.varies(value):
                return (f"the input term of {name} is not a sum of outer products along "
                        f"axes {key} and {value} ({fac.describe()} varies along both)")
    for r in reads:
        for p in r.query:
            for fac in p:
                if fac.varies(value):
                    return (f"the readout of {name} scales it along axis {value} before "
                            "contracting")
    return None


def _split(p, value) -> Term:
    if value is None:
        return Term(tuple(p), ())
    k = tuple(f for f in p if not f.varies(value))
    v = tuple(f for f in p if f.varies(value))
    return Term(k, v)


__all__ = ["assign", "build_form"]
