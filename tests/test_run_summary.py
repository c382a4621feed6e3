"""The lines a run ends with (prs_jax/training/run_summary.py); the end-to-end log is checked in
test_reliability.py."""

import json

import pytest

from prs_jax.training import run_summary


@pytest.fixture
def workdir(tmp_path):
    """A resumed run's workdir: evals at 10, 20 and 30; step 30 was evaluated again after a
    resume from step 20, and its second value counts."""
    records = [
        {"hparams": {"seed": 0}},
        {"step": 10, "eval/accuracy": 0.5, "eval/loss": 1.0},
        {"step": 20, "eval/accuracy": 0.75},
        {"step": 25, "train/loss": 0.3},
        {"step": 30, "eval/accuracy": 0.6},
        {"step": 30, "eval/accuracy": 0.625},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "events.out.tfevents.1.host.1.0.v2").write_bytes(b"")
    for name in ("20", "30", "30.orbax-checkpoint-tmp", "25.unreadable"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    return tmp_path


def session(**changes):
    fields = dict(
        first_step=20,
        last_step=30,
        total_steps=30,
        batch_size=64,
        wall_seconds=125.0,
        loop_seconds=16.0,
    )
    return run_summary.Session(**{**fields, **changes})


def test_a_finished_run_reports_accuracy_speed_contents_and_next_commands(workdir):
    lines = run_summary.summary_lines(str(workdir), session())
    assert lines == [
        f"Run finished: 30 steps in {workdir}.",
        "  eval top-1: final 62.50% at step 30, best 75.00% at step 20",
        "  this session: steps 20-30 in 2 min 05 s wall time; 40.0 images/s in the training loop"
        " (evals and checkpoints included)",
        "  workdir: checkpoints/ (steps 20, 30), metrics.jsonl, config.json, TensorBoard events"
        f" (tensorboard --logdir {workdir})",
        f"  evaluate it: python -m prs_jax.evaluate --workdir {workdir}",
        f"  its Fourier spectra: python -m prs_jax.fourier --workdir {workdir}",
    ]


def test_a_stopped_run_says_how_to_resume_and_a_run_without_evals_says_so(tmp_path):
    lines = run_summary.summary_lines(str(tmp_path), session(first_step=0, last_step=23))
    assert lines[0] == (f"Run stopped at step 23 of 30 in {tmp_path}; the same command resumes it.")
    assert lines[1] == "  eval top-1: no evaluation yet"
    assert lines[3] == "  workdir: checkpoints/ (none)"


def test_a_workdir_with_spaces_is_quoted_in_the_commands(tmp_path):
    workdir = tmp_path / "my run"
    workdir.mkdir()
    lines = run_summary.summary_lines(str(workdir), session())
    assert lines[-2] == f"  evaluate it: python -m prs_jax.evaluate --workdir '{workdir}'"


@pytest.mark.parametrize(
    "seconds, text", [(42.04, "42.0 s"), (185, "3 min 05 s"), (7260, "2 h 01 min")]
)
def test_durations_read_as_a_person_would_write_them(seconds, text):
    assert run_summary.duration(seconds) == text
