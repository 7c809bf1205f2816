r"""Dependency pass: the Jacobian sparsity pattern of a step w.r.t. the state.

For a step ``h' = f(h, x, p)`` with ``n`` state elements, the pattern is the boolean
``n x n`` matrix ``S`` with ``S[i, j] = True`` whenever ``∂h'_i/∂h_j`` may be nonzero for
*some* inputs and params.  It is computed by abstract interpretation of the step's jaxpr:
every value ``v`` of shape ``s`` carries a boolean array ``D_v`` of shape ``s + (n,)``,

    D_v[k, j] = True  ⇐  element k of v may depend on state element j,

seeded with ``D_{h} = I`` and propagated equation by equation.  Writing ``U(v) = ∨_k D_v[k]``
for everything any element of ``v`` reads:

* elementwise primitives: ``D_out[k] = ∨_v D_v[k]`` (scalars and size-1 axes broadcast);
  value identities (``optimization_barrier``, sharding constraints): ``D_out = D_in``;
* data movement (reshape with its ``dimensions`` permutation, transpose, slice, rev, pad,
  concatenate, stack, split, unstack, tile, broadcast; gather, dynamic slices and dynamic
  updates at indices known at trace time): the primitive itself is applied to an array of
  element indices
  (``-1`` for a padding or fill value), which says where every output element comes from;
  dynamic slices and updates at unknown (clamped) starts: ``∨`` over every start;
* scatters at known indices: ``t(u)``, the operand position an update element ``u`` lands
  in, is the transpose of a scatter-add applied to the operand's indices (a gather with
  the scatter's own dimension numbers and mode); then
  ``D_out[k] = D_op[k] ∨ ∨_{t(u)=k} D_upd[u]`` for combining scatters (add, mul, min, max,
  apply) and ``∨_{t(u)=k} D_upd[u]`` (or ``D_op[k]`` where nothing lands) for a replace;
* reductions over ``axes`` (``reduce_*``, ``argmax``/``argmin``, the generic ``reduce``
  with any reducer): ``∨`` over the reduced axes of every operand, ``∨ U(init)``;
  cumulative ops: ``∨`` over prefixes (suffixes when ``reverse``); ``sort``, ``top_k``:
  ``∨`` along the sorted axis of every operand;
* windows (``reduce_window*``, ``select_and_gather_add``): ``D_out[o] = ∨_{w} D[src(o, w)]``
  over the window's sources in the padded, base- and window-dilated operand;
* ``dot_general``: ``D_out[b, i, j] = ∨_c D_lhs[b, i, c] ∨ D_rhs[b, c, j]`` (a state-free
  operand is taken dense unless its value is known, when its zero pattern is used), and
  ``conv_general_dilated`` likewise for the input, computed by the convolution itself on
  the 0/1 masks with the ``n`` state columns folded into the batch; a state-dependent
  kernel gives every output ``U(kernel)``;
* calls (``jit``, ``closed_call``, ``checkpoint``, ``custom_jvp_call``,
  ``custom_vjp_call``) whose body has the call's own shapes: recursion; ``cond``/``switch``:
  the union of the branches (the known branch alone when the index is known), ``∨ U(index)``;
  ``while`` and ``scan``: a fixed point of the carries (``∨ U(pred)`` for ``while``);
* anything else — and any rule that fails or yields the wrong shape — the conservative
  ``D_out[k] = ∨_v U(v)``: every output element reads everything any input reads.

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

from .. import _jax_adapter as jx
from .._dtypes import is_inexact
from ._trace import StepIR

_KNOWN_SIZE_LIMIT = 1 << 16
_WORK_LIMIT = 1 << 27  # booleans one rule may materialise before it gives up (dense answer)

ELEMENTWISE = frozenset("""
    abs acos acosh add add_any and asin asinh atan atan2 atanh bessel_i0e bessel_i1e cbrt
    ceil clamp complex conj convert_element_type copy copy_p cos cosh digamma div eq erf
    erf_inv erfc exp exp2 expm1 floor ge gt igamma igamma_grad_a igammac imag integer_pow
    is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or polygamma
    population_count pow real reduce_precision regularized_incomplete_beta rem round rsqrt
    select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square
    stop_gradient sub tan tanh xor zeta random_gamma_grad clz reciprocal
""".split())

MOVEMENT = frozenset(
    "reshape squeeze expand_dims broadcast_in_dim transpose slice rev tile split unstack".split())
GATHERING = frozenset({"concatenate", "stack"})  # several operands into one result
# identities on values (sharding and scheduling hints): each result is its operand
PASS_THROUGH = frozenset({"optimization_barrier", "pvary", "sharding_constraint", "reshard",
                          "layout_constraint", "with_memory_space_constraint"})
INDEXED = frozenset({"dynamic_slice", "dynamic_update_slice", "gather"})
REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin"
    .split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
WINDOWS = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min",
                     "reduce_window", "select_and_gather_add"})
SCATTERS = frozenset({"scatter", "scatter-add", "scatter-sub", "scatter-mul", "scatter-min",
                      "scatter-max"})
call_body = jx.call_body   # re-exported: the other passes read calls through this module


class _TooBig(Exception):
    """A precise rule would materialise too much; the caller falls back to the dense rule."""


@dataclasses.dataclass(frozen=True)
class Sparsity:
    """The state Jacobian pattern: ``pattern[i, j]`` — new element i may read old element j."""

    pattern: np.ndarray
    primal: np.ndarray  # what the values read
    tangent: np.ndarray | None  # what the derivative (JVP, else VJP) reads; None: neither
    has_jvp: bool = True  # forward-mode autodiff goes through the step (w.r.t. the state)

    @property
    def nnz(self) -> int:
        return int(self.pattern.sum())


def _shape(atom) -> tuple[int, ...]:
    return tuple(atom.aval.shape)


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _budget(*counts: int) -> None:
    if _size(counts) > _WORK_LIMIT:
        raise _TooBig


def _union_vector(ins: Sequence[Any], n: int) -> np.ndarray:
    u = np.zeros(n, bool)
    for d in ins:
        if d is not None:
            u |= d.reshape(-1, n).any(axis=0)
    return u


def _broadcast(vec: np.ndarray, shape) -> np.ndarray:
    return np.broadcast_to(vec, tuple(shape) + vec.shape[-1:]).copy()


def _or(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a | b


def _full(eqn, ins, n):
    """The conservative answer: every output element reads everything any input reads."""
    u = _union_vector(ins, n)
    return [_broadcast(u, _shape(v)) if u.any() else None for v in eqn.outvars]


def _as_flat(d, shape, n):
    return np.zeros((_size(shape), n), bool) if d is None else d.reshape(-1, n)


def _gather_rows(d_flat: np.ndarray, idx: np.ndarray, n: int, out_shape) -> np.ndarray:
    """``out[k] = d_flat[idx[k]]``, nothing where ``idx`` is out of range (padding, fill)."""
    idx = np.asarray(idx)
    _budget(idx.size, n)
    valid = (idx >= 0) & (idx < d_flat.shape[0])
    out = np.zeros(idx.shape + (n,), bool)
    out[valid] = d_flat[idx[valid]]
    return out.reshape(tuple(out_shape) + (n,))


def _iota(shape, offset=0):
    return np.arange(_size(shape), dtype=np.int32).reshape(shape) + np.int32(offset)


# --- NumPy versions of the cheap primitives (index tricks and known values, no XLA) ---------

def _np_reshape(x, new_sizes, dimensions=None, **_):
    # lax.reshape reads the operand in the order ``dimensions`` (what order="F" emits)
    return np.reshape(x if dimensions is None else np.transpose(x, dimensions), new_sizes)


def _np_broadcast_in_dim(x, shape, broadcast_dimensions, **_):
    shape, dims = tuple(shape), tuple(broadcast_dimensions)
    expanded = np.reshape(x, [x.shape[dims.index(i)] if i in dims else 1
                              for i in range(len(shape))])
    return np.broadcast_to(expanded, shape)


def _np_pad(x, pv, padding_config):
    """``lax.pad``: low/high padding (negative crops) and interior padding per axis."""
    inner = [s + (s - 1) * it if s else 0 for s, (_, _, it) in zip(x.shape, padding_config)]
    full_shape = [max(lo, 0) + max(hi, 0) + m for m, (lo, hi, _) in zip(inner, padding_config)]
    out = np.full(full_shape, pv, dtype=x.dtype)
    out[tuple(slice(max(lo, 0), max(lo, 0) + m, it + 1)
              for m, (lo, hi, it) in zip(inner, padding_config))] = x
    return out[tuple(slice(-min(lo, 0), out.shape[d] + min(hi, 0))
                     for d, (lo, hi, _) in enumerate(padding_config))]


def _np_iota(dtype, shape, dimension, **_):
    ar = np.arange(shape[dimension], dtype=np.dtype(dtype))
    return np.broadcast_to(ar.reshape([-1 if i == dimension else 1 for i in range(len(shape))]),
                           shape)


def _np_convert(x, new_dtype, **_):
    new = np.dtype(new_dtype)
    if x.dtype.kind in "fc" and new.kind in "iu":
        raise TypeError("float to integer: NaN and overflow differ from XLA")
    return x.astype(new)


_NP_UNARY = {
    "reshape": _np_reshape,
    "squeeze": lambda x, dimensions, **_: np.squeeze(x, axis=tuple(dimensions)),
    "expand_dims": lambda x, dimensions, **_: np.expand_dims(x, tuple(dimensions)),
    "broadcast_in_dim": _np_broadcast_in_dim,
    "transpose": lambda x, permutation, **_: np.transpose(x, permutation),
    "slice": lambda x, start_indices, limit_indices, strides=None, **_: x[tuple(
        slice(s, l, st) for s, l, st in zip(start_indices, limit_indices,
                                            strides or (1,) * len(start_indices)))],
    "rev": lambda x, dimensions, **_: np.flip(x, tuple(dimensions)),
    "tile": lambda x, reps, **_: np.tile(x, tuple(reps)),
    "convert_element_type": _np_convert,
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


def bind_indices(eqn, operands, **overrides) -> list[np.ndarray]:
    """``eqn``'s primitive applied to index arrays (NumPy where covered, else JAX's own)."""
    if not overrides:
        try:
            out = _np_impl(eqn, [np.asarray(o) for o in operands])
        except Exception:  # noqa: BLE001 - fall back to JAX's own implementation
            out = None
        if out is not None:
            return out
    out = eqn.primitive.bind(*[jnp.asarray(o) for o in operands], **{**eqn.params, **overrides})
    if not eqn.primitive.multiple_results:
        out = [out]
    return [np.asarray(o) for o in out]


# --- rules --------------------------------------------------------------------------------

def _elementwise(eqn, ins, n):
    shape = _shape(eqn.outvars[0])
    out = np.zeros(shape + (n,), bool)
    for d in ins:
        if d is None:
            continue
        s = d.shape[:-1]
        if len(s) > len(shape) or not all(a in (1, b) for a, b in zip(s[::-1], shape[::-1])):
            return _full(eqn, ins, n)
        # scalar or size-1 axes broadcast: each output element reads the element it came from
        out |= d.reshape((1,) * (len(shape) - len(s)) + d.shape)
    return [out for _ in eqn.outvars]


def _movement(eqn, ins, n):
    """Single-operand data movement (one result, or several for ``split``/``unstack``):
    apply the primitive to indices."""
    if len(eqn.invars) != 1:
        return _full(eqn, ins, n)
    shape = _shape(eqn.invars[0])
    idxs = bind_indices(eqn, [_iota(shape)])
    return [_gather_rows(_as_flat(ins[0], shape, n), i, n, _shape(v))
            for i, v in zip(idxs, eqn.outvars)]


def _gathering(eqn, ins, n):
    """``concatenate``/``stack``: the operands' indices, offset, through the primitive."""
    offs = np.cumsum([0] + [_size(_shape(a)) for a in eqn.invars])
    idx = bind_indices(eqn, [_iota(_shape(a), o) for a, o in zip(eqn.invars, offs)])[0]
    flat = np.concatenate([_as_flat(d, _shape(a), n) for a, d in zip(eqn.invars, ins)])
    return [_gather_rows(flat, idx, n, _shape(eqn.outvars[0]))]


def _pad(eqn, ins, n):
    idx = bind_indices(eqn, [_iota(_shape(eqn.invars[0])), np.int32(-1)])[0]
    out = _gather_rows(_as_flat(ins[0], _shape(eqn.invars[0]), n), idx, n,
                       _shape(eqn.outvars[0]))
    if ins[1] is not None:
        out[idx < 0] |= ins[1].reshape(n)
    return [out]


def _indexed(eqn, ins, known, n):
    """gather / dynamic_slice / dynamic_update_slice at indices known at trace time."""
    n_data = 2 if eqn.primitive.name == "dynamic_update_slice" else 1
    index_vals = known[n_data:]
    if any(v is None for v in index_vals) or any(d is not None for d in ins[n_data:]):
        if eqn.primitive.name == "gather":
            return _full(eqn, ins, n)
        return _dynamic_anywhere(eqn, ins, n)
    offs = np.cumsum([0] + [_size(_shape(a)) for a in eqn.invars[:n_data]])
    data = [_iota(_shape(a), o) for a, o in zip(eqn.invars[:n_data], offs)]
    # a gather fills out-of-bounds elements with a constant: -1, which reads nothing
    overrides = {"fill_value": -1} if eqn.primitive.name == "gather" else {}
    idx = bind_indices(eqn, data + list(index_vals), **overrides)[0]
    flat = np.concatenate([_as_flat(d, _shape(a), n)
                           for a, d in zip(eqn.invars[:n_data], ins[:n_data])])
    return [_gather_rows(flat, idx, n, _shape(eqn.outvars[0]))]


def _sliding_or(d, shape, window, pad, n):
    """``∨`` of ``d`` over a sliding ``window`` (stride 1) after padding each axis by
    ``pad`` on both sides: every position a start in ``[0, window)`` can bring."""
    p = {"window_dimensions": window, "window_strides": (1,) * len(shape),
         "padding": tuple((q, q) for q in pad), "base_dilation": (1,) * len(shape),
         "window_dilation": (1,) * len(shape)}
    src = _window_sources(shape, p)
    r = len(shape)
    return _gather_rows(_as_flat(d, shape, n), src, n, src.shape).any(axis=tuple(range(r, 2 * r)))


def _dynamic_anywhere(eqn, ins, n):
    """dynamic_slice / dynamic_update_slice at unknown start indices, which XLA clamps
    into ``[0, m]`` per axis (``m`` = operand size - slice size): a slice element reads
    the ``m + 1`` operand elements any start brings to it; an updated operand element reads
    the update elements any start lands on it, and its own value unless every start
    overwrites it.  Everything reads what the indices read (they choose the elements)."""
    op_shape = _shape(eqn.invars[0])
    out_shape = _shape(eqn.outvars[0])
    if eqn.primitive.name == "dynamic_slice":
        m = [o - s for o, s in zip(op_shape, out_shape)]
        out = _sliding_or(ins[0], op_shape, tuple(k + 1 for k in m), (0,) * len(m), n)
        index = ins[1:]
    else:
        upd_shape = _shape(eqn.invars[1])
        m = [o - s for o, s in zip(op_shape, upd_shape)]
        out = _sliding_or(ins[1], upd_shape, tuple(k + 1 for k in m), tuple(m), n)
        always = np.ones(op_shape, bool)
        for axis, (k, size) in enumerate(zip(m, upd_shape)):
            pos = np.arange(op_shape[axis]).reshape(
                [-1 if a == axis else 1 for a in range(len(op_shape))])
            always &= (pos >= k) & (pos < size)
        if ins[0] is not None:
            out |= ins[0] & ~always[..., None]
        index = ins[2:]
    return [out | _union_vector(index, n)]


def _scatter_targets(eqn, indices) -> np.ndarray:
    """The flat operand position every update element lands in (``-1``: dropped): the
    transpose of a scatter-add w.r.t. its updates, applied to the operand positions + 1."""
    op_shape, upd_shape = _shape(eqn.invars[0]), _shape(eqn.invars[2])
    if _size(op_shape) >= 1 << 24:  # positions must be exact in float32
        raise _TooBig
    p = eqn.params

    def scatter(upd):
        return jax.lax.scatter_add(jnp.zeros(op_shape, jnp.float32), jnp.asarray(indices), upd,
                                   p["dimension_numbers"], indices_are_sorted=False,
                                   unique_indices=False, mode=p["mode"])

    (pos,) = jax.linear_transpose(scatter, jax.ShapeDtypeStruct(upd_shape, jnp.float32))(
        jnp.asarray(_iota(op_shape, 1), jnp.float32))
    return np.rint(np.asarray(pos)).astype(np.int64).reshape(-1) - 1


def _scatter(eqn, ins, known, n):
    if len(eqn.invars) != 3 or known[1] is None or ins[1] is not None:
        return _full(eqn, ins, n)
    op_shape, upd_shape = _shape(eqn.invars[0]), _shape(eqn.invars[2])
    target = _scatter_targets(eqn, known[1])
    landed = target >= 0
    out = _as_flat(ins[0], op_shape, n).copy()
    replace = eqn.primitive.name == "scatter" and eqn.params.get("update_jaxpr") is None
    if replace:  # overwritten elements forget the operand (``apply`` scatters do not)
        out[target[landed]] = False
    if ins[2] is not None:
        np.logical_or.at(out, target[landed], _as_flat(ins[2], upd_shape, n)[landed])
    return [out.reshape(op_shape + (n,))]


def _reduce_axes(d, axes):
    return None if d is None else d.any(axis=tuple(axes))


def _reduction(eqn, ins, n):
    """``reduce_*``/``argmax``/``argmin`` over ``axes``; the generic ``reduce`` (k operands,
    k inits, any reducer) over ``dimensions``: every output reads every operand."""
    if eqn.primitive.name != "reduce":
        return [_reduce_axes(ins[0], eqn.params["axes"])]
    k = len(eqn.outvars)
    out = np.zeros(_shape(eqn.outvars[0]) + (n,), bool) | _union_vector(ins[k:], n)
    for d in ins[:k]:
        if d is not None:
            out |= _reduce_axes(d, eqn.params["dimensions"])
    return [out.copy() for _ in eqn.outvars]


def _cumulative(eqn, ins, n):
    axis, reverse = eqn.params["axis"], eqn.params.get("reverse", False)
    d = np.flip(ins[0], axis) if reverse else ins[0]
    out = np.logical_or.accumulate(d, axis=axis)
    return [np.flip(out, axis) if reverse else out]


def _along_axis(eqn, ins, n, axis):
    """``sort``/``top_k``: every output element reads its whole line along ``axis`` of every
    operand (the keys choose the order, the other operands are carried along)."""
    line = None
    for d in ins:
        if d is not None:
            line = _or(line, d.any(axis=axis, keepdims=True))
    return [np.broadcast_to(line, _shape(v) + (n,)).copy() for v in eqn.outvars]


def _window_sources(shape, p) -> np.ndarray:
    """Flat operand position of every (output, window offset) pair, ``-1`` for padding and
    base-dilation holes; shape ``out_shape + window_dimensions``."""
    r = len(shape)
    padded = _np_pad(_iota(shape), np.int32(-1),
                     [(lo, hi, b - 1) for (lo, hi), b in zip(p["padding"], p["base_dilation"])])
    grids = []
    for d in range(r):
        w, s, wd = p["window_dimensions"][d], p["window_strides"][d], p["window_dilation"][d]
        n_out = max(0, (padded.shape[d] - (w - 1) * wd - 1) // s + 1)
        pos = np.arange(n_out)[:, None] * s + np.arange(w)[None, :] * wd
        grids.append(pos.reshape([n_out if a == d else w if a == r + d else 1
                                  for a in range(2 * r)]))
    return padded[tuple(grids)]


def _window(eqn, ins, n):
    """Windowed reductions: each output reads its window of every operand (and the inits)."""
    name = eqn.primitive.name
    k = len(eqn.outvars) if name == "reduce_window" else len(eqn.invars)
    shape = _shape(eqn.invars[0])
    src = _window_sources(shape, eqn.params)
    r = len(shape)
    out = np.zeros(_shape(eqn.outvars[0]) + (n,), bool) | _union_vector(ins[k:], n)
    for d in ins[:k]:
        if d is not None:
            out |= _gather_rows(_as_flat(d, shape, n), src, n, src.shape).any(
                axis=tuple(range(r, 2 * r)))
    return [out.copy() for _ in eqn.outvars]


def _dot_side(d, own, other, other_known, n, out_shape, rhs: bool):
    """The term of ``dot_general``'s output read through one operand.

    ``own``/``other`` = (batch, contracting, free) axes of this and the other operand, in
    corresponding order; the output is ``[batch, lhs free, rhs free]``."""
    (b, c, f), (ob, oc, of) = own, other
    d_t = np.transpose(d, list(b) + list(f) + list(c) + [d.ndim - 1])
    sb = d_t.shape[:len(b)]
    f_size = _size(d_t.shape[len(b):len(b) + len(f)])
    c_size = _size(d_t.shape[len(b) + len(f):-1])
    o_size = _size([out_shape[len(b) + (0 if rhs else len(f)) + i] for i in range(len(of))])
    d_m = d_t.reshape(sb + (f_size, c_size, n))  # [B..., F, C, n]
    if other_known is None:  # a state-free operand of unknown value: dense
        term = np.broadcast_to(d_m.any(axis=-2)[..., :, None, :], sb + (f_size, o_size, n))
    else:  # its zero pattern: F x C reads through C x O
        mask = np.transpose(np.asarray(other_known) != 0, list(ob) + list(oc) + list(of))
        _budget(_size(sb), f_size, o_size, n)
        term = np.einsum("...fcn,...co->...fon", d_m.astype(np.float32),
                         mask.reshape(sb + (c_size, o_size)).astype(np.float32)) > 0
    if rhs:  # [B, rhs free, lhs free] -> [B, lhs free, rhs free]
        term = np.swapaxes(term, -3, -2)
    return term.reshape(tuple(out_shape) + (n,))


def _dot_general(eqn, ins, known, n):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    lhs = (tuple(lb), tuple(lc), tuple(i for i in range(len(ls)) if i not in lc and i not in lb))
    rhs = (tuple(rb), tuple(rc), tuple(i for i in range(len(rs)) if i not in rc and i not in rb))
    out_shape = _shape(eqn.outvars[0])
    out = np.zeros(out_shape + (n,), bool)
    if ins[0] is not None:
        out |= _dot_side(ins[0], lhs, rhs, known[1], n, out_shape, rhs=False)
    if ins[1] is not None:
        out |= _dot_side(ins[1], rhs, lhs, known[0], n, out_shape, rhs=True)
    return [out]


def _conv(eqn, ins, known, n):
    """``conv_general_dilated``: the input's term is the convolution of its 0/1 masks (the
    ``n`` state columns folded into the batch) with the kernel's nonzero pattern."""
    p = eqn.params
    if p["batch_group_count"] != 1:
        return _full(eqn, ins, n)
    lhs_shape, rhs_shape = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    out_shape = _shape(eqn.outvars[0])
    out = np.zeros(out_shape + (n,), bool)
    if ins[0] is not None:
        _budget(_size(out_shape), n)
        lb, ob = p["dimension_numbers"].lhs_spec[0], p["dimension_numbers"].out_spec[0]
        kernel = np.ones(rhs_shape, bool) if known[1] is None else np.asarray(known[1]) != 0
        lhs = np.moveaxis(ins[0], -1, lb + 1)
        lhs = lhs.reshape(lhs_shape[:lb] + (lhs_shape[lb] * n,) + lhs_shape[lb + 1:])
        res = eqn.primitive.bind(jnp.asarray(lhs, jnp.float32), jnp.asarray(kernel, jnp.float32),
                                 **{**p, "preferred_element_type": None})
        res = np.asarray(res).reshape(out_shape[:ob] + (out_shape[ob], n) + out_shape[ob + 1:])
        out |= np.moveaxis(res > 0, ob + 1, -1)
    if ins[1] is not None:
        out |= _union_vector(ins[1:], n)
    return [out]


def _cond(eqn, ins, known, n):
    branches = eqn.params["branches"]
    if known[0] is not None:  # lax.switch clamps its index
        branches = [branches[int(np.clip(np.asarray(known[0]), 0, len(branches) - 1))]]
    outs = None
    for br in branches:
        res = analyse_jaxpr(jx.as_closed(br), ins[1:], known[1:], n)
        outs = res if outs is None else [_or(a, b) for a, b in zip(outs, res)]
    if ins[0] is not None:
        u = ins[0].reshape(-1, n).any(axis=0)
        outs = [_or(o, _broadcast(u, _shape(v))) for o, v in zip(outs, eqn.outvars)]
    return outs


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
    """Carries to a fixed point; every ``x`` slice reads what any slice reads, and every
    ``y`` what the body's ``y`` reads at the fixed point."""
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
            out |= np.broadcast_to(d, out.shape) & (which == case)[..., None]
    return [out]


def _dispatch(eqn, ins, known, n):
    name = eqn.primitive.name
    if name == "select_n" and known[0] is not None and ins[0] is None:
        return _select_known(eqn, ins, known, n)
    if name in ELEMENTWISE:
        return _elementwise(eqn, ins, n)
    if name in PASS_THROUGH:
        return list(ins)
    if name in MOVEMENT:
        return _movement(eqn, ins, n)
    if name in GATHERING:
        return _gathering(eqn, ins, n)
    if name == "pad":
        return _pad(eqn, ins, n)
    if name in INDEXED:
        return _indexed(eqn, ins, known, n)
    if name in SCATTERS:
        return _scatter(eqn, ins, known, n)
    if name in REDUCTIONS or name == "reduce":
        return _reduction(eqn, ins, n)
    if name in CUMULATIVE:
        return _cumulative(eqn, ins, n)
    if name in WINDOWS:
        return _window(eqn, ins, n)
    if name == "sort":
        return _along_axis(eqn, ins, n, eqn.params["dimension"])
    if name == "top_k":
        return _along_axis(eqn, ins, n, eqn.params.get("axis", -1))
    if name == "dot_general":
        return _dot_general(eqn, ins, known, n)
    if name == "conv_general_dilated":
        return _conv(eqn, ins, known, n)
    if name == "cond":
        return _cond(eqn, ins, known, n)
    if name == "while":
        return _while(eqn, ins, known, n)
    if name == "scan":
        return _scan(eqn, ins, known, n)
    body = call_body(eqn)
    if body is not None:
        return analyse_jaxpr(body, ins, known, n)
    return _full(eqn, ins, n)


def _rule(eqn, ins, known, n):
    """The primitive's rule, or the dense answer where the rule cannot be applied (it fails,
    or it yields dependency arrays of the wrong shape): never a guess."""
    try:
        outs = _dispatch(eqn, ins, known, n)
    except Exception:  # noqa: BLE001 - any failure of a precise rule means "dense"
        return _full(eqn, ins, n)
    if len(outs) != len(eqn.outvars) or any(
            d is not None and (d.dtype != bool or d.shape != _shape(v) + (n,))
            for d, v in zip(outs, eqn.outvars)):
        return _full(eqn, ins, n)
    return outs


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


# --- the step -------------------------------------------------------------------------------

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


def _tangent_pattern(ir: StepIR, which, seeds, free, n) -> np.ndarray:
    """What the JVP w.r.t. the ``which`` state tangents reads."""
    def jvp_flat(*leaves):
        h, x, p, t = _split(ir, leaves)
        f, primals = _on_inexact(ir, h, x, p, which)
        return jax.jvp(f, primals, tuple(t))[1]

    tj = jax.make_jaxpr(jvp_flat)(*_avals(ir, [ir.state[i] for i in which]))
    ins = [None] * len(seeds) + free + [seeds[i] for i in which]
    return _stack_outputs(analyse_jaxpr(tj, ins, [None] * len(ins), n), ir)


def _cotangent_pattern(ir: StepIR, which, seeds, free, n) -> np.ndarray:
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
    return _stack_outputs(rows, ir).T


def jacobian_sparsity(ir: StepIR) -> Sparsity:
    """The sound sparsity pattern of ``∂f/∂h`` (see the module docstring)."""
    n = ir.n_state
    seeds = _leaf_seeds(ir)
    free = [None] * (len(ir.inputs) + len(ir.params))
    which = _inexact(ir)
    with jax.ensure_compile_time_eval():
        primal = _stack_outputs(
            analyse_jaxpr(ir.jaxpr, seeds + free, [None] * (len(seeds) + len(free)), n), ir)
        tangent, has_jvp = None, True
        for derivative in (_tangent_pattern, _cotangent_pattern) if which else ():
            try:
                tangent = derivative(ir, which, seeds, free, n)
                break
            except Exception:  # noqa: BLE001 - e.g. a custom_vjp function has no JVP
                has_jvp = has_jvp and derivative is not _tangent_pattern
                continue
    pattern = primal if tangent is None else (primal | tangent)
    return Sparsity(pattern=pattern, primal=primal, tangent=tangent, has_jvp=has_jvp)


__all__ = ["Sparsity", "jacobian_sparsity", "analyse_jaxpr", "call_body", "bind_indices"]
