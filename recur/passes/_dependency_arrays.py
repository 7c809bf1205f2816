r"""Dependency arrays: how the dependency pass stores what each value reads, and the
helpers its rules share.

A value ``v`` of shape ``s`` carries ``D_v``, a boolean array of shape ``s + (n,)`` for
``n`` state elements (``D_v[k, j]``: element k of v may read state element j; see
``_dependency``), or ``None`` where ``v`` reads no state element at all.
``U(v) = ∨_k D_v[k]`` is everything any element of ``v`` reads.  The conservative rule
``dense``, ``D_out[k] = ∨_v U(v)`` (every output element reads everything any input reads),
is the answer wherever a precise rule does not apply.  A precise rule that would
materialise too much (``check_budget``: more than ``2^27`` booleans) raises ``TooBig`` and
gets the dense answer too.

Most precise rules move rows: with ``idx[k]`` the flat operand position result element
``k`` comes from (``-1``: a padding, fill or hole), ``D_out[k] = D_op[idx[k]]``
(``gather_rows``); ``window_sources`` gives those positions for every (output, window
offset) pair of a padded, base- and window-dilated window.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._numpy_primitives import np_pad

_WORK_LIMIT = 1 << 27  # booleans one rule may materialise before it gives up (dense answer)


class TooBig(Exception):
    """A precise rule would materialise too much; the caller falls back to the dense rule."""


def shape_of(atom) -> tuple[int, ...]:
    return tuple(atom.aval.shape)


def size_of(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def check_budget(*counts: int) -> None:
    if size_of(counts) > _WORK_LIMIT:
        raise TooBig


def union_vector(ins: Sequence[Any], n: int) -> np.ndarray:
    u = np.zeros(n, bool)
    for d in ins:
        if d is not None:
            u |= d.reshape(-1, n).any(axis=0)
    return u


def broadcast_vector(vec: np.ndarray, shape) -> np.ndarray:
    return np.broadcast_to(vec, tuple(shape) + vec.shape[-1:]).copy()


def union(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a | b


def dense(eqn, ins, n):
    """The conservative answer: every output element reads everything any input reads."""
    u = union_vector(ins, n)
    return [broadcast_vector(u, shape_of(v)) if u.any() else None for v in eqn.outvars]


def as_flat(d, shape, n):
    return np.zeros((size_of(shape), n), bool) if d is None else d.reshape(-1, n)


def gather_rows(d_flat: np.ndarray, idx: np.ndarray, n: int, out_shape) -> np.ndarray:
    """``out[k] = d_flat[idx[k]]``, nothing where ``idx`` is out of range (padding, fill)."""
    idx = np.asarray(idx)
    check_budget(idx.size, n)
    valid = (idx >= 0) & (idx < d_flat.shape[0])
    out = np.zeros(idx.shape + (n,), bool)
    out[valid] = d_flat[idx[valid]]
    return out.reshape(tuple(out_shape) + (n,))


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


__all__ = ["TooBig", "shape_of", "size_of", "check_budget", "union_vector", "broadcast_vector",
           "union", "dense", "as_flat", "gather_rows", "iota", "window_sources"]
