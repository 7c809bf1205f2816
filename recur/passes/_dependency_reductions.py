r"""Dependency rules for reductions, windows and contractions (see ``_dependency_arrays``
for the sparse matrices ``D`` they compute and ``U``).

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
  kernel gives every output ``U(kernel)``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from ._dependency_arrays import (broadcast_vector, check_budget, collect, dense, iota, read,
                                 shape_of, size_of, union, union_vector, window_read,
                                 window_sources)

REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin"
    .split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
WINDOWS = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min",
                     "reduce_window", "select_and_gather_add"})


def _kept_position(shape, axes) -> np.ndarray:
    """For every element of an array of ``shape``: its flat position once ``axes`` are
    reduced away (its line's number)."""
    axes = tuple(a % len(shape) for a in axes)
    kept = tuple(1 if a in axes else s for a, s in enumerate(shape))
    return np.broadcast_to(iota(kept), shape).reshape(-1)


def reduction(eqn, ins, n):
    """``reduce_*``/``argmax``/``argmin`` over ``axes``; the generic ``reduce`` (k operands,
    k inits, any reducer) over ``dimensions``: every output reads every operand."""
    shape = shape_of(eqn.invars[0])
    m = size_of(shape_of(eqn.outvars[0]))
    if eqn.primitive.name != "reduce":
        return [_line_union(ins[0], shape, eqn.params["axes"], m)]
    k = len(eqn.outvars)
    u = union_vector(ins[k:], n)
    out = broadcast_vector(u, m) if u.nnz else None
    for d in ins[:k]:
        out = union(out, _line_union(d, shape, eqn.params["dimensions"], m))
    return [out for _ in eqn.outvars]


def _line_union(d, shape, axes, m):
    """``∨`` of ``d`` over ``axes``: ``m`` rows, one per remaining position."""
    return None if d is None else collect(d, _kept_position(shape, axes), m)


def cumulative(eqn, ins, n):
    """Element ``k`` along the axis reads elements ``0..k`` (``k..L-1`` when ``reverse``)."""
    shape = shape_of(eqn.invars[0])
    axis, reverse = eqn.params["axis"] % len(shape), eqn.params.get("reverse", False)
    length = shape[axis]
    check_budget(size_of(shape), length)
    pos = np.moveaxis(iota(shape), axis, -1)  # [..., L]
    k = np.arange(length)
    before = (k[None, :] >= k[:, None]) if reverse else (k[None, :] <= k[:, None])  # [k, j]
    src = np.where(before, pos[..., None, :], -1)  # [..., k, j]
    src = np.moveaxis(src, -2, axis)  # output element (..., k, ...) reads src[..., k, ..., :]
    return [read(ins[0], src.reshape(size_of(shape), length))]


def along_axis(eqn, ins, n, axis):
    """``sort``/``top_k``: every output element reads its whole line along ``axis`` of every
    operand (the keys choose the order, the other operands are carried along)."""
    shape = shape_of(eqn.invars[0])
    axis = axis % len(shape)
    lines = size_of(shape) // max(shape[axis], 1)
    line = None
    for a, d in zip(eqn.invars, ins):
        line = union(line, _line_union(d, shape_of(a), (axis,), lines))
    return [read(line, _kept_position(shape_of(v), (axis,))) for v in eqn.outvars]


def window(eqn, ins, n):
    """Windowed reductions: each output reads its window of every operand (and the inits)."""
    name = eqn.primitive.name
    k = len(eqn.outvars) if name == "reduce_window" else len(eqn.invars)
    shape = shape_of(eqn.invars[0])
    src = window_sources(shape, eqn.params)
    u = union_vector(ins[k:], n)
    out = broadcast_vector(u, size_of(shape_of(eqn.outvars[0]))) if u.nnz else None
    for d in ins[:k]:
        if d is not None:
            out = union(out, window_read(d, shape, src))
    return [out for _ in eqn.outvars]


def _dot_side(d, own, other, other_known, own_shape, out_shape, rhs: bool):
    """The term of ``dot_general``'s output read through one operand.

    ``own``/``other`` = (batch, contracting, free) axes of this and the other operand, in
    corresponding order; the output is ``[batch, lhs free, rhs free]``."""
    (b, c, f), (ob, oc, of) = own, other
    pos = np.transpose(iota(own_shape), list(b) + list(f) + list(c))
    nb = size_of(pos.shape[:len(b)])
    nf = size_of(pos.shape[len(b):len(b) + len(f)])
    nc = size_of(pos.shape[len(b) + len(f):])
    no = size_of(out_shape) // max(nb * nf, 1) if size_of(out_shape) else 0
    pos = pos.reshape(nb, nf, nc)
    out_pos = iota(out_shape).reshape((nb, no, nf) if rhs else (nb, nf, no))
    if rhs:  # [B, lhs free, rhs free] -> [B, rhs free (own), lhs free (other)]
        out_pos = np.swapaxes(out_pos, 1, 2)
    if other_known is None:  # a state-free operand of unknown value: dense along c
        line_of = np.empty(size_of(out_shape), np.int64)
        line_of[out_pos.reshape(-1)] = np.broadcast_to(
            np.arange(nb * nf).reshape(nb, nf, 1), (nb, nf, no)).reshape(-1)
        return read(read(d, pos.reshape(nb * nf, nc)), line_of)
    # its zero pattern: out[b, f, o] reads own[b, f, c] where other[b, c, o] may be nonzero
    mask = np.transpose(np.asarray(other_known) != 0, list(ob) + list(oc) + list(of))
    bb, cc, oo = np.nonzero(mask.reshape(nb, nc, no))
    check_budget(bb.size, nf)
    rows = out_pos[bb[:, None], np.arange(nf)[None, :], oo[:, None]].reshape(-1)
    cols = pos[bb[:, None], np.arange(nf)[None, :], cc[:, None]].reshape(-1)
    select = sp.csr_matrix((np.ones(rows.size, bool), (rows, cols)),
                           shape=(size_of(out_shape), size_of(own_shape)))
    return (select @ d).tocsr()


def dot_general(eqn, ins, known, n):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = shape_of(eqn.invars[0]), shape_of(eqn.invars[1])
    lhs = (tuple(lb), tuple(lc), tuple(i for i in range(len(ls)) if i not in lc and i not in lb))
    rhs = (tuple(rb), tuple(rc), tuple(i for i in range(len(rs)) if i not in rc and i not in rb))
    out_shape = shape_of(eqn.outvars[0])
    out = None
    if ins[0] is not None:
        out = _dot_side(ins[0], lhs, rhs, known[1], ls, out_shape, rhs=False)
    if ins[1] is not None:
        out = union(out, _dot_side(ins[1], rhs, lhs, known[0], rs, out_shape, rhs=True))
    return [out]


def conv(eqn, ins, known, n):
    """``conv_general_dilated``: the input's term is the convolution of its 0/1 masks (the
    ``n`` state columns folded into the batch) with the kernel's nonzero pattern."""
    p = eqn.params
    if p["batch_group_count"] != 1:
        return dense(eqn, ins, n)
    lhs_shape, rhs_shape = shape_of(eqn.invars[0]), shape_of(eqn.invars[1])
    out_shape = shape_of(eqn.outvars[0])
    out = None
    if ins[0] is not None:
        check_budget(size_of(out_shape) + size_of(lhs_shape), n)
        lb, ob = p["dimension_numbers"].lhs_spec[0], p["dimension_numbers"].out_spec[0]
        kernel = np.ones(rhs_shape, bool) if known[1] is None else np.asarray(known[1]) != 0
        lhs = np.moveaxis(ins[0].toarray().reshape(lhs_shape + (n,)), -1, lb + 1)
        lhs = lhs.reshape(lhs_shape[:lb] + (lhs_shape[lb] * n,) + lhs_shape[lb + 1:])
        res = eqn.primitive.bind(jnp.asarray(lhs, jnp.float32), jnp.asarray(kernel, jnp.float32),
                                 **{**p, "preferred_element_type": None})
        res = np.asarray(res).reshape(out_shape[:ob] + (out_shape[ob], n) + out_shape[ob + 1:])
        out = sp.csr_matrix(np.moveaxis(res > 0, ob + 1, -1).reshape(-1, n))
    if ins[1] is not None:
        u = union_vector(ins[1:], n)
        out = union(out, broadcast_vector(u, size_of(out_shape)))
    return [out]


__all__ = ["REDUCTIONS", "CUMULATIVE", "WINDOWS", "reduction", "cumulative", "along_axis",
           "window", "dot_general", "conv"]
