"""Timings for the benchmark: per-step seconds of each contender, raced round by round in one
process so that a busy machine slows every contender alike, summarised as images/s; and the
compile events JAX reports."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)


@dataclasses.dataclass
class Timing:
    """Seconds per step of one contender over the rounds, and its images per step."""

    name: str
    images_per_step: int
    seconds: list[float] = dataclasses.field(default_factory=list)

    def images_per_s(self) -> tuple[float, float, float]:
        """(median, min, max) images/s over the timed steps."""
        rates = self.images_per_step / np.asarray(self.seconds)
        return float(np.median(rates)), float(rates.min()), float(rates.max())

    def median_seconds(self) -> float:
        return float(np.median(self.seconds))

    def line(self, unit: str = "img/s") -> str:
        median, low, high = self.images_per_s()
        return f"{median:8.1f} {unit}  [min {low:.1f}, max {high:.1f}]"


def race(
    contenders: dict[str, Callable[[], float]], repeats: int, settle_s: float = 0.2
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Run each contender once per round, alternating; each call returns its seconds per step.

    Returns the seconds, and the host page faults of each call (fresh memory the kernel had to
    zero; see prs_jax.cpu.host_allocator). A short pause between contenders lets spinning worker
    threads (XLA's, OpenMP's) go idle.
    """
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    faults: dict[str, list[int]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            time.sleep(settle_s)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            seconds[name].append(run())
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return seconds, faults


@contextlib.contextmanager
def compile_events(name_contains: str) -> Iterator[dict[str, float]]:
    """Counts XLA compilations of functions whose name contains `name_contains`, and times them.

    Yields {'count', 'backend_s', 'trace_s'}: compilations, seconds in XLA, and seconds tracing
    and lowering (all functions: tracing is attributed by name less reliably).
    """
    found = {"count": 0, "backend_s": 0.0, "trace_s": 0.0}

    def listener(event: str, duration_s: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT and name_contains in str(kwargs.get("fun_name", "")):
            found["count"] += 1
            found["backend_s"] += duration_s
        elif event in TRACE_EVENTS and name_contains in str(kwargs.get("fun_name", "")):
            found["trace_s"] += duration_s

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield found
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
