"""``info``: what a call to ``scan`` did, as a pytree that can be returned from ``jit``.

The fields travel packed in two arrays -- the counts (``int32``) and the measures (the
real dtype of the residual) -- because every array a compiled program returns costs a
fixed few microseconds on the host, and nine of them made ``return_info=True`` the
dominant cost of a short scan.  The fields are properties that slice the two arrays, so
``info.converged`` reads as before, under ``jit``, ``vmap`` (leading batch axes) and
``shard_map``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from .runtime._result import Reason, StageStats

_COUNTS = ("iterations", "converged", "fell_back", "reason", "evaluations")
_MEASURES = ("residual", "error", "lyapunov")
_BOOLS = ("converged", "fell_back")


@dataclasses.dataclass(frozen=True, repr=False)
class Info:
    """Diagnostics of one ``scan`` call (arrays are per stage for staged plans, and per
    example under ``vmap``).

    * ``method`` (static): the plan's method (``"staged"`` when stages differ);
    * ``iterations``: parallel iterations (0 for ``sequential``, 1 for an exact ``scan``;
      Newton-family: the corrections applied to reach the accepted iterate; windows: sweeps);
    * ``residual``: ``max_t |h_t - f(h_{t-1}, x_t)|`` of the parallel result before any
      fallback (``inf`` when a non-finite value disagrees);
    * ``error``: the estimated error of the accepted trajectory, ``max_t |h_t - h*_t|``
      against the exact solution of the recurrence, to first order (the residuals
      propagated through the linearised recurrence); NaN where not estimated (the loop,
      a scan: exact up to rounding);
    * ``converged``: the result passed the check (residual and, for iterative methods,
      error within ``atol + rtol |h|``, and for a staged plan the whole step on the
      assembled trajectory);
    * ``fell_back``: the sequential loop's result was returned instead;
    * ``reason``: why, as a ``recur.Reason`` code (``info.reasons()`` in words);
    * ``lyapunov``: the largest-Lyapunov-exponent estimate of iterative methods (NaN when
      none ran);
    * ``evaluations``: single-step evaluations of the step function (``T`` for the loop;
      the parallel passes, window sweeps and any fallback otherwise; JVPs not counted);
    * ``first_nonfinite``: the first step (in time) whose state holds a NaN or infinity in
      the returned trajectory, or -1.
    """

    method: str
    counts: jax.Array     # (..., 5 n + 1): _COUNTS per stage, then first_nonfinite
    measures: jax.Array   # (..., 3 n): _MEASURES per stage
    stage_shape: tuple    # () for one stage, (n,) for n stages

    @classmethod
    def pack(cls, method: str, stats: StageStats, first_nonfinite) -> "Info":
        shape = tuple(stats.iterations.shape)
        counts = [jnp.reshape(getattr(stats, name).astype(jnp.int32), (-1,))
                  for name in _COUNTS]
        counts.append(jnp.reshape(jnp.asarray(first_nonfinite, jnp.int32), (1,)))
        real = stats.residual.dtype
        measures = [jnp.reshape(getattr(stats, name).astype(real), (-1,)) for name in _MEASURES]
        return cls(method, jnp.concatenate(counts), jnp.concatenate(measures), shape)

    def _field(self, packed, index: int) -> jax.Array:
        n = math.prod(self.stage_shape)
        batch = packed.shape[:-1]
        return jnp.reshape(packed[..., index * n:(index + 1) * n], batch + self.stage_shape)

    def _count(self, name: str) -> jax.Array:
        value = self._field(self.counts, _COUNTS.index(name))
        return value.astype(bool) if name in _BOOLS else value

    @property
    def iterations(self) -> jax.Array:
        return self._count("iterations")

    @property
    def converged(self) -> jax.Array:
        return self._count("converged")

    @property
    def fell_back(self) -> jax.Array:
        return self._count("fell_back")

    @property
    def reason(self) -> jax.Array:
        return self._count("reason")

    @property
    def evaluations(self) -> jax.Array:
        return self._count("evaluations")

    @property
    def first_nonfinite(self) -> jax.Array:
        return self.counts[..., -1]

    @property
    def residual(self) -> jax.Array:
        return self._field(self.measures, 0)

    @property
    def error(self) -> jax.Array:
        return self._field(self.measures, 1)

    @property
    def lyapunov(self) -> jax.Array:
        return self._field(self.measures, 2).astype(jnp.float32)

    def reasons(self):
        """``reason`` in words (for concrete arrays): a string, or a nested list of strings
        per stage (and example)."""
        codes = np.asarray(self.reason)
        if codes.ndim == 0:
            return Reason(int(codes)).describe()
        return np.vectorize(lambda c: Reason(int(c)).describe(), otypes=[object])(
            codes).tolist()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}"
                           for name in ("iterations", "residual", "error", "converged",
                                        "fell_back", "reason", "lyapunov", "evaluations",
                                        "first_nonfinite"))
        return f"Info(method={self.method!r}, {fields})"


jax.tree_util.register_dataclass(
    Info, data_fields=["counts", "measures"], meta_fields=["method", "stage_shape"])

__all__ = ["Info", "Reason"]
