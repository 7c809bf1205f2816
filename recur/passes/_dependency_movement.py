r"""Dependency rules for elementwise primitives and data movement (see ``_dependency_arrays``
for the sparse matrices ``D`` they compute: every rule is a ``read`` or a ``collect``).

* elementwise primitives: ``D_out[k] = ∨_v D_v[k]`` (scalars and size-1 axes broadcast);
  ``select_n`` on a predicate known at trace time reads only the chosen case;
  value identities (``optimization_barrier``, sharding constraints): ``D_out = D_in``;
* data movement (reshape with its ``dimensions`` permutation, transpose, slice, rev, pad,
  concatenate, stack, split, unstack, tile, broadcast; gather, dynamic slices and dynamic
  updates at indices known at trace time): the primitive itself is applied to an array of
  element indices (``-1`` for a padding or fill value; several operands numbered one after
  another), which says where every output element comes from; a state-dependent padding
  value is read by every padding element;
* dynamic slices and updates at unknown starts, which XLA clamps into ``[0, m]`` per axis
  (``m`` = operand size - slice size): ``∨`` over every start, ``∨ U(indices)``;
* scatters at known indices: ``t(u)``, the operand position an update element ``u`` lands
  in, is the transpose of a scatter-add applied to the operand's indices (a gather with
  the scatter's own dimension numbers and mode); then
  ``D_out[k] = D_op[k] ∨ ∨_{t(u)=k} D_upd[u]`` for combining scatters (add, mul, min, max,
  apply) and ``∨_{t(u)=k} D_upd[u]`` (or ``D_op[k]`` where nothing lands) for a replace;
  a scatter at unknown indices is dense.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from ._dependency_arrays import (TooBig, as_flat, broadcast_source, broadcast_vector, collect,
                                 dense, iota, read, shape_of, size_of, union, union_vector,
                                 window_read, window_sources)
from ._numpy_primitives import bind_indices

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
SCATTERS = frozenset({"scatter", "scatter-add", "scatter-sub", "scatter-mul", "scatter-min",
                      "scatter-max"})


def elementwise(eqn, ins, n):
    """``D_out[k] = ∨_v D_v[src_v(k)]``, ``src_v`` the element of ``v`` broadcast to ``k``."""
    shape = shape_of(eqn.outvars[0])
    out = None
    for a, d in zip(eqn.invars, ins):
        if d is None:
            continue
        s = shape_of(a)
        if len(s) > len(shape) or not all(x in (1, y) for x, y in zip(s[::-1], shape[::-1])):
            return dense(eqn, ins, n)
        out = union(out, d if s == shape else read(d, broadcast_source(s, shape).reshape(-1)))
    return [out for _ in eqn.outvars]


def select_known(eqn, ins, known, n):
    """``select_n`` with a predicate known at trace time reads only the chosen case."""
    shape = shape_of(eqn.outvars[0])
    which = np.broadcast_to(np.asarray(known[0]).astype(np.int64), shape).reshape(-1)
    out = None
    for case, (a, d) in enumerate(zip(eqn.invars[1:], ins[1:])):
        if d is not None:
            src = broadcast_source(shape_of(a), shape).reshape(-1)
            out = union(out, read(d, np.where(which == case, src, -1)))
    return [out]


def movement(eqn, ins, n):
    """Single-operand data movement (one result, or several for ``split``/``unstack``):
    apply the primitive to indices."""
    if len(eqn.invars) != 1:
        return dense(eqn, ins, n)
    idxs = bind_indices(eqn, [iota(shape_of(eqn.invars[0]))])
    return [read(ins[0], i.reshape(-1)) for i in idxs]


def _stacked(invars, ins, n):
    """The operands' rows one after another, and each operand's first flat position."""
    offs = np.cumsum([0] + [size_of(shape_of(a)) for a in invars])
    return sp.vstack([as_flat(d, shape_of(a), n) for a, d in zip(invars, ins)],
                     format="csr"), offs


def gathering(eqn, ins, n):
    """``concatenate``/``stack``: the operands' indices, offset, through the primitive."""
    flat, offs = _stacked(eqn.invars, ins, n)
    idx = bind_indices(eqn, [iota(shape_of(a), o) for a, o in zip(eqn.invars, offs)])[0]
    return [read(flat, idx.reshape(-1))]


def pad(eqn, ins, n):
    """A padding element reads the padding value (row ``m`` after the operand's ``m``)."""
    shape = shape_of(eqn.invars[0])
    idx = bind_indices(eqn, [iota(shape), np.int32(-1)])[0].reshape(-1)
    flat, _ = _stacked(eqn.invars, ins, n)
    return [read(flat, np.where(idx < 0, size_of(shape), idx))]


def indexed(eqn, ins, known, n):
    """gather / dynamic_slice / dynamic_update_slice at indices known at trace time."""
    n_data = 2 if eqn.primitive.name == "dynamic_update_slice" else 1
    index_vals = known[n_data:]
    if any(v is None for v in index_vals) or any(d is not None for d in ins[n_data:]):
        if eqn.primitive.name == "gather":
            return dense(eqn, ins, n)
        return _dynamic_anywhere(eqn, ins, n)
    flat, offs = _stacked(eqn.invars[:n_data], ins[:n_data], n)
    data = [iota(shape_of(a), o) for a, o in zip(eqn.invars[:n_data], offs)]
    # a gather fills out-of-bounds elements with a constant: -1, which reads nothing
    overrides = {"fill_value": -1} if eqn.primitive.name == "gather" else {}
    idx = bind_indices(eqn, data + list(index_vals), **overrides)[0]
    return [read(flat, idx.reshape(-1))]


def _sliding_or(d, shape, window, pad, n):
    """``∨`` of ``d`` over a sliding ``window`` (stride 1) after padding each axis by
    ``pad`` on both sides: every position a start in ``[0, window)`` can bring."""
    p = {"window_dimensions": window, "window_strides": (1,) * len(shape),
         "padding": tuple((q, q) for q in pad), "base_dilation": (1,) * len(shape),
         "window_dilation": (1,) * len(shape)}
    return window_read(as_flat(d, shape, n), shape, window_sources(shape, p))


def _dynamic_anywhere(eqn, ins, n):
    """dynamic_slice / dynamic_update_slice at unknown start indices, which XLA clamps
    into ``[0, m]`` per axis (``m`` = operand size - slice size): a slice element reads
    the ``m + 1`` operand elements any start brings to it; an updated operand element reads
    the update elements any start lands on it, and its own value unless every start
    overwrites it.  Everything reads what the indices read (they choose the elements)."""
    op_shape = shape_of(eqn.invars[0])
    out_shape = shape_of(eqn.outvars[0])
    if eqn.primitive.name == "dynamic_slice":
        m = [o - s for o, s in zip(op_shape, out_shape)]
        out = _sliding_or(ins[0], op_shape, tuple(k + 1 for k in m), (0,) * len(m), n)
        index = ins[1:]
    else:
        upd_shape = shape_of(eqn.invars[1])
        m = [o - s for o, s in zip(op_shape, upd_shape)]
        out = _sliding_or(ins[1], upd_shape, tuple(k + 1 for k in m), tuple(m), n)
        always = np.ones(op_shape, bool)
        for axis, (k, size) in enumerate(zip(m, upd_shape)):
            pos = np.arange(op_shape[axis]).reshape(
                [-1 if a == axis else 1 for a in range(len(op_shape))])
            always &= (pos >= k) & (pos < size)
        if ins[0] is not None:
            out = out + read(ins[0], np.where(always, -1, iota(op_shape)).reshape(-1))
        index = ins[2:]
    u = union_vector(index, n)
    return [out + broadcast_vector(u, out.shape[0]) if u.nnz else out]


def _scatter_targets(eqn, indices) -> np.ndarray:
    """The flat operand position every update element lands in (``-1``: dropped): the
    transpose of a scatter-add w.r.t. its updates, applied to the operand positions + 1."""
    op_shape, upd_shape = shape_of(eqn.invars[0]), shape_of(eqn.invars[2])
    if size_of(op_shape) >= 1 << 24:  # positions must be exact in float32
        raise TooBig
    p = eqn.params

    def scatter_add(upd):
        return jax.lax.scatter_add(jnp.zeros(op_shape, jnp.float32), jnp.asarray(indices), upd,
                                   p["dimension_numbers"], indices_are_sorted=False,
                                   unique_indices=False, mode=p["mode"])

    (pos,) = jax.linear_transpose(scatter_add, jax.ShapeDtypeStruct(upd_shape, jnp.float32))(
        jnp.asarray(iota(op_shape, 1), jnp.float32))
    return np.rint(np.asarray(pos)).astype(np.int64).reshape(-1) - 1


def scatter(eqn, ins, known, n):
    if len(eqn.invars) != 3 or known[1] is None or ins[1] is not None:
        return dense(eqn, ins, n)
    op_shape = shape_of(eqn.invars[0])
    target = _scatter_targets(eqn, known[1])
    replace = eqn.primitive.name == "scatter" and eqn.params.get("update_jaxpr") is None
    kept = iota(op_shape).reshape(-1)
    if replace:  # overwritten elements forget the operand (``apply`` scatters do not)
        kept = kept.copy()
        kept[target[target >= 0]] = -1
    out = read(as_flat(ins[0], op_shape, n), kept)
    if ins[2] is not None:
        out = out + collect(ins[2], target, size_of(op_shape))
    return [out]


__all__ = ["ELEMENTWISE", "MOVEMENT", "GATHERING", "PASS_THROUGH", "INDEXED", "SCATTERS",
           "elementwise", "select_known", "movement", "gathering", "pad", "indexed", "scatter"]
