r"""Benchmark of the train step: python -m prs_jax.bench [--config FILE[:ARG]] [--vs-timm].

For one config (default configs/cifar100.py, the PRS ConViT-Ti recipe) and its batch size, it
prints:

  - train-step images/s in the self-attention phase (every GPSA layer at s = 0) and in the
    conv phase (every layer at s = 1), median over repeats with min and max, and their ratio;
  - compile time, and the number of compilations of the train step over a run that visits
    every layer switch of the schedule (one is the design: the schedule is traced);
  - model FLOPs per image (XLA's cost analysis of the whole step) and the FLOP rate achieved
    as a fraction of a matmul rate measured in the same process, in the same rounds;
  - eval images/s; the configured train iterator's images/s on its own (reading, host
    augmentation, prefetch threads; the configured source where it is on disk, else records
    mocked by tfds.testing.mock_data); and "end to end": that iterator feeding the step as
    train.py's loop does (next batch -> to_global -> jitted step), as a fraction of the step
    alone in the same round, median over rounds (--end_to_end_steps);
  - peak host memory (RSS) and device memory (the allocator's peak where the backend has one;
    XLA's planned argument + temporary + output bytes of the step everywhere), and the host
    page faults of each contender's round (fresh memory the kernel zero-fills: on CPU they
    decide the step time unless freed memory is reused, see prs_jax/host_allocator.py;
    --noreuse_host_memory shows the difference; on a CPU host the step runs data-parallel on
    one device per core, as in training, see prs_jax/cpu_devices.py: PRS_JAX_CPU_DEVICES=1
    shows the difference);
  - with --baseline (default on), the straightforward Flax model (`models/reference.py`, same
    parameters) in the same rounds; with --vs-timm, when torch and timm import, timm's model of
    the same configuration trained with the same recipe, and the ratios;
  - with --profile, each phase's device time split into matmuls and convolutions (with their
    own FLOP rate), collectives and the rest, and the largest items of each by module
    (prs_jax/op_profile.py).

Everything timed is alternated round by round in one process, so that a busy machine slows
every contender alike; the same step also serves both phases (the step counter is set to a
step of each phase), so the phase comparison needs no second compilation.

The step is `train.make_train_step` with the config's full recipe: mixup/cutmix and label
smoothing on device, stochastic depth, AdamW with clipping. Its inputs are random device
batches, except in the end-to-end lines.

--vs-timm needs torch and timm beside the project (PyTorch's CPU wheel; timm with --no-deps plus
pyyaml, huggingface_hub and safetensors). timm imports torchvision in helpers a ViT never runs;
without torchvision those imports get inert placeholders (`_stub_torchvision`), here only.

Examples:
  python -m prs_jax.bench                                   # ConViT-Ti, CIFAR-100, batch 128
  python -m prs_jax.bench --vs-timm --repeats 7
  python -m prs_jax.bench --profile --nobaseline            # where the step's time goes
  python -m prs_jax.bench --config configs/cifar100.py:prs,model=convit_small \
      --config.model.dtype=bfloat16 --config.data.image_size=224 --config.model.patch_size=16
"""

from __future__ import annotations

import os
import sys

from prs_jax import host_allocator

# Before JAX and TensorFlow start threads (see host_allocator); --noreuse_host_memory re-runs
# without it (the flag is read from argv because absl has not parsed flags yet).
if __name__ == "__main__" and "--noreuse_host_memory" not in sys.argv:
    _HOST_MEMORY_REUSED = host_allocator.reuse_freed_memory()
else:
    _HOST_MEMORY_REUSED = False

import contextlib
import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import pathlib
import platform
import resource
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from prs_jax import (
    config_lib, cpu_devices, data, models, op_profile, optimizer, schedule, train,
)
from prs_jax.data import sources, subsets
from prs_jax.models.reference import reference_of

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "cifar100.py")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file (':arg').")
flags.DEFINE_integer("repeats", 5, "Timed rounds; each round times every contender once.")
flags.DEFINE_integer("steps", 2, "Train steps per contender per round.")
flags.DEFINE_bool("baseline", True, "Also time the straightforward model (models/reference.py).")
flags.DEFINE_bool("vs-timm", False, "Also time timm's model of the same configuration.")
flags.DEFINE_integer(
    "matmul_size", 0, "n of the n^3 matmul whose rate is the yardstick (0: 2048 on CPU, else 8192)."
)
flags.DEFINE_integer(
    "input_batches", 16, "Batches per round timed for the input pipeline alone (0 skips it)."
)
flags.DEFINE_integer(
    "end_to_end_steps", 8,
    "Train steps per round fed by the configured train iterator, as in train.py (0 skips it).",
)
flags.DEFINE_float(
    "peak_tflops", 0.0,
    "The devices' datasheet peak TFLOP/s for the compute dtype, all devices together (e.g. 989"
    " for one H100 SXM in bfloat16, dense); when given, model FLOP utilisation is printed too.",
)
flags.DEFINE_bool(
    "reuse_host_memory", True, "Keep freed host memory for reuse (prs_jax.host_allocator)."
)
flags.DEFINE_integer(
    "num_train_examples", 0, "Train-set size for the schedules (0: the config dataset's size)."
)
flags.DEFINE_bool(
    "profile", False,
    "Also trace --steps train steps of each phase and print where the device time goes"
    " (prs_jax/op_profile.py).",
)
flags.DEFINE_string(
    "profile_dir", "",
    "Keep the --profile traces here (for XProf/TensorBoard); default: a temporary directory.",
)

# Sizes of datasets the benchmark need not open (opening CIFAR-100 would download it).
KNOWN_TRAIN_EXAMPLES = {"cifar100": 50_000, "imagenet2012": 1_281_167}
# Batches (or steps) read before an input timing starts: the prefetch threads start, and the step
# runs with the buffer at its steady level.
INPUT_WARMUP = 2
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)


# --------------------------------------------------------------------------------------------
# Timings: per-step seconds of each contender, summarised as images/s.


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
    zero; see prs_jax.host_allocator). A short pause between contenders lets spinning worker
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


# --------------------------------------------------------------------------------------------
# Our train step, as train_and_evaluate builds it (mesh, shardings, donation).


@dataclasses.dataclass
class StepSetup:
    """A jitted train step with its state, a device batch and the schedule it was built with."""

    step_fn: Any
    eval_fn: Any
    state: train.TrainState
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


def build_step(
    config: ml_collections.ConfigDict,
    model: Any,
    num_classes: int,
    train_examples: int,
) -> StepSetup:
    """train.py's run functions for `model` (same jit, shardings, donation), and its state."""
    mesh = train.create_mesh()
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    steps = schedule.training_steps(
        train_examples, config.batch_size, config.num_epochs, config.optimizer.warmup_epochs
    )
    run = train.build_run_functions(config, model, num_classes, steps, mesh)
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
    setup: StepSetup, step: int, num_steps: int, matmul_rate: float, num_devices: int
) -> str:
    """Trace `num_steps` train steps from `step` and summarise where the device time went;
    `matmul_rate` is the yardstick measured on all `num_devices` devices together."""
    compiled = setup.step_fn.lower(setup.state, setup.batch).compile()  # a cache hit
    model_flops = all_devices_flops(setup, compiled.cost_analysis()) / num_devices
    run = train_runner(setup, step, num_steps)
    run()  # warm, so that the trace holds only steady-state steps
    with contextlib.ExitStack() as stack:
        trace_dir = FLAGS.profile_dir or stack.enter_context(tempfile.TemporaryDirectory())
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
    mesh = train.create_mesh()
    count = mesh.devices.size
    sharding = NamedSharding(mesh, P("data"))
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (
        jax.device_put(jax.random.normal(key, (count, size, size), dtype), sharding)
        for key in keys
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
        return contextlib.nullcontext(), repr(subsets.train_source(config.data))
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


def _train_batches(
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
        batches = _train_batches(config, INPUT_WARMUP, num_batches)
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
        for i, batch in enumerate(_train_batches(config, INPUT_WARMUP, num_steps)):
            if i == INPUT_WARMUP:
                jax.block_until_ready(setup.state)
                start = time.perf_counter()
            setup.state, metrics = setup.step_fn(setup.state, train.to_global(batch, sharding))
        jax.block_until_ready((setup.state, metrics))
        return (time.perf_counter() - start) / num_steps

    return run


# --------------------------------------------------------------------------------------------
# timm's model of the same configuration, trained with the same recipe (optional).


def _stub_torchvision() -> None:
    """Let timm import without torchvision, which PyPI's wheels cannot install beside every torch.

    timm imports torchvision at module level in its data and layer helpers, none of which a
    ViT/ConViT forward or backward uses. When torchvision is missing, a placeholder package
    answers those imports (attributes are inert classes); it is installed only here, only then.
    """
    if importlib.util.find_spec("torchvision") is not None:
        return
    class Placeholder(type):
        def __getattr__(cls, name: str) -> str:
            if name.startswith("__"):
                raise AttributeError(name)
            return f"{cls.__name__}.{name}"

    class StubModule(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            value = Placeholder(name, (), {})
            setattr(self, name, value)
            return value

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):  # noqa: D401
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            return StubModule(spec.name)

        def exec_module(self, module):
            module.__path__ = []

    sys.meta_path.insert(0, Finder())


def timm_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> tuple[str, dict[str, Any]]:
    """timm's model name and arguments for the config's ViT (sizes from our named variant)."""
    fields = {**models.VIT_VARIANTS[config.model.name], **config_lib.model_overrides(config.model)}
    common = dict(
        img_size=config.data.image_size,
        patch_size=fields["patch_size"],
        num_classes=num_classes,
        depth=fields["depth"],
        num_heads=fields["num_heads"],
        mlp_ratio=fields.get("mlp_ratio", 4.0),
        drop_path_rate=fields.get("drop_path_rate", 0.0),
    )
    if fields["num_gpsa_layers"] > 0:
        # timm's ConViT multiplies embed_dim by num_heads.
        return "convit_tiny", dict(
            common,
            embed_dim=fields["hidden_size"] // fields["num_heads"],
            local_up_to_layer=fields["num_gpsa_layers"],
            locality_strength=fields.get("locality_strength", 1.0),
        )
    return "deit_tiny_patch16_224", dict(
        common, embed_dim=fields["hidden_size"], qkv_bias=fields.get("qkv_bias", True)
    )


def timm_runner(
    config: ml_collections.ConfigDict, num_classes: int, num_steps: int
) -> tuple[Callable[[], float], str]:
    """A timm train step of the same model and recipe (mixup/cutmix, smoothing, AdamW, clip)."""
    import torch  # pylint: disable=import-outside-toplevel

    _stub_torchvision()
    import timm  # pylint: disable=import-outside-toplevel
    from timm.data import Mixup  # pylint: disable=import-outside-toplevel
    from timm.data.mixup import mixup_target  # pylint: disable=import-outside-toplevel
    from timm.loss import SoftTargetCrossEntropy  # pylint: disable=import-outside-toplevel
    from timm.optim import create_optimizer_v2  # pylint: disable=import-outside-toplevel

    name, kwargs = timm_kwargs(config, num_classes)
    model = timm.create_model(name, **kwargs)
    model.train()
    opt = config.optimizer
    tx = create_optimizer_v2(
        model,
        "adamw",
        lr=optimizer.resolve_learning_rate(opt, config.batch_size)[0],  # train.py's peak rate
        weight_decay=opt.weight_decay,
        betas=(opt.b1, opt.b2),
        eps=opt.eps,
    )
    augment = config.augment
    if augment.mix_prob > 0 and (augment.mixup_alpha > 0 or augment.cutmix_alpha > 0):
        mixup = Mixup(
            mixup_alpha=augment.mixup_alpha,
            cutmix_alpha=augment.cutmix_alpha,
            prob=augment.mix_prob,
            switch_prob=augment.switch_prob,
            label_smoothing=augment.label_smoothing,
            num_classes=num_classes,
        )
    else:  # timm's Mixup refuses to be built with nothing to mix: smoothed labels only.
        def mixup(images, labels):
            return images, mixup_target(labels, num_classes, smoothing=augment.label_smoothing)
    criterion = SoftTargetCrossEntropy()
    # Same hardware as ours: CUDA when JAX runs on a GPU, with bfloat16 autocast where our
    # compute dtype is bfloat16 (parameters stay float32 in both).
    device = torch.device(
        "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    )
    model.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.model.dtype == "bfloat16")
    size = config.data.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(config.batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (config.batch_size,), generator=generator).to(device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        mixed, targets = mixup(images.clone(), labels)
        with autocast:
            loss = criterion(model(mixed), targets)
        tx.zero_grad(set_to_none=True)
        loss.backward()
        if opt.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
        tx.step()

    for _ in range(2):
        step()
    synchronize()

    def run() -> float:
        start = time.perf_counter()
        for _ in range(num_steps):
            step()
        synchronize()
        return (time.perf_counter() - start) / num_steps

    where = (f"on {torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    description = (
        f"timm {timm.__version__} {name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}),"
        f" torch {torch.__version__}, {where}"
        f"{', bfloat16 autocast' if config.model.dtype == 'bfloat16' else ''}"
    )
    return run, description


def timm_available() -> str | None:
    """None if torch and timm can be imported, else why not."""
    for module in ("torch", "timm"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


# --------------------------------------------------------------------------------------------
# The report.


def peak_host_memory_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def device_peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def describe(config: ml_collections.ConfigDict, model: Any, num_params: int) -> str:
    overrides = config_lib.model_overrides(config.model)
    fields = {**models.VIT_VARIANTS.get(config.model.name, {}), **overrides}
    augment = config.augment
    return (
        f"{config.model.name} ({num_params / 1e6:.2f}M parameters,"
        f" {fields.get('depth', '?')} blocks,"
        f" {model.num_gpsa_layers} GPSA), {config.data.image_size} px,"
        f" patch {fields.get('patch_size', '-')}, batch {config.batch_size},"
        f" {config.model.dtype} compute;"
        f" recipe: mixup {augment.mixup_alpha} / cutmix {augment.cutmix_alpha}, label smoothing"
        f" {augment.label_smoothing}, drop path {fields.get('drop_path_rate', 0.0)}, AdamW,"
        f" clip {config.optimizer.grad_clip_norm}"
    )


def main(argv: list[str]) -> None:
    del argv
    config = FLAGS.config
    # Before JAX's backend starts: one device per core on a CPU host, as prs_jax.main does.
    per_core = cpu_devices.configure([config.batch_size, config.eval_batch_size])
    num_classes = sources.dataset_spec(config.data).num_classes
    model = train.create_model(config, num_classes)
    is_vit = isinstance(model, models.VisionTransformer)
    devices = jax.devices()
    print(f"prs_jax benchmark on {len(devices)} x {devices[0].device_kind}"
          f" ({jax.default_backend()}), jax {jax.__version__}, {os.cpu_count()} host cores,"
          f" load average {_load()} at start; freed host memory reused: {_HOST_MEMORY_REUSED};"
          f" {'one CPU device per core' if per_core else 'JAX default devices'}"
          f" ({cpu_devices.ENV_SWITCH}=N sets the count)")

    # Compile once, and count compilations over a run that visits every layer switch.
    train_examples = num_train_examples(config, FLAGS.num_train_examples)
    setup = build_step(config, model, num_classes, train_examples)
    print("model: " + describe(config, model, models.count_params(setup.state.params)))
    print("inputs: random device batches, except for the input pipeline's own lines below")
    with compile_events("train_step") as compiles:
        start = time.perf_counter()
        setup.step_fn.lower(setup.state, setup.batch).compile()
        compile_s = time.perf_counter() - start
        visited = run_across_switches(setup)
    flops, memory = cost_and_memory(setup)
    phases = phase_steps(setup)

    # Contenders, alternated round by round.
    contenders: dict[str, Callable[[], float]] = {}
    timings: dict[str, Timing] = {}

    def add(name: str, run: Callable[[], float], images: int) -> None:
        run()  # warm-up
        contenders[name] = run
        timings[name] = Timing(name, images)

    for phase, step in phases.items():
        if step is not None:
            add(f"ours, {phase} phase", train_runner(setup, step, FLAGS.steps), config.batch_size)
    if FLAGS.baseline and is_vit:
        baseline = build_step(config, reference_of(model), num_classes, train_examples)
        baseline_step = phases["attention"] if phases["attention"] is not None else 0
        run = train_runner(baseline, baseline_step, FLAGS.steps)
        add("baseline (straightforward Flax)", run, config.batch_size)
    timm_note = None
    if getattr(FLAGS, "vs-timm"):
        timm_note = timm_available() or (None if is_vit else "only ViTs are compared")
        if timm_note is None:
            run, timm_note = timm_runner(config, num_classes, FLAGS.steps)
            add("timm", run, config.batch_size)
    add("eval", eval_runner(setup, FLAGS.steps), config.eval_batch_size)
    # The configured train iterator alone, and feeding the step as train.py's loop does.
    inputs = contextlib.ExitStack()
    input_note = None
    if FLAGS.input_batches or FLAGS.end_to_end_steps:
        try:
            reading, source = input_data(config)
            inputs.enter_context(reading)
            input_note = f"{source}, {config.data.num_workers} workers"
            if FLAGS.input_batches:
                run = input_runner(config, FLAGS.input_batches)
                add("input pipeline alone", run, config.batch_size // jax.process_count())
            for phase, step in phases.items():
                if step is not None and FLAGS.end_to_end_steps:
                    run = end_to_end_runner(setup, config, step, FLAGS.end_to_end_steps)
                    add(f"end to end, {phase} phase", run, config.batch_size)
        except Exception as error:  # pylint: disable=broad-except  # report it, keep the rest
            input_note = f"failed: {type(error).__name__}: {error}"
    size = FLAGS.matmul_size or (2048 if jax.default_backend() == "cpu" else 8192)
    matmul, matmul_flops = matmul_runner(size, jnp.dtype(config.model.dtype))
    contenders["matmul"] = matmul
    timings["matmul"] = Timing("matmul", 1)

    with inputs:
        seconds, faults = race(contenders, FLAGS.repeats)
    for name in contenders:
        timings[name].seconds = seconds[name]

    # Report.
    per_image = 1e9 * config.batch_size
    print(f"\ncompile: {compile_s:.1f} s (XLA {compiles['backend_s']:.1f} s); compilations of the"
          f" train step over a run visiting steps {visited} (every layer switch):"
          f" {compiles['count']}")
    print(f"model FLOPs per image (XLA cost analysis): train step {flops / per_image:.3f} GFLOP,"
          f" eval {eval_flops(setup) / config.eval_batch_size / 1e9:.3f} GFLOP")
    matmul_rate = matmul_flops / timings["matmul"].median_seconds()
    rates = matmul_flops / np.asarray(timings["matmul"].seconds) / 1e9
    print(f"matmul rate ({size}^3 {config.model.dtype} on each of {len(devices)} devices,"
          " best of 3 per round):"
          f" {matmul_rate / 1e9:.1f} GFLOP/s  [min {rates.min():.1f}, max {rates.max():.1f}]")
    print(f"\ntimed over {FLAGS.repeats} rounds x {FLAGS.steps} steps, median [min, max];"
          " host page faults per round:")
    for name, timing in timings.items():
        if name == "matmul":
            continue
        extra = ""
        if name.startswith("ours"):
            achieved = flops / timing.median_seconds()
            extra = (f"  {achieved / 1e9:.1f} GFLOP/s = {achieved / matmul_rate:.0%} of the"
                     " matmul rate")
            if FLAGS.peak_tflops:
                extra += f", MFU {achieved / (FLAGS.peak_tflops * 1e12):.1%} of the stated peak"
        elif name.startswith("end to end"):
            # Round by round, so that a load that comes and goes between rounds cancels out.
            alone = timings[name.replace("end to end", "ours")].seconds
            fractions = np.asarray(alone) / np.asarray(timing.seconds)
            extra = (f"  {np.median(fractions):.0%} of the step alone [min {fractions.min():.0%},"
                     f" max {fractions.max():.0%}, per round]")
        print(f"  {name:32s}{timing.line()}  faults {int(np.median(faults[name]))}{extra}")
    attention, conv = timings.get("ours, attention phase"), timings.get("ours, conv phase")
    if attention and conv:
        ratio = conv.median_seconds() / attention.median_seconds()
        print(f"\nconv phase / self-attention phase step time: {ratio:.2f}")
    headline = attention or conv
    for other in ("baseline (straightforward Flax)", "timm"):
        if other in timings and headline:
            theirs = timings[other].images_per_s()[0]
            print(f"ours / {other}: {headline.images_per_s()[0] / theirs:.2f}x (self-attention"
                  f" phase; conv phase {(conv or headline).images_per_s()[0] / theirs:.2f}x)")
    if timm_note:
        print(f"timm: {timm_note}")
    if input_note:
        print(f"input pipeline: {input_note}")
    print(f"load average at the end: {_load()}")

    if FLAGS.profile:
        for phase, step in phases.items():
            if step is not None:
                print(f"\nprofile, {phase} phase ({FLAGS.steps} traced steps):")
                print(profile_phase(setup, step, FLAGS.steps, matmul_rate, len(devices)))
    print(f"\npeak host memory (RSS): {gib(peak_host_memory_bytes())}")
    device_peak = device_peak_bytes()
    if device_peak is not None:
        print(f"peak device memory (allocator): {gib(device_peak)}")
    if memory is not None:
        planned = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                   + memory.output_size_in_bytes - memory.alias_size_in_bytes)
        print(f"train step, XLA's plan per device: {gib(planned)} (arguments"
              f" {gib(memory.argument_size_in_bytes)},"
              f" temporaries {gib(memory.temp_size_in_bytes)})")


if __name__ == "__main__":
    app.run(main)
