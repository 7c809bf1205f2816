"""Shape arithmetic of the language, and how a shape is written in messages.

Elementwise operations broadcast as NumPy does: shapes are aligned on their last axes and
each pair of sizes must be equal or contain a 1 (which stretches). ``a @ b`` follows
``numpy.matmul``: a vector operand gets a unit axis (prepended for ``a``, appended for
``b``) that is dropped from the result, the contracted sizes ``a[-1]`` and ``b[-2]`` must
agree and the leading (batch) axes broadcast. No array may have more than
``MAX_ELEMENTS`` elements.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["MAX_ELEMENTS", "broadcast", "matmul_shape", "fmt"]

MAX_ELEMENTS = 2 ** 31 - 1


def broadcast(a: tuple, b: tuple) -> Optional[tuple]:
    """The broadcast shape of ``a`` and ``b``; ``None`` when they do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


def fmt(shape) -> str:
    """A shape as Python writes a tuple: ``()``, ``(3,)``, ``(3, 4)``."""
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def matmul_shape(a: tuple, b: tuple) -> Optional[tuple]:
    """The shape of ``a @ b``; ``None`` when the shapes do not fit."""
    if len(a) == 0 or len(b) == 0:
        return None
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        return None
    batch = broadcast(a2[:-2], b2[:-2])
    if batch is None:
        return None
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out
