r"""The prepared GPU measurement: ConViT-Ti at 32 px and ConViT-S at 224 px in bfloat16, each at
the largest per-device batch that fits, against timm's PyTorch model on the same GPU.

  scripts/gpu_bench.sh --peak_tflops 989 --vs-timm          # one H100 SXM (989 dense bf16)
  python -m prs_jax.tools.gpu_bench --peak_tflops 989 --vs-timm --output gpu_bench.json

For each model (configs/cifar100.py's PRS recipe: mixup/cutmix, label smoothing, drop path,
AdamW with clipping; bfloat16 compute, float32 parameters) a worker process:
  1. finds the largest per-device batch that fits: a train step is built, compiled and run at
     `start` images per device, then at twice as many, until the device runs out of memory (or
     `--max_batch`, or the time budget, ends the doubling; the table says which);
  2. times the train step at that batch in the self-attention phase (every GPSA layer at s = 0)
     and the conv phase (every layer at s = 1; the content path is skipped), median of
     `--repeats` rounds of `--steps` steps;
  3. reports images/s, model FLOPs per image (XLA's cost analysis of the whole step) and the
     model FLOP utilisation (MFU) against `--peak_tflops` per device.
With --vs-timm a second worker runs timm's model of the same configuration with the same recipe
(eager PyTorch, bfloat16 autocast; prs_jax.tools.timm_bench) at the same batch, halving it until
it fits. Workers are separate processes, so that JAX's and PyTorch's memory pools never share
the GPU and an out-of-memory abort ends only its worker.

Prints one table and writes it as JSON (`--output`). `--dry_run` shrinks everything (2-block
models of width 48 at 32 and 64 px, batches of 2 and 4, one round) so that the whole path runs
on a CPU (under 2 minutes on 2 busy cores; tests/test_gpu_bench.py); its figures mean nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "cifar100.py")
NUM_CLASSES = 100


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: the config argument and overrides, and where the batch search
    starts and stops (per device)."""

    name: str
    config_arg: str
    image_size: int
    patch_size: int
    start_batch: int
    max_batch: int
    overrides: tuple[tuple[str, Any], ...] = ()


MODELS = {
    "convit_tiny_32": ModelSpec("ConViT-Ti, 32 px", "prs", 32, 4, 2048, 65536),
    "convit_small_224": ModelSpec("ConViT-S, 224 px", "prs,model=convit_small", 224, 16, 256, 8192),
}
# The dry run: the same path with 2-block models and batches of 2 and 4 per device.
DRY_RUN_OVERRIDES = (("depth", 2), ("num_gpsa_layers", 1), ("hidden_size", 48), ("num_heads", 4))
DRY_RUN_MODELS = {
    "convit_tiny_32": ModelSpec("ConViT-Ti, 32 px", "prs", 32, 4, 2, 4, DRY_RUN_OVERRIDES),
    "convit_small_224": ModelSpec(
        "ConViT-S, 224 px", "prs,model=convit_small", 64, 16, 2, 4, DRY_RUN_OVERRIDES
    ),
}


# ---------------------------------------------------------------------------------------------
# The batch search (pure: `fits` is the experiment).


@dataclasses.dataclass
class Search:
    """The largest batch that fitted, every batch tried with its outcome, and why it stopped."""

    batch: int
    tried: list[tuple[int, str]]
    stopped_by: str  # "out of memory", "max_batch", "time budget"


def largest_batch(
    fits: Callable[[int], bool],
    start: int,
    max_batch: int,
    time_left: Callable[[], float] = lambda: float("inf"),
) -> Search:
    """Doubles the batch from `start` while `fits(batch)` and `batch <= max_batch`; below
    `start` it halves until one fits. Stops doubling when the time left is less than twice what
    the last trial took. Raises if not even one image fits."""
    tried: list[tuple[int, str]] = []
    batch = start
    while not fits(batch):
        tried.append((batch, "out of memory"))
        if batch == 1:
            raise RuntimeError(f"not even 1 image per device fits; tried {tried}")
        batch //= 2
    tried.append((batch, "fits"))
    best, stopped_by = batch, "max_batch"
    while True:
        if 2 * best > max_batch:
            stopped_by = "max_batch"
            break
        started = time.perf_counter()
        if not fits(2 * best):
            tried.append((2 * best, "out of memory"))
            stopped_by = "out of memory"
            break
        tried.append((2 * best, "fits"))
        best *= 2
        if time_left() < 2 * (time.perf_counter() - started):
            stopped_by = "time budget"
            break
    return Search(best, tried, stopped_by)


def is_out_of_memory(error: BaseException) -> bool:
    """JAX's RESOURCE_EXHAUSTED (compile or run) or PyTorch's OutOfMemoryError."""
    text = f"{type(error).__name__}: {error}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "OutOfMemoryError", "out of memory"))


# ---------------------------------------------------------------------------------------------
# The workers (one process each).


def model_config(spec: ModelSpec, per_device_batch: int, num_devices: int) -> Any:
    """configs/cifar100.py:`spec.config_arg` in bfloat16 at `spec`'s size and this batch."""
    import importlib.util  # pylint: disable=import-outside-toplevel

    module_spec = importlib.util.spec_from_file_location("_gpu_bench_cifar100", CONFIG)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(spec.config_arg)
    config.model.dtype = "bfloat16"
    config.data.image_size = spec.image_size
    config.model.patch_size = spec.patch_size
    config.model.update(**dict(spec.overrides))
    config.batch_size = per_device_batch * num_devices
    config.eval_batch_size = num_devices  # the benchmark times no eval step: keep it small
    return config


def jax_worker(spec: ModelSpec, steps: int, repeats: int, deadline: float) -> dict[str, Any]:
    """Batch search and timings of our train step on this process's devices."""
    import gc  # pylint: disable=import-outside-toplevel

    import jax  # pylint: disable=import-outside-toplevel

    from prs_jax.tools import step_bench  # pylint: disable=import-outside-toplevel
    from prs_jax.training.state import create_model  # pylint: disable=import-outside-toplevel

    num_devices = jax.device_count()
    kept: dict[str, Any] = {}

    def fits(batch: int) -> bool:
        kept.clear()
        gc.collect()
        config = model_config(spec, batch, num_devices)
        model = create_model(config, NUM_CLASSES)
        try:
            setup = step_bench.build_step(config, model, NUM_CLASSES, 50_000)
            step_bench.train_runner(setup, 0, 1)()
        except Exception as error:  # pylint: disable=broad-except
            if not is_out_of_memory(error):
                raise
            return False
        kept.update(setup=setup, config=config, model=model)
        return True

    search = largest_batch(
        fits, spec.start_batch, spec.max_batch, lambda: deadline - time.perf_counter()
    )
    # After a larger batch ran out of memory, the best one is built again (a cache hit).
    if "setup" not in kept and not fits(search.batch):
        raise RuntimeError(f"batch {search.batch} fitted once and not again")
    setup, config = kept["setup"], kept["config"]
    flops, memory = step_bench.cost_and_memory(setup)
    phases = step_bench.phase_steps(setup)
    seconds: dict[str, list[float]] = {}
    for phase, step in phases.items():
        if step is not None:
            run = step_bench.train_runner(setup, step, steps)
            run()  # warm
            seconds[phase] = [run() for _ in range(repeats)]
    median = {phase: float(sorted(s)[len(s) // 2]) for phase, s in seconds.items()}
    devices = jax.devices()
    result = {
        "devices": f"{num_devices} x {devices[0].device_kind} ({jax.default_backend()})",
        "jax": jax.__version__,
        "per_device_batch": search.batch,
        "batch_search": {"tried": search.tried, "stopped_by": search.stopped_by},
        "flops_per_image": flops / config.batch_size,
        "seconds_per_step": median,
        "images_per_s": {p: config.batch_size / s for p, s in median.items()},
        "num_params": int(sum(x.size for x in jax.tree.leaves(setup.state.params))),
    }
    if memory is not None:
        result["xla_plan_bytes_per_device"] = int(
            memory.argument_size_in_bytes
            + memory.temp_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
        )
    return result


def timm_worker(spec: ModelSpec, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """timm's model at `batch` per device (halved until it fits), on the GPU where there is one."""
    from prs_jax.tools import timm_bench  # pylint: disable=import-outside-toplevel

    missing = timm_bench.timm_available()
    if missing:
        return {"skipped": missing}
    import torch  # pylint: disable=import-outside-toplevel

    description = ""

    def fits(size: int) -> bool:
        nonlocal description
        try:
            run, description = timm_bench.timm_runner(
                model_config(spec, size, 1), NUM_CLASSES, steps
            )
            kept["run"] = run
            return True
        except Exception as error:  # pylint: disable=broad-except
            if not is_out_of_memory(error):
                raise
            kept.pop("run", None)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return False

    kept: dict[str, Any] = {}
    search = largest_batch(fits, batch, batch)  # at our batch, or the largest half that fits
    seconds = sorted(kept["run"]() for _ in range(repeats))[repeats // 2]
    return {
        "per_device_batch": search.batch,
        "batch_search": {"tried": search.tried},
        "seconds_per_step": seconds,
        "images_per_s": search.batch / seconds,
        "model": description,
    }


# ---------------------------------------------------------------------------------------------
# The driver: a worker process per model and contender, one table.


def run_worker(args: Sequence[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """Runs this module as a worker; its last stdout line is its JSON result."""
    command = [sys.executable, "-m", "prs_jax.tools.gpu_bench", *args]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=max(timeout_s, 1), check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}: {done.stderr.strip()[-1500:]}"}
    return json.loads(lines[-1])


def table(results: dict[str, dict[str, Any]], peak_tflops: float) -> str:
    """One row per model: batch, images/s in both phases, MFU, the phase ratio, timm."""
    header = (
        "| model | batch/device | SA img/s | conv img/s | conv/SA step time | GFLOP/img"
        " | MFU (SA) | timm img/s (batch) | ours/timm (SA) |"
    )
    rows = [header, "|" + "---|" * 9]
    for name, result in results.items():
        ours, timm = result["ours"], result.get("timm", {})
        if "error" in ours:
            rows.append(f"| {name} | error: {ours['error'][-200:]} |" + " |" * 7)
            continue
        rates, times = ours["images_per_s"], ours["seconds_per_step"]
        attention, conv = rates.get("attention"), rates.get("conv")
        ratio = times["conv"] / times["attention"] if attention and conv else float("nan")
        flops = ours["flops_per_image"]
        mfu = (
            f"{attention * flops / (peak_tflops * 1e12 * ours['num_devices']):.1%}"
            if peak_tflops and attention
            else "-"
        )
        timm_cell, versus = "-", "-"
        if "images_per_s" in timm:
            timm_cell = f"{timm['images_per_s']:.0f} ({timm['per_device_batch']})"
            versus = f"{attention / timm['images_per_s']:.2f}x"
        elif timm:
            timm_cell = timm.get("skipped") or f"error: {timm.get('error', '')[-80:]}"
        rows.append(
            f"| {name} | {ours['per_device_batch']} ({ours['batch_search']['stopped_by']})"
            f" | {attention:.0f} | {conv:.0f} | {ratio:.2f} | {flops / 1e9:.2f} | {mfu}"
            f" | {timm_cell} | {versus} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str]) -> None:
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel

    args = flags.FLAGS
    models = DRY_RUN_MODELS if args.dry_run else MODELS
    steps, repeats = (1, 1) if args.dry_run else (args.steps, args.repeats)
    if args.worker:
        spec = models[args.model]
        if args.worker == "jax":
            deadline = time.perf_counter() + args.worker_budget_s
            result = jax_worker(spec, steps, repeats, deadline)
        else:
            result = timm_worker(spec, args.batch, steps, repeats)
        print(json.dumps(result))
        return

    started = time.perf_counter()
    chosen = [m for m in args.models.split(",") if m]
    # Nearly all of the GPU for JAX (its default pool takes 75%); a compilation cache, so that
    # rebuilding the largest batch's step after a larger one ran out of memory compiles nothing.
    jax_env = {
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95",
        "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "prs_jax_gpu_bench_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **os.environ,
    }
    # timm's worker imports JAX too (to see the backend): no JAX memory pool beside PyTorch's.
    timm_env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    common = [f"--steps={args.steps}", f"--repeats={args.repeats}"]
    common += ["--dry_run"] if args.dry_run else []
    results: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(chosen):
        spec = models[name]
        left = args.budget_s - (time.perf_counter() - started)
        share = left / (len(chosen) - index) * (0.75 if getattr(args, "vs-timm") else 1.0)
        print(
            f"{spec.name}: our train step (batch search, timings; up to {share:.0f} s)", flush=True
        )
        ours = run_worker(
            ["--worker=jax", f"--model={name}", f"--worker_budget_s={0.7 * share}", *common],
            jax_env,
            share,
        )
        if "error" not in ours:
            ours["num_devices"] = int(ours["devices"].split(" x ")[0])
        results[spec.name] = {"ours": ours}
        if getattr(args, "vs-timm") and "error" not in ours:
            left = args.budget_s - (time.perf_counter() - started)
            timeout = left / (len(chosen) - index) / 2 if index + 1 < len(chosen) else left
            print(
                f"{spec.name}: timm's model at the same batch (up to {timeout:.0f} s)", flush=True
            )
            batch = ours["per_device_batch"]
            results[spec.name]["timm"] = run_worker(
                ["--worker=timm", f"--model={name}", f"--batch={batch}", *common],
                timm_env,
                timeout,
            )
    elapsed = time.perf_counter() - started
    print()
    print(table(results, args.peak_tflops))
    print(
        f"\nbfloat16 compute; configs/cifar100.py's PRS recipe; MFU against {args.peak_tflops}"
        f" TFLOP/s per device; {elapsed:.0f} s in all"
        + ("; DRY RUN: tiny models, the figures mean nothing" if args.dry_run else "")
    )
    if args.output:
        record = {
            "peak_tflops": args.peak_tflops,
            "dry_run": args.dry_run,
            "seconds": elapsed,
            "results": results,
            "table": table(results, args.peak_tflops),
        }
        pathlib.Path(args.output).write_text(json.dumps(record, indent=1), encoding="utf-8")
        print(f"written: {args.output}")


def define_flags() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel

    flags.DEFINE_float("peak_tflops", 0.0, "Datasheet dense bf16 TFLOP/s of one device.")
    flags.DEFINE_bool("vs-timm", False, "Also time timm's PyTorch model (needs torch and timm).")
    flags.DEFINE_string("models", ",".join(MODELS), "Which models, comma-separated.")
    flags.DEFINE_string("output", "gpu_bench.json", "Write the table and all results here.")
    flags.DEFINE_integer("steps", 5, "Train steps per timed round.")
    flags.DEFINE_integer("repeats", 5, "Timed rounds per phase (the median is reported).")
    flags.DEFINE_float("budget_s", 450.0, "Seconds for everything; the batch search yields first.")
    flags.DEFINE_bool("dry_run", False, "Tiny models and batches, for a CPU check of the path.")
    flags.DEFINE_enum("worker", "", ["", "jax", "timm"], "Internal: run one worker.")
    flags.DEFINE_string("model", "", "Internal: the worker's model.")
    flags.DEFINE_integer("batch", 0, "Internal: the timm worker's batch per device.")
    flags.DEFINE_float("worker_budget_s", 0.0, "Internal: the JAX worker's time for its search.")


if __name__ == "__main__":
    from absl import app  # pylint: disable=import-outside-toplevel

    define_flags()
    app.run(main)
