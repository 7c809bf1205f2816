r"""Cheap ``lax`` primitives evaluated in NumPy, and any primitive applied to index arrays.

The dependency and linearity passes learn where every element of a data-movement result
comes from by applying the primitive itself to an array of element indices
(``bind_indices``):

    out = prim(iota(operand shape)),    out[k] = j  ⇒  result element k is operand element j,

with ``-1`` passed for a padding or fill value, so ``out[k] = -1`` is none of them.  The same
evaluation gives the values known at trace time (constants, iotas, shapes).  Primitives
that are pure index arithmetic (reshape with its ``dimensions`` permutation, squeeze,
expand_dims, broadcast_in_dim, transpose, slice, rev, tile, pad with negative and interior
padding, concatenate, stack, select_n, iota) and simple elementwise arithmetic and
comparisons run in NumPy with ``lax``'s semantics, which spares an XLA compilation per
equation; everything else, and a float-to-integer conversion (NaN and overflow differ from
XLA), is left to JAX's own implementation.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _np_reshape(x, new_sizes, dimensions=None, **_):
    # lax.reshape reads the operand in the order ``dimensions`` (what order="F" emits)
    return np.reshape(x if dimensions is None else np.transpose(x, dimensions), new_sizes)


def _np_broadcast_in_dim(x, shape, broadcast_dimensions, **_):
    shape, dims = tuple(shape), tuple(broadcast_dimensions)
    expanded = np.reshape(x, [x.shape[dims.index(i)] if i in dims else 1
                              for i in range(len(shape))])
    return np.broadcast_to(expanded, shape)


def np_pad(x, pv, padding_config):
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


def np_impl(eqn, vals):
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
        return [np_pad(np.asarray(vals[0]), np.asarray(vals[1]), params["padding_config"])]
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
            out = np_impl(eqn, [np.asarray(o) for o in operands])
        except Exception:  # noqa: BLE001 - fall back to JAX's own implementation
            out = None
        if out is not None:
            return out
    out = eqn.primitive.bind(*[jnp.asarray(o) for o in operands], **{**eqn.params, **overrides})
    if not eqn.primitive.multiple_results:
        out = [out]
    return [np.asarray(o) for o in out]



__all__ = ["bind_indices", "np_impl", "np_pad"]
