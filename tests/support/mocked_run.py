"""The tiny PRS run on mocked CIFAR-100 that several test files check or resume: its config,
the mock, and one trained copy per test process (the `mocked_run` fixture in conftest.py)."""

import contextlib
import os
import shutil

import tensorflow_datasets as tfds

from prs_jax.training import train
from tests.test_configs import load

NUM_MOCK = 64  # examples per split
STEPS_PER_EPOCH = 4  # 64 examples / batch 16
TOTAL_STEPS = 8


def mocked_cifar100() -> contextlib.AbstractContextManager:
    """TFDS's generated CIFAR-100, NUM_MOCK examples per split."""
    return tfds.testing.mock_data(num_examples=NUM_MOCK, policy=tfds.testing.MockPolicy.USE_CODE)


def tiny_run_config():
    """The runlocal PRS config shrunk further: 2 epochs of 4 steps; switches at steps 4 and 2."""
    config = load("cifar100")("prs,runlocal")
    config.model.update(hidden_size=16, depth=3, num_gpsa_layers=2)
    config.batch_size = 16
    config.eval_batch_size = 24  # 64 = 2 x 24 + 16: the last eval batch is padded
    config.num_epochs = 2.0
    config.schedule.update(first_layer_switch_epoch=1.0, last_layer_switch_epoch=0.5)
    config.log_every_steps = 2
    config.eval_every_epochs = 1.0
    config.fourier_every_epochs = 1.0
    config.checkpoint_every_steps = 3
    config.keep_checkpoints = 2
    return config


def train_tiny_run(workdir: str):
    """Trains tiny_run_config to its end in workdir; returns (config, workdir, final state)."""
    config = tiny_run_config()
    with mocked_cifar100():
        state = train.train_and_evaluate(config, workdir)
    return config, workdir, state


def copy_of_run(run, workdir: str):
    """The same finished run in a new workdir, for a test that resumes or damages it."""
    config, source, state = run
    shutil.copytree(source, workdir)
    assert os.path.isdir(os.path.join(workdir, "checkpoints"))
    return config, workdir, state
