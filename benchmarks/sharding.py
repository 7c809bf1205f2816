"""Sequence parallelism on simulated devices: communication and time per iteration vs D.

    python -m benchmarks.sharding [--quick] [--devices 1,2,4,8] [--out results.json]

For each device count ``D`` a subprocess starts JAX with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` and runs, split over a mesh axis
of ``D`` devices: the ``diag-scan`` workload (``method="scan"``) and the GRU reference
problem (``method="deer"`` and ``"quasi-deer"``).  It records the median time per call,
the iterations, the time per iteration, the error against ``lax.scan``, and the
collectives in the compiled program (from its HLO text: every ``all-gather``,
``collective-permute`` and ``all-reduce``, with the bytes of its result) -- the
communication per iteration is the collectives inside the solver's loop body.

Simulated devices share this machine's cores and their "communication" is a memory
copy, so the times say little about a real cluster; what carries over is the volume,
which does not grow with ``T``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

_BYTES = {"f32": 4, "f64": 8, "s32": 4, "pred": 1, "c64": 8, "c128": 16, "bf16": 2, "u32": 4,
          "s64": 8, "f16": 2}
_COLLECTIVE = re.compile(
    r"=\s*(\(?[a-z0-9]+\[[0-9,]*\][^=]*?)\s(all-gather|collective-permute|all-reduce|"
    r"reduce-scatter|all-to-all)(-start)?\(")


def _shape_bytes(text: str) -> int:
    total = 0
    for dt, dims in re.findall(r"([a-z0-9]+)\[([0-9,]*)\]", text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES.get(dt, 4)
    return total


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """``{op: {"count": c, "bytes": b}}`` over the compiled HLO text."""
    out: dict[str, dict[str, int]] = {}
    for shape, op, _ in _COLLECTIVE.findall(hlo):
        entry = out.setdefault(op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += _shape_bytes(shape)
    return out


def _child(devices: int, quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import recur
    from benchmarks.nonlinear import gru_problem

    mesh = jax.make_mesh((devices,), ("t",))
    records = []

    def timed(fn, *args):
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(3 if quick else 5):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    # diag-scan
    T, n = (2 ** 12, 16) if quick else (2 ** 16, 64)
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0.5, 0.99, (T, n)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((T, n)), jnp.float32)

    def affine(h, x):
        return x[0] * h + x[1]
    h0 = jnp.zeros(n, jnp.float32)
    run = jax.jit(lambda xs: recur.scan(affine, h0, xs, method="scan", mesh=mesh, axis_name="t",
                                        check=False))
    ref = jax.lax.scan(lambda h, x: (affine(h, x),) * 2, h0, (a, b))[1]
    hlo = run.lower((a, b)).compile().as_text()
    err = float(jnp.max(jnp.abs(run((a, b)) - ref)))
    records.append(dict(workload="diag-scan", devices=devices, T=T, n=n, method="scan",
                        median_s=timed(run, (a, b)), iterations=1, max_abs_err=err,
                        collectives=collectives(hlo)))

    # gru (DEER reference problem)
    D, T = (8, 1024) if quick else (16, 4096)
    step, h0, xs = gru_problem(D, T)
    ref = jax.lax.scan(lambda h, x: (step(h, x),) * 2, h0, xs)[1]
    for method in ("deer", "quasi-deer"):
        run = jax.jit(lambda xs, m=method: recur.scan(step, h0, xs, method=m, mesh=mesh,
                                                      axis_name="t", rtol=1e-5, atol=1e-5,
                                                      return_info=True))
        hs, info = run(xs)
        hlo = run.lower(xs).compile().as_text()
        med = timed(run, xs)
        its = int(info.iterations)
        records.append(dict(workload="gru", devices=devices, T=T, D=D, method=method,
                            median_s=med, iterations=its,
                            per_iteration_s=med / max(its, 1),
                            converged=bool(info.converged), fell_back=bool(info.fell_back),
                            max_abs_err=float(jnp.max(jnp.abs(hs - ref))),
                            collectives=collectives(hlo)))
    return records


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--out", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print("RECORDS " + json.dumps(_child(args.child, args.quick)))
        return []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    records = []
    for d in (int(v) for v in args.devices.split(",")):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}",
               "JAX_PLATFORMS": "cpu"}
        cmd = [sys.executable, "-m", "benchmarks.sharding", "--child", str(d)] + \
            (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RECORDS ")]
        if proc.returncode or not line:
            raise SystemExit(f"devices={d} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        for r in json.loads(line[0][len("RECORDS "):]):
            comm = ", ".join(f"{op} x{v['count']} ({v['bytes']} B)"
                             for op, v in sorted(r["collectives"].items())) or "none"
            print(f"{r['workload']:9s} D={r['devices']} {r['method']:10s} "
                  f"{r['median_s'] * 1e3:8.2f} ms  iterations {r['iterations']:3d}  "
                  f"err {r['max_abs_err']:.2e}  collectives: {comm}")
            records.append(r)
    meta = dict(device="cpu (simulated devices: --xla_force_host_platform_device_count)",
                cores=os.cpu_count(), loadavg=os.getloadavg())
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(meta=meta, records=records), fh, indent=1)
    return records


if __name__ == "__main__":
    main()
