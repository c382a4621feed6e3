"""Our train step for the benchmark, built as train_and_evaluate builds it (mesh, shardings,
donation), with its yardsticks: a matmul rate, the configured input pipeline alone, and that
pipeline feeding the step end to end."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prs_jax import data
from prs_jax.data import sources, train_examples
from prs_jax.method import schedule
from prs_jax.tools import op_profile
from prs_jax.training.state import TrainState, create_mesh
from prs_jax.training.steps import build_run_functions, to_global

KNOWN_TRAIN_EXAMPLES = {"cifar100": 50_000, "imagenet2012": 1_281_167}
# Batches (or steps) read before an input timing starts: the prefetch threads start, and the step
# runs with the buffer at its steady level.
INPUT_WARMUP = 2


@dataclasses.dataclass
class StepSetup:
    """A jitted train step with its state, a device batch and the schedule it was built with."""

    step_fn: Any
    eval_fn: Any
    state: TrainState
    batch: dict[str, jax.Array]
    eval_batch: dict[str, jax.Array]
    conv_strength_fn: Callable[[Any], jax.Array]
    steps: schedule.TrainingSteps
    replicated: NamedSharding
    num_gpsa_layers: int


def num_train_examples(config: ml_collections.ConfigDict, override: int = 0) -> int:
    """The train-set size the schedules need, without opening a dataset that is known."""
    if override:
        return override
    if config.data.name in KNOWN_TRAIN_EXAMPLES and config.data.get("train_fraction", 1.0) == 1.0:
        return KNOWN_TRAIN_EXAMPLES[config.data.name]
    return data.dataset_info(config.data).num_train_examples


def training_steps_of(
    config: ml_collections.ConfigDict, train_examples: int
) -> schedule.TrainingSteps:
    """The run's length, warmup and epoch in steps, as train.py computes them."""
    return schedule.training_steps(
        train_examples, config.batch_size, config.num_epochs, config.optimizer.warmup_epochs
    )


def build_step(
    config: ml_collections.ConfigDict,
    model: Any,
    num_classes: int,
    train_examples: int,
) -> StepSetup:
    """train.py's run functions for `model` (same jit, shardings, donation), and its state."""
    mesh = create_mesh()
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    steps = training_steps_of(config, train_examples)
    run = build_run_functions(config, model, num_classes, steps, mesh)
    rng = np.random.default_rng(config.seed)
    size = config.data.image_size

    def random_batch(batch_size: int, with_mask: bool) -> dict[str, jax.Array]:
        batch = {
            "image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
        }
        if with_mask:
            batch["mask"] = np.ones((batch_size,), bool)
        return jax.device_put(batch, data_sharding)

    return StepSetup(
        step_fn=run.train_step,
        eval_fn=run.eval_step,
        state=run.init(),
        batch=random_batch(config.batch_size, False),
        eval_batch=random_batch(config.eval_batch_size, True),
        conv_strength_fn=run.conv_strength_fn,
        steps=steps,
        replicated=replicated,
        num_gpsa_layers=model.num_gpsa_layers,
    )


def phase_steps(setup: StepSetup) -> dict[str, int | None]:
    """A step where every GPSA layer is a convolution (s = 1) and one where none is (s = 0)."""
    if setup.num_gpsa_layers == 0:
        return {"attention": 0, "conv": None}
    total = setup.steps.total_steps
    switches = schedule.layer_switch_steps(setup.conv_strength_fn, total, setup.num_gpsa_layers)
    found: dict[str, int | None] = {"attention": None, "conv": None}
    for step in [0, *switches, total]:
        strengths = np.asarray(setup.conv_strength_fn(step))
        if found["conv"] is None and np.all(strengths == 1.0):
            found["conv"] = step
        if found["attention"] is None and np.all(strengths == 0.0):
            found["attention"] = step
    return found


def at_step(setup: StepSetup, step: int) -> None:
    """Move the state's step counter (and so the conv strengths) to `step`."""
    setup.state = setup.state.replace(step=jax.device_put(np.int32(step), setup.replicated))


def train_runner(setup: StepSetup, step: int, num_steps: int) -> Callable[[], float]:
    """A callable that runs `num_steps` train steps from `step` and returns seconds per step."""

    def run() -> float:
        at_step(setup, step)
        jax.block_until_ready(setup.state)
        start = time.perf_counter()
        for _ in range(num_steps):
            setup.state, metrics = setup.step_fn(setup.state, setup.batch)
        jax.block_until_ready((setup.state, metrics))
        return (time.perf_counter() - start) / num_steps

    return run


def eval_runner(setup: StepSetup, num_steps: int) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        for _ in range(num_steps):
            sums = setup.eval_fn(setup.state, setup.eval_batch)
        jax.block_until_ready(sums)
        return (time.perf_counter() - start) / num_steps

    return run


def run_across_switches(setup: StepSetup) -> list[int]:
    """One train step at step 0, at every layer switch and at the last step; returns the steps."""
    total = setup.steps.total_steps
    switches = schedule.layer_switch_steps(setup.conv_strength_fn, total, setup.num_gpsa_layers)
    visited = sorted({0, *switches, max(total - 1, 0)})
    for step in visited:
        at_step(setup, step)
        setup.state, metrics = setup.step_fn(setup.state, setup.batch)
    jax.block_until_ready((setup.state, metrics))
    return visited


def cost_and_memory(setup: StepSetup) -> tuple[float, Any]:
    """(FLOPs of one train step over all devices from XLA's cost analysis, XLA's memory
    analysis of one device's program or None)."""
    compiled = setup.step_fn.lower(setup.state, setup.batch).compile()  # a cache hit, no compile
    try:
        memory = compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except  # not every backend reports it
        memory = None
    return all_devices_flops(setup, compiled.cost_analysis()), memory


def eval_flops(setup: StepSetup) -> float:
    compiled = setup.eval_fn.lower(setup.state, setup.eval_batch).compile()  # a cache hit
    return all_devices_flops(setup, compiled.cost_analysis())


def all_devices_flops(setup: StepSetup, cost: Any) -> float:
    """XLA analyses the per-device SPMD program: each device runs it on its slice of the batch
    (and repeats the small replicated optimizer update), so the step's FLOPs are D times it."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) * setup.replicated.mesh.devices.size


def profile_phase(
    setup: StepSetup,
    step: int,
    num_steps: int,
    matmul_rate: float,
    num_devices: int,
    profile_dir: str | None = None,
) -> str:
    """Trace `num_steps` train steps from `step` and summarise where the device time went;
    `matmul_rate` is the yardstick measured on all `num_devices` devices together. The traces
    go to `profile_dir`/step_<step> (kept, for XProf), else to a temporary folder."""
    compiled = setup.step_fn.lower(setup.state, setup.batch).compile()  # a cache hit
    model_flops = all_devices_flops(setup, compiled.cost_analysis()) / num_devices
    run = train_runner(setup, step, num_steps)
    run()  # warm, so that the trace holds only steady-state steps
    with contextlib.ExitStack() as stack:
        trace_dir = profile_dir or stack.enter_context(tempfile.TemporaryDirectory())
        trace_dir = os.path.join(trace_dir, f"step_{step}")
        with jax.profiler.trace(trace_dir):
            run()
        traces = sorted(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
        if not traces:
            return f"  no trace was written under {trace_dir}"
        profile = jax.profiler.ProfileData.from_file(str(traces[-1]))
        breakdown = op_profile.attribute(
            op_profile.operation_events(profile),
            op_profile.parse_hlo(compiled.as_text()),
            num_steps=num_steps,
            num_devices=num_devices,
        )
    return op_profile.report(breakdown, matmul_rate / num_devices, model_flops)


# --------------------------------------------------------------------------------------------
# Yardsticks: a matmul rate and the input pipeline, in the same process.


def matmul_runner(size: int, dtype: Any) -> tuple[Callable[[], float], float]:
    """(callable returning seconds per round of n x n x n matmuls, FLOPs per round).

    One matmul per device, sharded like the train step's batch, so the yardstick uses the
    machine as the step does (on a CPU host with one device per core, every core).
    """
    mesh = create_mesh()
    count = mesh.devices.size
    sharding = NamedSharding(mesh, P("data"))
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (
        jax.device_put(jax.random.normal(key, (count, size, size), dtype), sharding) for key in keys
    )
    matmul = jax.jit(jnp.matmul, out_shardings=sharding)
    jax.block_until_ready(matmul(a, b))

    def run(repeats: int = 3) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(matmul(a, b))
            best = min(best, time.perf_counter() - start)
        return best

    return run, 2.0 * count * size**3


def input_data(config: ml_collections.ConfigDict) -> tuple[contextlib.AbstractContextManager, str]:
    """(a context for reading the configured train split, what is read): the configured source
    where it is on disk, else records mocked by tfds.testing.mock_data (random images)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    name = config.data.name
    if name == sources.FOLDER_DATASET:
        return contextlib.nullcontext(), repr(train_examples.train_source(config.data))
    if name in data.DATASETS and name != "cifar100":
        return contextlib.nullcontext(), f"{name} (local)"
    try:
        prepared = tfds.builder(name, data_dir=config.data.get("data_dir")).is_prepared()
    except Exception:  # pylint: disable=broad-except
        prepared = False
    if prepared:
        return contextlib.nullcontext(), f"{name} (TFDS on disk)"
    mock = tfds.testing.mock_data(
        num_examples=4 * config.batch_size, policy=tfds.testing.MockPolicy.USE_CODE
    )
    return mock, f"{name} mocked by tfds.testing.mock_data (random images)"


def train_batches(
    config: ml_collections.ConfigDict, warmup: int, num_batches: int
) -> Iterator[dict[str, np.ndarray]]:
    """This process's train batches as train.py reads them, from a fresh iterator that is closed
    afterwards, so that no prefetch thread works while another contender is timed."""
    iterator = data.create_train_iterator(
        config.data,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    try:
        for _ in range(warmup + num_batches):
            yield next(iterator)
    finally:
        if hasattr(iterator, "close"):  # grain >= 0.2.14
            iterator.close()
        # close() cancels the queued batches but lets the running ones finish: wait for them.
        for thread in threading.enumerate():
            if thread.name.startswith("grain-prefetch"):
                thread.join()


def input_runner(config: ml_collections.ConfigDict, num_batches: int) -> Callable[[], float]:
    """A callable that reads `num_batches` train batches (host augmentation, prefetch threads,
    after INPUT_WARMUP batches) and returns seconds per batch."""

    def run() -> float:
        batches = train_batches(config, INPUT_WARMUP, num_batches)
        for _ in range(INPUT_WARMUP):
            next(batches)
        start = time.perf_counter()
        for _ in batches:
            pass
        return (time.perf_counter() - start) / num_batches

    return run


def end_to_end_runner(
    setup: StepSetup, config: ml_collections.ConfigDict, step: int, num_steps: int
) -> Callable[[], float]:
    """A callable that runs `num_steps` train steps from `step` on the real train iterator's
    batches, as train.py's loop does (next batch -> to_global -> jitted step, dispatched
    asynchronously), after INPUT_WARMUP steps; returns seconds per step."""
    sharding = setup.batch["label"].sharding

    def run() -> float:
        at_step(setup, step)
        for i, batch in enumerate(train_batches(config, INPUT_WARMUP, num_steps)):
            if i == INPUT_WARMUP:
                jax.block_until_ready(setup.state)
                start = time.perf_counter()
            setup.state, metrics = setup.step_fn(setup.state, to_global(batch, sharding))
        jax.block_until_ready((setup.state, metrics))
        return (time.perf_counter() - start) / num_steps

    return run
