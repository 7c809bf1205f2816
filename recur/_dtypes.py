"""Dtype predicates that also know JAX's extended floats (bfloat16's numpy kind is 'V')."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def is_inexact(dtype) -> bool:
    return bool(jnp.issubdtype(np.dtype(dtype), jnp.inexact))


def is_complex(dtype) -> bool:
    return bool(jnp.issubdtype(np.dtype(dtype), jnp.complexfloating))


def is_numeric(dtype) -> bool:
    dt = np.dtype(dtype)
    return bool(jnp.issubdtype(dt, jnp.number) or jnp.issubdtype(dt, jnp.bool_))


def is_integer_or_bool(dtype) -> bool:
    dt = np.dtype(dtype)
    return bool(jnp.issubdtype(dt, jnp.integer) or jnp.issubdtype(dt, jnp.bool_))


__all__ = ["is_inexact", "is_complex", "is_numeric", "is_integer_or_bool"]
