"""Shared test material: the sequential reference and its residual, the Jacobian structure
the passes find, random affine steps of every structure (property tests), and the problem
table every registered method runs over (``tests/test_methods.py``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

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


def loop(fn, h0, xs=None, params=None, *, length=None, reverse=False):
    """The sequential reference, written here with ``lax.scan``: ``fn(h, x[, params])``."""
    def body(h, x):
        h = fn(h, x, params) if params is not None else fn(h, x)
        return h, h
    return jax.lax.scan(body, h0, xs, length=length, reverse=reverse)[1]


def true_residual(step, h0, zs, xs) -> float:
    """``max_t |z_t - step(z_{t-1}, x_t)|`` on a flat state, equal non-finite values
    agreeing, any other non-finite difference ``inf``."""
    prev = jnp.concatenate([h0[None], zs[:-1]])
    fz = jax.vmap(step)(prev, xs) if xs is not None else jax.vmap(lambda p: step(p, None))(prev)
    zs, fz = np.asarray(zs), np.asarray(fz)
    same = (np.isnan(zs) & np.isnan(fz)) | (~np.isfinite(zs) & (zs == fz))
    with np.errstate(invalid="ignore"):  # inf - inf: decided by ``same``
        diff = np.where(same, 0.0, np.abs(zs - fz))
    return float(np.max(np.where(np.isnan(diff), np.inf, diff), initial=0.0))


def structure_of(step, h0, xs, length=None):
    """The Jacobian structure the dependency and structure passes find for ``step(h, x)``."""
    from recur.passes._dependency import jacobian_sparsity
    from recur.passes._structure import analyse_structure
    from recur.passes._trace import trace_step
    return analyse_structure(jacobian_sparsity(trace_step(step, h0, xs, length=length)).pattern)


# ----------------------------------------------------------------------------- problems

@dataclasses.dataclass(frozen=True)
class Problem:
    """A recurrence ``fn(h, x, params)`` every method is run on: ``make(T)`` gives
    ``(h0, xs, params)`` (float64; ``xs`` may be ``None``); ``T`` for the forward test,
    ``T_grad`` for ``check_grads``; ``affine``: the whole step is affine in the state (so
    ``method="scan"`` applies); ``stages``: the number of stages the plan finds."""

    name: str
    fn: Callable
    make: Callable[[int], tuple]
    T: int
    T_grad: int
    affine: bool
    stages: int = 1

    def args(self, T: int | None = None) -> tuple[Any, Any, Any, int]:
        T = self.T if T is None else T
        return (*self.make(T), T)


def _rng(seed):
    return np.random.default_rng(seed)


def _contractive(rng, n, norm=0.8):
    A = rng.standard_normal((n, n))
    return jnp.asarray(A / np.linalg.norm(A, 2) * norm)


def _affine_diag(h, x, p):  # the README quickstart
    a, b = p
    return a * jax.nn.sigmoid(x) * h + b * x


def _affine_dense(h, x, p):
    return p["A"] @ h + p["B"] @ x


def _tanh_rnn(h, x, p):
    return jnp.tanh(p["W"] @ h + p["U"] @ x + p["b"])


def gru(h, x, p):
    """A GRU cell: ``p["W"]``, ``p["U"]`` stack the three gates' matrices."""
    z = jax.nn.sigmoid(p["W"][0] @ h + p["U"][0] @ x)
    r = jax.nn.sigmoid(p["W"][1] @ h + p["U"][1] @ x)
    n = jnp.tanh(p["W"][2] @ (r * h) + p["U"][2] @ x)
    return (1 - z) * h + z * n


def _lstm(state, x, p):
    h, c = state
    i, f, g, o = jnp.split(p["W"] @ h + p["U"] @ x + p["b"], 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _kalman(state, y, p):
    """A Kalman filter with one scalar observation: ``P`` (nonlinear in itself) is a stage
    of its own, then ``m``, affine given ``P`` (no LAPACK: the innovation is a scalar)."""
    m, P = state["m"], state["P"]
    F, H = p["F"], p["H"]
    Pp = F @ P @ F.T + p["Q"]
    s = (H @ Pp @ H.T)[0, 0] + p["R"]
    K = Pp @ H.T / s
    return {"m": F @ m + (K @ (y - H @ F @ m)), "P": Pp - s * (K @ K.T)}


def _logistic(h, x, r):  # chaotic at r = 3.9: the iterative methods stop and fall back
    return r * h * (1 - h)


def _counter(state, x, p):
    """An integer step counter next to a float state that reads it."""
    k = state["k"]
    h = jnp.tanh(p["w"] * state["h"] + x + 0.01 * k.astype(state["h"].dtype))
    return {"h": h, "k": k + 1}


def _hmm_forward(alpha, log_b, log_a):
    """The HMM forward filter in log space: linear over (log-sum-exp, +)."""
    return jax.nn.logsumexp(alpha[:, None] + log_a, axis=0) + log_b


def _make_hmm(T, K=3):
    rng = _rng(7)
    log_a = jax.nn.log_softmax(jnp.asarray(rng.standard_normal((K, K))), axis=1)
    return (jnp.full(K, -np.log(K)), jnp.asarray(rng.standard_normal((T, K))), log_a)


def _make_affine_diag(T, D=4):
    rng = _rng(0)
    return (jnp.asarray(rng.standard_normal(D)), jnp.asarray(rng.standard_normal((T, D))),
            (jnp.asarray(rng.uniform(0.5, 0.95, D)), jnp.full(D, 0.1)))


def _make_affine_dense(T, D=4):
    rng = _rng(1)
    return (jnp.asarray(rng.standard_normal(D)), jnp.asarray(rng.standard_normal((T, D))),
            {"A": _contractive(rng, D), "B": jnp.asarray(rng.standard_normal((D, D)))})


def _make_tanh_rnn(T, D=4):
    rng = _rng(2)
    return (jnp.zeros(D), jnp.asarray(rng.standard_normal((T, D))),
            {"W": _contractive(rng, D, 0.7), "U": jnp.asarray(rng.standard_normal((D, D))),
             "b": jnp.asarray(0.1 * rng.standard_normal(D))})


def _make_gru(T, D=3):
    rng = _rng(3)
    return (jnp.zeros(D), jnp.asarray(rng.standard_normal((T, D))),
            {"W": jnp.asarray(rng.standard_normal((3, D, D)) / np.sqrt(D)),
             "U": jnp.asarray(rng.standard_normal((3, D, D)) / np.sqrt(D))})


def _make_lstm(T, H=3):
    rng = _rng(4)
    return ((jnp.zeros(H), jnp.zeros(H)), jnp.asarray(rng.standard_normal((T, H))),
            {"W": jnp.asarray(rng.standard_normal((4 * H, H)) / np.sqrt(H)),
             "U": jnp.asarray(rng.standard_normal((4 * H, H)) / np.sqrt(H)),
             "b": jnp.zeros(4 * H)})


def _make_kalman(T, N=2):
    rng = _rng(5)
    dt = 0.1
    F = jnp.asarray([[1.0, dt], [0.0, 1.0]])
    return ({"m": jnp.zeros(N), "P": jnp.eye(N)},
            jnp.asarray(np.cumsum(rng.standard_normal((T, 1)), axis=0) * dt),
            {"F": F, "H": jnp.asarray([[1.0, 0.0]]), "Q": 0.01 * jnp.eye(N),
             "R": jnp.asarray(0.25)})


def _make_logistic(T):
    return jnp.asarray([0.3]), None, jnp.asarray(3.9)


def _make_counter(T, D=3):
    rng = _rng(6)
    return ({"h": jnp.zeros(D), "k": jnp.asarray(0, jnp.int32)},
            jnp.asarray(rng.standard_normal((T, D))), {"w": jnp.asarray(rng.uniform(0.3, 0.8, D))})


PROBLEMS = {p.name: p for p in (
    Problem("affine-diag", _affine_diag, _make_affine_diag, T=40, T_grad=8, affine=True),
    Problem("affine-dense", _affine_dense, _make_affine_dense, T=40, T_grad=8, affine=True),
    Problem("tanh-rnn", _tanh_rnn, _make_tanh_rnn, T=40, T_grad=8, affine=False),
    Problem("gru", gru, _make_gru, T=40, T_grad=8, affine=False),
    Problem("lstm", _lstm, _make_lstm, T=40, T_grad=8, affine=False),
    Problem("kalman", _kalman, _make_kalman, T=30, T_grad=6, affine=False, stages=2),
    Problem("logistic-chaotic", _logistic, _make_logistic, T=200, T_grad=6, affine=False),
    Problem("counter", _counter, _make_counter, T=30, T_grad=6, affine=False, stages=2),
    Problem("hmm", _hmm_forward, _make_hmm, T=40, T_grad=8, affine=False),
)}
