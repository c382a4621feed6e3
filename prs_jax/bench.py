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
    decide the step time unless freed memory is reused, see prs_jax/cpu/host_allocator.py;
    --noreuse_host_memory shows the difference; on a CPU host the step runs data-parallel on
    one device per core, as in training, see prs_jax/cpu/cpu_devices.py: PRS_JAX_CPU_DEVICES=1
    shows the difference);
  - with --baseline (default on), the straightforward Flax model (`models/reference.py`, same
    parameters) in the same rounds; with --vs-timm, when torch and timm import, timm's model of
    the same configuration trained with the same recipe, and the ratios; on a CPU also torch's
    own n^3 matmul rate beside XLA's, since their ratio moves ours / timm from machine to
    machine (README, "Performance");
  - with --profile, each phase's device time split into matmuls and convolutions (with their
    own FLOP rate), collectives and the rest, and the largest items of each by module
    (prs_jax/tools/op_profile.py); with --vs-timm too, timm's step split the same way by
    torch.profiler (`timm_bench.profile_timm`).

Everything timed is alternated round by round in one process, so that a busy machine slows
every contender alike; the same step also serves both phases (the step counter is set to a
step of each phase), so the phase comparison needs no second compilation.

The step is `make_train_step` with the config's full recipe: mixup/cutmix and label
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

from prs_jax.cpu import host_allocator

# Before JAX and TensorFlow start threads (see host_allocator), where JAX computes on the CPU
# (PRS_JAX_REUSE_HOST_MEMORY decides otherwise, as for prs_jax.main); --noreuse_host_memory
# re-runs without it (read from argv because absl has not parsed flags yet).
if __name__ == "__main__" and "--noreuse_host_memory" not in sys.argv:
    _HOST_MEMORY_REUSED = host_allocator.configure_for_training()
else:
    _HOST_MEMORY_REUSED = False

import contextlib
import pathlib
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from prs_jax import cli, models
from prs_jax.cpu import cpu_devices
from prs_jax.data import sources
from prs_jax.models.reference import reference_of
from prs_jax.tools.step_bench import (
    build_step,
    cost_and_memory,
    end_to_end_runner,
    eval_flops,
    eval_runner,
    input_data,
    input_runner,
    matmul_runner,
    num_train_examples,
    phase_steps,
    profile_phase,
    run_across_switches,
    train_runner,
)
from prs_jax.tools.timing import Timing, compile_events, race
from prs_jax.tools.timm_bench import (
    profile_timm,
    timm_available,
    timm_runner,
    torch_matmul_rate,
)
from prs_jax.training import config_lib
from prs_jax.training.state import create_model

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
    "end_to_end_steps",
    8,
    "Train steps per round fed by the configured train iterator, as in train.py (0 skips it).",
)
flags.DEFINE_float(
    "peak_tflops",
    0.0,
    "The devices' datasheet peak TFLOP/s for the compute dtype, all devices together (e.g. 989"
    " for one H100 SXM in bfloat16, dense); when given, model FLOP utilisation is printed too.",
)
flags.DEFINE_bool(
    "reuse_host_memory", True, "Keep freed host memory for reuse (prs_jax.cpu.host_allocator)."
)
flags.DEFINE_integer(
    "num_train_examples", 0, "Train-set size for the schedules (0: the config dataset's size)."
)
flags.DEFINE_bool(
    "profile",
    False,
    "Also trace --steps train steps of each phase and print where the device time goes"
    " (prs_jax/tools/op_profile.py).",
)
flags.DEFINE_string(
    "profile_dir",
    "",
    "Keep the --profile traces here (for XProf/TensorBoard); default: a temporary directory.",
)

# Sizes of datasets the benchmark need not open (opening CIFAR-100 would download it).


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
    # The benchmark reports compile seconds and counts: loading executables from a persistent
    # compilation cache (JAX_COMPILATION_CACHE_DIR, as the tests set) would hide both.
    jax.config.update("jax_enable_compilation_cache", False)
    # Before JAX's backend starts: one device per core on a CPU host, as prs_jax.main does.
    per_core = cpu_devices.configure([config.batch_size, config.eval_batch_size])
    num_classes = sources.dataset_spec(config.data).num_classes
    model = create_model(config, num_classes)
    is_vit = isinstance(model, models.VisionTransformer)
    devices = jax.devices()
    print(
        f"prs_jax benchmark on {len(devices)} x {devices[0].device_kind}"
        f" ({jax.default_backend()}), jax {jax.__version__}, {os.cpu_count()} host cores,"
        f" load average {_load()} at start; freed host memory reused: {_HOST_MEMORY_REUSED};"
        f" {'one CPU device per core' if per_core else 'JAX default devices'}"
        f" ({cpu_devices.ENV_SWITCH}=N sets the count)"
    )

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
    print(
        f"\ncompile: {compile_s:.1f} s (XLA {compiles['backend_s']:.1f} s); compilations of the"
        f" train step over a run visiting steps {visited} (every layer switch):"
        f" {compiles['count']}"
    )
    print(
        f"model FLOPs per image (XLA cost analysis): train step {flops / per_image:.3f} GFLOP,"
        f" eval {eval_flops(setup) / config.eval_batch_size / 1e9:.3f} GFLOP"
    )
    matmul_rate = matmul_flops / timings["matmul"].median_seconds()
    rates = matmul_flops / np.asarray(timings["matmul"].seconds) / 1e9
    print(
        f"matmul rate ({size}^3 {config.model.dtype} on each of {len(devices)} devices,"
        " best of 3 per round):"
        f" {matmul_rate / 1e9:.1f} GFLOP/s  [min {rates.min():.1f}, max {rates.max():.1f}]"
    )
    if "timm" in timings and jax.default_backend() == "cpu":
        # timm's matmuls run on torch's BLAS, not XLA's: the two libraries' rates on this CPU,
        # whose ratio moves ours / timm from machine to machine (README, "Performance").
        torch_rate, torch_note = torch_matmul_rate(size)
        print(
            f"matmul rate, torch ({size}^3 float32, {torch_note}, best of 5):"
            f" {torch_rate / 1e9:.1f} GFLOP/s; XLA / torch: {matmul_rate / torch_rate:.2f}"
        )
    print(
        f"\ntimed over {FLAGS.repeats} rounds x {FLAGS.steps} steps, median [min, max];"
        " host page faults per round:"
    )
    for name, timing in timings.items():
        if name == "matmul":
            continue
        extra = ""
        if name.startswith("ours"):
            achieved = flops / timing.median_seconds()
            extra = (
                f"  {achieved / 1e9:.1f} GFLOP/s = {achieved / matmul_rate:.0%} of the matmul rate"
            )
            if FLAGS.peak_tflops:
                extra += f", MFU {achieved / (FLAGS.peak_tflops * 1e12):.1%} of the stated peak"
        elif name.startswith("end to end"):
            # Round by round, so that a load that comes and goes between rounds cancels out.
            alone = timings[name.replace("end to end", "ours")].seconds
            fractions = np.asarray(alone) / np.asarray(timing.seconds)
            extra = (
                f"  {np.median(fractions):.0%} of the step alone [min {fractions.min():.0%},"
                f" max {fractions.max():.0%}, per round]"
            )
        print(f"  {name:32s}{timing.line()}  faults {int(np.median(faults[name]))}{extra}")
    attention, conv = timings.get("ours, attention phase"), timings.get("ours, conv phase")
    if attention and conv:
        ratio = conv.median_seconds() / attention.median_seconds()
        print(f"\nconv phase / self-attention phase step time: {ratio:.2f}")
    headline = attention or conv
    for other in ("baseline (straightforward Flax)", "timm"):
        if other in timings and headline:
            theirs = timings[other].images_per_s()[0]
            print(
                f"ours / {other}: {headline.images_per_s()[0] / theirs:.2f}x (self-attention"
                f" phase; conv phase {(conv or headline).images_per_s()[0] / theirs:.2f}x)"
            )
    if timm_note:
        print(f"timm: {timm_note}")
    if input_note:
        print(f"input pipeline: {input_note}")
    print(f"load average at the end: {_load()}")

    if FLAGS.profile:
        for phase, step in phases.items():
            if step is not None:
                print(f"\nprofile, {phase} phase ({FLAGS.steps} traced steps):")
                print(
                    profile_phase(
                        setup, step, FLAGS.steps, matmul_rate, len(devices), FLAGS.profile_dir
                    )
                )
        if "timm" in timings:
            # The same split for timm, so that the two steps can be compared part by part.
            print(f"\nprofile, timm ({FLAGS.steps} steps, torch.profiler):")
            print(profile_timm(config, num_classes, FLAGS.steps, matmul_rate))
    print(f"\npeak host memory (RSS): {gib(peak_host_memory_bytes())}")
    device_peak = device_peak_bytes()
    if device_peak is not None:
        print(f"peak device memory (allocator): {gib(device_peak)}")
    if memory is not None:
        planned = (
            memory.argument_size_in_bytes
            + memory.temp_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
        )
        print(
            f"train step, XLA's plan per device: {gib(planned)} (arguments"
            f" {gib(memory.argument_size_in_bytes)},"
            f" temporaries {gib(memory.temp_size_in_bytes)})"
        )


if __name__ == "__main__":
    cli.run_absl(main, "prs_jax.bench")  # flag and user errors: one line, exit code 2
