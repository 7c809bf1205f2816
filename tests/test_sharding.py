"""Sequence parallelism: the multi-device cases run in two subprocesses on 4 simulated CPU
devices (``tests/sharded_cases.py``); the one-device behaviour is tested here."""

import ast
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recur

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The cases in two subprocesses of about a minute each, so that the two xdist workers share
# them; together the groups name every test of sharded_cases.py once (checked below).
CASE_GROUPS = {
    "affine-nonlinear": (
        "test_affine_scan_across_devices_equals_the_loop",
        "test_output_is_sharded_along_time_and_plan_shows_the_layout",
        "test_explicit_axis_mesh_and_jit_with_mesh_option",
        "test_gru_across_devices_equals_one_device",
        "test_gru_float32_deer_across_devices",
        "test_gradients_across_devices_equal_the_loop",
        "test_vmap_across_devices",
        "test_chaotic_map_falls_back_across_devices",
        "test_elk_across_devices_equals_one_device",
        "test_windows_across_device_boundaries_equal_one_device",
    ),
    "meshes-stages-semiring": (
        "test_explicit_axis_mesh_padding_gradients_without_and_with_a_mesh_context",
        "test_two_dimensional_mesh_batch_over_data_and_time_over_t",
        "test_staged_kalman_across_devices",
        "test_dsl_recurrence_across_devices",
        "test_clear_errors_across_devices",
        "test_semiring_scan_across_devices",
    ),
}


def test_case_groups_name_every_sharded_case_once():
    with open(os.path.join(ROOT, "tests", "sharded_cases.py")) as f:
        body = ast.parse(f.read()).body
    tests = [node.name for node in body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
             and node.name.startswith("test")]
    assert not [node.name for node in body if isinstance(node, ast.ClassDef)
                and node.name.startswith("Test")]
    grouped = [name for group in CASE_GROUPS.values() for name in group]
    assert sorted(grouped) == sorted(tests) and len(set(grouped)) == len(grouped)


@pytest.mark.parametrize("group", sorted(CASE_GROUPS))
def test_cases_on_four_simulated_devices(group):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    cases = [os.path.join("tests", "sharded_cases.py") + "::" + name
             for name in CASE_GROUPS[group]]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-n", "0",
         *cases],
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
