"""Run a Python module as N local JAX processes (multi-controller JAX on one machine).

``launch(module, processes=2, local_devices=2)`` starts ``python -m module`` N times from the
repository root (so ``import recur`` is this checkout's, in CI and in a worktree alike),
each with ``local_devices`` simulated CPU devices and the coordinates of one process of the
job in its environment; the child calls ``initialize()`` first, which connects it to the
others over gloo (CPU collectives) through a coordinator on a free local port.

Never a hang, never an orphan: every process is the leader of its own process group;
when one fails, or the deadline passes, every group is killed (``SIGKILL``: a process
blocked in a collective does not answer ``SIGTERM``), and the output of all of them is
returned for the report.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Environment of a child: which process of which job it is.
_COORDINATOR = "RECUR_TEST_COORDINATOR"
_PROCESS_ID = "RECUR_TEST_PROCESS_ID"
_PROCESSES = "RECUR_TEST_PROCESSES"
_DEADLINE = "RECUR_TEST_DEADLINE"   # time.time() after which a child exits on its own
_QUICK_COMPILE = " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@dataclasses.dataclass
class Outcome:
    process_id: int
    returncode: int | None   # None: killed at the deadline
    output: str              # stdout and stderr, interleaved


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def launch(module: str, args: tuple[str, ...] = (), *, processes: int = 2,
           local_devices: int = 2, timeout: float = 240.0,
           quick_compile: bool = True) -> list[Outcome]:
    """Run ``python -m module *args`` as ``processes`` processes of one JAX job;
    ``quick_compile``: XLA's CPU backend without its expensive optimisations (the programs
    of a test are tiny, their compilation is where its time goes: 27 % less here)."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}"
                        + (_QUICK_COMPILE if quick_compile else ""),
           _COORDINATOR: f"127.0.0.1:{port}", _PROCESSES: str(processes),
           _DEADLINE: str(time.time() + timeout + 5)}
    procs, logs = [], []
    try:
        for i in range(processes):
            log = tempfile.TemporaryFile(mode="w+")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", module, *args], cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT, env={**env, _PROCESS_ID: str(i)},
                start_new_session=True))
            logs.append(log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break  # all done, or one failed: the others would wait for it forever
            time.sleep(0.1)
    finally:
        for p in procs:
            _kill(p)
    outcomes = []
    for i, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        outcomes.append(Outcome(i, p.returncode if p.returncode is not None and
                                p.returncode >= 0 else None, log.read()))
        log.close()
    return outcomes


def report(outcomes: list[Outcome], tail: int = 6000) -> str:
    """Every process's exit status and the end of its output."""
    parts = []
    for o in outcomes:
        status = "killed (deadline, or a peer failed)" if o.returncode is None \
            else f"exit {o.returncode}"
        parts.append(f"===== process {o.process_id}: {status} =====\n{o.output[-tail:]}")
    return "\n".join(parts)


def _watchdog(parent: int, deadline: float) -> None:
    """Exit when the launcher is gone (killed by a test timeout before it could kill us)
    or past the deadline: a process of a broken job must not outlive it."""
    while os.getppid() == parent and time.time() < deadline:
        time.sleep(0.5)
    os._exit(3)


def _exit_at_once(kind, value, tb) -> None:
    """An uncaught exception ends the process now: a normal exit would wait at
    ``jax.distributed``'s shutdown barrier for peers that wait for this process."""
    import traceback
    traceback.print_exception(kind, value, tb)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)


def initialize() -> tuple[int, int]:
    """In a child: join the job (gloo CPU collectives); ``(process id, processes)``."""
    import threading

    import jax
    threading.Thread(target=_watchdog, args=(os.getppid(), float(os.environ[_DEADLINE])),
                     daemon=True).start()
    sys.excepthook = _exit_at_once
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, n = int(os.environ[_PROCESS_ID]), int(os.environ[_PROCESSES])
    jax.distributed.initialize(os.environ[_COORDINATOR], num_processes=n, process_id=pid,
                               initialization_timeout=60)
    return pid, n


__all__ = ["launch", "report", "initialize", "free_port", "Outcome", "ROOT"]
