r"""Dependency pass: the Jacobian sparsity pattern of a step w.r.t. the state.

For a step ``h' = f(h, x, p)`` with ``n`` state elements, the pattern is the boolean
``n x n`` matrix ``S`` with ``S[i, j] = True`` whenever ``∂h'_i/∂h_j`` may be nonzero for
*some* inputs and params.  It is computed by abstract interpretation of the step's jaxpr:
every value ``v`` of shape ``s`` carries a boolean array ``D_v`` of shape ``s + (n,)``,

    D_v[k, j] = True  ⇐  element k of v may depend on state element j,

seeded with ``D_{h} = I`` and propagated equation by equation:

* elementwise primitives: ``D_out = ∨ D_in`` (scalars broadcast);
* data movement (reshape, transpose, slice, pad, concatenate, gather, dynamic slices with
  indices known at trace time): the primitive itself is applied to an array of element
  indices, which says where every output element comes from;
* reductions and cumulative ops: ``∨`` over the reduced axes or prefixes;
* ``dot_general``: ``D_out[b, i, j] = ∨_c D_lhs[b, i, c] ∨ D_rhs[b, c, j]`` (a state-free
  operand is assumed dense unless its value is known, when its zero pattern is used);
* calls, ``cond``, ``while`` and ``scan``: recursion into the sub-jaxprs, loops to a
  fixed point of their carries;
* anything else: every output element depends on every state element any input reads.

The result may over-approximate but never misses a nonzero: unknown primitives fall to
the last rule.  A custom JVP rule can make the solver's Jacobian differ from the primal
function's (straight-through estimators), so the pattern is the union of the primal
analysis and the same analysis of the step's JVP w.r.t. the state tangents.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax_adapter as jx
from .._dtypes import is_inexact
from ._trace import StepIR

Deps = "np.ndarray | None"

_KNOWN_SIZE_LIMIT = 1 << 16

ELEMENTWISE = frozenset("""
    abs acos acosh add add_any and asin asinh atan atan2 atanh bessel_i0e bessel_i1e cbrt
    ceil clamp complex conj convert_element_type copy copy_p cos cosh digamma div eq erf
    erf_inv erfc exp exp2 expm1 floor ge gt igamma igamma_grad_a igammac imag integer_pow
    is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or polygamma
    population_count pow real reduce_precision regularized_incomplete_beta rem round rsqrt
    select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square
    stop_gradient sub tan tanh xor zeta random_gamma_grad clz optimization_barrier
""".split())

MOVEMENT = frozenset("reshape squeeze expand_dims broadcast_in_dim transpose slice rev".split())
REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin"
    .split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
SCATTERS = frozenset({"scatter", "scatter-add", "scatter_add", "scatter-mul", "scatter_mul",
                      "scatter-min", "scatter_min", "scatter-max", "scatter_max",
                      "scatter-sub", "scatter_sub"})


@dataclasses.dataclass(frozen=True)
class Sparsity:
    """The state Jacobian pattern: ``pattern[i, j]`` — new element i may read old element j."""

    pattern: np.ndarray
    primal: np.ndarray  # what the values read
    tangent: np.ndarray | None  # what the JVP reads (None when f has no JVP)

    @property
    def nnz(self) -> int:
        return int(self.pattern.sum())


def _shape(atom) -> tuple[int, ...]:
    return tuple(atom.aval.shape)


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _union_vector(ins: Sequence[Any], n: int) -> np.ndarray:
    u = np.zeros(n, bool)
    for d in ins:
        if d is not None:
            u |= d.reshape(-1, n).any(axis=0)
    return u


def _broadcast(vec: np.ndarray, shape) -> np.ndarray:
    return np.broadcast_to(vec, tuple(shape) + vec.shape[-1:]).copy()


def _full(eqn, ins, n):
    u = _union_vector(ins, n)
    return [_broadcast(u, _shape(v)) if u.any() else None for v in eqn.outvars]


def _elementwise(eqn, ins, n):
    shape = _shape(eqn.outvars[0])
    out = None
    for atom, d in zip(eqn.invars, ins):
        if d is None:
            continue
        s = d.shape[:-1]
        if s == shape:
            term = d
        elif len(s) <= len(shape) and all(a in (1, b) for a, b in
                                           zip(s[::-1], shape[::-1])):
            # scalar or size-1 axes broadcast (``add f32[3,2] f32[3,1]``): each output
            # element reads the one input element it was broadcast from
            term = np.broadcast_to(d.reshape((1,) * (len(shape) - len(s)) + d.shape),
                                   shape + (n,))
        else:
            return _full(eqn, ins, n)
        out = term.copy() if out is None else (out | term)
    return [out for _ in eqn.outvars]


def _gather_rows(d_flat: np.ndarray, idx: np.ndarray, n: int, out_shape) -> np.ndarray:
    valid = (idx >= 0) & (idx < d_flat.shape[0])
    out = np.zeros(idx.shape + (n,), bool)
    out[valid] = d_flat[idx[valid]]
    return out.reshape(tuple(out_shape) + (n,))


def _iota(shape, offset=0):
    return np.arange(_size(shape), dtype=np.int32).reshape(shape) + np.int32(offset)


def _np_broadcast_in_dim(x, shape, broadcast_dimensions, **_):
    expanded = np.reshape(x, [x.shape[broadcast_dimensions.index(i)]
                              if i in broadcast_dimensions else 1 for i in range(len(shape))])
    return np.broadcast_to(expanded, shape)


def _np_pad(x, pv, padding_config):
    lo_hi = []
    for size, (lo, hi, interior) in zip(x.shape, padding_config):
        lo_hi.append((lo, hi, interior, size))
    full_shape = [max(lo, 0) + max(hi, 0) + (s + (s - 1) * it if s else 0)
                  for lo, hi, it, s in lo_hi]
    out = np.full(full_shape, pv, dtype=x.dtype)
    index = tuple(slice(max(lo, 0), max(lo, 0) + (s + (s - 1) * it if s else 0), it + 1)
                  for lo, hi, it, s in lo_hi)
    out[index] = x
    crop = tuple(slice(-min(lo, 0), out.shape[d] - (-min(hi, 0)))
                 for d, (lo, hi, it, s) in enumerate(lo_hi))
    return out[crop]


def _np_iota(dtype, shape, dimension, **_):
    ar = np.arange(shape[dimension], dtype=np.dtype(dtype))
    return np.broadcast_to(ar.reshape([-1 if i == dimension else 1 for i in range(len(shape))]),
                           shape)


_NP_UNARY = {
    "reshape": lambda x, new_sizes, dimensions=None, **_: np.reshape(x, new_sizes),
    "squeeze": lambda x, dimensions, **_: np.squeeze(x, axis=tuple(dimensions)),
    "expand_dims": lambda x, dimensions, **_: np.expand_dims(x, tuple(dimensions)),
    "broadcast_in_dim": lambda x, shape, broadcast_dimensions, **_: _np_broadcast_in_dim(
        x, tuple(shape), tuple(broadcast_dimensions)),
    "transpose": lambda x, permutation, **_: np.transpose(x, permutation),
    "slice": lambda x, start_indices, limit_indices, strides=None, **_: x[tuple(
        slice(s, l, st) for s, l, st in zip(start_indices, limit_indices,
                                            strides or (1,) * len(start_indices)))],
    "rev": lambda x, dimensions, **_: np.flip(x, tuple(dimensions)),
    "convert_element_type": lambda x, new_dtype, **_: x.astype(np.dtype(new_dtype)),
    "neg": lambda x, **_: -x,
    "not": lambda x, **_: ~x if x.dtype != bool else np.logical_not(x),
}
_NP_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "lt": np.less,
              "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal,
              "ne": np.not_equal, "max": np.maximum, "min": np.minimum, "and": np.bitwise_and,
              "or": np.bitwise_or}


def _np_impl(eqn, vals):
    """NumPy evaluation of the cheap primitives (no XLA compilation); None if not covered."""
    name, params = eqn.primitive.name, eqn.params
    if name in _NP_UNARY and len(vals) == 1:
        return [np.asarray(_NP_UNARY[name](np.asarray(vals[0]), **params))]
    if name in _NP_BINARY and len(vals) == 2:
        out = _NP_BINARY[name](np.asarray(vals[0]), np.asarray(vals[1]))
        return [np.asarray(out).astype(np.dtype(eqn.outvars[0].aval.dtype))]
    if name == "concatenate":
        return [np.concatenate([np.asarray(v) for v in vals], axis=params["dimension"])]
    if name == "stack":
        return [np.stack([np.asarray(v) for v in vals], axis=params["axis"])]
    if name == "pad":
        return [_np_pad(np.asarray(vals[0]), np.asarray(vals[1]), params["padding_config"])]
    if name == "select_n":
        which = np.asarray(vals[0]).astype(np.int64)
        return [np.choose(which, [np.broadcast_to(np.asarray(v), which.shape) for v in vals[1:]])
                if which.shape else np.asarray(vals[1:][int(which)])]
    if name == "iota" and not vals:
        return [_np_iota(**params)]
    return None


def _bind_indices(eqn, operands) -> list[np.ndarray]:
    try:
        out = _np_impl(eqn, [np.asarray(o) for o in operands])
    except Exception:  # noqa: BLE001 - fall back to JAX's own implementation
        out = None
    if out is not None:
        return out
    out = eqn.primitive.bind(*[jnp.asarray(o) for o in operands], **eqn.params)
    if not eqn.primitive.multiple_results:
        out = [out]
    return [np.asarray(o) for o in out]


def _as_flat(d, shape, n):
    return np.zeros((_size(shape), n), bool) if d is None else d.reshape(-1, n)


def _movement(eqn, ins, known, n):
    """Data-moving primitives: apply the primitive to element indices."""
    name = eqn.primitive.name
    try:
        if name in MOVEMENT or name == "split":
            (d,) = ins[:1]
            idxs = _bind_indices(eqn, [_iota(_shape(eqn.invars[0]))])
            flat = _as_flat(d, _shape(eqn.invars[0]), n)
            return [_gather_rows(flat, i, n, _shape(v)) for i, v in zip(idxs, eqn.outvars)]
        if name in ("concatenate", "stack"):
            offs = np.cumsum([0] + [_size(_shape(a)) for a in eqn.invars])
            idx = _bind_indices(eqn, [_iota(_shape(a), o) for a, o in zip(eqn.invars, offs)])[0]
            flat = np.concatenate([_as_flat(d, _shape(a), n) for a, d in zip(eqn.invars, ins)])
            return [_gather_rows(flat, idx, n, _shape(eqn.outvars[0]))]
        if name == "pad":
            idx = _bind_indices(eqn, [_iota(_shape(eqn.invars[0])), np.int32(-1)])[0]
            out = _gather_rows(_as_flat(ins[0], _shape(eqn.invars[0]), n), idx, n,
                               _shape(eqn.outvars[0]))
            if ins[1] is not None:
                out[idx.reshape(out.shape[:-1]) < 0] |= ins[1].reshape(n)
            return [out]
        if name in SCATTERS and known[1] is not None and len(eqn.invars) == 3:
            # scatter at known indices: where every update element lands, by the index
            # trick on a replace-scatter with the same dimension numbers; valid only when
            # every update lands in a place of its own (no duplicate indices)
            op_shape, upd_shape = _shape(eqn.invars[0]), _shape(eqn.invars[2])
            size = _size(op_shape)
            params = {k: eqn.params[k] for k in ("dimension_numbers", "indices_are_sorted",
                                                 "unique_indices", "mode")}
            idx = np.asarray(jax.lax.scatter_p.bind(
                jnp.asarray(_iota(op_shape)), jnp.asarray(known[1]),
                jnp.asarray(_iota(upd_shape, size)), update_jaxpr=None, update_consts=(),
                **params))
            landed = np.unique(idx[idx >= size])
            if len(landed) != _size(upd_shape):
                return _full(eqn, ins, n)
            op_flat = _as_flat(ins[0], op_shape, n)
            flat = np.concatenate([op_flat, _as_flat(ins[2], upd_shape, n)])
            out = _gather_rows(flat, idx, n, _shape(eqn.outvars[0]))
            if name != "scatter":  # combining scatters keep the operand's value too
                out |= op_flat.reshape(out.shape)
            return [out]
        if name in ("dynamic_slice", "gather", "dynamic_update_slice"):
            n_data = 2 if name == "dynamic_update_slice" else 1
            index_vals = known[n_data:]
            if any(v is None for v in index_vals):
                return _full(eqn, ins, n)
            offs = np.cumsum([0] + [_size(_shape(a)) for a in eqn.invars[:n_data]])
            data = [_iota(_shape(a), o) for a, o in zip(eqn.invars[:n_data], offs)]
            idx = _bind_indices(eqn, data + list(index_vals))[0]
            flat = np.concatenate([_as_flat(d, _shape(a), n)
                                   for a, d in zip(eqn.invars[:n_data], ins[:n_data])])
            out = _gather_rows(flat, idx, n, _shape(eqn.outvars[0]))
            return [out]
    except Exception:  # noqa: BLE001 - an index trick we cannot apply: be conservative
        return _full(eqn, ins, n)
    return _full(eqn, ins, n)


def _reduction(eqn, ins, n):
    axes = tuple(eqn.params["axes"])
    d = ins[0]
    return [d.any(axis=axes) if d is not None else None]


def _cumulative(eqn, ins, n):
    axis, reverse = eqn.params["axis"], eqn.params.get("reverse", False)
    d = ins[0]
    if reverse:
        d = np.flip(d, axis)
    out = np.logical_or.accumulate(d, axis=axis)
    return [np.flip(out, axis) if reverse else out]


def _sort(eqn, ins, n):
    dim = eqn.params["dimension"]
    shape = _shape(eqn.invars[0])
    u = None
    for d in ins:
        if d is not None:
            u = d if u is None else (u | d)
    u = np.broadcast_to(u.any(axis=dim, keepdims=True), shape + (n,)).copy()
    return [u for _ in eqn.outvars]


def _dot_general(eqn, ins, known, n):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    ls, rs = _shape(lhs), _shape(rhs)
    lf = [i for i in range(len(ls)) if i not in lc and i not in lb]
    rf = [i for i in range(len(rs)) if i not in rc and i not in rb]
    out_shape = _shape(eqn.outvars[0])
    out = np.zeros(out_shape + (n,), bool)
    nb, nlf, nrf = len(lb), len(lf), len(rf)
    for side in (0, 1):
        d = ins[side]
        if d is None:
            continue
        other_known = known[1 - side]
        if side == 0:
            d_t = np.transpose(d, list(lb) + lf + list(lc) + [len(ls)])
            contr = tuple(range(nb + nlf, nb + nlf + len(lc)))
            if other_known is not None:
                mask = np.transpose(np.asarray(other_known) != 0, list(rb) + list(rc) + rf)
                # [b, lf, c, n] x [b, c, rf] -> [b, lf, rf, n]
                d_f = d_t.reshape(d_t.shape[:nb + nlf] + (-1, n)).astype(np.float32)
                m_f = mask.reshape(mask.shape[:nb] + (-1,) + mask.shape[nb + len(rc):])
                m_f = m_f.reshape(m_f.shape[:nb + 1] + (-1,)).astype(np.float32)
                r = np.einsum("...lcn,...cr->...lrn",
                              d_f.reshape(d_f.shape[:nb] + (-1,) + d_f.shape[-2:]), m_f) > 0
                term = r.reshape(out_shape + (n,))
            else:
                red = d_t.any(axis=contr)  # [b, lf, n]
                term = np.broadcast_to(
                    red.reshape(red.shape[:nb + nlf] + (1,) * nrf + (n,)), out_shape + (n,))
        else:
            d_t = np.transpose(d, list(rb) + list(rc) + rf + [len(rs)])
            contr = tuple(range(nb, nb + len(rc)))
            if other_known is not None:
                mask = np.transpose(np.asarray(other_known) != 0, list(lb) + lf + list(lc))
                m_f = mask.reshape(mask.shape[:nb] + (-1,) + (_size(mask.shape[nb + nlf:]),))
                d_f = d_t.reshape(d_t.shape[:nb] + (_size(d_t.shape[nb:nb + len(rc)]), -1, n))
                r = np.einsum("...lc,...crn->...lrn", m_f.astype(np.float32),
                              d_f.astype(np.float32)) > 0
                term = r.reshape(out_shape + (n,))
            else:
                red = d_t.any(axis=contr)  # [b, rf, n]
                term = np.broadcast_to(
                    red.reshape(red.shape[:nb] + (1,) * nlf + red.shape[nb:]), out_shape + (n,))
        out |= term
    return [out]


def _call(eqn, ins, known, n):
    for key in CALL_PARAMS:
        sub = eqn.params.get(key)
        if sub is not None and jx.is_jaxpr(sub):
            closed = jx.as_closed(sub)
            if len(closed.jaxpr.invars) == len(ins) and \
                    len(closed.jaxpr.outvars) == len(eqn.outvars):
                return analyse_jaxpr(closed, ins, known, n)
    return None


def _cond(eqn, ins, known, n):
    branches = eqn.params["branches"]
    outs = None
    for br in branches:
        res = analyse_jaxpr(jx.as_closed(br), ins[1:], known[1:], n)
        outs = res if outs is None else [_or(a, b) for a, b in zip(outs, res)]
    if ins[0] is not None:
        u = ins[0].reshape(-1, n).any(axis=0)
        outs = [_or(o, _broadcast(u, _shape(v))) for o, v in zip(outs, eqn.outvars)]
    return outs


def _or(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a | b


def _same(a, b) -> bool:
    """Equal dependency arrays, where None means "depends on nothing"."""
    if a is None or b is None:
        other = b if a is None else a
        return other is None or not other.any()
    return bool(np.array_equal(a, b))


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
        new = [_or(c, b) for c, b in zip(carry, body)]
        if pred is not None:
            u = pred.reshape(-1, n).any(axis=0)
            new = [_or(c, _broadcast(u, _shape(v))) for c, v in zip(new, eqn.outvars)]
        if all(_same(a, b) for a, b in zip(new, carry)):
            return new
        carry = new
    return _full(eqn, ins, n)


def _scan(eqn, ins, known, n):
    p = eqn.params
    ncons, ncar = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:ncons], list(ins[ncons:ncons + ncar]), ins[ncons + ncar:]
    x_slices = [None if d is None else d.any(axis=0) for d in xs]
    kconst = known[:ncons]
    nk = [None] * (len(carry) + len(xs))
    body = jx.as_closed(p["jaxpr"])
    for _ in range(_MAX_FIXPOINT):
        res = analyse_jaxpr(body, consts + carry + x_slices, kconst + nk, n)
        new = [_or(c, r) for c, r in zip(carry, res[:ncar])]
        if all(_same(a, b) for a, b in zip(new, carry)):
            ys = [None if y is None else
                  np.broadcast_to(y, (p["length"],) + y.shape).copy() for y in res[ncar:]]
            return new + ys
        carry = new
    return _full(eqn, ins, n)


def _select_known(eqn, ins, known, n):
    """``select_n`` with a predicate known at trace time reads only the chosen case."""
    which = np.broadcast_to(np.asarray(known[0]).astype(np.int64), _shape(eqn.outvars[0]))
    out = np.zeros(_shape(eqn.outvars[0]) + (n,), bool)
    for case, d in enumerate(ins[1:]):
        if d is not None:
            term = np.broadcast_to(d, out.shape) if d.shape[:-1] == () else d
            out |= term & (which == case)[..., None]
    return [out]


def _rule(eqn, ins, known, n):
    name = eqn.primitive.name
    if name == "select_n" and known[0] is not None and ins[0] is None:
        return _select_known(eqn, ins, known, n)
    if name in ELEMENTWISE:
        return _elementwise(eqn, ins, n)
    if name in MOVEMENT or name in ("concatenate", "stack", "pad", "dynamic_slice", "gather",
                                    "dynamic_update_slice", "split") or name in SCATTERS:
        return _movement(eqn, ins, known, n)
    if name in REDUCTIONS:
        return _reduction(eqn, ins, n)
    if name in CUMULATIVE:
        return _cumulative(eqn, ins, n)
    if name == "sort":
        return _sort(eqn, ins, n)
    if name == "dot_general":
        return _dot_general(eqn, ins, known, n)
    if name == "cond":
        return _cond(eqn, ins, known, n)
    if name == "while":
        return _while(eqn, ins, known, n)
    if name == "scan":
        return _scan(eqn, ins, known, n)
    out = _call(eqn, ins, known, n)
    if out is not None:
        return out
    return _full(eqn, ins, n)


def _try_known(eqn, vals):
    if eqn.effects or "callback" in eqn.primitive.name:
        return None
    if any(_size(_shape(v)) > _KNOWN_SIZE_LIMIT for v in eqn.outvars):
        return None
    try:
        out = _np_impl(eqn, vals)
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
    """Propagate dependency arrays through ``closed``; returns the outputs' ``D``s."""
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


def _leaf_seeds(ir: StepIR) -> list[np.ndarray]:
    n = ir.n_state
    eye = np.eye(n, dtype=bool)
    return [eye[o:o + leaf.size].reshape(leaf.shape + (n,))
            for leaf, o in zip(ir.state, ir.offsets)]


def _stack_outputs(outs, ir: StepIR) -> np.ndarray:
    n = ir.n_state
    return np.concatenate([np.zeros((leaf.size, n), bool) if d is None else d.reshape(-1, n)
                           for d, leaf in zip(outs, ir.state)]) if ir.state else \
        np.zeros((0, 0), bool)


def _tangent_jaxpr(ir: StepIR):
    nh, nx = len(ir.state), len(ir.inputs)

    def jvp_flat(*leaves):
        h, x, p, t = (leaves[:nh], leaves[nh:nh + nx], leaves[nh + nx:-nh], leaves[-nh:])
        return jax.jvp(lambda *hh: ir.flat_call(hh, x, p), tuple(h), tuple(t))[1]

    avals = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in ir.state + ir.inputs + ir.params]
    avals += [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in ir.state]
    return jax.make_jaxpr(jvp_flat)(*avals)


def jacobian_sparsity(ir: StepIR) -> Sparsity:
    """The sound sparsity pattern of ``∂f/∂h`` (see the module docstring)."""
    n = ir.n_state
    seeds = _leaf_seeds(ir)
    free = [None] * (len(ir.inputs) + len(ir.params))
    with jax.ensure_compile_time_eval():
        primal = _stack_outputs(
            analyse_jaxpr(ir.jaxpr, seeds + free, [None] * (len(seeds) + len(free)), n), ir)
        tangent = None
        if all(is_inexact(leaf.dtype) for leaf in ir.state):
            try:
                tj = _tangent_jaxpr(ir)
            except Exception:  # noqa: BLE001 - e.g. a custom_vjp function has no JVP
                tj = None
            if tj is not None:
                ins = [None] * len(seeds) + free + seeds
                tangent = _stack_outputs(analyse_jaxpr(tj, ins, [None] * len(ins), n), ir)
    pattern = primal if tangent is None else (primal | tangent)
    return Sparsity(pattern=pattern, primal=primal, tangent=tangent)


__all__ = ["Sparsity", "jacobian_sparsity", "analyse_jaxpr"]
