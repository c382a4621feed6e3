"""Test-wide settings: CPU only, two fake devices for data-parallel tests, and a persistent
compilation cache shared by the test processes and the runs they start."""

import os
import pathlib

import pytest

from tests.support.compile_flags import TEST_XLA_FLAGS

# Must run before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS} --xla_force_host_platform_device_count=2"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Compilation is most of the suite's time, and many tests compile the same tiny models: with
# the cache, a compile is done once per suite (and once per machine for a rerun). Subprocesses
# (prs_jax.main runs, notebooks) inherit it through the environment. JAX keys entries by the
# program, the compile options, the backend and JAX's version, so an entry is never stale.
# JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(pathlib.Path("~/.cache/prs_jax/test_compilation_cache").expanduser()),
)
# Cache every compile over 0.2 s (JAX's default, 1 s, leaves out most of the tiny models').
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


@pytest.fixture(scope="session")
def mocked_run(tmp_path_factory):
    """tests/support/mocked_run.py's tiny PRS run, trained once per test process. Read it only:
    a test that resumes or damages it works on `copy_of_run`."""
    from tests.support.mocked_run import train_tiny_run

    return train_tiny_run(str(tmp_path_factory.mktemp("mocked_run")))
