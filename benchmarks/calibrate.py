"""Measure the constants of recur's cost model (``recur/passes/_cost.py``) on this device.

    python -m benchmarks.calibrate [--quick]

Prints a ``BackendConstants(...)`` to paste into ``_cost.py`` (with the device and the
date as its ``source``).  Each constant is a least-squares fit over a few sizes of the
median time of jitted calls (after compilation):

* ``loop_step_s``, ``loop_flop_s``, ``loop_elem_s``: ``lax.scan`` of ``tanh(W h + x)`` and
  of ``a * h + x`` for n in {4, 32, 128, 256} -- time / T = loop_step_s + flops(step) *
  loop_flop_s + n * loop_elem_s (non-negative least squares on relative errors);
* ``pass_s``, ``map_flop_s``, ``map_elem_s``: the same steps evaluated for all T at once
  (``vmap``) -- time = pass_s + T * (flops * map_flop_s + n * map_elem_s);
* ``scan_step_s``, ``scan_elem_s``: ``recur.runtime._scan.diagonal_scan`` (the default
  chunking of this backend) for n in {4, 64, 256} -- time / T = scan_step_s + n *
  scan_elem_s;
* ``iteration_s``: the fixed cost of one iteration of a solver's ``while_loop`` (a body that
  updates one element of the (T, n) array it carries);
* ``loop_backward``, ``scan_backward``: the reverse pass as a multiple of the forward time
  (``_cost.py`` predicts ``forward * (1 + factor)`` for a plan made for differentiation):
  the median over a few steps of ``time(jax.grad) / time(forward) - 1`` (fastest of 15
  alternating calls each), for a hand-written ``lax.scan`` loop (the README quickstart's
  diagonal affine step at n in {16, 32, 64}, and a dense ``tanh(W h + x)`` at n = 32) and
  for ``recur.scan(method="scan")`` (the quickstart step at n in {16, 32, 64}); the loss is
  ``sum(hs ** 2)``, the gradient w.r.t. the params.  At T = 10^4 (``BACKWARD_T``: the
  README quickstart's length, where a training gradient typically lives): the factors depend
  on T through the caches -- on the 2-core CPU the scan's adjoint cost 1.2-1.8x its forward
  at T = 10^4 and 2-4x at T = 2^16 -- so the full run also prints them at its own T.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from recur.passes._cost import step_flops_of
from recur.runtime import _scan


def _median(fn, *args, reps=5):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fit(features, ys):
    """Non-negative least squares ``y = features @ c`` (relative errors weighted equally)."""
    from scipy.optimize import nnls
    A = np.asarray(features, float)
    y = np.asarray(ys, float)
    c, _ = nnls(A / y[:, None], np.ones_like(y))
    return [max(float(v), 1e-15) for v in c]


def _steps(rng, n):
    W = jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n), jnp.float32)
    a = jnp.asarray(rng.uniform(0.5, 0.99, n), jnp.float32)

    def dense(h, x, W=W):
        return jnp.tanh(W @ h + x)

    def elementwise(h, x, a=a):
        return a * h + x
    return dense, elementwise


BACKWARD_T = 10_000


def _quickstart(h, x, p):
    """The README quickstart's step: affine in ``h``, diagonal."""
    a, b = p
    return a * jax.nn.sigmoid(x) * h + b * x


def _backward_ratio(forward, p, xs, calls: int = 15) -> float:
    """``time(grad of sum(forward(p, xs) ** 2) w.r.t. p) / time(forward) - 1``: both
    compiled, then called alternately (so that the other jobs' load falls on both alike),
    the fastest call of each."""
    fns = [jax.jit(forward), jax.jit(jax.grad(lambda p, xs: jnp.sum(forward(p, xs) ** 2)))]
    best = [float("inf")] * 2
    for fn in fns:
        jax.block_until_ready(fn(p, xs))
    for _ in range(calls):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(p, xs))
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[1] / best[0] - 1.0


def backward_factors(T: int, rng) -> tuple[float, float]:
    """``(loop_backward, scan_backward)``: medians of measured ratios (module docstring)."""
    import recur

    def loop_of(step, h0):
        return lambda p, xs: jax.lax.scan(lambda h, x: (step(h, x, p),) * 2, h0, xs)[1]

    loop, scan = [], []
    for n in (16, 32, 64):
        xs = jnp.asarray(rng.standard_normal((T, n)), jnp.float32)
        p = (jnp.asarray(rng.uniform(0.9, 0.99, n), jnp.float32), jnp.full(n, 0.1, jnp.float32))
        h0 = jnp.zeros(n, jnp.float32)
        loop.append(_backward_ratio(loop_of(_quickstart, h0), p, xs))
        scan.append(_backward_ratio(
            lambda p, xs, h0=h0: recur.scan(_quickstart, h0, xs, p, method="scan"), p, xs))
    n = 32
    W = jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((T, n)), jnp.float32)
    loop.append(_backward_ratio(loop_of(lambda h, x, W: jnp.tanh(W @ h + x),
                                        jnp.zeros(n, jnp.float32)), W, xs))
    print(f"reverse/forward - 1 (T={T}): loop {', '.join(f'{v:.2f}' for v in loop)} "
          f"(quickstart n=16, 32, 64; tanh n=32); scan {', '.join(f'{v:.2f}' for v in scan)} "
          "(quickstart n=16, 32, 64)")
    return statistics.median(loop), statistics.median(scan)


def measure(quick: bool = False) -> dict:
    T = 2 ** 12 if quick else 2 ** 16  # large enough to leave the caches, like real workloads
    rng = np.random.default_rng(0)
    loop_f, loop_y, map_f, map_y = [], [], [], []
    for n in (4, 32, 128, 256):
        xs = jnp.asarray(rng.standard_normal((T, n)), jnp.float32)
        hs = jnp.asarray(rng.standard_normal((T, n)), jnp.float32)
        for step in _steps(rng, n):
            if step.__name__ == "dense" and n == 256:
                continue
            flops = step_flops_of(step, jnp.zeros(n, jnp.float32), xs[0])
            loop = jax.jit(lambda xs, step=step, n=n: jax.lax.scan(
                lambda h, x: (step(h, x),) * 2, jnp.zeros(n, jnp.float32), xs)[1])
            loop_f.append([1.0, flops, n])
            loop_y.append(_median(loop, xs) / T)
            map_f.append([1.0, T * flops, T * n])
            map_y.append(_median(jax.jit(jax.vmap(step)), hs, xs))
    loop_step_s, loop_flop_s, loop_elem_s = _fit(loop_f, loop_y)
    pass_s, map_flop_s, map_elem_s = _fit(map_f, map_y)
    scan_f, scan_y = [], []
    for n in (4, 64, 256):
        a = jnp.asarray(rng.uniform(0.5, 0.99, (T, n)), jnp.float32)
        b = jnp.asarray(rng.standard_normal((T, n)), jnp.float32)
        run = jax.jit(lambda a, b: _scan.diagonal_scan(a, b, jnp.zeros(a.shape[1], a.dtype)))
        scan_f.append([1.0, n])
        scan_y.append(_median(run, a, b) / T)
    scan_step_s, scan_elem_s = _fit(scan_f, scan_y)
    z = jnp.zeros((T, 16), jnp.float32)
    iters = 200

    def loop_body(c):  # touches one element: the loop's own cost, not the data's
        k, v = c
        return k + 1, v.at[k % v.shape[0]].add(1.0)
    empty = jax.jit(lambda v: jax.lax.while_loop(lambda c: c[0] < iters, loop_body, (0, v))[1])
    iteration_s = _median(empty, z) / iters
    loop_backward, scan_backward = backward_factors(BACKWARD_T, rng)
    if not quick:
        backward_factors(T, rng)  # printed for comparison only
    return dict(loop_step_s=loop_step_s, loop_flop_s=loop_flop_s, loop_elem_s=loop_elem_s,
                map_flop_s=map_flop_s, map_elem_s=map_elem_s, pass_s=pass_s,
                scan_step_s=scan_step_s, scan_elem_s=scan_elem_s, iteration_s=iteration_s,
                loop_backward=loop_backward, scan_backward=scan_backward)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    consts = measure(args.quick)
    dev = jax.devices()[0]
    source = (f"measured by benchmarks/calibrate.py on {dev.platform} ({dev.device_kind}, "
              f"{os.cpu_count()} cores), jax {jax.__version__}, "
              f"{datetime.date.today().isoformat()}, load average "
              f"{os.getloadavg()[0]:.1f}")
    body = ", ".join(f"{k}={v:.3g}" for k, v in consts.items())
    print(f'BackendConstants("{dev.platform}", {body},\n    source="{source}")')
    return consts


if __name__ == "__main__":
    main()
