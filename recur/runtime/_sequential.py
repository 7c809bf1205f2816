"""The ``sequential`` method: the plain ``lax.scan`` loop, reference and fallback.

``hs[t] = fn(hs[t-1], xs[t], params)``, exactly
``jax.lax.scan(lambda h, x: (fn(h, x, params),) * 2, h0, xs)[1]``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from . import _sharding


def sequential_scan(step: Callable[[Any, Any], Any], h0: Any, xs: Any, *, length: int,
                    reverse: bool = False) -> Any:
    if _sharding.current() is not None:  # the time axis is split over devices
        if reverse:
            raise AssertionError("sharded programs flip time before the loop")
        return _sharding.sequential(step, h0, xs, length=length)

    def body(h, x):
        h_new = step(h, x)
        return h_new, h_new

    return jax.lax.scan(body, h0, xs, length=length, reverse=reverse)[1]


__all__ = ["sequential_scan"]
