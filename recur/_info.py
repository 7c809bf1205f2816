"""``info``: what a call to ``scan`` did, as a pytree that can be returned from ``jit``."""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Info:
    """Diagnostics of one ``scan`` call (arrays are per example under ``vmap``).

    ``method`` is static (the plan's method); ``iterations`` is the number of parallel
    iterations (0 for ``sequential``, 1 for an exact ``scan``); ``residual`` is
    ``max_t |h_t - f(h_{t-1}, x_t)|`` of the parallel result before any fallback;
    ``converged`` says whether it met ``atol + rtol |h|``; ``fell_back`` whether the
    sequential loop was run instead; ``lyapunov`` is the largest-Lyapunov-exponent estimate
    of iterative methods (NaN when none ran); ``evaluations`` counts single-step
    evaluations of the step function (``T`` for the loop; the parallel passes, window
    sweeps and any fallback loop otherwise; JVPs not counted): the work to compare with
    the loop's ``T``.
    """

    method: str
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    fell_back: jax.Array
    lyapunov: jax.Array
    evaluations: jax.Array


jax.tree_util.register_dataclass(
    Info,
    data_fields=["iterations", "residual", "converged", "fell_back", "lyapunov",
                 "evaluations"],
    meta_fields=["method"],
)

__all__ = ["Info"]
