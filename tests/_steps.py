"""Random affine step functions of every Jacobian structure, for property tests."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

STRUCTURES = ("zero", "identity", "scalar", "diagonal", "block", "dense")


@dataclasses.dataclass
class AffineCase:
    structure: str
    n: int
    k: int  # block size
    fn: object  # step(h, x, params) or step(h, x)
    h0: object
    xs: object
    params: object
    length: int
    expected_jacobian: str


def _split(z, pytree, n1):
    return {"a": z[:n1], "b": z[n1:].reshape(-1, 1)} if pytree else z


def _join(h, pytree):
    return jnp.concatenate([h["a"], h["b"].reshape(-1)]) if pytree else h


def make_case(seed: int, structure: str, *, n: int, k: int = 2, T: int, dtype=np.float64,
              with_inputs: bool = True, pytree: bool = False, permute: bool = True,
              with_params: bool = True) -> AffineCase:
    rng = np.random.default_rng(seed)
    cplx = np.dtype(dtype).kind == "c"

    def rand(*shape, scale=1.0):
        v = rng.standard_normal(shape) * scale
        if cplx:
            v = v + 1j * rng.standard_normal(shape) * scale
        return np.asarray(v, dtype=dtype)

    if structure == "block":
        n = (max(n, k) // k) * k
    m = n // k if structure == "block" else n
    perm = rng.permutation(n) if permute else np.arange(n)
    inv = np.argsort(perm)
    n1 = max(1, n // 2)
    params = {}
    # Contractive coefficients (|A| <= 0.9, times a gate <= 1.1): a scan reassociates
    # products, which is only well conditioned when the recurrence does not explode.
    if structure in ("scalar", "diagonal"):
        size = 1 if structure == "scalar" else n
        mag = rng.uniform(0.2, 0.9, size)
        phase = np.exp(1j * rng.uniform(0, 2 * np.pi, size)) if cplx else rng.choice([-1, 1], size)
        params["A"] = np.asarray(mag * phase, dtype=dtype)
    elif structure in ("block", "dense"):
        shape = (m, k, k) if structure == "block" else (1, n, n)
        mats = rand(*shape)
        norms = np.linalg.norm(mats, ord=2, axis=(-2, -1), keepdims=True)
        mats = (mats / np.maximum(norms, 1e-12) * 0.9).astype(dtype)
        params["A"] = mats if structure == "block" else mats[0]
    params["c"] = rand(n)
    params = {key: jnp.asarray(v) for key, v in params.items()}
    xs = jnp.asarray(rand(T, n)) if with_inputs else None
    gate = (lambda x: 1.0 + 0.1 * jnp.tanh(jnp.real(x))) if with_inputs else (lambda x: 1.0)

    def linear_part(z, p, x):
        if structure == "zero":
            return jnp.zeros_like(z)
        if structure == "identity":
            return z
        if structure == "scalar":
            g = gate(x[:1]) if x is not None else gate(x)
            return p["A"] * jnp.asarray(g).astype(z.dtype) * z
        if structure == "diagonal":
            return p["A"] * jnp.asarray(gate(x)).astype(z.dtype) * z
        if structure == "block":
            zb = z[perm].reshape(m, k)
            out = jnp.einsum("mij,mj->mi", p["A"], zb).reshape(n)
            return out[inv] * jnp.asarray(gate(x)).astype(z.dtype)
        return p["A"] @ z

    def flat_step(z, x, p):
        off = p["c"] if x is None else p["c"] * jnp.sin(jnp.real(x)).astype(z.dtype) + x
        return linear_part(z, p, x) + off

    if with_params:
        def fn(h, x, p):
            return _split(flat_step(_join(h, pytree), x, p), pytree, n1)
    else:
        def fn(h, x):
            return _split(flat_step(_join(h, pytree), x, params), pytree, n1)
    h0 = _split(jnp.asarray(rand(n)), pytree, n1)
    expected = {"zero": "zero", "identity": "identity", "scalar": "scalar",
                "diagonal": "diagonal", "block": f"block({k})", "dense": "dense"}[structure]
    if structure == "scalar" and pytree and n > 1:
        # c I over two leaves: the linearity pass proves c I per leaf, not that the two
        # leaves share c, so the sound claim is diagonal
        expected = "diagonal"
    if n == 1 and structure in ("diagonal", "scalar"):
        expected = "scalar"
    if structure == "block" and k == 1:
        expected = "diagonal" if n > 1 else "scalar"
    if structure == "block" and k == n:
        expected = "dense" if n > 1 else "scalar"
    if structure == "dense" and n == 1:
        expected = "scalar"
    return AffineCase(structure, n, k, fn, h0, xs, params if with_params else None, T, expected)


def loop(fn, h0, xs, params, *, length, reverse=False):
    """The sequential reference, written here with lax.scan."""
    def body(h, x):
        h = fn(h, x, params) if params is not None else fn(h, x)
        return h, h
    return jax.lax.scan(body, h0, xs, length=length, reverse=reverse)[1]
