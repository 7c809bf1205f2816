"""Sequence parallelism on simulated devices: communication and time per iteration vs D.

    python -m benchmarks.sharding [--quick] [--devices 1,2,4,8] [--processes 2x2]
                                  [--out results.json]

For each device count ``D`` a subprocess starts JAX with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` and runs, split over a mesh axis
of ``D`` devices: the ``diag-scan`` workload (``method="scan"``) and the GRU reference
problem (``method="deer"`` and ``"quasi-deer"``).  ``--processes PxL`` adds the
multi-controller configuration: ``P`` processes of ``L`` devices each joined by
``jax.distributed`` (gloo collectives over local TCP), the same workloads on the mesh of
all ``P L`` devices, inputs built as global arrays (``jax.make_array_from_callback``).

Recorded per run: the median time per call, the iterations, the time per iteration, the
error against ``lax.scan``, and the collectives of the compiled program (from its HLO text:
every ``all-gather``, ``collective-permute`` and ``all-reduce`` with the bytes of its
result), split by where they sit: ``per_iteration`` -- in the body of the solver's loop
(executed once per iteration), ``per_sweep`` -- in a loop nested in it (the Lyapunov
estimate's sweeps: 8 at the first iteration, 2 later), ``once`` -- outside the loop, and
``fallback`` -- in the sequential fallback (run only when the solver fails).

Simulated devices share this machine's cores and their "communication" is a memory
copy (gloo: a local TCP socket), so the times say little about a cluster; what carries
over is the volume, which does not grow with ``T``.
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


_OP_NAME = re.compile(r'op_name="([^"]*)"')


def _where(line: str) -> str:
    """Where a collective of the sharded program runs, from its ``op_name`` (the nesting of
    JAX's ``while``s and ``cond``s inside the ``shard_map``)."""
    m = _OP_NAME.search(line)
    path = m.group(1).split("shard_map/", 1)[-1] if m else ""
    if "cond/branch" in path:
        return "fallback"
    depth = path.count("while/body")
    return ("once", "per_iteration")[depth] if depth < 2 else "per_sweep"


def collectives_by_place(hlo: str) -> dict[str, dict[str, int]]:
    """``{place: {"count", "bytes", "ops"}}`` (places: ``_where``)."""
    out: dict[str, dict] = {}
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if not m:
            continue
        entry = out.setdefault(_where(line), {"count": 0, "bytes": 0, "ops": {}})
        entry["count"] += 1
        entry["bytes"] += _shape_bytes(m.group(1))
        entry["ops"][m.group(2)] = entry["ops"].get(m.group(2), 0) + 1
    return out


def _child(devices: int, quick: bool, processes: int = 1) -> list[dict]:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    import recur
    from benchmarks.nonlinear import gru_problem

    mesh = jax.make_mesh((devices,), ("t",))
    records = []

    def put(v, spec=PartitionSpec("t")):
        """A global array (each process supplies the pieces of its own devices)."""
        v = np.asarray(v)
        return jax.make_array_from_callback(v.shape, NamedSharding(mesh, spec), lambda i: v[i])

    def host(v):
        return np.asarray(multihost_utils.process_allgather(v, tiled=True))

    def timed(fn, *args):
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(3 if quick else 5):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def record(**kw):
        records.append(dict(devices=devices, processes=processes, **kw))

    # diag-scan
    T, n = (2 ** 12, 16) if quick else (2 ** 16, 64)
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 0.99, (T, n)).astype(np.float32)
    b = rng.standard_normal((T, n)).astype(np.float32)

    def affine(h, x):
        return x[0] * h + x[1]
    h0 = np.zeros(n, np.float32)
    run = jax.jit(lambda xs: recur.scan(affine, h0, xs, method="scan", mesh=mesh, axis_name="t",
                                        check=False))
    ref = jax.lax.scan(lambda h, x: (affine(h, x),) * 2, h0, (a, b))[1]
    xs = (put(a), put(b))
    hlo = run.lower(xs).compile().as_text()
    err = float(np.max(np.abs(host(run(xs)) - np.asarray(ref))))
    record(workload="diag-scan", T=T, n=n, method="scan", median_s=timed(run, xs), iterations=1,
           max_abs_err=err, collectives=collectives(hlo), by_place=collectives_by_place(hlo))

    # gru (DEER reference problem)
    D, T = (8, 1024) if quick else (16, 4096)
    step, h0, xs = gru_problem(D, T)
    ref = np.asarray(jax.lax.scan(lambda h, x: (step(h, x),) * 2, h0, xs)[1])
    h0, xs = np.asarray(h0), put(np.asarray(xs))
    for method in ("deer", "quasi-deer"):
        run = jax.jit(lambda xs, m=method: recur.scan(step, h0, xs, method=m, mesh=mesh,
                                                      axis_name="t", rtol=1e-5, atol=1e-5,
                                                      return_info=True))
        hs, info = run(xs)
        hlo = run.lower(xs).compile().as_text()
        med = timed(run, xs)
        its = int(host(info.iterations))
        by_place = collectives_by_place(hlo)
        record(workload="gru", T=T, D=D, method=method, median_s=med, iterations=its,
               per_iteration_s=med / max(its, 1), converged=bool(host(info.converged)),
               fell_back=bool(host(info.fell_back)),
               max_abs_err=float(np.max(np.abs(host(hs) - ref))),
               collectives=collectives(hlo), by_place=by_place,
               bytes_per_iteration=by_place.get("per_iteration", {}).get("bytes", 0),
               bytes_per_lyapunov_sweep=by_place.get("per_sweep", {}).get("bytes", 0))
    return records


def _print(r: dict) -> None:
    comm = ", ".join(f"{op} x{v['count']} ({v['bytes']} B)"
                     for op, v in sorted(r["collectives"].items())) or "none"
    config = f"{r['processes']}x{r['devices'] // r['processes']}" if r["processes"] > 1 \
        else f"D={r['devices']}"
    per_it = f"  {r['bytes_per_iteration']} B/iteration" if "bytes_per_iteration" in r else ""
    print(f"{r['workload']:9s} {config:5s} {r['method']:10s} {r['median_s'] * 1e3:8.2f} ms  "
          f"iterations {r['iterations']:3d}  err {r['max_abs_err']:.2e}{per_it}  "
          f"collectives: {comm}")


def _records(stdout: str) -> list[dict] | None:
    line = [ln for ln in stdout.splitlines() if ln.startswith("RECORDS ")]
    return json.loads(line[0][len("RECORDS "):]) if line else None


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--processes", default="2x2",
                   help="multi-process configurations PxL (P processes of L devices), or ''")
    p.add_argument("--out", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--multiprocess", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        processes = 1
        if args.multiprocess:
            from tests._multiprocess import initialize
            _, processes = initialize()
        records = _child(args.child, args.quick, processes)
        import jax
        if jax.process_index() == 0:
            print("RECORDS " + json.dumps(records), flush=True)
        return []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    quick = ["--quick"] if args.quick else []
    records = []
    for d in (int(v) for v in args.devices.split(",") if v):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}",
               "JAX_PLATFORMS": "cpu"}
        cmd = [sys.executable, "-m", "benchmarks.sharding", "--child", str(d)] + quick
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        got = _records(proc.stdout)
        if proc.returncode or got is None:
            raise SystemExit(f"devices={d} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        for r in got:
            _print(r)
            records.append(r)
    for config in (c for c in args.processes.split(",") if c):
        from tests._multiprocess import launch, report
        n_proc, local = (int(v) for v in config.split("x"))
        outcomes = launch("benchmarks.sharding",
                          ("--child", str(n_proc * local), "--multiprocess", *quick),
                          processes=n_proc, local_devices=local, timeout=1800,
                          quick_compile=False)
        got = _records(outcomes[0].output)
        if any(o.returncode != 0 for o in outcomes) or got is None:
            raise SystemExit(f"processes={config} failed:\n{report(outcomes)}")
        for r in got:
            _print(r)
            records.append(r)
    meta = dict(device="cpu (simulated devices: --xla_force_host_platform_device_count; "
                       "multi-process: jax.distributed with gloo over local TCP)",
                cores=os.cpu_count(), loadavg=os.getloadavg())
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(meta=meta, records=records), fh, indent=1)
    return records


if __name__ == "__main__":
    main()
