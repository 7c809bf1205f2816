r"""Dependency pass: the Jacobian sparsity pattern of a step w.r.t. the state.

For a step ``h' = f(h, x, p)`` with ``n`` state elements, the pattern is the boolean
``n x n`` matrix ``S`` with ``S[i, j] = True`` whenever ``∂h'_i/∂h_j`` may be nonzero for
*some* inputs and params.  It is computed by abstract interpretation of the step's jaxpr:
every value ``v`` with ``m`` elements carries a sparse boolean ``(m, n)`` matrix ``D_v``,

    D_v[k, j] = True  ⇐  flat element k of v may depend on state element j,

seeded with ``D_{h} = I`` and propagated equation by equation, by a rule per primitive:
elementwise primitives and data movement in ``_dependency_movement``, reductions, windows
and contractions in ``_dependency_reductions``, and here the ones that hold jaxprs:

* calls (``jit``, ``closed_call``, ``checkpoint``, ``custom_jvp_call``,
  ``custom_vjp_call``) whose body has the call's own shapes: recursion; ``cond``/``switch``:
  the union of the branches (the known branch alone when the index is known), ``∨ U(index)``;
  ``while`` and ``scan``: a fixed point of the carries (``∨ U(pred)`` for ``while``);
* anything else — and any rule that fails or yields the wrong shape — the conservative
  ``D_out[k] = ∨_v U(v)``: every output element reads everything any input reads.

Values known at trace time (constants and what is computed from them alone) are carried
along, so that indices, predicates and operands of known value give precise rules.

The result may over-approximate but never misses a nonzero.  A custom derivative can make
the solver's Jacobian differ from the primal function's (straight-through estimators), so
the pattern is the union of the primal analysis and the same analysis of the step's JVP
w.r.t. the (inexact) state tangents; where the JVP does not exist (a ``custom_vjp``), of
its VJP w.r.t. the cotangents, transposed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .. import _jax_adapter as jx
from .._dtypes import is_inexact
from . import _dependency_movement as movement_rules
from . import _dependency_reductions as reduction_rules
from .._errors import PlanError
from ._dependency_arrays import (TooDense, as_flat, broadcast_vector, dense, read, same, seed,
                                 shape_of, size_of, union, union_vector)
from ._numpy_primitives import np_impl
from ._trace import StepIR

_KNOWN_SIZE_LIMIT = 1 << 16


@dataclasses.dataclass(frozen=True)
class Sparsity:
    """The state Jacobian pattern: ``pattern[i, j]`` — new element i may read old element j.

    Sparse ``(n, n)`` boolean matrices (CSR; a dense array given is converted): the later
    passes need only components, row and column sets and the diagonal, in time of the
    nonzeros."""

    pattern: sp.csr_matrix
    primal: sp.csr_matrix  # what the values read
    tangent: sp.csr_matrix | None  # what the derivative (JVP, else VJP) reads; None: neither
    has_jvp: bool = True  # forward-mode autodiff goes through the step (w.r.t. the state)

    def __post_init__(self):
        for name in ("pattern", "primal", "tangent"):
            m = getattr(self, name)
            if m is not None:
                m = sp.csr_matrix(m, dtype=bool)
                m.eliminate_zeros()
                object.__setattr__(self, name, m)

    @property
    def nnz(self) -> int:
        return int(self.pattern.nnz)


def _cond(eqn, ins, known, n):
    branches = eqn.params["branches"]
    if known[0] is not None:  # lax.switch clamps its index
        branches = [branches[int(np.clip(np.asarray(known[0]), 0, len(branches) - 1))]]
    outs = None
    for br in branches:
        res = analyse_jaxpr(jx.as_closed(br), ins[1:], known[1:], n)
        outs = res if outs is None else [union(a, b) for a, b in zip(outs, res)]
    if ins[0] is not None:
        outs = _read_also(outs, eqn.outvars, union_vector(ins[:1], n))
    return outs


def _read_also(outs, outvars, u):
    """Every element of every output also reads the row ``u``."""
    return [union(o, broadcast_vector(u, size_of(shape_of(v)))) for o, v in zip(outs, outvars)]


_MAX_FIXPOINT = 64


def _while(eqn, ins, known, n):
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cconsts, bconsts, carry = ins[:nc], ins[nc:nc + nb], list(ins[nc + nb:])
    kc, kb = known[:nc], known[nc:nc + nb]
    nk = [None] * len(carry)
    for _ in range(_MAX_FIXPOINT):
        (pred,) = analyse_jaxpr(jx.as_closed(p["cond_jaxpr"]), cconsts + carry, kc + nk, n)
        body = analyse_jaxpr(jx.as_closed(p["body_jaxpr"]), bconsts + carry, kb + nk, n)
        new = [union(c, b) for c, b in zip(carry, body)]
        if pred is not None:
            new = _read_also(new, eqn.outvars, union_vector([pred], n))
        if all(same(a, b) for a, b in zip(new, carry)):
            return new
        carry = new
    return dense(eqn, ins, n)


def _scan(eqn, ins, known, n):
    """Carries to a fixed point; every ``x`` slice reads what any slice reads, and every
    ``y`` what the body's ``y`` reads at the fixed point."""
    p = eqn.params
    ncons, ncar = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:ncons], list(ins[ncons:ncons + ncar]), ins[ncons + ncar:]
    x_slices = [None if d is None else _slice_union(d, shape_of(v))
                for d, v in zip(xs, eqn.invars[ncons + ncar:])]
    kconst = known[:ncons]
    nk = [None] * (len(carry) + len(xs))
    body = jx.as_closed(p["jaxpr"])
    for _ in range(_MAX_FIXPOINT):
        res = analyse_jaxpr(body, consts + carry + x_slices, kconst + nk, n)
        new = [union(c, r) for c, r in zip(carry, res[:ncar])]
        if all(same(a, b) for a, b in zip(new, carry)):
            ys = [None if y is None else read(y, np.tile(np.arange(y.shape[0]), p["length"]))
                  for y in res[ncar:]]
            return new + ys
        carry = new
    return dense(eqn, ins, n)


def _slice_union(d, shape):
    """``∨`` over the leading axis: what element k of any slice reads."""
    per = size_of(shape[1:])
    return read(d, np.arange(size_of(shape)).reshape(shape[0], per).T)


def _dispatch(eqn, ins, known, n):
    """The rule of ``eqn``'s primitive: its family's module, or recursion into its jaxprs."""
    name = eqn.primitive.name
    if name == "select_n" and known[0] is not None and ins[0] is None:
        return movement_rules.select_known(eqn, ins, known, n)
    if name in movement_rules.ELEMENTWISE:
        return movement_rules.elementwise(eqn, ins, n)
    if name in movement_rules.PASS_THROUGH:
        return list(ins)
    if name in movement_rules.MOVEMENT:
        return movement_rules.movement(eqn, ins, n)
    if name in movement_rules.GATHERING:
        return movement_rules.gathering(eqn, ins, n)
    if name == "pad":
        return movement_rules.pad(eqn, ins, n)
    if name in movement_rules.INDEXED:
        return movement_rules.indexed(eqn, ins, known, n)
    if name in movement_rules.SCATTERS:
        return movement_rules.scatter(eqn, ins, known, n)
    if name in reduction_rules.REDUCTIONS or name == "reduce":
        return reduction_rules.reduction(eqn, ins, n)
    if name in reduction_rules.CUMULATIVE:
        return reduction_rules.cumulative(eqn, ins, n)
    if name in reduction_rules.WINDOWS:
        return reduction_rules.window(eqn, ins, n)
    if name == "sort":
        return reduction_rules.along_axis(eqn, ins, n, eqn.params["dimension"])
    if name == "top_k":
        return reduction_rules.along_axis(eqn, ins, n, eqn.params.get("axis", -1))
    if name == "dot_general":
        return reduction_rules.dot_general(eqn, ins, known, n)
    if name == "conv_general_dilated":
        return reduction_rules.conv(eqn, ins, known, n)
    if name == "cond":
        return _cond(eqn, ins, known, n)
    if name == "while":
        return _while(eqn, ins, known, n)
    if name == "scan":
        return _scan(eqn, ins, known, n)
    body = jx.call_body(eqn)
    if body is not None:
        return analyse_jaxpr(body, ins, known, n)
    return dense(eqn, ins, n)


def _rule(eqn, ins, known, n):
    """The primitive's rule, or the dense answer where the rule cannot be applied (it fails,
    or it yields dependency arrays of the wrong shape): never a guess."""
    try:
        outs = _dispatch(eqn, ins, known, n)
    except Exception:  # noqa: BLE001 - any failure of a precise rule means "dense"
        return dense(eqn, ins, n)
    if len(outs) != len(eqn.outvars) or any(
            d is not None and (not sp.issparse(d) or d.format != "csr" or d.dtype != bool
                               or d.shape != (size_of(shape_of(v)), n))
            for d, v in zip(outs, eqn.outvars)):
        return dense(eqn, ins, n)
    return outs


def _try_known(eqn, vals):
    if eqn.effects or "callback" in eqn.primitive.name:
        return None
    if any(size_of(shape_of(v)) > _KNOWN_SIZE_LIMIT for v in eqn.outvars):
        return None
    try:
        out = np_impl(eqn, vals)
        if out is not None:
            return out
        out = eqn.primitive.bind(*[jnp.asarray(v) for v in vals], **eqn.params)
    except Exception:  # noqa: BLE001 - knowing values is an optimisation only
        return None
    out = out if eqn.primitive.multiple_results else [out]
    if not all(jx.is_concrete(o) for o in out):
        return None
    return [np.asarray(o) for o in out]


def analyse_jaxpr(closed, in_deps: Sequence[Any], in_known: Sequence[Any], n: int) -> list[Any]:
    """Propagate dependency matrices through ``closed``; returns the outputs' ``D``s."""
    jaxpr = closed.jaxpr
    env: dict[Any, Any] = {}
    known: dict[Any, Any] = {}
    for var, c in zip(jaxpr.constvars, closed.consts):
        env[var] = None
        if jx.is_concrete(c) and np.size(c) <= _KNOWN_SIZE_LIMIT:
            known[var] = np.asarray(c)
    for var, d, k in zip(jaxpr.invars, in_deps, in_known):
        env[var] = d
        if k is not None:
            known[var] = k

    def read(atom):
        return None if jx.is_literal(atom) else env.get(atom)

    def read_known(atom):
        if jx.is_literal(atom):
            return np.asarray(jx.literal_value(atom))
        return known.get(atom)

    for eqn in jaxpr.eqns:
        ins = [read(a) for a in eqn.invars]
        kins = [read_known(a) for a in eqn.invars]
        if all(d is None for d in ins):
            outs = [None] * len(eqn.outvars)
            if all(k is not None for k in kins):
                kouts = _try_known(eqn, kins)
                if kouts is not None:
                    for v, k in zip(eqn.outvars, kouts):
                        known[v] = k
        else:
            outs = _rule(eqn, ins, kins, n)
        for v, d in zip(eqn.outvars, outs):
            if not isinstance(v, jx.DropVar):
                env[v] = d
    return [read(a) for a in jaxpr.outvars]


# --- the step -------------------------------------------------------------------------------

def _leaf_seeds(ir: StepIR) -> list[sp.csr_matrix]:
    return [seed(leaf.size, o, ir.n_state) for leaf, o in zip(ir.state, ir.offsets)]


def _stack_outputs(outs, ir: StepIR) -> sp.csr_matrix:
    n = ir.n_state
    if not ir.state:
        return sp.csr_matrix((0, 0), dtype=bool)
    return sp.vstack([as_flat(d, (leaf.size,), n) for d, leaf in zip(outs, ir.state)],
                     format="csr")


def _inexact(ir: StepIR) -> list[int]:
    return [i for i, leaf in enumerate(ir.state) if is_inexact(leaf.dtype)]


def _on_inexact(ir: StepIR, h, x, p, which):
    """The step as a function of the inexact state leaves ``which`` (the others held)."""
    def f(*hf):
        hh = list(h)
        for i, v in zip(which, hf):
            hh[i] = v
        return ir.flat_call(hh, x, p)
    return f, tuple(h[i] for i in which)


def _avals(ir: StepIR, extra):
    return [jax.ShapeDtypeStruct(s.shape, s.dtype)
            for s in ir.state + ir.inputs + ir.params + tuple(extra)]


def _split(ir: StepIR, leaves):
    nh, nx, npar = len(ir.state), len(ir.inputs), len(ir.params)
    return (leaves[:nh], leaves[nh:nh + nx], leaves[nh + nx:nh + nx + npar],
            leaves[nh + nx + npar:])


def _tangent_pattern(ir: StepIR, which, seeds, free, n) -> sp.csr_matrix:
    """What the JVP w.r.t. the ``which`` state tangents reads."""
    def jvp_flat(*leaves):
        h, x, p, t = _split(ir, leaves)
        f, primals = _on_inexact(ir, h, x, p, which)
        return jax.jvp(f, primals, tuple(t))[1]

    tj = jax.make_jaxpr(jvp_flat)(*_avals(ir, [ir.state[i] for i in which]))
    ins = [None] * len(seeds) + free + [seeds[i] for i in which]
    return _stack_outputs(analyse_jaxpr(tj, ins, [None] * len(ins), n), ir)


def _cotangent_pattern(ir: StepIR, which, seeds, free, n) -> sp.csr_matrix:
    """What the VJP reads, transposed: cotangent element ``j`` of ``h`` reading cotangent
    element ``i`` of ``h'`` is the entry ``(i, j)`` of the Jacobian the VJP applies."""
    def vjp_flat(*leaves):
        h, x, p, ct = _split(ir, leaves)
        f, primals = _on_inexact(ir, h, x, p, which)
        _, pull = jax.vjp(lambda *hf: [f(*hf)[i] for i in which], *primals)
        return pull(list(ct))

    vj = jax.make_jaxpr(vjp_flat)(*_avals(ir, [ir.state[i] for i in which]))
    ins = [None] * len(seeds) + free + [seeds[i] for i in which]
    outs = analyse_jaxpr(vj, ins, [None] * len(ins), n)
    rows = [None] * len(ir.state)
    for i, d in zip(which, outs):
        rows[i] = d
    return _stack_outputs(rows, ir).T.tocsr()


def jacobian_sparsity(ir: StepIR) -> Sparsity:
    """The sound sparsity pattern of ``∂f/∂h`` (see the module docstring)."""
    n = ir.n_state
    seeds = _leaf_seeds(ir)
    free = [None] * (len(ir.inputs) + len(ir.params))
    which = _inexact(ir)
    try:
        with jax.ensure_compile_time_eval():
            primal = _stack_outputs(
                analyse_jaxpr(ir.jaxpr, seeds + free, [None] * (len(seeds) + len(free)), n), ir)
            tangent, has_jvp = None, True
            for derivative in (_tangent_pattern, _cotangent_pattern) if which else ():
                try:
                    tangent = derivative(ir, which, seeds, free, n)
                    break
                except TooDense:
                    raise
                except Exception:  # noqa: BLE001 - e.g. a custom_vjp function has no JVP
                    has_jvp = has_jvp and derivative is not _tangent_pattern
                    continue
    except TooDense as e:
        raise PlanError(
            f"the dependency pass cannot follow `{e.primitive}` in the step, so it takes each "
            f"of its {e.rows} output elements to read all {e.reads} state elements its inputs "
            f"read: a pattern too large to hold for a state of {n} elements. Express that "
            f"part of the step in jax.numpy/lax primitives the pass knows (callbacks and "
            f"custom kernels are opaque to it), or split the state.") from None
    pattern = primal if tangent is None else primal + tangent
    return Sparsity(pattern=pattern, primal=primal, tangent=tangent, has_jvp=has_jvp)


__all__ = ["Sparsity", "jacobian_sparsity", "analyse_jaxpr"]
