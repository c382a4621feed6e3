r"""Parity with the PyTorch reference: prs_jax's training against timm's, step by step.

  python -m prs_jax.parity --config configs/cifar10.py:prs,steps=300 --steps 100
  python -m prs_jax.parity --config configs/cifar10.py:deit --steps 100
  python -m prs_jax.parity --config configs/cifar10.py:resnet --steps 100
  python -m prs_jax.parity --config configs/cifar100.py --data synthetic --steps 100 \
      --config.schedule.first_layer_switch_epoch=0.25 --config.schedule.last_layer_switch_epoch=0.1
  python -m prs_jax.parity --config configs/cifar10.py:deit --init     # initial distributions
  python -m prs_jax.parity --config configs/cifar10.py:convit,fraction=0.1 \
      --train_reference ~/runs/timm_c10_convit_10                      # timm's own training

Step comparison (the default): timm's model of the config (ConVit, VisionTransformer or ResNet)
starts from prs_jax's initial weights; both train on the same batches (the configured train
iterator, or --data synthetic) with the config's recipe, stochastic depth off; each step prints
the conv strengths, the learning rate, the loss and the global gradient norm on each side, and
the largest relative difference of a parameter tensor and of a BatchNorm statistic. The run ends
with the largest differences up to steps 1, 10 and 100 against their tolerances
(prs_jax/tools/parity/harness.py), and exits 1 if one is exceeded.

--init compares prs_jax's initial distributions with timm's, tensor by tensor (mean, std,
bounds). --train_reference trains timm's model in PyTorch on the config's data, recipe and
budget, with timm's Mixup, RandomErasing, RandAugment and loss (prs_jax/tools/parity/trainer.py).

Needs torch and timm: pip install -e '.[parity]' && pip install --no-deps timm==1.0.31.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from prs_jax.tools.step_bench import num_train_examples

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "cifar10.py")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file (':arg').")
flags.DEFINE_integer("steps", 100, "Train steps to compare.")
flags.DEFINE_enum(
    "data",
    "config",
    ["config", "synthetic"],
    "'config': the configured train iterator (host augmentation included); 'synthetic': normal"
    " images and uniform labels (for data that is not on this machine, e.g. CIFAR-100).",
)
flags.DEFINE_integer(
    "num_train_examples", 0, "Train-set size for the schedules (0: the config dataset's size)."
)
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: torch's default).")
flags.DEFINE_string("json", "", "Also write every step's row and the summary to this file.")
flags.DEFINE_bool(
    "float64_floor",
    False,
    "Also step a float64 copy of timm's model and print how far float32 timm is from it: the"
    " rounding noise that the differences are to be read against.",
)
flags.DEFINE_bool("init", False, "Compare initial distributions with timm's instead.")
flags.DEFINE_string(
    "train_reference", "", "Train timm's model in PyTorch on the config's data into this workdir."
)


def _import_reference() -> None:
    from prs_jax.tools.timm_bench import timm_available  # pylint: disable=import-outside-toplevel

    why = timm_available()
    if why:
        sys.exit(
            f"prs_jax.parity needs torch and timm ({why}): pip install -e '.[parity]' &&"
            " pip install --no-deps timm==1.0.31"
        )


def main(argv: list[str]) -> None:
    del argv
    _import_reference()
    import torch  # pylint: disable=import-outside-toplevel

    from prs_jax import data  # pylint: disable=import-outside-toplevel
    from prs_jax.data import sources  # pylint: disable=import-outside-toplevel
    from prs_jax.tools.parity import harness, init_stats, trainer  # noqa: I001  pylint: disable=import-outside-toplevel

    if FLAGS.torch_threads:
        torch.set_num_threads(FLAGS.torch_threads)
    config = FLAGS.config
    if FLAGS.train_reference:
        trainer.train(config, FLAGS.train_reference)
        return
    num_classes = sources.dataset_spec(config.data).num_classes
    if FLAGS.init:
        print(init_stats.report(config, num_classes))
        return

    if FLAGS.data == "synthetic":
        batches = harness.synthetic_batches(
            config.batch_size, config.data.image_size, num_classes, config.seed
        )
        examples = num_train_examples(config, FLAGS.num_train_examples)
    else:
        batches = data.create_train_iterator(
            config.data, global_batch_size=config.batch_size, seed=config.seed
        )
        examples = FLAGS.num_train_examples or data.dataset_info(config.data).num_train_examples
    setup = harness.build(config, num_classes, examples)
    print(
        f"prs_jax {setup.config.model.name} ({jax.default_backend()}, jax {jax.__version__}) vs"
        f" timm {type(setup.reference).__name__} (torch {torch.__version__},"
        f" {torch.get_num_threads()} threads); {setup.steps.total_steps} steps in the run,"
        f" {setup.steps.warmup_steps} warmup; data: {FLAGS.data}; stochastic depth off"
    )
    print(harness.HEADER)
    rows = harness.compare(
        setup,
        iter(batches),
        FLAGS.steps,
        lambda row: print(harness.format_row(row), flush=True),
        float64_floor=FLAGS.float64_floor,
    )
    tolerances = setup.tolerances
    failures = [
        f"step {row.step}: {', '.join(f)}" for row in rows if (f := row.failures(tolerances))
    ]
    summary = harness.summary(rows)
    print(f"layer switches (first step with s < 1): {harness.switch_steps(rows) or 'none'}")
    for limit, largest in summary.items():
        print(
            f"up to step {limit}: loss {largest['loss']:.1e}, grad norm"
            f" {largest['grad_norm']:.1e}, params {largest['params']:.1e}, running means"
            f" {largest['batch_stats']:.1e}, running variances {largest['running_var']:.1e}"
            + (
                "; float32 vs float64 timm: {:.1e} / {:.1e} / {:.1e}".format(*largest["floor"])
                if "floor" in largest
                else ""
            )
        )
    print(f"tolerances (step 1, later): {tolerances}")
    print("\n".join(failures[:20]) if failures else "within tolerance at every step")
    if FLAGS.json:
        pathlib.Path(FLAGS.json).write_text(
            json.dumps(
                {
                    "config": setup.config.to_dict(),
                    "rows": [row.__dict__ for row in rows],
                    "summary": summary,
                    "switch_steps": harness.switch_steps(rows),
                    "failures": failures,
                },
                indent=1,
                default=str,
            )
        )
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
