r"""Exact parallel-in-time evaluation of affine recurrences.

The recurrence
--------------
For ``t = 0, ..., T-1``

.. math::  h_t = A_t h_{t-1} + b_t, \qquad h_{-1} = h_0,

and all ``h_t`` are returned (leading axis ``T``).  Two structures of ``A_t`` are
supported:

* :func:`diagonal_scan` -- ``A_t = diag(a_t)`` (``a`` of shape ``(T, n)``), or a scalar
  multiple of the identity (``a`` of shape ``(T, 1)``, broadcast);
* :func:`block_scan` -- ``A_t`` block-diagonal with ``m`` independent ``k x k`` blocks
  (``a`` of shape ``(T, m, k, k)``); a dense matrix is ``m = 1, k = n``.

``reverse=True`` runs the same recurrence backwards in time,
``h_t = A_t h_{t+1} + b_t`` with ``h_T = h_0``.

The associative operator
------------------------
One step is the affine map ``x -> A x + b``, written ``(A, b)``.  Composition of
affine maps, "first ``(A1, b1)`` then ``(A2, b2)``",

.. math::  (A_2, b_2) \circ (A_1, b_1) = (A_2 A_1,\; A_2 b_1 + b_2),

is associative with identity ``(I, 0)``, so ``h_t = ((A_t, b_t) \circ \dots \circ
(A_0, b_0))(h_0)`` is a prefix "sum" of this operator and can be evaluated by any
parallel prefix algorithm (Blelloch 1990).  For the diagonal structure the products
``A_2 A_1`` are elementwise (``O(n)``); for blocks they are ``k x k`` matrix products
(``O(m k^3)``, a factor ``k`` more than one sequential step ``O(m k^2)``).

The chunked algorithm
---------------------
``jax.lax.associative_scan`` is a recursive odd/even scheme unrolled at trace time
(about ``2 log2 T`` levels of strided slices and concatenations): ``O(T)`` work but
many full-size temporaries and long compiles.  Here the time axis is cut into
``C = ceil(T / L)`` chunks of ``L`` consecutive steps (``L = chunk``; the last chunk
is padded with identity steps ``(I, 0)``, which leave the state unchanged), and

1. **reduce** -- one ``lax.scan`` over the ``L`` positions of a chunk, vectorised over
   all ``C`` chunks at once, composes each chunk's steps into its summary
   ``(P_c, S_c) = (A_{end} \cdots A_{start}, \text{its affine part})``;
2. **combine** -- the state entering chunk ``c`` is the recurrence over chunk summaries,
   ``H_c = P_c H_{c-1} + S_c``: a recurrence of length ``C`` of the same kind, solved by
   calling this kernel recursively (with its own default chunk size, so that a long
   sequence becomes a tree of depth ``log_L T``; short ones are a plain loop);
3. **rescan** -- a second ``lax.scan`` over the ``L`` positions, again vectorised over
   the chunks, reruns each chunk from its carried-in state ``H_{c-1}`` and writes
   ``h_t`` in place.

Chunks are read in their natural ``(C, L, ...)`` layout (position ``l`` of every chunk
is one strided slice), so no transposed copy of the inputs or the output is made.

Work and depth: the reduce pass costs one operator application per step
(``T`` products ``A_t P``; ``O(T n)`` diagonal, ``O(T m k^3)`` blocks), the rescan pass one
ordinary step per step (``O(T n)`` / ``O(T m k^2)``), the combine ``O(C)`` operator
applications: total work about twice the sequential loop (diagonal), depth
``O(L + C)`` for one level and ``O(L log_L T)`` with the recursion.  ``chunk=T`` is the
plain sequential ``lax.scan`` (work ``T`` steps, depth ``T``); ``chunk=1`` makes every
step its own chunk (the combine then is the whole recurrence).

Default chunk size
------------------
The sequential loop on CPU, chunks of 64 (recursively) on GPU/TPU: ``_chunk_policy.py``.

Numerics
--------
Everything is accumulated in at least float32 (complex64): bfloat16 / float16 inputs
are upcast, the result is cast back to ``result_type(a, b, h0)``.  The results equal
the sequential loop up to rounding (the summaries reassociate the products).  The
products of coefficients over a chunk (its summary) are kept as ``M · 2^e`` with an integer
exponent (``_scaled.py``), so a product that leaves the floating-point range --
``5^64`` in float32 on the accelerator chunk of 64 -- does not overflow where the loop's
state stays finite.

Differentiation
---------------
The kernels are wrapped in :func:`jax.lax.custom_linear_solve`: the trajectory is the
solution of the lower-bidiagonal (upper for ``reverse``) linear system
``h_t - A_t h_{t-1} = b_t`` with ``h_{-1} = h_0`` appended as an unknown.  ``jvp``
reuses the forward kernel on the tangents; the transpose (``vjp``/``grad``) is the
adjoint recurrence -- the same kernel run in the other direction with the shifted,
transposed ``A`` -- so derivatives cost one more scan each and never differentiate
through the kernel's internals.  Everything is ``jit``/``vmap``-able; there is no
``while_loop``, so the functions are transposable (linear in ``(b, h0)``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .._errors import StepFunctionError
from . import _sharding
from ._chunk_policy import _resolve_chunk, _unroll, default_chunk
from ._scaled import _Block, _Diag

__all__ = ["diagonal_scan", "block_scan", "default_chunk"]

# ----------------------------------------------------------------------------- dtypes

def _dtypes(*xs):
    """(result dtype, compute dtype): at least float32 / complex64 for the compute."""
    with jax.numpy_dtype_promotion("standard"):
        out = jnp.result_type(*xs)
    if jnp.issubdtype(out, jnp.complexfloating):
        comp = jnp.dtype(jnp.complex128) if out.itemsize >= 16 else jnp.dtype(jnp.complex64)
    elif jnp.issubdtype(out, jnp.floating) and out.itemsize >= 8:
        comp = jnp.dtype(jnp.float64)
    else:  # float32, bfloat16, float16, ints, bools
        comp = jnp.dtype(jnp.float32)
    # Without x64, float64/complex128 silently become 32-bit; keep JAX's canonical dtype.
    comp = jnp.dtype(jax.dtypes.canonicalize_dtype(comp))
    return out, comp


# ----------------------------------------------------------------------------- structures
# The coefficient structures (diagonal, block) and their scaled products: ``_scaled.py``.

def _tmap(fn, *trees):
    return jax.tree.map(fn, *trees)


def _coeff_shape(A):
    return jax.tree.leaves(A)[0].shape


def _pad_eye(S, A, pad):
    """``A`` with ``pad`` identity steps appended along time."""
    m = jax.tree.leaves(A)[0]
    eye = S.eye((pad,) + m.shape[1:], m.dtype)
    return _tmap(lambda x, y: jnp.concatenate([x, y]), A, eye)


# ----------------------------------------------------------------------------- kernels

def _sequential(S, a, b, h0, reverse):
    """Plain ``lax.scan`` over time (``chunk = T``)."""

    def step(h, ab):
        at, bt = ab
        h = S.apply(at, h) + bt
        return h, h

    _, hs = lax.scan(step, h0, (a, b), reverse=reverse)
    return hs


def _reduce_chunks(S, a3, b3, reverse, unroll):
    """Summaries ``(P_c, S_c)`` of the chunks ``a3, b3`` (shape ``(C, L, ...)``): one
    ``lax.scan`` over the ``L`` positions, vectorised over the chunks; ``P_c`` scaled."""
    L = b3.shape[1]
    positions = jnp.arange(L)
    first = L - 1 if reverse else 0
    P0, S0 = S.lift(_tmap(lambda x: x[:, first], a3)), b3[:, first]
    rest = positions[:-1] if reverse else positions[1:]

    def reduce_step(carry, l):
        P, Sm = carry
        at = _tmap(lambda x: lax.dynamic_index_in_dim(x, l, axis=1, keepdims=False), a3)
        bt = lax.dynamic_index_in_dim(b3, l, axis=1, keepdims=False)
        return (S.mul(at, P), S.apply(at, Sm) + bt), None

    (P, Sm), _ = lax.scan(reduce_step, (P0, S0), rest, reverse=reverse, unroll=unroll)
    return P, Sm


def _split_chunks(S, a, b, L):
    """``(a3, b3, pad)``: time cut into ``C = ceil(T / L)`` chunks of ``L`` steps, the last
    padded with identity steps (which leave the state unchanged in either direction)."""
    T = b.shape[0]
    C = -(-T // L)
    pad = C * L - T
    if pad:
        a = _pad_eye(S, a, pad)
        b = jnp.concatenate([b, jnp.zeros((pad,) + b.shape[1:], b.dtype)])
    a3 = _tmap(lambda x: x.reshape((C, L) + x.shape[1:]), a)
    return a3, b.reshape((C, L) + b.shape[1:]), pad


def _summary(S, a, b, reverse, chunk):
    """The composition ``(P, S)`` of all ``T`` steps (one affine map, ``P`` scaled), by the
    reduce pass of the chunked scheme applied recursively (a plain fold when
    ``chunk >= T``)."""
    T = b.shape[0]
    L = min(_resolve_chunk(T, chunk), T)
    a3, b3, _ = _split_chunks(S, a, b, L)
    P, Sm = _reduce_chunks(S, a3, b3, reverse, _unroll(L))
    if b3.shape[0] == 1:
        return _tmap(lambda x: x[0], P), Sm[0]
    return _summary(S.scaled, P, Sm, reverse, None)


def _sharded_kernel(S, a, b, h0, reverse, chunk):
    """The recurrence over a time axis split across devices (``runtime/_sharding.py``):
    local summaries, one ``all_gather``, the length-``D`` recurrence over the summaries,
    and the local scan from the state entering this device's piece."""
    ax = _sharding.current()
    P_loc, S_loc = _summary(S, a, b, reverse, chunk)
    Ps, Ss = _tmap(_sharding.gather, P_loc), _sharding.gather(S_loc)
    H = _sequential(S.scaled, Ps, Ss, h0, reverse)        # state after each piece
    p = _sharding.position(ax)
    if reverse:
        h_in = jnp.where(p == ax.size - 1, h0, _sharding.pick(H, jnp.minimum(p + 1, ax.size - 1)))
    else:
        h_in = jnp.where(p == 0, h0, _sharding.pick(H, jnp.maximum(p - 1, 0)))
    return _kernel(S, a, b, h_in, reverse, chunk)


def _kernel(S, a, b, h0, reverse, chunk):
    """All states of the recurrence, inputs already in the compute dtype."""
    T = b.shape[0]
    if T == 0:
        return jnp.zeros(b.shape, b.dtype)
    L = _resolve_chunk(T, chunk)
    if L >= T or T == 1:
        return _sequential(S, a, b, h0, reverse)

    a3, b3, pad = _split_chunks(S, a, b, L)
    C = b3.shape[0]
    unroll = _unroll(L)
    positions = jnp.arange(L)

    def at_pos(x, l):  # position l of every chunk: (C, ...)
        return lax.dynamic_index_in_dim(x, l, axis=1, keepdims=False)

    # 1. reduce: per-chunk summaries (P_c, S_c), P_c scaled
    P, Sm = _reduce_chunks(S, a3, b3, reverse, unroll)

    # 2. combine: state after each chunk, then the state entering each chunk
    H = _kernel(S.scaled, P, Sm, h0, reverse, None)
    if reverse:
        H_in = jnp.concatenate([H[1:], h0[None]])
    else:
        H_in = jnp.concatenate([h0[None], H[:-1]])

    # 3. rescan every chunk from its carried-in state, writing the output in place
    def rescan_step(carry, l):
        h, out = carry
        h = S.apply(_tmap(lambda x: at_pos(x, l), a3), h) + at_pos(b3, l)
        out = lax.dynamic_update_index_in_dim(out, h, l, axis=1)
        return (h, out), None

    out0 = jnp.zeros((C, L) + b.shape[1:], b.dtype)
    (_, out), _ = lax.scan(rescan_step, (H_in, out0), positions, reverse=reverse, unroll=unroll)
    out = out.reshape((C * L,) + b.shape[1:])
    return out[:T] if pad else out


# ----------------------------------------------------------------------------- linear-solve wrapper

def _shift(x, first, reverse):
    """``x_{t-1}`` for each ``t`` (``x_{t+1}`` if reverse), with ``first`` at the boundary."""
    if reverse:
        return jnp.concatenate([x[1:], first[None]])
    return jnp.concatenate([first[None], x[:-1]])


def _solve_affine(S, a, b, h0, reverse, chunk):
    """``_kernel`` with exact derivatives: the values are the kernel's on ``(a, b, h0)`` as
    given (no copies on the forward path); the derivative (``_solve_affine_jvp``) solves
    the same recurrence for the tangents."""
    return _affine(S, reverse, chunk, a, b, h0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _affine(S, reverse, chunk, a, b, h0):
    return _kernel(S, a, b, h0, reverse, chunk)


@_affine.defjvp
def _solve_affine_jvp(S, reverse, chunk, primals, tangents):
    """``dh_t = A_t dh_{t-1} + dA_t h_{t-1} + db_t``, ``dh_{-1} = dh0``: with ``e`` the first
    step, the right-hand side ``r = db + dA shift(h, h0)``, ``r_e += A_e dh0``, one array
    linear in the tangents, solved by ``_tangent_solve``."""
    a, b, h0 = primals
    da, db, dh0 = tangents
    h = _affine(S, reverse, chunk, a, b, h0)
    edge = b.shape[0] - 1 if reverse else 0
    r = db + S.apply(da, _shift(h, h0, reverse))
    r = r.at[edge].add(S.apply(a[edge], dh0))
    return h, _tangent_solve(S, a, r, reverse, chunk)


def _tangent_solve(S, a, r, reverse, chunk):
    """``h_t - A'_t h_{t-1} = r_t`` (``h_{-1} = 0``, ``A'`` = ``A`` with the first step's
    coefficient zero) in ``custom_linear_solve``: exact jvp and transpose, one right-hand
    side (with ``(b, h0)`` as a pair, JAX could not transpose the derivative w.r.t. ``A``
    alone: the ``h0`` part was a constant zero).  ``A'_e`` is zero rather than ``A_e`` times
    a zero state, so an infinite ``A_e`` gives what the loop gives, not ``∞ · 0``."""
    edge = r.shape[0] - 1 if reverse else 0
    a0 = a.at[edge].set(jnp.zeros_like(a[edge]))
    zero = jnp.zeros(r.shape[1:], r.dtype)

    def matvec(h):
        return h - S.apply(a0, _shift(h, zero, reverse))

    def solve(_, rr):
        return _kernel(S, a0, rr, zero, reverse, chunk)

    def transpose_solve(_, g):
        # M^T x = g:  x_t - A_{t+1}^T x_{t+1} = g_t  (reverse: A_{t-1}^T x_{t-1}); A'_e is
        # never read (it is the coefficient that multiplies the zero boundary)
        at = S.transpose(a0)
        if reverse:  # adjoint runs forwards, coefficient A_{t-1}^T at t (t=0 multiplies 0)
            a_adj = jnp.concatenate([at[:1], at[:-1]])
        else:        # adjoint runs backwards, coefficient A_{t+1}^T at t (t=T-1 multiplies 0)
            a_adj = jnp.concatenate([at[1:], at[-1:]])
        return _kernel(S, a_adj, g, zero, not reverse, chunk)

    return lax.custom_linear_solve(matvec, r, solve, transpose_solve)


_STRUCTURES = {"diag": _Diag, "block": _Block}


@functools.partial(jax.jit, static_argnames=("structure", "reverse", "chunk", "out_dtype", "comp",
                                             "axis"))
def _run(a, b, h0, *, structure, reverse, chunk, out_dtype, comp, axis):
    # jitted so that eager calls are cached; under an outer jit this is just inlined.
    squeeze = structure == "block" and b.shape[1] == 1
    if squeeze:
        # One dense block: drop the size-1 block axis.  Callers typically add it with
        # ``a[:, None]``; XLA:CPU then copies the whole array into another layout unless the
        # reshape is undone here (measured: 70 ms instead of 13 ms for T=2^14, k=32).
        a, b, h0 = a[:, 0], b[:, 0], h0[0]
    S, a, b, h0 = _STRUCTURES[structure], a.astype(comp), b.astype(comp), h0.astype(comp)
    if axis is None:
        hs = _solve_affine(S, a, b, h0, reverse, chunk)
    else:
        # Across devices the kernel is used as it is: it is linear in (b, h0) and made of
        # scans and collectives that JAX transposes itself (the adjoint is the reverse
        # sharded scan), so no custom_linear_solve is needed.
        with _sharding.along(axis):
            hs = _sharded_kernel(S, a, b, h0, reverse, chunk)
    hs = hs.astype(out_dtype)
    return hs[:, None] if squeeze else hs


# ----------------------------------------------------------------------------- public API

def diagonal_scan(a, b, h0, *, reverse=False, chunk=None):
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (elementwise), ``h_{-1} = h0``.

    Args:
      a: ``(T, n)`` gates, or ``(T, 1)`` to broadcast one scalar per step.
      b: ``(T, n)`` inputs.
      h0: ``(n,)`` initial state.
      reverse: run backwards: ``hs[T-1] = a[T-1] * h0 + b[T-1]``,
        ``hs[t] = a[t] * hs[t+1] + b[t]``.
      chunk: chunk length of the parallel scheme (see the module docstring); ``None``
        picks :func:`default_chunk`; ``chunk >= T`` is the sequential loop.

    Returns:
      ``hs`` of shape ``(T, n)`` and dtype ``result_type(a, b, h0)``, computed in at
      least float32.
    """
    a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
    if b.ndim != 2:
        raise StepFunctionError(f"diagonal_scan: b must have shape (T, n), got {b.shape}")
    T, n = b.shape
    if h0.shape != (n,):
        raise StepFunctionError(f"diagonal_scan: h0 must have shape ({n},) to match b {b.shape}, "
                                f"got {h0.shape}")
    if a.ndim != 2 or a.shape[0] != T or a.shape[1] not in (1, n):
        raise StepFunctionError(f"diagonal_scan: a must have shape ({T}, {n}) or ({T}, 1) to "
                                f"match b {b.shape}, got {a.shape}")
    out_dtype, comp = _dtypes(a, b, h0)
    if T == 0:
        return jnp.zeros((0, n), out_dtype)
    chunk = None if chunk is None else _resolve_chunk(T, chunk)  # validate eagerly
    return _run(a, b, h0, structure="diag", reverse=bool(reverse), chunk=chunk,
                out_dtype=out_dtype, comp=comp, axis=_sharding.current())


def block_scan(a, b, h0, *, reverse=False, chunk=None):
    """All states of ``h_t[j] = a[t, j] @ h_{t-1}[j] + b[t, j]`` for ``m`` blocks ``j``.

    Args:
      a: ``(T, m, k, k)`` block transition matrices (dense: ``m = 1``, ``k = n``).
      b: ``(T, m, k)`` inputs.
      h0: ``(m, k)`` initial state.
      reverse: run backwards (``hs[t] = a[t] @ hs[t+1] + b[t]``, ``hs[T-1]`` from ``h0``).
      chunk: chunk length, as for :func:`diagonal_scan`.

    Returns:
      ``hs`` of shape ``(T, m, k)`` and dtype ``result_type(a, b, h0)``.
    """
    a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
    if b.ndim != 3:
        raise StepFunctionError(f"block_scan: b must have shape (T, m, k), got {b.shape}")
    T, m, k = b.shape
    if a.shape != (T, m, k, k):
        raise StepFunctionError(f"block_scan: a must have shape {(T, m, k, k)} to match b "
                                f"{b.shape}, got {a.shape}")
    if h0.shape != (m, k):
        raise StepFunctionError(f"block_scan: h0 must have shape {(m, k)} to match b {b.shape}, "
                                f"got {h0.shape}")
    out_dtype, comp = _dtypes(a, b, h0)
    if T == 0:
        return jnp.zeros((0, m, k), out_dtype)
    chunk = None if chunk is None else _resolve_chunk(T, chunk)
    return _run(a, b, h0, structure="block", reverse=bool(reverse), chunk=chunk,
                out_dtype=out_dtype, comp=comp, axis=_sharding.current())
