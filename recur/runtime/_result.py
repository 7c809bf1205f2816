"""What a solve reports: one typed pytree from the solvers up to ``recur.Info``.

``Reason`` says why a stage ended as it did; every solver fills a ``StageStats`` (arrays,
so it travels through ``jit``, ``vmap``, ``custom_root``'s aux and ``shard_map``), and the
program stacks the stages' stats into ``Info``.
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp


class Reason(enum.IntEnum):
    """Why a stage's result is what it is (``info.reason``, per stage)."""

    CONVERGED = 0        # the parallel result passed the check
    SEQUENTIAL = 1       # the loop ran by choice (nothing to check)
    MAX_ITERATIONS = 2   # the iteration cap was reached first
    CHAOTIC = 3          # stopped early: the Lyapunov estimate says the system is chaotic
    TRUST_REGION = 4     # ELK's trust region collapsed
    CHECK_FAILED = 5     # a one-pass result (scan) failed the residual check
    NON_FINITE = 6       # the parallel result holds a non-finite value the step does not give
    WHOLE_STEP = 7       # the stages passed, but the whole step on the assembled trajectory
                         # did not (an analysis error): the loop's answer was used
    NOT_CHECKED = 8      # check=False: the parallel result was not checked

    def describe(self) -> str:
        return _TEXT[self]


_TEXT = {
    Reason.CONVERGED: "converged: the parallel result passed the check",
    Reason.SEQUENTIAL: "the sequential loop ran (nothing to check)",
    Reason.MAX_ITERATIONS: "did not converge within max_iters",
    Reason.CHAOTIC: "stopped early: the Lyapunov estimate says the system is chaotic",
    Reason.TRUST_REGION: "stopped: ELK's trust region collapsed",
    Reason.CHECK_FAILED: "the one-pass result failed the residual check",
    Reason.NON_FINITE: "the parallel result holds non-finite values the step does not give",
    Reason.WHOLE_STEP: "the whole step on the assembled trajectory failed the check (an "
                       "analysis error): the loop's answer was used",
    Reason.NOT_CHECKED: "not checked (check=False)",
}


@dataclasses.dataclass(frozen=True)
class StageStats:
    """One stage's report: ``iterations`` (linear solves or window sweeps; 0 for the loop,
    1 for a scan), ``residual`` (``max_t |h_t - f(h_{t-1})|``, ``inf`` for a non-finite
    disagreement), ``error`` (estimated ``max_t |h_t - h*_t|``, NaN where not estimated),
    ``converged``, ``fell_back``, ``reason`` (a ``Reason``), ``lyapunov`` (NaN when not
    estimated) and ``evaluations`` (single-step evaluations of the step)."""

    iterations: jax.Array
    residual: jax.Array
    error: jax.Array
    converged: jax.Array
    fell_back: jax.Array
    reason: jax.Array
    lyapunov: jax.Array
    evaluations: jax.Array

    @classmethod
    def make(cls, *, iterations=0, residual=0.0, error=jnp.nan, converged=True, fell_back=False,
             reason=Reason.CONVERGED, lyapunov=jnp.nan, evaluations=0, real_dtype=jnp.float32):
        return cls(iterations=jnp.asarray(iterations, jnp.int32),
                   residual=jnp.asarray(residual, real_dtype),
                   error=jnp.asarray(error, real_dtype),
                   converged=jnp.asarray(converged, bool),
                   fell_back=jnp.asarray(fell_back, bool),
                   reason=jnp.asarray(reason, jnp.int32),
                   lyapunov=jnp.asarray(lyapunov, jnp.float32),
                   evaluations=jnp.asarray(evaluations, jnp.int32))

    def replace(self, **changes) -> "StageStats":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    StageStats, data_fields=[f.name for f in dataclasses.fields(StageStats)], meta_fields=[])


def stack(stats: list[StageStats]) -> StageStats:
    """Per-stage arrays (a leading stage axis when there are several stages); the residual
    and error in the widest real dtype of the stages."""
    if len(stats) == 1:
        return stats[0]
    rdt = max((s.residual.dtype for s in stats), key=lambda d: jnp.dtype(d).itemsize)

    def field(name):
        values = [getattr(s, name) for s in stats]
        if name in ("residual", "error"):
            values = [v.astype(rdt) for v in values]
        return jnp.stack(values)

    return StageStats(**{f.name: field(f.name) for f in dataclasses.fields(StageStats)})


__all__ = ["Reason", "StageStats", "stack"]
