r"""Entry point: python -m prs_jax.main --config configs/cifar100.py --workdir DIR.

Config fields can be overridden on the command line, e.g. `--config.batch_size=256`, and
config files take arguments after a colon: `--config configs/cifar100.py:convit,runlocal`.
Kept short so that the logic imports into notebooks and tests (`prs_jax.train`).
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py), optionally with ':arg'.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # TensorFlow is only used for input and summaries: keep it off the accelerators.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")

    import jax

    from prs_jax import train

    logging.info("JAX %s: process %d of %d, devices %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices())
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
