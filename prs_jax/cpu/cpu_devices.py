"""One JAX device per CPU core when training on a CPU host: data parallelism across the cores.

XLA:CPU runs a single device's step as a graph of operations on one shared thread pool. With
few cores, every matmul and elementwise operation is cut into per-core pieces that wait for each
other and for whatever else the executor started, so a 2-core machine spends much of the step
idle. As many devices as cores, each with a single-threaded runtime, give each core its share of
the batch and whole operations: the same SPMD program as on a TPU slice, the same results up to
the order of the gradient sum. Measured with `python -m prs_jax.bench` on the 2-core benchmark
machine (ConViT-Ti, batch 128): 1.27x the images/s of one device.

`python -m prs_jax.main` and `python -m prs_jax.bench` call `configure` after parsing flags and
before JAX starts its backend. PRS_JAX_CPU_DEVICES=N asks for N devices (1 keeps JAX's default
single device); an XLA_FLAGS that already fakes a device count is left alone. Where JAX computes
on a GPU or TPU, nothing is changed (`device_count_decision`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from prs_jax.cpu import host_allocator

ENV_SWITCH = "PRS_JAX_CPU_DEVICES"
_DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"
_SINGLE_THREADED = "--xla_cpu_multi_thread_eigen=false"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def device_count_for(per_process_batch_sizes: Sequence[int], cores: int) -> int:
    """The most devices, at most `cores`, that split every batch evenly."""
    common = math.gcd(*per_process_batch_sizes)
    return max(n for n in range(1, max(cores, 1) + 1) if common % n == 0)


def requested_device_count(per_process_batch_sizes: Sequence[int]) -> int:
    """Devices to create: from $PRS_JAX_CPU_DEVICES, else one per core where JAX runs on the
    CPU; 0 where JAX's own default should stand. Raises on a malformed switch."""
    return device_count_decision(
        os.environ.get(ENV_SWITCH, ""),
        os.environ.get("XLA_FLAGS", ""),
        host_allocator.runs_on_cpu_only(),
        per_process_batch_sizes,
        usable_cores(),
    )


def device_count_decision(
    switch: str,
    xla_flags: str,
    on_cpu_only: bool,
    per_process_batch_sizes: Sequence[int],
    cores: int,
) -> int:
    """The decision of `requested_device_count`, from its facts: none where JAX computes on a
    GPU or TPU (the CPU's devices then only hold host arrays); else `switch`
    ($PRS_JAX_CPU_DEVICES) when set; else none where `xla_flags` already fakes a count; else one
    per core, as many as divide the batches. Raises on a malformed switch."""
    switch = switch.strip()
    if switch and (not switch.isdigit() or int(switch) < 1):
        raise ValueError(f"{ENV_SWITCH} must be a positive number of devices, got {switch!r}")
    if not on_cpu_only:
        return 0
    if switch:
        return int(switch)
    if _DEVICE_COUNT_FLAG in xla_flags:
        return 0
    return device_count_for(per_process_batch_sizes, cores)


def configure(per_process_batch_sizes: Sequence[int]) -> int:
    """Before JAX's backend starts: one CPU device per core (see the module docstring).

    Returns the number of devices set up, 0 if JAX's default was kept. A count that does not
    divide the batch is refused later by config validation, with the fix.
    """
    count = requested_device_count(per_process_batch_sizes)
    if count <= 1:
        return 0
    import jax  # pylint: disable=import-outside-toplevel  # after the env checks above

    jax.config.update("jax_num_cpu_devices", count)
    # Each device's operations run on its own core: no splitting them across a shared pool.
    flags = os.environ.get("XLA_FLAGS", "")
    if _SINGLE_THREADED not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_SINGLE_THREADED}".strip()
    return count
