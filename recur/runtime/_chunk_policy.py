"""How long the chunks of the affine scan kernels are (``_scan.py``, ``_semiring.py``),
and how far their per-chunk loops are unrolled.

Measured, see ``benchmarks/affine.py``:

* CPU: ``chunk = T``, the sequential loop (it compiles to the same program as a
  hand-written ``lax.scan``).  Measured on the 2-core CPU of this project (jax 0.10.2,
  T=2^17, n=64, float32, under a load average of ~2.5): ``lax.scan`` 46 ms, default
  45 ms, chunk=1024 49 ms, chunk=64 58 ms, ``jax.lax.associative_scan`` 188 ms; dense
  ``k = 32``, T=2^14: default 10.5 ms, ``lax.scan`` 12.8 ms, any chunking >= 78 ms (the
  summaries need ``k x k`` products), ``associative_scan`` 336 ms.  On a few cores the
  time goes into writing the ``T x n`` result and the loop overhead, which chunking does
  not remove, while it doubles the arithmetic.
* GPU/TPU: ``chunk = 64`` (recursively), i.e. ``T / 64`` chunks in flight and a tree of
  depth ``log_64 T``; the sequential loop would leave the device idle.  Chosen on the
  usual latency/parallelism argument and NOT yet measured on an accelerator:
  re-tune ``_ACCEL_CHUNK`` / ``_MAX_UNROLL`` with ``benchmarks/affine.py`` there.
"""

from __future__ import annotations

import jax

from .._errors import PlanError

# Chunk length used on accelerators (GPU/TPU) when ``chunk=None``.
_ACCEL_CHUNK = 64
# Largest loop unrolling of the vectorised per-chunk passes.
_MAX_UNROLL = 8


def default_chunk(T: int, *, backend: str | None = None) -> int:
    """The chunk length used when ``chunk=None``, for a recurrence of length ``T``.

    On CPU this is ``T`` (one sequential ``lax.scan``: on a few cores it is the fastest,
    see the module docstring); on GPU/TPU ``64``, so that ``T / 64`` chunks run in
    parallel and the chunk summaries are combined by the same scheme recursively.
    """
    T = int(T)
    if T <= 1:
        return max(T, 1)
    if backend is None:
        backend = jax.default_backend()
    if backend == "cpu":
        return T
    return min(T, _ACCEL_CHUNK)


def _unroll(L: int) -> int:
    # Unrolling the per-chunk loops saves loop overhead on accelerators; on CPU it did not
    # pay (measured) and it multiplies compile time.
    return 1 if jax.default_backend() == "cpu" else max(1, min(L, _MAX_UNROLL))


def _resolve_chunk(T: int, chunk) -> int:
    if chunk is None:
        return default_chunk(T)
    if isinstance(chunk, bool) or not isinstance(chunk, int) and not hasattr(chunk, "__index__"):
        raise PlanError(f"chunk must be a positive int or None, got {chunk!r}")
    chunk = int(chunk)
    if chunk < 1:
        raise PlanError(f"chunk must be a positive int or None, got {chunk}")
    return min(chunk, max(T, 1))


__all__ = ["default_chunk", "_unroll", "_resolve_chunk"]
