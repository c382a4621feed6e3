r"""bfloat16 against float32: one model trained in both from the same initialisation and batches.

  python -m prs_jax.tools.precision --config configs/cifar10.py:prs,fraction=0.1,steps=300

`--config.model.dtype=bfloat16` sets the compute dtype of the matmuls and convolutions; the
parameters, the optimizer, the softmaxes, the GPSA gates, the norms' statistics and the loss stay
in float32 (README, "Performance"). This tool builds the config's run twice, once per dtype,
with the jit, shardings, schedule and recipe that `prs_jax.main` uses, checks that both
initialise to the same parameters, and steps both on each batch of one train iterator (so both
see the same images, augmentations and mixup draws, and a busy machine slows both alike). It
prints the train loss of both as means over windows of `--window` steps, the largest difference
between them, the validation top-1 of both at the end, and whether both are within the stated
tolerances; `--output FILE` writes it all as JSON (with the per-step losses). The exit status
is 1 when a tolerance is exceeded.

The default tolerances are set from the seed spread of the cifar10 study (configs/cifar10.py:
top-1 within about 0.4 points between seeds at 600 steps): 1.0 point of top-1, and 0.05 nats
between the two curves' window means.
"""

from __future__ import annotations

from prs_jax.cpu import host_allocator

if __name__ == "__main__":
    # Before JAX starts threads, as prs_jax.main does on a CPU host (a no-op elsewhere).
    host_allocator.configure_for_training()

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from prs_jax import data
from prs_jax.cpu import cpu_devices
from prs_jax.tools.step_bench import train_batches, training_steps_of
from prs_jax.training.state import create_mesh, create_model
from prs_jax.training.steps import build_run_functions, evaluate, to_global

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class Comparison:
    """The two runs' train losses (per step) and final validation metrics, by dtype."""

    config: str
    steps: int
    window: int
    losses: dict[str, list[float]]
    top1: dict[str, float]
    eval_loss: dict[str, float]
    seconds: dict[str, float]
    loss_tolerance: float
    top1_tolerance: float  # in accuracy (0.01 = one point)

    def window_means(self, dtype: str) -> np.ndarray:
        """Mean train loss over consecutive windows of `window` steps (a shorter last one)."""
        losses = np.asarray(self.losses[dtype], np.float64)
        return np.array(
            [w.mean() for w in np.array_split(losses, max(1, -(-len(losses) // self.window)))]
        )

    @property
    def max_window_difference(self) -> float:
        first, second = (self.window_means(d) for d in DTYPES)
        return float(np.max(np.abs(first - second)))

    @property
    def top1_difference(self) -> float:
        return abs(self.top1[DTYPES[0]] - self.top1[DTYPES[1]])

    @property
    def agrees(self) -> bool:
        return (
            self.max_window_difference <= self.loss_tolerance
            and self.top1_difference <= self.top1_tolerance
        )

    def report(self) -> str:
        lines = [
            f"{self.config}: {self.steps} steps from one initialisation on the same batches",
            f"train loss, means over {self.window}-step windows:",
            f"  {'steps':>11s}  {'float32':>8s}  {'bfloat16':>8s}  {'difference':>10s}",
        ]
        first, second = (self.window_means(d) for d in DTYPES)
        for index, (a, b) in enumerate(zip(first, second)):
            span = f"{index * self.window}-{min((index + 1) * self.window, self.steps) - 1}"
            lines.append(f"  {span:>11s}  {a:8.4f}  {b:8.4f}  {b - a:+10.4f}")
        lines += [
            f"largest window difference: {self.max_window_difference:.4f}"
            f" (tolerance {self.loss_tolerance})",
            f"validation top-1: float32 {self.top1['float32']:.2%}, bfloat16"
            f" {self.top1['bfloat16']:.2%}, difference {100 * self.top1_difference:.2f} points"
            f" (tolerance {100 * self.top1_tolerance:.1f})",
            f"validation loss: float32 {self.eval_loss['float32']:.4f},"
            f" bfloat16 {self.eval_loss['bfloat16']:.4f}",
            f"seconds of train steps: float32 {self.seconds['float32']:.0f},"
            f" bfloat16 {self.seconds['bfloat16']:.0f}",
            f"agreement within the tolerances: {'yes' if self.agrees else 'NO'}",
        ]
        return "\n".join(lines)

    def to_json(self) -> dict:
        summary = {
            "max_window_difference": self.max_window_difference,
            "top1_difference": self.top1_difference,
            "agrees": self.agrees,
            "window_means": {d: self.window_means(d).tolist() for d in DTYPES},
        }
        return {**dataclasses.asdict(self), **summary}


def compare(
    config: ml_collections.ConfigDict,
    num_steps: int,
    *,
    window: int = 50,
    loss_tolerance: float = 0.05,
    top1_tolerance: float = 0.01,
    name: str = "",
    log: Callable[[str], None] = lambda line: None,
) -> Comparison:
    """Trains `config`'s model for `num_steps` steps in float32 and in bfloat16, side by side."""
    mesh = create_mesh()
    data_sharding = NamedSharding(mesh, P("data"))
    info = data.dataset_info(config.data)
    steps = training_steps_of(config, info.num_train_examples)
    runs, states = {}, {}
    for dtype in DTYPES:
        dtype_config = ml_collections.ConfigDict(config.to_dict())
        dtype_config.model.dtype = dtype
        model = create_model(dtype_config, info.num_classes)
        runs[dtype] = build_run_functions(dtype_config, model, info.num_classes, steps, mesh)
        states[dtype] = runs[dtype].init()
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), states["float32"].params, states["bfloat16"].params
    )
    if not all(jax.tree.leaves(same)):
        raise AssertionError("float32 and bfloat16 runs initialised to different parameters")

    losses: dict[str, list] = {dtype: [] for dtype in DTYPES}
    seconds = dict.fromkeys(DTYPES, 0.0)
    for step, host_batch in enumerate(train_batches(config, 0, num_steps)):
        batch = to_global(host_batch, data_sharding)
        for dtype in DTYPES:
            start = time.perf_counter()
            states[dtype], metrics = runs[dtype].train_step(states[dtype], batch)
            losses[dtype].append(float(metrics["loss"]))  # waits for the step
            seconds[dtype] += time.perf_counter() - start
        if (step + 1) % window == 0 or step + 1 == num_steps:
            log(
                f"step {step + 1}/{num_steps}: loss float32 {losses['float32'][-1]:.4f},"
                f" bfloat16 {losses['bfloat16'][-1]:.4f}"
            )

    results = {}
    for dtype in DTYPES:
        batches = data.create_eval_iterator(
            config.data,
            global_batch_size=config.eval_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        results[dtype] = evaluate(runs[dtype].eval_step, states[dtype], batches, data_sharding)
    return Comparison(
        config=name,
        steps=num_steps,
        window=window,
        losses=losses,
        top1={d: results[d]["accuracy"] for d in DTYPES},
        eval_loss={d: results[d]["loss"] for d in DTYPES},
        seconds=seconds,
        loss_tolerance=loss_tolerance,
        top1_tolerance=top1_tolerance,
    )


def define_flags() -> None:
    """The command's flags (defined only when run as a command, so that importing the module
    beside prs_jax.bench defines no flag twice)."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file (':arg').")
    flags.mark_flags_as_required(["config"])
    flags.DEFINE_integer("steps", 0, "Train steps in each dtype (0: the config's whole run).")
    flags.DEFINE_integer("window", 50, "Steps per window of the loss-curve comparison.")
    flags.DEFINE_float("loss_tolerance", 0.05, "Largest allowed window-mean loss difference.")
    flags.DEFINE_float("top1_tolerance_points", 1.0, "Largest allowed top-1 difference, points.")
    flags.DEFINE_string("output", "", "Write the comparison as JSON here.")


def main(argv: Sequence[str]) -> None:
    del argv
    args = flags.FLAGS
    config = args.config
    # As prs_jax.main: one device per core on a CPU host, before JAX's backend starts.
    cpu_devices.configure([config.batch_size, config.eval_batch_size])
    comparison = compare(
        config,
        args.steps or steps_of_config(config),
        window=args.window,
        loss_tolerance=args.loss_tolerance,
        top1_tolerance=args.top1_tolerance_points / 100,
        name=config_flags.get_config_filename(args["config"]),
        log=lambda line: print(line, flush=True),
    )
    print(comparison.report())
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(comparison.to_json(), file, indent=1)
    sys.exit(0 if comparison.agrees else 1)


def steps_of_config(config: ml_collections.ConfigDict) -> int:
    """The whole run's step count."""
    return training_steps_of(config, data.dataset_info(config.data).num_train_examples).total_steps


if __name__ == "__main__":
    define_flags()
    app.run(main)
