"""The affine scan kernels (recur.runtime._scan) against a sequential loop.

Values (float64 to ~1e-12, float32/complex64 to float32 rounding, bfloat16/float16 with
float32 accumulation), every chunk arrangement (chunk=1, chunk=T, chunks that do not
divide T), reverse, jit/vmap, and derivatives in both modes.
"""

import functools

import jax

jax.config.update("jax_enable_x64", True)  # tests/conftest.py does the same

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jax import lax  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from recur._errors import PlanError, StepFunctionError  # noqa: E402
from recur.runtime._scan import block_scan, default_chunk, diagonal_scan  # noqa: E402

TOL = {
    np.dtype(np.float64): 1e-12, np.dtype(np.complex128): 1e-12,
    np.dtype(np.float32): 1e-5, np.dtype(np.complex64): 1e-5,
    np.dtype(jnp.bfloat16): 2 ** -7, np.dtype(np.float16): 2 ** -10,
}


# ----------------------------------------------------------------------------- references

def loop(a, b, h0, *, reverse=False, block=False):
    """The recurrence as a plain numpy loop in float64 / complex128."""
    a, b, h0 = (np.asarray(x) for x in (a, b, h0))
    wide = np.complex128 if any(np.iscomplexobj(x) for x in (a, b, h0)) else np.float64
    a, b, h0 = (x.astype(wide) for x in (a, b, h0))
    out = np.zeros(b.shape, wide)
    h = h0
    for t in (range(b.shape[0] - 1, -1, -1) if reverse else range(b.shape[0])):
        h = (np.einsum("mij,mj->mi", a[t], h) if block else a[t] * h) + b[t]
        out[t] = h
    return out


def seq(a, b, h0, *, reverse=False, block=False):
    """The recurrence as ``lax.scan`` (for derivatives)."""

    def step(h, ab):
        at, bt = ab
        h = (jnp.einsum("mij,mj->mi", at, h) if block else at * h) + bt
        return h, h

    return lax.scan(step, h0, (a, b), reverse=reverse)[1]


def assert_close(x, ref, tol):
    x = np.asarray(x).astype(np.complex128)
    ref = np.asarray(ref).astype(np.complex128)
    assert x.shape == ref.shape
    scale = 1.0 + float(np.max(np.abs(ref), initial=0.0))
    err = float(np.max(np.abs(x - ref), initial=0.0))
    assert err <= tol * scale, (err, scale, tol)


def make_diag(rng, T, n, dtype=np.float64, *, scalar_a=False):
    na = 1 if scalar_a else n
    a = rng.uniform(-1.0, 1.0, (T, na))
    b = rng.normal(size=(T, n))
    h0 = rng.normal(size=n)
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, (T, na)))
        b = b + 1j * rng.normal(size=(T, n))
        h0 = h0 + 1j * rng.normal(size=n)
    return tuple(jnp.asarray(x, dtype) for x in (a, b, h0))


def make_block(rng, T, m, k, dtype=np.float64):
    a = 0.9 * rng.normal(size=(T, m, k, k)) / np.sqrt(k)
    b = rng.normal(size=(T, m, k))
    h0 = rng.normal(size=(m, k))
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, (T, m, k, k)))
        b = b + 1j * rng.normal(size=(T, m, k))
        h0 = h0 + 1j * rng.normal(size=(m, k))
    return tuple(jnp.asarray(x, dtype) for x in (a, b, h0))


@functools.lru_cache(maxsize=None)
def both_directions(kind, chunk):
    """One compiled program computing the forward and the reverse scan."""
    f = diagonal_scan if kind == "diag" else block_scan
    return jax.jit(lambda a, b, h0: (f(a, b, h0, chunk=chunk), f(a, b, h0, chunk=chunk,
                                                                  reverse=True)))


# ----------------------------------------------------------------------------- values

# (T, chunk): T = 0, 1, 2, chunk = 1, chunk = T, chunks dividing T and not, a few hundred.
DIAG_CASES = [(0, None), (1, None), (1, 1), (2, 1), (7, None), (7, 3), (16, 4), (17, 4),
              (200, 1), (200, 16), (200, 33), (200, 200)]


@pytest.mark.parametrize("T,chunk", DIAG_CASES)
def test_diag_float64_equals_loop(T, chunk):
    rng = np.random.default_rng(T)
    a, b, h0 = make_diag(rng, T, 3)
    fwd, rev = both_directions("diag", chunk)(a, b, h0)
    assert fwd.dtype == rev.dtype == jnp.float64
    assert_close(fwd, loop(a, b, h0), 1e-12)
    assert_close(rev, loop(a, b, h0, reverse=True), 1e-12)


BLOCK_CASES = [(0, None, 2, 3), (1, None, 2, 3), (6, 1, 2, 3), (33, 8, 2, 3), (33, 33, 1, 4),
               (40, 7, 1, 4)]


@pytest.mark.parametrize("T,chunk,m,k", BLOCK_CASES)
def test_block_float64_equals_loop(T, chunk, m, k):
    rng = np.random.default_rng(T)
    a, b, h0 = make_block(rng, T, m, k)
    fwd, rev = both_directions("block", chunk)(a, b, h0)
    assert fwd.shape == (T, m, k) and fwd.dtype == jnp.float64
    assert_close(fwd, loop(a, b, h0, block=True), 1e-12)
    assert_close(rev, loop(a, b, h0, reverse=True, block=True), 1e-12)


DTYPES = [np.float64, np.float32, np.complex128, np.complex64, jnp.bfloat16, np.float16]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), T=st.sampled_from([0, 1, 2, 3, 5, 8, 13, 64]),
       n=st.sampled_from([1, 3]), chunk=st.sampled_from([None, 1, 2, 3, 4, 8, 64]),
       dtype=st.sampled_from(DTYPES), scalar_a=st.booleans(), reverse=st.booleans())
def test_diag_random(seed, T, n, chunk, dtype, scalar_a, reverse):
    rng = np.random.default_rng(seed)
    a, b, h0 = make_diag(rng, T, n, dtype, scalar_a=scalar_a)
    hs = diagonal_scan(a, b, h0, chunk=chunk, reverse=reverse)
    assert hs.shape == (T, n) and hs.dtype == np.dtype(dtype)
    assert_close(hs, loop(a, b, h0, reverse=reverse), TOL[np.dtype(dtype)])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), T=st.sampled_from([0, 1, 4, 9]),
       mk=st.sampled_from([(1, 1), (1, 3), (3, 2)]), chunk=st.sampled_from([None, 1, 2, 4]),
       dtype=st.sampled_from([np.float64, np.float32, np.complex64, jnp.bfloat16]),
       reverse=st.booleans())
def test_block_random(seed, T, mk, chunk, dtype, reverse):
    rng = np.random.default_rng(seed)
    a, b, h0 = make_block(rng, T, *mk, dtype)
    hs = block_scan(a, b, h0, chunk=chunk, reverse=reverse)
    assert hs.shape == (T, *mk) and hs.dtype == np.dtype(dtype)
    assert_close(hs, loop(a, b, h0, reverse=reverse, block=True), TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype,chunk", [(jnp.bfloat16, None), (np.float16, 64)])
def test_low_precision_accumulates_in_float32(dtype, chunk):
    # h_t = h_{t-1} + 1: in bfloat16 (float16) the running sum would stall at 256 (2048).
    T = 2500
    a = jnp.ones((T, 1), dtype)
    b = jnp.ones((T, 2), dtype)
    h0 = jnp.zeros(2, dtype)
    hs = diagonal_scan(a, b, h0, chunk=chunk)
    assert hs.dtype == np.dtype(dtype)
    expected = np.arange(1, T + 1, dtype=np.float64)[:, None].repeat(2, 1).astype(dtype)
    np.testing.assert_array_equal(np.asarray(hs, np.float64), expected.astype(np.float64))


def test_mixed_real_gate_complex_state():
    rng = np.random.default_rng(3)
    a, _, _ = make_diag(rng, 10, 2, np.float64)
    _, b, h0 = make_diag(rng, 10, 2, np.complex128)
    hs = diagonal_scan(a, b, h0, chunk=3)
    assert hs.dtype == jnp.complex128
    assert_close(hs, loop(a, b, h0), 1e-12)


# ----------------------------------------------------------------------------- jit / vmap

@pytest.mark.parametrize("chunk", [None, 4])
def test_vmap_and_jit_agree(chunk):
    rng = np.random.default_rng(7)
    batch = [make_diag(rng, 21, 3) for _ in range(3)]
    a, b, h0 = (jnp.stack(x) for x in zip(*batch))
    f = functools.partial(diagonal_scan, chunk=chunk)
    vm = jax.vmap(f)(a, b, h0)
    jvm = jax.jit(jax.vmap(f))(a, b, h0)
    for i in range(3):
        assert_close(vm[i], loop(a[i], b[i], h0[i]), 1e-12)
    np.testing.assert_allclose(np.asarray(jvm), np.asarray(vm), rtol=1e-13, atol=1e-13)
    # batching only some arguments (shared gates)
    vm2 = jax.vmap(f, in_axes=(None, 0, 0))(a[0], b, h0)
    assert_close(vm2[2], loop(a[0], b[2], h0[2]), 1e-12)

    A, B, H = make_block(rng, 21, 2, 2)
    g = functools.partial(block_scan, chunk=chunk, reverse=True)
    vb = jax.jit(jax.vmap(g, in_axes=(None, 0, None)))(A, jnp.stack([B, 2 * B]), H)
    assert_close(vb[1], loop(A, 2 * B, H, reverse=True, block=True), 1e-12)


# ----------------------------------------------------------------------------- derivatives

GRAD_CASES = [("diag", None, False), ("diag", 3, True), ("block", None, True), ("block", 2, False)]


@pytest.mark.parametrize("kind,chunk,reverse", GRAD_CASES)
def test_grad_and_jvp_equal_loop(kind, chunk, reverse):
    rng = np.random.default_rng(11)
    T = 8
    block = kind == "block"
    args = make_block(rng, T, 2, 2) if block else make_diag(rng, T, 3)
    kern = block_scan if block else diagonal_scan

    def f(*x):
        return kern(*x, chunk=chunk, reverse=reverse)

    def g(*x):
        return seq(*x, reverse=reverse, block=block)

    def loss(fn):
        return jax.jit(jax.grad(lambda *x: jnp.sum(jnp.sin(fn(*x))), argnums=(0, 1, 2)))

    for x, y in zip(loss(f)(*args), loss(g)(*args)):
        assert_close(x, y, 1e-12)
    for i in range(3):  # w.r.t. one argument, the others constants (A alone: the gates)
        def one(fn, v, i=i):
            return jnp.sum(jnp.sin(fn(*args[:i], v, *args[i + 1:])))
        assert_close(jax.grad(functools.partial(one, f))(args[i]),
                     jax.grad(functools.partial(one, g))(args[i]), 1e-12)
    tangents = tuple(jnp.asarray(rng.normal(size=x.shape)) for x in args)
    (p1, t1), (p2, t2) = (jax.jit(lambda *x, fn=fn: jax.jvp(fn, x, tangents))(*args)
                          for fn in (f, g))
    assert_close(p1, p2, 1e-12)
    assert_close(t1, t2, 1e-12)
    # transposable: linear in (b, h0)
    lt_f = jax.linear_transpose(lambda b, h0: f(args[0], b, h0), *args[1:])
    lt_g = jax.linear_transpose(lambda b, h0: g(args[0], b, h0), *args[1:])
    ct = jnp.asarray(rng.normal(size=p1.shape))
    for x, y in zip(lt_f(ct), lt_g(ct)):
        assert_close(x, y, 1e-12)


def test_check_grads_complex_and_second_order():
    rng = np.random.default_rng(5)
    a, b, h0 = make_diag(rng, 5, 2, np.complex128)
    check_grads(lambda *x: diagonal_scan(*x, chunk=2), (a, b, h0), order=1,
                modes=("fwd", "rev"))
    a, b, h0 = make_diag(rng, 5, 2, np.float64)
    check_grads(lambda *x: diagonal_scan(*x, chunk=2, reverse=True), (a, b, h0), order=2,
                modes=("rev",))


# ----------------------------------------------------------------------------- policy, errors

def test_default_chunk_policy():
    assert default_chunk(0) == 1 and default_chunk(1) == 1
    assert default_chunk(2**17, backend="cpu") == 2**17
    assert default_chunk(2**17, backend="gpu") == 64
    assert default_chunk(10, backend="gpu") == 10


def test_bad_arguments():
    a, b, h0 = jnp.ones((4, 3)), jnp.ones((4, 3)), jnp.ones(3)
    with pytest.raises(StepFunctionError):
        diagonal_scan(a, b, jnp.ones(2))
    with pytest.raises(StepFunctionError):
        diagonal_scan(jnp.ones((4, 2)), b, h0)
    with pytest.raises(StepFunctionError):
        block_scan(jnp.ones((4, 1, 3, 2)), jnp.ones((4, 1, 3)), jnp.ones((1, 3)))
    with pytest.raises(PlanError):
        diagonal_scan(a, b, h0, chunk=0)


# ----------------------------------------------------------------------------- scaled products

@settings(max_examples=60, deadline=None)
@given(re=st.floats(allow_nan=True, allow_infinity=True, width=32),
       im=st.floats(allow_nan=False, allow_infinity=False, width=32),
       dtype=st.sampled_from([np.float16, np.float32, np.float64, np.complex64, np.complex128]))
def test_frexp_by_bits_is_exact(re, im, dtype):
    """``m = f 2^d`` exactly, the larger part of ``f`` in ``[0.5, 1)`` (or ``f = m``, ``d = 0``
    for zero, subnormal and non-finite ``m``); a part ``2^bias`` times smaller than the other
    may become zero (below rounding of the magnitude)."""
    from recur.runtime._scaled import _frexp
    with np.errstate(over="ignore"):  # beyond float16's range: inf, a case of its own
        m = np.asarray(re + (1j * im if np.issubdtype(dtype, np.complexfloating) else 0), dtype)
    f, d = (np.asarray(v) for v in _frexp(jnp.asarray(m)))
    fi = np.finfo(dtype)
    big = max(abs(m.real), abs(m.imag))
    if not np.isfinite(big) or big < fi.smallest_normal:
        assert d == 0 and (f == m or np.isnan(big))
        return
    assert 0.5 <= max(abs(f.real), abs(f.imag)) < 1
    back = f.astype(np.complex128 if np.iscomplexobj(f) else np.float64) * 2.0 ** int(d)
    assert abs(back - m) <= big * 2.0 ** -60 + fi.smallest_normal


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_chunk_products_beyond_the_float_range(dtype):
    """``5^64`` overflows float32 but the loop's state stays finite (``h0 = 1e-33``): the
    chunked kernel's scaled products agree with the loop."""
    T, n = 128, 3
    a = np.full((T, n), 5.0, dtype) * (np.exp(0.3j) if np.iscomplexobj(np.zeros(1, dtype))
                                       else 1)
    a[64:] = 1 / a[64:]
    b = np.zeros((T, n), dtype)
    h0 = np.full(n, 1e-33, dtype)
    want = loop(a, b, h0)
    got = np.asarray(diagonal_scan(jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0), chunk=64))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=0)


def test_block_chunk_products_beyond_the_float_range():
    """The same for 2 x 2 blocks: ``(5 R)^64`` (R a rotation) overflows float32."""
    T = 128
    c, s = np.cos(0.3), np.sin(0.3)
    A = np.tile(5.0 * np.array([[c, -s], [s, c]], np.float32), (T, 1, 1))
    A[64:] = np.linalg.inv(A[64:])
    b = np.zeros((T, 2), np.float32)
    h0 = np.full(2, 1e-33, np.float32)
    want = loop(A[:, None], b[:, None], h0[None], block=True)[:, 0]
    got = np.asarray(block_scan(jnp.asarray(A[:, None]), jnp.asarray(b[:, None]),
                                jnp.asarray(h0[None]), chunk=64))[:, 0]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-40)
