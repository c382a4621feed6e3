r"""Evaluate a run's checkpoint on any split: top-1, top-5 and the loss, without training code.

  python -m prs_jax.evaluate --workdir ~/runs/c10_prs_10
  python -m prs_jax.evaluate --workdir ~/runs/c10_prs_10 --step 500 \
      --config.data.folder_root=/data/cifar10 --config.data.eval_split=test \
      --config.data.folder_validation_fraction=0

The model, its schedule and the data recipe come from the config saved with the checkpoint (the
latest, or `--step N`); `--config.data.FIELD=VALUE` and `--config.eval_batch_size=N` change
them for this evaluation only (the run's workdir and checkpoints are only read). The whole
split is evaluated exactly (the last batch is padded with masked examples). Prints one line and
writes the metrics as JSON to `--output` (default WORKDIR/eval/step_<N>/<split>.json).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # As in prs_jax.main: before JAX starts, keep XLA:CPU's per-step scratch for reuse.
    from prs_jax.cpu import host_allocator

    host_allocator.configure_for_training()

import json
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from prs_jax import cli, data
from prs_jax.cpu import cpu_devices
from prs_jax.method import schedule
from prs_jax.training import checkpointing, logs
from prs_jax.training.state import TrainState, create_mesh, create_model
from prs_jax.training.steps import evaluate, make_eval_step
from prs_jax.training.validation import ConfigError


def override_template() -> ml_collections.ConfigDict:
    """The fields `--config.*` may set: every data field and the eval batch size."""
    template = ml_collections.ConfigDict()
    template.data = data.default_data_config()
    template.eval_batch_size = 256
    return template


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags; defined only when run as a program, so that importing this
    module beside prs_jax.main or prs_jax.bench (tests, notebooks) defines no flag twice."""
    flags.DEFINE_string("workdir", None, "A training run's workdir (with checkpoints/).")
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
    flags.DEFINE_string(
        "output", None, "JSON file to write (default WORKDIR/eval/step_N/SPLIT.json)."
    )
    config_flags.DEFINE_config_dict(
        "config", override_template(), "Overrides of the run's saved config: --config.data.F=V."
    )


def config_for_evaluation(
    workdir: str, step: int | None, overrides: Mapping[str, Any]
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict, int]:
    """(the config to evaluate with, the run's own config, the checkpoint step).

    `overrides` maps dotted field names ('data.eval_split') to values; only `data.*` and
    `eval_batch_size` may be changed.
    """
    step = checkpointing.checkpoint_step(workdir, step)
    run_config = checkpointing.restore_config(workdir, step)
    config = ml_collections.ConfigDict(run_config.to_dict())
    for name, value in overrides.items():
        if not (name.startswith("data.") or name == "eval_batch_size"):
            raise ConfigError(
                f"--config.{name}: only the data fields (--config.data.*) and"
                " --config.eval_batch_size can change for an evaluation"
            )
        *parents, leaf = name.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config, run_config, step


def evaluate_checkpoint(
    workdir: str, step: int | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Top-1, top-5 and loss of a run's checkpoint over the whole eval split of its config with
    `overrides` applied (see config_for_evaluation); also the split, step and example count."""
    config, run_config, step = config_for_evaluation(workdir, step, overrides or {})
    info = data.dataset_info(config.data)
    model = create_model(config, info.num_classes)
    # The conv strengths the checkpoint was trained with come from the run's own schedule, in
    # steps of its own train split, whatever split is evaluated now.
    run_info = info if config.data == run_config.data else data.dataset_info(run_config.data)
    if run_info.num_classes != info.num_classes:
        raise ConfigError(
            f"the evaluated split has {info.num_classes} classes but the run's model was trained"
            f" on {run_info.num_classes} ({run_config.data.name}); evaluate on data with the"
            " same classes"
        )
    training = schedule.training_steps(
        run_info.num_train_examples,
        run_config.batch_size,
        run_config.num_epochs,
        run_config.optimizer.warmup_epochs,
    )
    conv_strength_fn = schedule.make_conv_strength_fn(
        model.num_gpsa_layers, training.steps_per_epoch, run_config.schedule
    )

    mesh = create_mesh()
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    variables, step = checkpointing.restore_variables(workdir, model, config.data.image_size, step)
    variables = jax.device_put(variables, replicated)
    state = TrainState(
        step=jax.device_put(jnp.asarray(step, jnp.int32), replicated),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=None,
        rng=None,
    )
    eval_step = jax.jit(
        make_eval_step(model, conv_strength_fn),
        in_shardings=(replicated, data_sharding),
        out_shardings=replicated,
    )
    batches = data.create_eval_iterator(
        config.data,
        global_batch_size=config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    results = evaluate(eval_step, state, batches, data_sharding)
    return {
        "workdir": os.path.abspath(workdir) if "://" not in workdir else workdir,
        "step": step,
        "dataset": config.data.name,
        "split": config.data.eval_split,
        "top1_accuracy": results["accuracy"],
        "top5_accuracy": results["top5_accuracy"],
        "loss": results["loss"],
        "num_examples": int(results["num_examples"]),
    }


def default_output(workdir: str, step: int, split: str) -> str:
    """WORKDIR/eval/step_<N>/<split>.json, the split's TFDS slicing made file-name safe."""
    return os.path.join(workdir, "eval", f"step_{step}", re.sub(r"[^\w.-]+", "_", split) + ".json")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: a training run's workdir")
    # Only the fields given on the command line, as dotted names: {'data.eval_split': 'test'}.
    overrides = config_flags.get_override_values(FLAGS["config"])
    # TensorFlow only reads input here: keep it off the accelerators (as prs_jax.main does), and
    # its C++ start-up notices out of the output.
    with logs.native_start_up_noise_dropped():
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
    cpu_devices.configure([FLAGS.config.eval_batch_size])

    results = evaluate_checkpoint(FLAGS.workdir, FLAGS.step, overrides)
    output = FLAGS.output or default_output(FLAGS.workdir, results["step"], results["split"])
    epath.Path(output).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(output).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    logging.info("Wrote %s.", output)
    print(
        f"{results['workdir']} step {results['step']} on {results['dataset']}:{results['split']}"
        f" ({results['num_examples']} examples): top-1 {100 * results['top1_accuracy']:.2f}%,"
        f" top-5 {100 * results['top5_accuracy']:.2f}%, loss {results['loss']:.4f} -> {output}"
    )


if __name__ == "__main__":
    cli.run_absl(main, "prs_jax.evaluate", define_flags=define_flags)
