"""When `python -m prs_jax.main` keeps freed host memory for reuse (prs_jax.cpu.host_allocator)."""

import pytest

from prs_jax.cpu import host_allocator


@pytest.fixture
def calls(monkeypatch):
    """Records calls to reuse_freed_memory instead of changing this process's malloc."""
    made = []
    monkeypatch.setattr(host_allocator, "reuse_freed_memory", lambda: made.append(1) or True)
    monkeypatch.delenv(host_allocator.ENV_SWITCH, raising=False)
    return made


@pytest.mark.parametrize(
    "platforms, cpu_only",
    [("cpu", True), (" cpu ", True), ("cuda", False), ("cpu,cuda", False), ("tpu", False)],
)
def test_jax_platforms_decides_whether_jax_runs_on_the_cpu(monkeypatch, platforms, cpu_only):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert host_allocator.runs_on_cpu_only() is cpu_only


def test_an_installed_gpu_plugin_means_an_accelerator(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)

    class Module:
        name = "jax_cuda12_plugin"

    monkeypatch.setattr(host_allocator.pkgutil, "iter_modules", lambda: [Module()])
    assert not host_allocator.runs_on_cpu_only()


def test_applied_on_cpu_and_not_with_an_accelerator(monkeypatch, calls):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_allocator.configure_for_training()
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert not host_allocator.configure_for_training()
    assert len(calls) == 1


def test_environment_switch_overrides_the_platform(monkeypatch, calls):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv(host_allocator.ENV_SWITCH, "0")
    assert not host_allocator.configure_for_training()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setenv(host_allocator.ENV_SWITCH, "1")
    assert host_allocator.configure_for_training()
    assert len(calls) == 1


def test_a_bad_switch_value_is_named(monkeypatch, calls):
    monkeypatch.setenv(host_allocator.ENV_SWITCH, "yes")
    with pytest.raises(ValueError, match="PRS_JAX_REUSE_HOST_MEMORY must be 0, 1 or unset"):
        host_allocator.configure_for_training()
    assert not calls
