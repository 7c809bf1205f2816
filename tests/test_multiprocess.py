"""Sequence parallelism across processes: ``tests/multiprocess_cases.py`` run as a JAX job of
2 local processes x 2 CPU devices (``jax.distributed`` over gloo), both processes' output
shown on failure; the launcher (``tests/_multiprocess.py``) kills every process of the job
on a failure or at its deadline, and the per-test timeout is above that deadline."""

import pytest

from ._multiprocess import launch, report


@pytest.mark.timeout(420)
def test_cases_across_two_processes_of_two_devices():
    outcomes = launch("tests.multiprocess_cases", processes=2, local_devices=2, timeout=360)
    text = report(outcomes)
    assert all(o.returncode == 0 for o in outcomes), text
    for o in outcomes:
        assert f"ALL CASES PASSED on process {o.process_id}" in o.output, text
        assert "FAILED" not in o.output, text
