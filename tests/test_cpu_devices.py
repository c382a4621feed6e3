"""How many CPU devices prs_jax.main and the benchmark ask JAX for (prs_jax.cpu.cpu_devices)."""

import os
import subprocess
import sys

import pytest

from prs_jax.cpu import cpu_devices


@pytest.mark.parametrize(
    "batches, cores, expected",
    [
        ([128, 256], 2, 2),
        ([128, 256], 16, 16),
        ([96, 64], 16, 16),
        ([100, 100], 8, 5),
        ([7, 7], 4, 1),
        ([128, 6], 8, 2),
        ([64], 1, 1),
    ],
)
def test_the_most_devices_that_split_every_batch_evenly(batches, cores, expected):
    assert cpu_devices.device_count_for(batches, cores) == expected


@pytest.fixture
def cpu_env(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(cpu_devices.ENV_SWITCH, raising=False)
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: 4)
    return monkeypatch


def test_one_device_per_core_when_jax_runs_on_the_cpu(cpu_env):
    assert cpu_devices.requested_device_count([128, 256]) == 4
    cpu_env.setenv("JAX_PLATFORMS", "tpu")
    assert cpu_devices.requested_device_count([128, 256]) == 0


def test_a_device_count_faked_in_xla_flags_is_left_alone(cpu_env):
    cpu_env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert cpu_devices.requested_device_count([128, 256]) == 0


def test_the_environment_sets_the_count(cpu_env):
    cpu_env.setenv(cpu_devices.ENV_SWITCH, "3")
    assert cpu_devices.requested_device_count([128, 256]) == 3  # validation will refuse 128/3
    for bad in ("0", "two", "-1"):
        cpu_env.setenv(cpu_devices.ENV_SWITCH, bad)
        with pytest.raises(ValueError, match="PRS_JAX_CPU_DEVICES must be a positive number"):
            cpu_devices.requested_device_count([128])


PROBE = """
import os, sys
from prs_jax.cpu import cpu_devices
count = cpu_devices.configure([int(b) for b in sys.argv[1:]])
import jax
print(count, len(jax.devices()), os.environ.get("XLA_FLAGS", ""))
"""


def probe(*batches, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_devices.ENV_SWITCH)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, batches)],
        check=True,
        capture_output=True,
        text=True,
        env={**clean, **env},
    ).stdout.split()
    return int(result[0]), int(result[1]), " ".join(result[2:])


def test_configure_gives_jax_that_many_single_threaded_devices():
    count, devices, flags = probe(6, 9, JAX_PLATFORMS="cpu", PRS_JAX_CPU_DEVICES="3")
    assert (count, devices) == (3, 3)
    assert flags == "--xla_cpu_multi_thread_eigen=false"


def test_one_device_leaves_jax_alone():
    count, devices, flags = probe(7, 7, JAX_PLATFORMS="cpu", PRS_JAX_CPU_DEVICES="1")
    assert (count, devices, flags) == (0, 1, "")
