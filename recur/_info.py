"""``info``: what a call to ``scan`` did, as a pytree that can be returned from ``jit``."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .runtime._result import Reason


@dataclasses.dataclass(frozen=True)
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
    iterations: jax.Array
    residual: jax.Array
    error: jax.Array
    converged: jax.Array
    fell_back: jax.Array
    reason: jax.Array
    lyapunov: jax.Array
    evaluations: jax.Array
    first_nonfinite: jax.Array

    def reasons(self):
        """``reason`` in words (for concrete arrays): a string, or a nested list of strings
        per stage (and example)."""
        codes = np.asarray(self.reason)
        if codes.ndim == 0:
            return Reason(int(codes)).describe()
        return np.vectorize(lambda c: Reason(int(c)).describe(), otypes=[object])(
            codes).tolist()


jax.tree_util.register_dataclass(
    Info,
    data_fields=["iterations", "residual", "error", "converged", "fell_back", "reason",
                 "lyapunov", "evaluations", "first_nonfinite"],
    meta_fields=["method"],
)

__all__ = ["Info", "Reason"]
