"""The CPU-only measures (prs_jax/cpu/: keeping freed host memory, one device per core) stay off
wherever JAX computes on a GPU or TPU: the decision itself, as pure functions of the facts that
prs_jax.main, prs_jax.evaluate, prs_jax.bench and the tools read from the environment."""

import pytest

from prs_jax.cpu import cpu_devices, host_allocator

CUDA_PLUGIN = ["jax_cuda12_plugin", "jax_cuda12_pjrt"]


@pytest.mark.parametrize(
    "jax_platforms, installed, cpu_only",
    [
        ("", [], True),  # a CPU-only JAX
        ("", CUDA_PLUGIN, False),  # jax[cuda12]
        ("", ["jax_rocm60_plugin"], False),
        ("", ["libtpu"], False),  # jax[tpu]
        ("cuda", [], False),
        ("tpu", [], False),
        ("cpu,cuda", CUDA_PLUGIN, False),
        ("cpu", CUDA_PLUGIN, True),  # JAX_PLATFORMS=cpu on a GPU host computes on the CPU
        (" cpu ", ["libtpu"], True),
    ],
)
def test_jax_computes_on_the_host_only_where_the_facts_say_so(jax_platforms, installed, cpu_only):
    assert host_allocator.cpu_only(jax_platforms, installed) is cpu_only


ACCELERATOR_HOSTS = [("", CUDA_PLUGIN), ("", ["libtpu"]), ("cuda", []), ("tpu", CUDA_PLUGIN)]


@pytest.mark.parametrize("jax_platforms, installed", ACCELERATOR_HOSTS)
def test_both_measures_stay_off_on_a_gpu_or_tpu_host(jax_platforms, installed):
    on_cpu_only = host_allocator.cpu_only(jax_platforms, installed)
    assert not host_allocator.reuse_decision("", on_cpu_only)
    assert cpu_devices.device_count_decision("", "", on_cpu_only, [128, 256], cores=16) == 0
    # PRS_JAX_CPU_DEVICES asks for CPU devices: beside an accelerator they would compute nothing.
    assert cpu_devices.device_count_decision("8", "", on_cpu_only, [128, 256], cores=16) == 0


def test_both_measures_are_on_where_jax_computes_on_the_cpu():
    on_cpu_only = host_allocator.cpu_only("", [])
    assert host_allocator.reuse_decision("", on_cpu_only)
    assert cpu_devices.device_count_decision("", "", on_cpu_only, [128, 256], cores=16) == 16


@pytest.mark.parametrize(
    "switch, on_cpu_only, reuse",
    [("", True, True), ("", False, False), ("0", True, False), ("1", False, True)],
)
def test_the_memory_switch_forces_either_way(switch, on_cpu_only, reuse):
    # PRS_JAX_REUSE_HOST_MEMORY=1 is the one way to keep host memory beside an accelerator.
    assert host_allocator.reuse_decision(switch, on_cpu_only) is reuse


@pytest.mark.parametrize(
    "switch, xla_flags, expected",
    [
        ("", "", 4),
        ("3", "", 3),
        ("", "--xla_force_host_platform_device_count=8", 0),  # left as XLA_FLAGS set it
        ("2", "--xla_force_host_platform_device_count=8", 2),
    ],
)
def test_on_the_cpu_the_device_count_follows_switch_flags_and_cores(switch, xla_flags, expected):
    assert cpu_devices.device_count_decision(switch, xla_flags, True, [128], cores=4) == expected


def test_malformed_switches_are_refused_on_any_platform():
    for on_cpu_only in (True, False):
        with pytest.raises(ValueError, match="PRS_JAX_REUSE_HOST_MEMORY must be 0, 1 or unset"):
            host_allocator.reuse_decision("yes", on_cpu_only)
        with pytest.raises(ValueError, match="PRS_JAX_CPU_DEVICES must be a positive number"):
            cpu_devices.device_count_decision("0", "", on_cpu_only, [128], cores=4)
