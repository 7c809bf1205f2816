"""Dtype predicates that also know JAX's extended dtypes: bfloat16 (numpy kind 'V') and
new-style PRNG key arrays (``jax.random.key``, dtype ``key<impl>``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_key(dtype) -> bool:
    """A typed PRNG key array (``jax.random.key``): exact, never converted to a number."""
    try:
        return bool(jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key))
    except TypeError:
        return False


def is_inexact(dtype) -> bool:
    return not is_key(dtype) and bool(jnp.issubdtype(np.dtype(dtype), jnp.inexact))


def is_complex(dtype) -> bool:
    return not is_key(dtype) and bool(jnp.issubdtype(np.dtype(dtype), jnp.complexfloating))


def is_numeric(dtype) -> bool:
    """Numbers and booleans, or PRNG keys: what a recurrence's leaves may hold."""
    if is_key(dtype):
        return True
    dt = np.dtype(dtype)
    return bool(jnp.issubdtype(dt, jnp.number) or jnp.issubdtype(dt, jnp.bool_))


def is_exact(dtype) -> bool:
    """Integers, booleans and keys: values recur computes exactly, never through floats."""
    return not is_inexact(dtype)


def dtype_name(dtype) -> str:
    return getattr(dtype, "name", str(dtype))


__all__ = ["is_key", "is_inexact", "is_complex", "is_numeric", "is_exact", "dtype_name"]
