"""A GRU over a sequence split across the devices of several processes (hosts).

One process per host, as JAX's multi-controller runtime wants; every process runs this same
script.  Three ways to start it:

    # on this machine: two processes with two CPU devices each (gloo collectives)
    python examples/multihost.py --local 2

    # by hand, one command per host (process 0's host runs the coordinator)
    python examples/multihost.py --coordinator HOST0:1234 --num-processes 2 --process-id 0
    python examples/multihost.py --coordinator HOST0:1234 --num-processes 2 --process-id 1

    # under a cluster manager JAX recognises (SLURM, Open MPI, Kubernetes, Cloud TPU)
    python examples/multihost.py

Each process builds its part of the inputs (``jax.make_array_from_callback``), and recur runs
deer Newton iterations with the time axis split over all devices (``mesh=``), then the
gradient of a loss with respect to the parameters.  Process 0 prints the plan (the layout
and what one iteration communicates), the agreement with a ``lax.scan`` loop and the
gradient's, and a final ``AGREEMENT multihost <max difference>`` line.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def launch_locally(processes: int, argv: list[str]) -> int:
    """Run this script as ``processes`` local processes of 2 CPU devices each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
         str(processes), "--process-id", str(i), *argv], env=env, start_new_session=True)
        for i in range(processes)]
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break   # one failed: the others would wait for it in a collective
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
            p.wait()
    return max(abs(p.returncode) for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local", type=int, default=0, help="start N local processes")
    ap.add_argument("--coordinator", default=None)
    ap.add_argument("--num-processes", type=int, default=None)
    ap.add_argument("--process-id", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_known_args()[0]   # (--out DIR of the other examples: no figure here)
    if args.local:
        raise SystemExit(launch_locally(args.local, ["--quick"] if args.quick else []))

    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU devices only
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P

    import recur

    mesh = jax.make_mesh((jax.device_count(),), ("t",))
    hidden, T = 16, (256 if args.quick else 4096) * jax.device_count()
    rng = np.random.default_rng(0)   # the same numbers in every process
    params = {k: (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
              for k in ("Wz", "Uz", "Wr", "Ur", "Wh", "Uh")}
    xs_all = rng.standard_normal((T, hidden)).astype(np.float32)
    h0 = np.zeros(hidden, np.float32)

    def gru(h, x, p):
        z = jax.nn.sigmoid(p["Wz"] @ h + p["Uz"] @ x)
        r = jax.nn.sigmoid(p["Wr"] @ h + p["Ur"] @ x)
        c = jnp.tanh(p["Wh"] @ (r * h) + p["Uh"] @ x)
        return (1 - z) * h + z * c

    # every process supplies only the steps of its own devices
    xs = jax.make_array_from_callback(xs_all.shape, NamedSharding(mesh, P("t")),
                                      lambda index: xs_all[index])

    @jax.jit
    def run(xs, p):
        return recur.scan(gru, h0, xs, p, method="deer", mesh=mesh, axis_name="t",
                          return_info=True)

    @jax.jit
    def grad(xs, p):
        return jax.grad(lambda p: jnp.mean(recur.scan(gru, h0, xs, p, method="deer",
                                                      mesh=mesh, axis_name="t") ** 2))(p)

    hs, info = run(xs, params)
    g = grad(xs, params)
    t0 = time.perf_counter()
    jax.block_until_ready(run(xs, params))
    seconds = time.perf_counter() - t0

    hs = multihost_utils.process_allgather(hs, tiled=True)   # the whole trajectory, here
    g = multihost_utils.process_allgather(g, tiled=True)
    info = multihost_utils.process_allgather(info, tiled=True)
    if jax.process_index() == 0:
        def loop(p):
            return jax.lax.scan(lambda h, x: (gru(h, x, p),) * 2, h0, xs_all)[1]
        ref = np.asarray(loop(params))
        ref_g = jax.grad(lambda p: jnp.mean(loop(p) ** 2))(params)
        err = float(np.max(np.abs(hs - ref)))
        err_g = max(float(np.max(np.abs(np.asarray(g[k]) - np.asarray(ref_g[k])))) for k in g)
        print(recur.plan(gru, h0, jax.ShapeDtypeStruct(xs.shape, xs.dtype), params,
                         method="deer", mesh=mesh, axis_name="t").explain())
        print(f"{jax.process_count()} processes, {jax.device_count()} devices, T = {T}: "
              f"deer {int(info.iterations)} iterations, converged {bool(info.converged)}, "
              f"{seconds * 1e3:.1f} ms; max |hs - loop| = {err:.2e}, "
              f"max |grad - loop's grad| = {err_g:.2e}")
        print(f"AGREEMENT multihost {max(err, err_g):.3e}")


if __name__ == "__main__":
    main()
