r"""Dependency matrices: how the dependency pass stores what each value reads, and the
helpers its rules share.

A value ``v`` with ``m`` elements carries ``D_v``, a sparse boolean ``(m, n)`` matrix (CSR)
for ``n`` state elements (``D_v[k, j]``: flat element k of v may read state element j; see
``_dependency``), or ``None`` where ``v`` reads no state element at all.  Sparse, because
the patterns of real steps are: a 16-head, 128 x 128 linear-attention state has
``n = 262144`` and a diagonal pattern, ``n`` nonzeros where a dense ``n x n`` array would
hold 69 GB.  ``U(v) = ∨_k D_v[k]`` (a ``(1, n)`` row) is everything any element of ``v``
reads.  The conservative rule ``dense``, ``D_out[k] = ∨_v U(v)`` (every output element
reads everything any input reads), is the answer wherever a precise rule does not apply.

Every precise rule is one of two sparse products with a 0/1 selection matrix:

* ``read(D, src)``: ``D_out[o] = ∨_w D[src[o, w]]`` -- output element ``o`` reads the
  operand elements ``src[o, :]`` (``-1``: a padding, fill or hole, which reads nothing);
  ``src`` comes from applying the primitive to element indices (data movement), from a
  window's sources, from broadcasting, or from a contraction's nonzero pattern;
* ``collect(D, dst, m)``: ``D_out[o] = ∨_{i : dst[i] = o} D[i]`` -- its transpose, for
  reductions (``dst``: the output element an operand element is reduced into) and scatters.

A rule that would materialise too much (``check_budget``: more than ``2^27`` selected
entries) raises ``TooBig`` and gets the dense answer instead; a dense answer of more than
``2^29`` entries (a primitive the pass cannot follow, over a state of tens of thousands of
elements) raises ``TooDense``, which the pass reports as a ``PlanError``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from ._numpy_primitives import np_pad

_WORK_LIMIT = 1 << 27  # entries one rule may select or materialise before it gives up (dense)


class TooBig(Exception):
    """A precise rule would materialise too much; the caller falls back to the dense rule."""


def shape_of(atom) -> tuple[int, ...]:
    return tuple(atom.aval.shape)


def size_of(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def check_budget(*counts: int) -> None:
    if size_of(counts) > _WORK_LIMIT:
        raise TooBig


def empty(m: int, n: int) -> sp.csr_matrix:
    return sp.csr_matrix((m, n), dtype=bool)


def as_flat(d, shape, n) -> sp.csr_matrix:
    """``D`` with ``None`` (reads nothing) as an all-false matrix of the value's rows."""
    return empty(size_of(shape), n) if d is None else d


def seed(m: int, offset: int, n: int) -> sp.csr_matrix:
    """The state leaf at ``offset`` with ``m`` elements: element k reads state element
    ``offset + k``."""
    return sp.csr_matrix((np.ones(m, bool), np.arange(offset, offset + m), np.arange(m + 1)),
                         shape=(m, n))


def union(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b  # boolean sparse addition is ∨


def same(a, b) -> bool:
    """Equal dependency matrices, where ``None`` means "reads nothing"."""
    if a is None or b is None:
        other = b if a is None else a
        return other is None or other.nnz == 0
    return (a != b).nnz == 0


def union_vector(ins: Sequence[Any], n: int) -> sp.csr_matrix:
    """``∨`` of ``U`` over ``ins``: a ``(1, n)`` row."""
    u = empty(1, n)
    for d in ins:
        if d is not None:
            u = u + collect(d, np.zeros(d.shape[0], np.int64), 1)
    return u


def broadcast_vector(u: sp.csr_matrix, m: int) -> sp.csr_matrix:
    """``m`` rows, each the row ``u``."""
    check_budget(m, u.nnz)
    return _rows_of(u, m)


def _rows_of(u: sp.csr_matrix, m: int) -> sp.csr_matrix:
    k = u.nnz
    return sp.csr_matrix((np.ones(m * k, bool), np.tile(u.indices, m), np.arange(m + 1) * k),
                         shape=(m, u.shape[1]))


class TooDense(Exception):
    """The dense answer itself is too large to hold (more than ``2^29`` entries)."""

    def __init__(self, primitive: str, rows: int, reads: int):
        super().__init__(primitive, rows, reads)
        self.primitive, self.rows, self.reads = primitive, rows, reads


_DENSE_LIMIT = 1 << 29


def dense(eqn, ins, n):
    """The conservative answer: every output element reads everything any input reads."""
    u = union_vector(ins, n)
    if not u.nnz:
        return [None for _ in eqn.outvars]
    rows = sum(size_of(shape_of(v)) for v in eqn.outvars)
    if rows * u.nnz > _DENSE_LIMIT:
        raise TooDense(eqn.primitive.name, rows, u.nnz)
    return [_rows_of(u, size_of(shape_of(v))) for v in eqn.outvars]


def read(d: sp.csr_matrix, src) -> sp.csr_matrix:
    """``out[o] = ∨_w d[src[o, w]]`` (``src``: shape ``(m,)`` or ``(m, k)``; entries outside
    ``[0, rows)`` read nothing)."""
    src = np.asarray(src, dtype=np.int64)
    src = src.reshape(-1, 1) if src.ndim < 2 else src
    valid = (src >= 0) & (src < d.shape[0])
    cols = src[valid]
    per_row = np.diff(d.indptr)
    check_budget(int(valid.sum()) + int(per_row[cols].sum()))
    rows = np.nonzero(valid)[0]
    select = sp.csr_matrix((np.ones(cols.size, bool), (rows, cols)),
                           shape=(src.shape[0], d.shape[0]))
    return (select @ d).tocsr()


def collect(d: sp.csr_matrix, dst, m: int) -> sp.csr_matrix:
    """``out[o] = ∨_{i : dst[i] = o} d[i]`` for ``m`` output rows (``dst[i] < 0``: row ``i``
    goes nowhere)."""
    dst = np.asarray(dst, dtype=np.int64).reshape(-1)
    valid = dst >= 0
    check_budget(int(valid.sum()) + d.nnz)
    select = sp.csr_matrix((np.ones(int(valid.sum()), bool), (dst[valid], np.nonzero(valid)[0])),
                           shape=(m, d.shape[0]))
    return (select @ d).tocsr()


def broadcast_source(shape, out_shape) -> np.ndarray:
    """For an operand of ``shape`` broadcast (numpy rules) to ``out_shape``: the flat operand
    element every output element is a copy of."""
    lifted = iota(shape).reshape((1,) * (len(out_shape) - len(shape)) + tuple(shape))
    return np.broadcast_to(lifted, out_shape)


def iota(shape, offset=0):
    return np.arange(size_of(shape), dtype=np.int32).reshape(shape) + np.int32(offset)


def window_sources(shape, p) -> np.ndarray:
    """Flat operand position of every (output, window offset) pair, ``-1`` for padding and
    base-dilation holes; shape ``out_shape + window_dimensions``."""
    r = len(shape)
    padded = np_pad(iota(shape), np.int32(-1),
                    [(lo, hi, b - 1) for (lo, hi), b in zip(p["padding"], p["base_dilation"])])
    grids = []
    for d in range(r):
        w, s, wd = p["window_dimensions"][d], p["window_strides"][d], p["window_dilation"][d]
        n_out = max(0, (padded.shape[d] - (w - 1) * wd - 1) // s + 1)
        pos = np.arange(n_out)[:, None] * s + np.arange(w)[None, :] * wd
        grids.append(pos.reshape([n_out if a == d else w if a == r + d else 1
                                  for a in range(2 * r)]))
    return padded[tuple(grids)]


def window_read(d, shape, src) -> sp.csr_matrix:
    """``∨`` over each output's window: ``src`` of shape ``out_shape + window``."""
    r = len(shape)
    return read(d, src.reshape(size_of(src.shape[:r]), size_of(src.shape[r:])))


__all__ = ["TooBig", "TooDense", "shape_of", "size_of", "check_budget", "empty", "as_flat", "seed",
           "union", "same", "union_vector", "broadcast_vector", "dense", "read", "collect",
           "broadcast_source", "iota", "window_sources", "window_read"]
