r"""Value probes of a chunkwise form: the body rebuilt from its pieces must be the body.

The chunkwise pass (``_chunkwise.py``) extracts a ``ChunkForm`` from the body's equations;
before a plan uses it, the body and its rebuild from the extracted pieces
(``ChunkForm.body``, the same code the runtime runs) are compared at a few points: at the
actual inputs of a few steps (with random states) when they are known, then at random
points (standard normal, positive, standard normal again) from a fixed seed, with random
values for closed-over arrays that are not known.  A point whose values are not all finite
is inconclusive.  The rebuild must match to ``min(10³ ε, 0.1)`` relative to the largest
entry of each value, ``ε`` the coarsest precision among the body's float values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax_adapter as jx
from .._chunkform import ChunkForm
from .._dtypes import is_inexact
from .._ir import Outputs, StepIR
from ._verify import Values, _random


def probe(form: ChunkForm, ir: StepIR, outputs: Outputs, values: Values | None,
          seed: int = 0) -> tuple[bool | None, str]:
    """``(ok, text)``: whether the body equals its rebuild from the pieces at every
    conclusive point (``None``: no point was conclusive)."""
    with jax.ensure_compile_time_eval():  # under jit, arrays made here would be traced
        return _probe_points(form, ir, outputs, values, seed)


def _points(ir: StepIR, values: Values | None, rng) -> list:
    points = []
    if values is not None:
        for x in values.x_steps:
            points.append(([jnp.asarray(_random(rng, s.shape, s.dtype)) for s in ir.state],
                           [jnp.asarray(v) for v in x]))
    for kind in ("normal", "positive", "normal"):
        points.append(([jnp.asarray(_random(rng, s.shape, s.dtype, kind)) for s in ir.state],
                       [jnp.asarray(_random(rng, s.shape, s.dtype, kind))
                        for s in ir.inputs]))
    return points


def _probe_points(form, ir, outputs, values, seed):
    rng = np.random.default_rng(seed)
    consts = [c if jx.is_concrete(c) else jnp.asarray(_random(rng, c.shape, c.dtype))
              for c in outputs.jaxpr.consts]
    body = outputs.body(consts)
    points = _points(ir, values, rng)
    eps = max([float(jnp.finfo(s.dtype).eps) for s in (*ir.state, *ir.inputs,
                                                        *outputs.leaves)
               if is_inexact(s.dtype)] or [1e-7])
    tol = min(1e3 * eps, 0.1)
    seen, ok = 0, True
    for h, x in points:
        try:
            carry, ys = body(h, x)
            carry2, ys2 = form.body(consts, h, x)
        except Exception as exc:  # noqa: BLE001 - a rebuild that fails is a refusal
            return False, f"the rebuild from the pieces failed: {type(exc).__name__}: {exc}"
        pairs = [(a, b) for a, b in zip(list(carry) + list(ys), list(carry2) + list(ys2))
                 if is_inexact(jnp.asarray(a).dtype)]
        vals = [(np.asarray(a), np.asarray(b)) for a, b in pairs]
        if not all(np.all(np.isfinite(a)) and np.all(np.isfinite(b)) for a, b in vals):
            continue
        seen += 1
        for a, b in vals:
            scale = float(np.max(np.abs(a), initial=0.0))
            if not np.all(np.abs(a - b) <= tol * (1.0 + scale)):
                ok = False
    if not seen:
        return None, "no probe was conclusive (non-finite values at every point)"
    return ok, f"{seen} value probes: the body rebuilt from the pieces " + (
        "equals the body" if ok else "DIFFERS from the body (a bug in the chunkwise pass; "
                                     "please report it)")


__all__ = ["probe"]
