"""train_and_evaluate end to end on mocked CIFAR-100: what a run leaves in its workdir, and an
exact resume after an interruption."""

import json
import os
import signal

import jax
import numpy as np
import pytest
import tensorflow as tf

from prs_jax.training import checkpointing, completion, metrics, train
from tests.support import mocked_run as mocked
from tests.support.mocked_run import NUM_MOCK, TOTAL_STEPS

# With pytest-xdist, the tests that read the session's mocked run share one worker, so that it
# is trained once (setup.cfg: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("mocked_run")


@pytest.fixture(autouse=True)
def mocked_cifar100():
    with mocked.mocked_cifar100():
        yield


@pytest.fixture
def finished_run(mocked_run):
    return mocked_run


def read_event_tags(workdir):
    tags = {}
    for name in os.listdir(workdir):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
                for value in event.summary.value:
                    tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_run_reaches_its_last_step(finished_run):
    _, _, state = finished_run
    assert int(state.step) == TOTAL_STEPS


def test_checkpoints_keep_latest_and_every_layer_switch(finished_run):
    config, workdir, _ = finished_run
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    # Every 3 steps (latest 2 kept: 6 and the final 8), plus the switches at steps 2 and 4.
    assert saved == [2, 4, 6, 8]
    restored = checkpointing.restore_config(workdir)
    assert restored.to_dict() == config.to_dict()
    # The input iterator's position (in batches) is saved with the state.
    with open(os.path.join(workdir, "checkpoints", "8", "data", "process_0-of-1.json")) as f:
        assert json.load(f)["next_index"] == TOTAL_STEPS


def test_a_finished_run_records_its_last_step_and_config(finished_run):
    config, workdir, _ = finished_run
    assert completion.finished_step(workdir, config.to_dict()) == TOTAL_STEPS
    longer = config.copy_and_resolve_references()
    longer.num_epochs = 3.0
    assert completion.finished_step(workdir, longer.to_dict()) is None


def test_config_json_is_the_resolved_config(finished_run):
    config, workdir, _ = finished_run
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f) == json.loads(json.dumps(config.to_dict()))


def test_jsonl_metrics_hold_the_schedule_and_exact_eval(finished_run):
    _, workdir, _ = finished_run
    records = metrics.read_metrics(workdir)
    train_records = {r["step"]: r for r in records if "train/loss" in r}
    eval_records = {r["step"]: r for r in records if "eval/accuracy" in r}
    assert sorted(train_records) == [2, 4, 6, 8]
    assert sorted(eval_records) == [4, 8]
    # Conv strength averaged over the logged steps: layer 1 switches at step 2, layer 0 at 4.
    np.testing.assert_allclose(
        [train_records[s]["train/conv_strength/layer_00"] for s in (2, 4, 6)], [1.0, 1.0, 0.0]
    )
    np.testing.assert_allclose(
        [train_records[s]["train/conv_strength/layer_01"] for s in (2, 4, 6)], [1.0, 0.0, 0.0]
    )
    for record in train_records.values():
        assert np.isfinite(record["train/loss"]) and record["train/learning_rate"] > 0
        assert 0.0 <= record["train/gate/layer_00"] <= 1.0
    for record in eval_records.values():
        assert record["eval/num_examples"] == NUM_MOCK  # padding is masked out exactly
        assert 0.0 <= record["eval/accuracy"] <= 1.0


def test_tensorboard_events_hold_train_and_eval_scalars(finished_run):
    _, workdir, _ = finished_run
    tags = read_event_tags(workdir)
    assert tags["train/loss"] == [2, 4, 6, 8]
    assert tags["eval/accuracy"] == [4, 8]
    assert "train/conv_strength/layer_01" in tags and "train/gate/layer_00" in tags
    # The Fourier lens in training: one high-frequency value per block (1 + 2 x depth), per epoch.
    fourier_tags = sorted(t for t in tags if t.startswith("fourier/high_frequency/"))
    assert len(fourier_tags) == 1 + 2 * 3
    assert all(tags[t] == [4, 8] for t in fourier_tags)


@pytest.mark.slow  # a long end-to-end run; -m 'not slow' skips it
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, monkeypatch, finished_run):
    config, _, uninterrupted = finished_run
    workdir = str(tmp_path / "resumed")
    to_global = train.to_global
    train_batches = []

    def to_global_then_preempt(batch, sharding):
        # Send SIGTERM while step 3 runs: the loop saves step 3 and returns.
        if "mask" not in batch:
            train_batches.append(1)
            if len(train_batches) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        return to_global(batch, sharding)

    monkeypatch.setattr(train, "to_global", to_global_then_preempt)
    first = train.train_and_evaluate(config, workdir)
    assert int(first.step) == 3
    assert 3 in [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]

    monkeypatch.setattr(train, "to_global", to_global)
    resumed = train.train_and_evaluate(config, workdir)
    assert int(resumed.step) == TOTAL_STEPS
    expected, actual = jax.device_get((uninterrupted.params, resumed.params))
    jax.tree.map(np.testing.assert_array_equal, actual, expected)
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(resumed.opt_state),
        jax.device_get(uninterrupted.opt_state),
    )
