"""Comparing a result with the sequential loop's, as ``run --check``, ``bench`` and
``demo`` do: the tolerance ``|recur - loop| <= sqrt(eps) (1 + |loop|)`` (eps of the
dtype), where non-finite values first appear, and NaN-aware differences (an equal
non-finite value agrees; a non-finite value against anything else disagrees)."""

from __future__ import annotations

from typing import Any

def _tolerance(dtype) -> float:
    """--check's tolerance on |recur - loop| / (1 + |loop|): the square root of the
    dtype's machine epsilon (3.5e-4 for float32, 1.5e-8 for float64); 0 for integers."""
    import numpy as np
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return float(np.sqrt(np.finfo(dtype).eps))
    return 0.0


def _first_nonfinite(a) -> tuple[int, str] | None:
    """(first step, "NaN"/"inf"/"NaN and inf") of the non-finite values of a (T, ...)
    array, or None when all are finite."""
    import numpy as np
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    steps = bad.reshape(a.shape[0], -1).any(axis=1) if a.ndim else bad.reshape(1)
    kinds = [k for k, m in (("NaN", np.isnan(a)), ("inf", np.isinf(a))) if m.any()]
    return int(np.argmax(steps)), " and ".join(kinds)


def _compare(a, b) -> dict[str, Any]:
    """NaN-aware comparison of a result ``a`` with the loop's ``b`` (same shape): equal
    non-finite values agree; a non-finite value against anything else disagrees."""
    import numpy as np
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "c" or b.dtype.kind == "c":      # compare real and imaginary parts
        a = np.stack([a.real, a.imag], axis=-1)
        b = np.stack([b.real, b.imag], axis=-1)
    a64 = a.astype(np.float64) if a.dtype.kind in "biuf" else a
    b64 = b.astype(np.float64) if b.dtype.kind in "biuf" else b
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    both = fa & fb
    same_nonfinite = ~fa & ~fb & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
    mismatch = ~both & ~same_nonfinite
    diff = np.zeros(a64.shape)
    np.subtract(a64, b64, out=diff, where=both)
    diff = np.abs(diff)
    scaled = np.zeros(a64.shape)
    np.divide(diff, 1.0 + np.abs(np.where(both, b64, 0.0)), out=scaled, where=both)
    out = {"max_abs": float(diff.max(initial=0.0)), "max_scaled": float(scaled.max(initial=0.0)),
           "worst_step": None, "mismatches": int(mismatch.sum()), "mismatch_step": None}
    if a64.ndim and a64.size:
        out["worst_step"] = int(np.argmax(diff.reshape(a64.shape[0], -1).max(axis=1)))
        if out["mismatches"]:
            idx = np.unravel_index(int(np.argmax(mismatch)), a64.shape)
            out["mismatch_step"] = int(idx[0])
            out["mismatch_values"] = (a64[idx].item(), b64[idx].item())
    return out


def _info_summary(info) -> tuple[float, bool, bool]:
    """(largest residual, converged everywhere, fell back anywhere) of an ``info``,
    whatever its shape (per stage for staged plans)."""
    import numpy as np
    res = np.asarray(info.residual, np.float64)
    residual = float(np.nanmax(res)) if res.size and not np.isnan(res).all() else float("nan")
    return residual, bool(np.all(np.asarray(info.converged))), \
        bool(np.any(np.asarray(info.fell_back)))


__all__ = ["_tolerance", "_first_nonfinite", "_compare", "_info_summary"]
