"""Test configuration: float64 available, strict dtype promotion, bounded hypothesis."""

import os

import jax
import pytest
from hypothesis import HealthCheck, Phase, settings

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

# CI: no shrinking (a failure is reported as drawn, with its seed), bounded examples (most
# examples compile a program of their own: that, not the check, is what each one costs).
settings.register_profile(
    "ci", max_examples=10, deadline=None, print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("RECUR_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(0)


# Long tests that mostly wait on subprocesses go first, so that the two xdist workers overlap
# them with everything else instead of ending the run with them.
_FIRST = ("tests/test_example_scripts.py", "tests/test_sharding.py::test_cases_on_four",
          "tests/test_multiprocess.py", "tests/test_cli.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for i, prefix in enumerate(_FIRST):
            if item.nodeid.startswith(prefix):
                return i
        return len(_FIRST)
    items.sort(key=rank)  # stable: the order within each file is kept
