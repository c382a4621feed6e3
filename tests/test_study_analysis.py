"""The study's analysis: learning curves with the last quarter's gain, and paired differences
over seeds (prs_jax.analysis.curves, prs_jax.analysis.paired)."""

import csv
import json
import os

import pytest

from prs_jax import sweep
from prs_jax.analysis import curves, paired, report, study
from prs_jax.training import completion


def fabricate(root, name, arg, evals, seed=0, finished_step=None):
    """A workdir of configs/cifar10.py:ARG at 10% with eval records {step: accuracy}."""
    config = sweep.load_config(f"configs/cifar10.py:{arg},fraction=0.1", {"seed": seed})
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step, accuracy in evals.items():
            f.write(json.dumps({"step": step, "train/loss": 2.0}) + "\n")
            f.write(json.dumps({"step": step, "eval/accuracy": accuracy, "eval/loss": 1.5}) + "\n")
    if finished_step is not None:
        completion.mark_finished(workdir, finished_step, config.to_dict())
    return workdir


def test_last_quarter_gain_is_final_minus_the_eval_at_three_quarters(tmp_path):
    evals = {250: 0.30, 500: 0.40, 750: 0.46, 1000: 0.475}
    done = fabricate(str(tmp_path), "convit_lr4x", "convit,lr=4", evals, finished_step=1000)
    curve = curves.read_curve(done)
    assert curve["peak_learning_rate"] == pytest.approx(4 * 5e-4 * 128 / 512)
    assert (
        curve["family"] == "convit_tiny, width 128, depth 6 (GPSA)" and curve["total_steps"] == 1000
    )
    assert curves.last_quarter_gain(curve) == pytest.approx(0.015)
    # No eval exactly at 3/4: the last one before it stands for a run stopped there.
    uneven = fabricate(str(tmp_path), "deit", "deit", {300: 0.2, 700: 0.3, 1000: 0.36}, 0, 1000)
    assert curves.last_quarter_gain(curves.read_curve(uneven)) == pytest.approx(0.06)
    running = fabricate(str(tmp_path), "resnet", "resnet", {250: 0.5})
    assert curves.last_quarter_gain(curves.read_curve(running)) is None
    table = curves.gain_table([curves.read_curve(w) for w in (done, running)]).splitlines()
    assert (
        "| convit_lr4x | convit_tiny, width 128, depth 6 (GPSA) | 0.0005 | 1000 | 47.50 | 47.50 | +1.50 points |"
        in (table)
    )
    assert "| resnet | resnet18, width 24 | 0.000125 | unfinished | 50.00 | 50.00 |  |" in table


def test_curves_files_hold_every_evaluation(tmp_path):
    root = str(tmp_path / "runs")
    fabricate(root, "convit_lr1x", "convit", {250: 0.3, 500: 0.4}, finished_step=500)
    fabricate(root, "deit_lr1x", "deit", {250: 0.25, 500: 0.35}, finished_step=500)
    paths = curves.write_curves([root], str(tmp_path / "out" / "curves"))
    with open(paths[0]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], int(r["step"]), float(r["accuracy"])) for r in rows] == [
        ("convit_lr1x", 250, 0.3),
        ("convit_lr1x", 500, 0.4),
        ("deit_lr1x", 250, 0.25),
        ("deit_lr1x", 500, 0.35),
    ]
    with open(paths[2], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_paired_t_test_on_per_seed_differences(tmp_path):
    root = str(tmp_path)
    for seed, (a, b) in enumerate(((0.41, 0.40), (0.44, 0.42), (0.43, 0.40))):
        fabricate(root, f"prs_seed{seed}", "prs", {600: a}, seed)
        fabricate(root, f"convit_seed{seed}", "convit", {600: b}, seed)
    fabricate(root, "convit_seed3", "convit", {600: 0.9}, 3)  # no PRS partner: left out
    rows = [report.read_run(w) for w in report.find_workdirs([root])]
    (result,) = paired.paired_differences(rows, "convit_tiny/prs", "convit_tiny/convit")
    assert result["seeds"] == [0, 1, 2]
    assert result["differences"] == pytest.approx([1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: t = 2 / (1 / sqrt 3) = 3.464 with 2 degrees of freedom, p = 0.0742.
    assert result["t"] == pytest.approx(3.4641, abs=1e-4)
    assert result["p"] == pytest.approx(0.0742, abs=1e-4)
    assert paired.default_pairs(rows) == [("convit_tiny/prs", "convit_tiny/convit")]
    line = "| convit_tiny/prs - convit_tiny/convit | 10 | 0,1,2 | +1.00, +2.00, +3.00 | +2.00 | 3.46 | 0.074 |"  # noqa: E501
    assert line in paired.paired_table(rows, paired.default_pairs(rows)).splitlines()
    paths = study.write_study_report([root], str(tmp_path / "report"))
    with open(paths[0]) as f:
        assert line in f.read().splitlines()
    assert paths[3:] == [str(tmp_path / f"report_curves.{e}") for e in ("csv", "md", "png")]
