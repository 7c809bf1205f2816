"""Minimal reproducer (pure JAX, no recur) of the XLA:CPU deadlock behind ``elk`` hanging.

A record for the maintainers, NOT run by the tests or by ``python -m benchmarks``:
``python benchmarks/repro_elk_hang.py [--timeout SECONDS]`` runs each case below in a
subprocess and prints ``ok`` or ``HANG`` (no result within the timeout).

What hangs (jax 0.10.2, jaxlib 0.10.2, CPU backend, Linux x86-64, 2 cores)
-------------------------------------------------------------------------
One ``jit`` that contains two (more generally: at least as many as XLA:CPU's intra-op
thread pool has threads, i.e. the number of cores) *independent* batched
``lax.linalg.triangular_solve`` calls on large enough batches: measured here with
``k x k`` systems and ``k`` right-hand sides, 20 calls each, hangs from ``batch * k**3``
of roughly 2**22 (float32 k = 32: 128 matrices hang, 64 run; k = 16: 1025 hang, 1024
run; float64 k = 32: 100 hang) -- near the threshold it is a race, won or lost from run
to run.  The call returns (async dispatch) and the first read of a result blocks forever
at 0 % CPU.  ``jnp.linalg.solve`` (LU + two triangular solves) hangs the same way.

Why (gdb backtraces of the hung process)
----------------------------------------
The triangular solve lowers to the LAPACK FFI custom call ``lapack_strsm_ffi`` /
``lapack_dtrsm_ffi``.  Its kernel (``jax::TriMatrixEquationSolver::Kernel``) splits a large
batch with ``jax::ParallelBatchMap`` into tasks on the FFI thread pool -- which is XLA:CPU's
intra-op Eigen pool (threads ``tf_XLAEigen``) -- and waits for them with
``absl::BlockingCounter::Wait`` *on the pool thread that runs the custom call*.  The thunk
executor runs independent thunks concurrently on that same pool, so with two solves on a
2-thread pool both ``tf_XLAEigen`` threads sit in ``BlockingCounter::Wait`` inside
``lapack_strsm_ffi``; the tasks they wait for are queued behind them and never run.  The
main thread waits in ``PyArray ... BlockUntilReady``.  A classic nested-parallelism
deadlock.

What does not hang / does not help
----------------------------------
* one solve at a time (the other pool thread runs the pieces), or the same solves on
  small batches (run inline, not split);
* the same program pinned to one core (``taskset -c 0``): it runs;
* NOT helping: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``,
  ``jax.config.update("jax_cpu_enable_async_dispatch", False)``,
  ``--xla_force_host_platform_device_count=4``, ``OMP_NUM_THREADS=1`` -- all still hang.

In recur the ELK solver's parallel Kalman filter had exactly this shape: each combine of
the Särkkä--García-Fernández prefix scan solved two independent batched ``k x k`` systems
with LU + ``triangular_solve`` (``T`` systems per round): a dense tanh RNN with D = 32 hung
from T ≈ 200 (float32).  recur now inverts those blocks with a Gauss--Jordan elimination
written in ``jnp`` ops (``recur/runtime/_kalman.py: _binv``); the compiled program holds no
custom call.  Other projects report the same deadlock through other LAPACK kernels that use
``ParallelBatchMap`` (``potrf``, ``gtsv``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CASES = {
    # name: (batch, k, independent solves (0 = number of cores, at least 2), kind, env, note)
    "one solve, large batch": (2048, 32, 1, "trsm", {}, "ok"),
    "two+ solves, small batch": (32, 32, 0, "trsm", {}, "ok"),
    "two+ solves, large batch": (2048, 32, 0, "trsm", {}, "HANG"),
    "two+ jnp.linalg.solve, large batch": (2048, 32, 0, "solve", {}, "HANG"),
    "two+ solves, --xla_cpu_multi_thread_eigen=false": (
        2048, 32, 0, "trsm", {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}, "HANG"),
    "two+ solves, async dispatch off": (
        2048, 32, 0, "trsm", {"REPRO_NO_ASYNC": "1"}, "HANG"),
}


def child(batch: int, k: int, n: int, kind: str) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    if os.environ.get("REPRO_NO_ASYNC"):
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    n = n or max(2, len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    mats = [jnp.asarray(np.tril(rng.standard_normal((batch, k, k))) + 4 * np.eye(k),
                        jnp.float32) for _ in range(n)]
    rhs = jnp.asarray(rng.standard_normal((batch, k, k)), jnp.float32)

    def solve(L, R):
        if kind == "solve":
            return jnp.linalg.solve(L, R)
        return lax.linalg.triangular_solve(L, R, left_side=True, lower=True)

    f = jax.jit(lambda mats, rhs: [solve(L, rhs) for L in mats])
    for _ in range(20):  # the race is lost almost surely within a few calls
        jax.block_until_ready(f(mats, rhs))
    print("ok", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    ap.add_argument("--child", nargs=4, metavar=("BATCH", "K", "N", "KIND"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        b, k, n, kind = args.child
        child(int(b), int(k), int(n), kind)
        return
    import jax
    import jaxlib
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
          f"{len(os.sched_getaffinity(0))} cores", flush=True)
    for name, (b, k, n, kind, env, expected) in CASES.items():
        cmd = [sys.executable, __file__, "--child", str(b), str(k), str(n), kind]
        try:
            r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                               timeout=args.timeout)
            got = "ok" if r.returncode == 0 and "ok" in r.stdout else f"error {r.returncode}"
        except subprocess.TimeoutExpired:
            got = "HANG"
        print(f"{name:50s} {got:6s} (seen on jax 0.10.2, 2 cores: {expected})", flush=True)


if __name__ == "__main__":
    main()
