"""Sequence parallelism: the multi-device cases run in a subprocess on 4 simulated CPU
devices (``tests/sharded_cases.py``); the one-device behaviour is tested here."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cases_on_four_simulated_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-n", "0",
         os.path.join("tests", "sharded_cases.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


def test_one_device_mesh_runs_the_sharded_program():
    mesh = jax.make_mesh((1,), ("t",))
    W = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3)) / 3)
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((9, 3)))

    def rnn(h, x):
        return jnp.tanh(W @ h + x)
    plan = recur.plan(rnn, jnp.zeros(3), xs, method="deer", mesh=mesh)
    assert plan.layout.devices == 1 and plan.layout.local_length == 9
    out = recur.scan(rnn, jnp.zeros(3), xs, method="deer", mesh=mesh)
    ref = jax.lax.scan(lambda h, x: (rnn(h, x),) * 2, jnp.zeros(3), xs)[1]
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


def test_mesh_must_be_a_mesh():
    with pytest.raises(recur.PlanError, match="Mesh"):
        recur.scan(lambda h, x: h + x, jnp.zeros(2), jnp.ones((4, 2)), mesh="t")
