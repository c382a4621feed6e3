"""Keep freed host memory for reuse: XLA:CPU's per-step scratch buffer then costs no page faults.

XLA:CPU allocates each execution's temporaries as one block (about 2.5 GB for a ConViT-Ti step
at batch 128) with posix_memalign, from a worker thread. glibc serves a block that large with
a fresh mmap and unmaps it on free, so every step the kernel zero-fills the whole block again:
measured on the 2-core benchmark machine, 650k page faults and about 1 s of system time per
1.7 s step. With one malloc arena, no mmap and no trimming, the freed block stays in the heap
and the next step reuses it: 1.15 s per step (`python -m prs_jax.bench`).

The cost: the process keeps its peak heap (RSS does not shrink after a big step), and threads
share one arena. Call `reuse_freed_memory()` once, first thing in a CPU training or benchmark
process, before JAX or TensorFlow start their threads (glibc fixes the arena limit when a
second thread first allocates). Elsewhere (not glibc, or too late) it does nothing harmful.

`python -m prs_jax.main` applies it when JAX will run on the CPU (`runs_on_cpu_only`): with
an accelerator the step's scratch lives in device memory, and one arena would only make the
host's input threads contend. PRS_JAX_REUSE_HOST_MEMORY=0 turns it off, =1 forces it on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import pkgutil
import platform
from collections.abc import Iterable

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


ENV_SWITCH = "PRS_JAX_REUSE_HOST_MEMORY"


def runs_on_cpu_only() -> bool:
    """Whether JAX will compute on the host: $JAX_PLATFORMS says so, or no GPU/TPU plugin is
    installed. Decided without importing JAX, which may start threads."""
    return cpu_only(os.environ.get("JAX_PLATFORMS", ""), installed_accelerator_plugins())


def installed_accelerator_plugins() -> list[str]:
    """The installed modules that give JAX a GPU or TPU backend (libtpu, jax_cuda*, jax_rocm*)."""
    found = [module.name for module in pkgutil.iter_modules() if is_accelerator_plugin(module.name)]
    if importlib.util.find_spec("libtpu") is not None and "libtpu" not in found:
        found.append("libtpu")
    return found


def is_accelerator_plugin(module_name: str) -> bool:
    return module_name == "libtpu" or module_name.startswith(("jax_cuda", "jax_rocm"))


def cpu_only(jax_platforms: str, installed_modules: Iterable[str]) -> bool:
    """The decision of `runs_on_cpu_only`, from its facts: $JAX_PLATFORMS when set (CPU only
    when it names nothing but "cpu"), else whether no accelerator plugin is installed."""
    platforms = {p.strip() for p in jax_platforms.split(",") if p.strip()}
    if platforms:
        return platforms <= {"cpu"}
    return not any(is_accelerator_plugin(name) for name in installed_modules)


def reuse_decision(switch: str, on_cpu_only: bool) -> bool:
    """Whether to keep freed host memory: `switch` ($PRS_JAX_REUSE_HOST_MEMORY) "1" forces it,
    "0" refuses it, unset follows the platform (on where JAX computes on the host only)."""
    switch = switch.strip()
    if switch not in ("", "0", "1"):
        raise ValueError(f"{ENV_SWITCH} must be 0, 1 or unset, got {switch!r}")
    return switch == "1" or (switch == "" and on_cpu_only)


def configure_for_training() -> bool:
    """Applies `reuse_freed_memory` where it helps (CPU training) unless turned off by env."""
    if not reuse_decision(os.environ.get(ENV_SWITCH, ""), runs_on_cpu_only()):
        return False
    return reuse_freed_memory()


def reuse_freed_memory() -> bool:
    """Configure glibc malloc to keep and reuse large freed blocks; True if it was applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return all(
        libc.mallopt(parameter, value) == 1
        for parameter, value in (
            (_M_ARENA_MAX, 1),  # worker threads allocate from the main heap...
            (_M_MMAP_MAX, 0),  # ...which grows with brk rather than a fresh mmap per block...
            (_M_TRIM_THRESHOLD, -1),  # ...and is never trimmed, so freed blocks are reused.
        )
    )
