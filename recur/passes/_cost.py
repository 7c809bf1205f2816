r"""The cost model: predicted run time of every candidate method of a stage, per backend.

For a stage of ``n`` state elements whose step costs ``F`` flops (counted on the jaxpr:
``2 m n k`` per matrix product, one per output element otherwise), over ``T`` steps:

.. math::
   t_\text{sequential} &= T\,(c_\text{loop} + F\,c_\text{loop-flop} + n\,c_\text{loop-elem}) \\
   t_\text{pass}(J)    &= c_\text{pass} + T (1 + J) (F\, c_\text{map-flop} + n\, c_\text{map-elem})
        \quad\text{(the step and } J \text{ JVPs evaluated for all } T \text{ at once)}\\
   t_\text{scan-kernel}(C) &= T\,(c_\text{scan-step} + C\, c_\text{scan-elem}) \\
   t_\text{scan} &= t_\text{pass}(J) + t_\text{scan-kernel}(C) + t_\text{pass}(0)
        \quad\text{(coefficients, scan, residual check)} \\
   t_\text{iterative} &= (k + 1)\,(t_\text{pass}(J) + c_\text{iter} + t_\text{scan-kernel}(C))

with ``J`` the JVPs per step that build ``Ã`` (1 diagonal, ``k`` for ``block(k)``, the
colours of a sparse pattern, ``n`` dense; 0 for picard/jacobi), ``C`` the coefficient
elements the scan combines per step (``n`` diagonal, ``m k^3`` block products, 0 for
jacobi) and ``k`` the expected iterations (the registry's; each iteration evaluates, extracts
``Ã``, and solves for the correction that certifies it, ``runtime/_iterative.py``).

When the plan is made for differentiation (``for_grad=True``, or inside ``jax.grad``),
the reverse pass is added: the loop's reverse scan of the step's VJP and the scan's adjoint
scan with the transposed step, each as a measured multiple of its forward time
(``loop_backward``, ``scan_backward``, measured by ``benchmarks/calibrate.py``: on this CPU
the reverse scan of a ``lax.scan`` rereads its stacked residuals step by step and costs
about six times the forward loop, the scan's adjoint about 1.3 times the forward scan), and
the iterative methods' tangent solve (the true Jacobians from two applications of the
linearised step per colour, one adjoint scan).  The constants ``c`` are measured per backend
by ``benchmarks/calibrate.py`` (each records where it came from); ``auto`` takes the
method with the smallest predicted time among the exact-or-checked candidates that fit in
memory.  The model is coarse (no cache effects, no fusion), which is why ``autotune``
exists; its job is to get the order of magnitude right: the loop's per-step overhead
against the parallel passes' throughput.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from .. import _jax_adapter as jx
from .. import _methods


@dataclasses.dataclass(frozen=True)
class BackendConstants:
    backend: str
    loop_step_s: float   # fixed cost of one step of a sequential lax.scan
    loop_flop_s: float   # per flop inside the loop body
    loop_elem_s: float   # per state element per step of the loop (carry, output write)
    map_flop_s: float    # per flop of the step evaluated for all steps at once (vmap)
    map_elem_s: float    # per state element per step of such a pass
    pass_s: float        # fixed cost of one such parallel pass
    scan_step_s: float   # per step of the scan kernel with this backend's default chunking
    scan_elem_s: float   # per coefficient element per step of the scan kernel
    iteration_s: float   # fixed cost of one solver iteration (while_loop body)
    # reverse mode, as a multiple of the forward time: the loop's reverse scan of the step's
    # VJP, and the scan's adjoint scan with the transposed linearised step
    loop_backward: float = 2.0
    scan_backward: float = 2.0
    source: str = ""


CONSTANTS = {
    "cpu": BackendConstants(
        "cpu", loop_step_s=1.28e-10, loop_flop_s=2.4e-11, loop_elem_s=1.65e-09,
        map_flop_s=5.03e-12, map_elem_s=8.4e-10, pass_s=3.4e-05, scan_step_s=1e-15,
        scan_elem_s=1.88e-09, iteration_s=1.97e-06, loop_backward=6.2, scan_backward=1.26,
        source="measured by benchmarks/calibrate.py on cpu (2 cores), jax 0.10.2, "
               "2026-11-30, load average 1.3; loop_backward and scan_backward measured by "
               "the same script at T = 1e4 (load average 3.2): gradient time over forward "
               "time, minus one, median over the quickstart step and a dense tanh step"),
    # No GPU was lent to this project yet: these are assumptions for one H100, to be replaced
    # by `python -m benchmarks.calibrate` on the device.  A step of a lax.scan on a GPU is at
    # least one kernel launch plus a host-free loop iteration (~5-10 us, widely reported for
    # XLA while loops); vmapped passes run near bandwidth (~2 TB/s of the card's 3.35 TB/s,
    # ~0.25 flop per byte for elementwise steps -> 1e-12 s/flop); the chunked scan streams
    # its coefficients (~1e-12 s per element); a solver iteration is ~10 kernel launches.
    "gpu": BackendConstants(
        "gpu", loop_step_s=8e-6, loop_flop_s=1e-11, loop_elem_s=1e-11, map_flop_s=1e-12,
        map_elem_s=4e-12, pass_s=2e-5,
        scan_step_s=5e-11, scan_elem_s=1e-12, iteration_s=5e-5,
        source="assumed for an NVIDIA H100 (not measured: no GPU was available); see the "
               "comment in recur/passes/_cost.py"),
}
CONSTANTS["tpu"] = dataclasses.replace(
    CONSTANTS["gpu"], backend="tpu", source="assumed equal to the GPU constants (not measured)")



def constants(backend: str) -> BackendConstants:
    return CONSTANTS.get(backend, CONSTANTS["gpu"])


# ----------------------------------------------------------------------------- flops

def _size(aval) -> int:
    shape = getattr(aval, "shape", ())
    return int(np.prod(shape)) if shape else 1


def jaxpr_flops(jaxpr) -> float:
    """Flops of one evaluation of a (closed) jaxpr: ``2 * out * contracted`` per
    ``dot_general``, the output size for other primitives, sub-jaxprs counted once per
    call (``scan`` bodies times their length)."""
    total = 0.0
    for eqn in jx.as_closed(jaxpr).jaxpr.eqns:
        name = eqn.primitive.name
        subs = [v for v in eqn.params.values() if jx.is_jaxpr(v)]
        subs += [s for v in eqn.params.values() if isinstance(v, (tuple, list))
                 for s in v if jx.is_jaxpr(s)]
        if subs:
            inner = max(jaxpr_flops(s) for s in subs) if name in ("cond", "switch") \
                else sum(jaxpr_flops(s) for s in subs)
            total += inner * int(eqn.params.get("length", 1) or 1)
            continue
        out = sum(_size(v.aval) for v in eqn.outvars)
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            k = int(np.prod([lhs_shape[d] for d in lhs_contract])) if lhs_contract else 1
            total += 2.0 * out * k
        else:
            total += out
    return total


def step_flops_of(fn: Callable, h: Any, x: Any) -> float:
    """Flops of ``fn(h, x)`` (for calibration)."""
    import jax
    return jaxpr_flops(jax.make_jaxpr(fn)(h, x))


# ----------------------------------------------------------------------------- predictions

def _jvps_and_coefficients(method: str, jacobian: str, n: int, blocks_shape, colours: int):
    """``(J, C)`` of the module docstring."""
    m = _methods.get(method)
    if m.linearisation == "zero" or jacobian == "zero":
        return 0, 0
    if m.linearisation == "identity":
        return 0, 1
    if jacobian in ("identity", "scalar", "diagonal"):
        return 1, n
    mb, k = blocks_shape if blocks_shape else (1, n)
    J = colours if colours else k
    if m.linearisation == "diagonal":
        return J, n
    return J, mb * k ** 3


def predict(method: str, *, backend: str, T: int, n: int, flops: float, jacobian: str,
            blocks_shape=None, colours: int = 0, iterations: int | None = None,
            backward: bool = False) -> float:
    """Predicted seconds of ``method`` on a stage (see the module docstring); with
    ``backward`` also of the reverse pass a gradient through it implies."""
    c = constants(backend)
    T = max(int(T), 1)
    F = max(float(flops), 1.0)

    def pass_time(J):
        return c.pass_s + T * (1 + J) * (F * c.map_flop_s + n * c.map_elem_s)

    if method == "sequential":
        forward = T * (c.loop_step_s + F * c.loop_flop_s + n * c.loop_elem_s)
        return forward * (1 + (c.loop_backward if backward else 0.0))
    J, C = _jvps_and_coefficients(method, jacobian, n, blocks_shape, colours)
    kernel = 0.0 if C == 0 else T * (c.scan_step_s + C * c.scan_elem_s)
    if method == "scan":
        forward = pass_time(J) + kernel + pass_time(0)
        return forward * (1 + (c.scan_backward if backward else 0.0))
    # reverse mode: the tangent solve -- the true Jacobians read off 2 applications of the
    # linearised step per colour, one adjoint scan -- and the transposed step
    tj, tc = _jvps_and_coefficients("deer", jacobian, n, blocks_shape, colours)
    t_kernel = 0.0 if tc == 0 else T * (c.scan_step_s + tc * c.scan_elem_s)
    back = pass_time(2 * tj) + t_kernel + pass_time(0)
    if _methods.get(method).family == "semiring":
        # coefficients (one evaluation per colour), the scan, the offset and the check
        forward = pass_time(J) + kernel + 2 * pass_time(0)
        return forward + (back if backward else 0.0)
    k = iterations if iterations is not None else \
        min(_methods.get(method).expected_iterations, T)
    forward = (k + 1) * (pass_time(J) + c.iteration_s + kernel)
    return forward + (back if backward else 0.0)


# The chunkwise form (method ``chunked``, ``runtime/_chunked.py``), per leaf of ``b`` heads,
# key/value sizes ``K``/``V``, input rank ``R``, ``m`` readouts and a decay of ``d`` values
# per head (1 or ``K``), with chunks of ``C`` steps:
#   matrix products  2 T b (C R (m K + m V) + R K V + m K V)      flops at ``flop_s``
#   segment products T (C + 1) b d                                elements at ``seg_s``
#   (a per-row decay also scales ``k`` per pair: T C R b K more)
#   the scan over the T / C boundary states                        steps at ``loop_step_s``
#   per chunk, the state's traffic: the boundary scan, the readout from the boundary state
#   and the run's check at the chunk's first step (the body and the rebuilt step, compared)
#                                    (T / C) b K V                 elements at ``state_s``
#   the pieces and the rest of the body for all steps at once     (``pass`` of the body)
# CPU: measured on this 2-core machine (jax 0.10.2, a loaded machine, load 4-9: GLA and
# Mamba-2/SSD layers, T = 4096, dk = dv = 64, C = 8..64: ~5e-11 s per matmul flop, ~2e-9 s
# per segment-product element, and ~40 us per chunk -- the batched einsums of small
# blocks cost per block, which is why C = 64 beat C = 8 by 4x); GPU: assumed (an H100's
# float32 matmul throughput, elementwise work near bandwidth, a kernel launch per chunk
# step of the boundary scan).
# The loop the form competes with is one lax.scan of the whole body emitting its outputs:
# ``T (c_loop + F_body c_loop-flop)`` (measured here: 0.7 us per step for the 64 x 64 GLA
# body, F = 25k flops; the per-state-element term of the generic loop model, fitted on
# small states, would say 7 us).
# ``state_s`` on CPU: fitted to chunked runs at C = 8..64 (T = 1024/4096, d = 128 GLA and
# SSD, d = 64 x 4 heads GLA; 0.7e-8..1.4e-8 s), without which the model took C = 8 for the
# d = 128 GLA layer where C = 16 ran 1.4-2x faster (T = 1024: 24.7 vs 11.8 ms) and C = 32
# for the SSD layer where C = 64 ran 1.4x faster; GPU: assumed (bandwidth).
CHUNKED = {
    "cpu": {"flop_s": 5e-11, "seg_s": 2e-9, "step_s": 4e-5, "state_s": 1e-8},
    "gpu": {"flop_s": 1e-13, "seg_s": 2e-12, "step_s": 1e-5, "state_s": 1e-11},
}


def predict_chunked(backend: str, T: int, C: int, leaves, body_flops: float,
                    backward: bool = False) -> float:
    """Predicted seconds of the chunkwise form (the comment above); ``leaves``: one
    ``(b, K, V, R, m, d)`` per state leaf."""
    c = constants(backend)
    k = CHUNKED.get(backend, CHUNKED["gpu"])
    T = max(int(T), 1)
    N = -(-T // C)
    flops = seg = state = 0.0
    for b, K, V, R, m, d in leaves:
        flops += 2.0 * T * b * (C * R * (m * K + m * V) + R * K * V + m * K * V)
        seg += T * (C + 1) * b * d + (T * C * R * b * K if d > 1 else 0)
        state += N * b * K * V
    forward = (flops * k["flop_s"] + seg * k["seg_s"] + N * k["step_s"] + state * k["state_s"]
               + c.pass_s + T * max(float(body_flops), 1.0) * c.map_flop_s)
    return forward * (1 + (c.scan_backward if backward else 0.0))


# The chunks whose masked products exist at once (``runtime/_chunked.py``: a ``lax.scan``
# over groups of that many chunks).  All at once unless those products would hold more
# than an eighth of the bytes of all T states (a per-row decay: ``T C K`` against ``T K V``);
# then groups whose products fit these bytes.  Measured on the 2-core CPU (GLA, per-row
# gates, d = 64, C = 16, float32; time, and temporaries over all states' bytes):
#   T = 1024: all at once 2.9 ms / 0.65, groups of 2 3.7 ms / 0.15, 4 3.2 / 0.18,
#             8 3.2 / 0.21, 16 3.1 / 0.30 (hand-written chunkwise form 2.8 ms / 0.64);
#   T = 4096: all at once 28 ms / 0.65, groups of 2 19 ms / 0.15, 4 16 / 0.15, 8 16 / 0.15,
#             16 15 / 0.18 (hand-written 24 ms).
# So about 3 MB of products per group (7 chunks here).  SSD (one gate per head, products
# ``T C`` only) stays below the eighth and runs all at once (in groups it was slower: T =
# 1024, 4 heads, 3.9 ms at once, 7.5 ms in groups of 10).  GPU: assumed.
CHUNK_GROUP_BYTES = {"cpu": 3 << 20, "gpu": 256 << 20}


def _chunk_products_bytes(C: int, leaves, itemsize: int) -> float:
    """Bytes of one chunk's masked products and segment products (about three live copies
    of the ``C × C`` (times ``K`` for a per-row decay) arrays)."""
    one = 0.0
    for b, K, V, R, m, d in leaves:
        one += C * (C + 1) * b * d + C * C * R * b * m + (C * C * R * b * K if d > 1 else 0)
    return 3.0 * one * itemsize


def chunk_group(backend: str, T: int, C: int, leaves, itemsize: int) -> int:
    """Chunks evaluated together (0: all ``⌈T / C⌉`` at once), see ``CHUNK_GROUP_BYTES``."""
    N = -(-max(int(T), 1) // C)
    per_chunk = max(_chunk_products_bytes(C, leaves, itemsize), 1.0)
    states = float(T) * sum(b * K * V for b, K, V, _, _, _ in leaves) * itemsize
    if N * per_chunk <= states / 8:
        return 0
    budget = CHUNK_GROUP_BYTES.get(backend, CHUNK_GROUP_BYTES["gpu"])
    G = max(1, int(budget // per_chunk))
    return 0 if G >= N else G


def chunked_bytes(T: int, C: int, leaves, y_elements: int, itemsize: int,
                  group: int = 0) -> float:
    """Peak bytes of the chunkwise form: pieces and outputs per step, the masked products of
    the chunks evaluated together (``group``, 0: all), one state per chunk."""
    N = -(-int(T) // C)
    together = N if group <= 0 else min(group, N)
    total = float(T) * y_elements + together * _chunk_products_bytes(C, leaves, 1) / 3
    for b, K, V, R, m, d in leaves:
        total += T * b * (d + R * (K + V) + m * (K + V)) + N * b * K * V
    return total * itemsize


CHUNK_SIZES = (8, 16, 32, 64, 128, 256)


def predict_loop_outputs(backend: str, T: int, body_flops: float,
                         backward: bool = False) -> float:
    """The loop of a whole ``recur.lax.scan`` body (the comment above ``CHUNKED``)."""
    c = constants(backend)
    forward = max(int(T), 1) * (c.loop_step_s + max(float(body_flops), 1.0) * c.loop_flop_s)
    return forward * (1 + (c.loop_backward if backward else 0.0))


def choose_chunk(backend: str, T: int, leaves, body_flops: float, backward: bool = False,
                 ) -> tuple[int, float]:
    """``(C, predicted seconds)``: the chunk size the model predicts fastest."""
    sizes = [C for C in CHUNK_SIZES if C <= max(T, 1)] or [max(T, 1)]
    best = min(sizes, key=lambda C: predict_chunked(backend, T, C, leaves, body_flops,
                                                    backward))
    return best, predict_chunked(backend, T, best, leaves, body_flops, backward)


def fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "inf"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


__all__ = ["BackendConstants", "CONSTANTS", "constants", "predict", "jaxpr_flops",
           "predict_chunked", "chunked_bytes", "choose_chunk", "CHUNKED", "chunk_group",
           "CHUNK_GROUP_BYTES",
           "predict_loop_outputs",
           "step_flops_of", "fmt_seconds"]
