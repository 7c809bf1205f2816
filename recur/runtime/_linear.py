r"""Linear recurrences ``h_t = A_t h_{t-1} + b_t`` with ``A`` in a coefficient form.

The one place where a coefficient form (``recur/_coefficients.py``) meets the scan kernels
(``_scan.py``): ``solve`` runs the recurrence forwards (or, with ``reverse``, backwards:
``h_t = A_t h_{t+1} + b_t``) with the kernel for the form -- nothing for ``ZeroForm``, the
elementwise ``diagonal_scan`` for ``DiagForm``, ``block_scan`` on the permuted state for
``BlockForm`` -- and ``chunk`` the kernel's chunk length (``None``: the backend's default).
The kernels are ``custom_linear_solve``s, so ``solve`` is linear in ``(b, h0)``, exactly
differentiable and transposable.
"""

from __future__ import annotations

import jax

from .._coefficients import BlockForm, DiagForm, Form, ZeroForm, permute_in, permute_out
from . import _scan


def solve(form: Form, a, b: jax.Array, h0: jax.Array, *, reverse: bool = False,
          chunk: int | None = None) -> jax.Array:
    """All ``T`` states of ``h_t = A_t h_{t-1} + b_t`` (``h_{-1} = h0``; ``b``: ``(T, n)``)."""
    if isinstance(form, ZeroForm):
        return b
    if isinstance(form, DiagForm):
        return _scan.diagonal_scan(a, b, h0, reverse=reverse, chunk=chunk)
    assert isinstance(form, BlockForm)
    blocks = form.blocks
    hb = _scan.block_scan(a, permute_in(b, blocks), permute_in(h0, blocks), reverse=reverse,
                          chunk=chunk)
    return permute_out(hb, blocks, form.n)


__all__ = ["solve"]
