"""python -m prs_jax.evaluate: a trained checkpoint evaluated on its own split and on others,
on image folders generated here."""

import json
import os
import subprocess
import sys

import pytest

from prs_jax import evaluate
from prs_jax.training import metrics, train
from tests.test_configs import load
from tests.test_folders import CLASSES, write_images

TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 4


# Session scope: a module fixture is torn down whenever xdist runs another module's test
# in between, and then trained again; the group keeps its tests on one worker.
@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A 4-step tiny ConViT on folders whose eval split is a held-out 20% of train; a second
    root holds a separate test split of the same classes."""
    root = tmp_path_factory.mktemp("folders")
    write_images(os.path.join(root, "train"), TRAIN_PER_CLASS)
    other = tmp_path_factory.mktemp("other")
    write_images(os.path.join(other, "train"), TRAIN_PER_CLASS)
    write_images(os.path.join(other, "test"), TEST_PER_CLASS)
    config = load("cifar10")(f"prs,runlocal,folder_root={root}")
    config.data.update(folder_validation_fraction=0.2, image_size=8)
    config.model.update(patch_size=2, hidden_size=16, depth=2, num_gpsa_layers=1)
    config.batch_size, config.eval_batch_size = 8, 4  # 6 held-out images: a padded last batch
    config.num_epochs = 1.0  # 24 train images / 8 = 3 steps
    config.schedule.update(first_layer_switch_epoch=0.5, last_layer_switch_epoch=0.5)
    config.optimizer.learning_rate_per_512 = 0.01
    config.log_every_steps, config.eval_every_epochs = 1, 1.0
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, workdir)
    return workdir, str(other)


@pytest.mark.xdist_group("evaluate_run")
def test_evaluation_of_the_last_checkpoint_matches_the_runs_final_eval(trained_run):
    workdir, _ = trained_run
    final = [r for r in metrics.read_metrics(workdir) if "eval/accuracy" in r][-1]
    results = evaluate.evaluate_checkpoint(workdir)
    assert results["step"] == final["step"] == 3
    assert results["split"] == "validation"
    assert results["num_examples"] == 0.2 * TRAIN_PER_CLASS * len(CLASSES)
    assert results["top1_accuracy"] == pytest.approx(final["eval/accuracy"], abs=1e-6)
    assert results["top5_accuracy"] == pytest.approx(final["eval/top5_accuracy"], abs=1e-6)
    assert results["loss"] == pytest.approx(final["eval/loss"], rel=1e-5)
    # With 3 classes, the label is always among the top 5.
    assert results["top5_accuracy"] == 1.0


@pytest.mark.xdist_group("evaluate_run")
def test_data_overrides_evaluate_another_split_of_another_root(trained_run):
    workdir, other = trained_run
    results = evaluate.evaluate_checkpoint(
        workdir,
        overrides={
            "data.folder_root": other,
            "data.eval_split": "test",
            "data.folder_validation_fraction": 0.0,
            "eval_batch_size": 4,
        },
    )
    assert results["split"] == "test"
    assert results["num_examples"] == TEST_PER_CLASS * len(CLASSES)
    assert 0.0 <= results["top1_accuracy"] <= 1.0


@pytest.mark.xdist_group("evaluate_run")
def test_only_data_fields_and_the_eval_batch_size_may_change(trained_run):
    workdir, _ = trained_run
    with pytest.raises(ValueError, match=r"--config.model.depth: only the data fields"):
        evaluate.evaluate_checkpoint(workdir, overrides={"model.depth": 3})
    with pytest.raises(ValueError, match=r"no checkpoint at step 1 .* there are \[2, 3\]"):
        evaluate.evaluate_checkpoint(workdir, step=1)


def test_missing_checkpoint_is_an_error_naming_the_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        evaluate.evaluate_checkpoint(str(tmp_path))


def test_results_file_name_is_safe_for_tfds_split_slices(tmp_path):
    path = evaluate.default_output(str(tmp_path), 7, "train[:10%]")
    assert path == os.path.join(str(tmp_path), "eval", "step_7", "train_10_.json")


@pytest.mark.xdist_group("evaluate_run")
@pytest.mark.slow  # a process of prs_jax.evaluate; -m 'not slow' skips it
def test_command_line_prints_and_writes_the_metrics(trained_run, tmp_path):
    workdir, other = trained_run
    output = tmp_path / "test.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prs_jax.evaluate",
            f"--workdir={workdir}",
            f"--output={output}",
            f"--config.data.folder_root={other}",
            "--config.data.eval_split=test",
            "--config.data.folder_validation_fraction=0",
            "--config.eval_batch_size=4",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PRS_JAX_CPU_DEVICES": "2"},
    )
    written = json.loads(output.read_text())
    assert written["split"] == "test" and written["num_examples"] == TEST_PER_CLASS * len(CLASSES)
    assert f"top-1 {100 * written['top1_accuracy']:.2f}%" in result.stdout
    # Neither TensorFlow's C++ start-up notices nor orbax's notes on the read-only options it
    # would otherwise set itself reach the output.
    for noise in ("oneDNN custom operations", "absl::InitializeLog", "setting save_interval_steps"):
        assert noise not in result.stderr
