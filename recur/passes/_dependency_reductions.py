r"""Dependency rules for reductions, windows and contractions (see ``_dependency_arrays``
for the arrays ``D`` they compute and ``U``).

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

from ._dependency_arrays import (as_flat, check_budget, dense, gather_rows, shape_of, size_of,
                                 union, union_vector, window_sources)

REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin"
    .split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
WINDOWS = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min",
                     "reduce_window", "select_and_gather_add"})


def _reduce_axes(d, axes):
    return None if d is None else d.any(axis=tuple(axes))


def reduction(eqn, ins, n):
    """``reduce_*``/``argmax``/``argmin`` over ``axes``; the generic ``reduce`` (k operands,
    k inits, any reducer) over ``dimensions``: every output reads every operand."""
    if eqn.primitive.name != "reduce":
        return [_reduce_axes(ins[0], eqn.params["axes"])]
    k = len(eqn.outvars)
    out = np.zeros(shape_of(eqn.outvars[0]) + (n,), bool) | union_vector(ins[k:], n)
    for d in ins[:k]:
        if d is not None:
            out |= _reduce_axes(d, eqn.params["dimensions"])
    return [out.copy() for _ in eqn.outvars]


def cumulative(eqn, ins, n):
    axis, reverse = eqn.params["axis"], eqn.params.get("reverse", False)
    d = np.flip(ins[0], axis) if reverse else ins[0]
    out = np.logical_or.accumulate(d, axis=axis)
    return [np.flip(out, axis) if reverse else out]


def along_axis(eqn, ins, n, axis):
    """``sort``/``top_k``: every output element reads its whole line along ``axis`` of every
    operand (the keys choose the order, the other operands are carried along)."""
    line = None
    for d in ins:
        if d is not None:
            line = union(line, d.any(axis=axis, keepdims=True))
    return [np.broadcast_to(line, shape_of(v) + (n,)).copy() for v in eqn.outvars]


def window(eqn, ins, n):
    """Windowed reductions: each output reads its window of every operand (and the inits)."""
    name = eqn.primitive.name
    k = len(eqn.outvars) if name == "reduce_window" else len(eqn.invars)
    shape = shape_of(eqn.invars[0])
    src = window_sources(shape, eqn.params)
    r = len(shape)
    out = np.zeros(shape_of(eqn.outvars[0]) + (n,), bool) | union_vector(ins[k:], n)
    for d in ins[:k]:
        if d is not None:
            out |= gather_rows(as_flat(d, shape, n), src, n, src.shape).any(
                axis=tuple(range(r, 2 * r)))
    return [out.copy() for _ in eqn.outvars]


def _dot_side(d, own, other, other_known, n, out_shape, rhs: bool):
    """The term of ``dot_general``'s output read through one operand.

    ``own``/``other`` = (batch, contracting, free) axes of this and the other operand, in
    corresponding order; the output is ``[batch, lhs free, rhs free]``."""
    (b, c, f), (ob, oc, of) = own, other
    d_t = np.transpose(d, list(b) + list(f) + list(c) + [d.ndim - 1])
    sb = d_t.shape[:len(b)]
    f_size = size_of(d_t.shape[len(b):len(b) + len(f)])
    c_size = size_of(d_t.shape[len(b) + len(f):-1])
    o_size = size_of([out_shape[len(b) + (0 if rhs else len(f)) + i] for i in range(len(of))])
    d_m = d_t.reshape(sb + (f_size, c_size, n))  # [B..., F, C, n]
    if other_known is None:  # a state-free operand of unknown value: dense
        term = np.broadcast_to(d_m.any(axis=-2)[..., :, None, :], sb + (f_size, o_size, n))
    else:  # its zero pattern: F x C reads through C x O
        mask = np.transpose(np.asarray(other_known) != 0, list(ob) + list(oc) + list(of))
        check_budget(size_of(sb), f_size, o_size, n)
        term = np.einsum("...fcn,...co->...fon", d_m.astype(np.float32),
                         mask.reshape(sb + (c_size, o_size)).astype(np.float32)) > 0
    if rhs:  # [B, rhs free, lhs free] -> [B, lhs free, rhs free]
        term = np.swapaxes(term, -3, -2)
    return term.reshape(tuple(out_shape) + (n,))


def dot_general(eqn, ins, known, n):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = shape_of(eqn.invars[0]), shape_of(eqn.invars[1])
    lhs = (tuple(lb), tuple(lc), tuple(i for i in range(len(ls)) if i not in lc and i not in lb))
    rhs = (tuple(rb), tuple(rc), tuple(i for i in range(len(rs)) if i not in rc and i not in rb))
    out_shape = shape_of(eqn.outvars[0])
    out = np.zeros(out_shape + (n,), bool)
    if ins[0] is not None:
        out |= _dot_side(ins[0], lhs, rhs, known[1], n, out_shape, rhs=False)
    if ins[1] is not None:
        out |= _dot_side(ins[1], rhs, lhs, known[0], n, out_shape, rhs=True)
    return [out]


def conv(eqn, ins, known, n):
    """``conv_general_dilated``: the input's term is the convolution of its 0/1 masks (the
    ``n`` state columns folded into the batch) with the kernel's nonzero pattern."""
    p = eqn.params
    if p["batch_group_count"] != 1:
        return dense(eqn, ins, n)
    lhs_shape, rhs_shape = shape_of(eqn.invars[0]), shape_of(eqn.invars[1])
    out_shape = shape_of(eqn.outvars[0])
    out = np.zeros(out_shape + (n,), bool)
    if ins[0] is not None:
        check_budget(size_of(out_shape), n)
        lb, ob = p["dimension_numbers"].lhs_spec[0], p["dimension_numbers"].out_spec[0]
        kernel = np.ones(rhs_shape, bool) if known[1] is None else np.asarray(known[1]) != 0
        lhs = np.moveaxis(ins[0], -1, lb + 1)
        lhs = lhs.reshape(lhs_shape[:lb] + (lhs_shape[lb] * n,) + lhs_shape[lb + 1:])
        res = eqn.primitive.bind(jnp.asarray(lhs, jnp.float32), jnp.asarray(kernel, jnp.float32),
                                 **{**p, "preferred_element_type": None})
        res = np.asarray(res).reshape(out_shape[:ob] + (out_shape[ob], n) + out_shape[ob + 1:])
        out |= np.moveaxis(res > 0, ob + 1, -1)
    if ins[1] is not None:
        out |= union_vector(ins[1:], n)
    return [out]


__all__ = ["REDUCTIONS", "CUMULATIVE", "WINDOWS", "reduction", "cumulative", "along_axis",
           "window", "dot_general", "conv"]
