"""The sweep driver (grids, printed commands, sequential runs) and the report (table and plot from
fabricated workdirs with known metrics)."""

import csv
import json
import os
import subprocess
import sys
import types

import pytest

from prs_jax import report, sweep
from prs_jax.analysis import report as report_lib
from prs_jax.analysis import study
from prs_jax.training import completion, config_lib, validation

# --- sweep files --------------------------------------------------------------------------------


def test_data_ratio_sweep_is_four_models_by_five_ratios():
    runs = sweep.load_sweep("configs/sweeps/data_ratios.py")
    assert len(runs) == 20 and len({r.name for r in runs}) == 20
    grid = {(r.config, r.overrides["data.train_fraction"]) for r in runs}
    assert grid == {
        (f"configs/cifar100.py:{variant}", ratio)
        for variant in ("resnet18", "deit", "convit", "prs")
        for ratio in (0.05, 0.1, 0.25, 0.5, 1.0)
    }
    assert runs[0].name == "resnet_data005" and runs[-1].name == "prs_data100"


def test_uniform_switch_sweep_switches_at_quarters_of_training_plus_prs():
    runs = sweep.load_sweep("configs/sweeps/uniform_switch.py:train_fraction=0.1")
    assert [r.name for r in runs] == [
        "uniform_switch000",
        "uniform_switch025",
        "uniform_switch050",
        "uniform_switch075",
        "uniform_switch100",
        "prs",
    ]
    switches = [r.overrides["schedule.first_layer_switch_epoch"] for r in runs[:5]]
    assert switches == [0.0, 75.0, 150.0, 225.0, 300.0]  # of 300 epochs
    assert all(r.overrides["data.train_fraction"] == 0.1 for r in runs)
    config = sweep.load_config(runs[2].config, runs[2].overrides)
    schedule = config.schedule
    assert schedule.first_layer_switch_epoch == schedule.last_layer_switch_epoch == 150.0
    # runlocal: the switches follow the shortened run.
    local = sweep.load_sweep("configs/sweeps/uniform_switch.py:runlocal")
    assert local[-2].overrides["schedule.last_layer_switch_epoch"] == 2.0


def test_imagenet_config_recipe_and_variants():
    config = sweep.load_config("configs/imagenet.py:prs,train_fraction=0.1")
    assert config.data.name == "imagenet2012" and config.data.eval_split == "validation"
    assert (config.data.image_size, config.model.patch_size) == (224, 16)
    assert config.data.train_fraction == 0.1
    assert config.data.train_crop == "random_resized_crop"
    assert config.data.eval_crop == "resize_center_crop"
    assert config.optimizer.learning_rate_per_512 == 5e-4 and config.batch_size == 1024
    assert (config.augment.mixup_alpha, config.augment.cutmix_alpha) == (0.8, 1.0)
    assert config.schedule.first_layer_switch_epoch == 150.0
    assert sweep.load_config("configs/imagenet.py:resnet50").model.stem == "imagenet"
    assert sweep.load_config("configs/imagenet.py:deit").model.name == "deit_tiny"
    for arg in (
        "prs",
        "uniform,switch=30",
        "convit",
        "conv",
        "reversed",
        "deit",
        "resnet18",
        "resnet50",
        "prs,runlocal",
        "deit,runlocal",
        "resnet50,runlocal",
    ):
        validation.validate_config(sweep.load_config(f"configs/imagenet.py:{arg}"), device_count=8)


def test_override_of_a_missing_field_is_an_error():
    with pytest.raises(KeyError, match="no field 'data.train_fractoin'"):
        sweep.load_config("configs/digits.py", {"data.train_fractoin": 0.5})


# --- commands -----------------------------------------------------------------------------------


def test_dry_run_prints_one_main_command_per_run(capsys):
    assert (
        sweep.main(
            [
                "configs/sweeps/data_ratios.py",
                "--root",
                "/runs/r",
                "--dry_run",
                "--",
                "--config.data.data_dir=/tfds",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 20
    assert lines[6] == (
        "python -m prs_jax.main --config=configs/cifar100.py:deit --workdir=/runs/r/deit_data010"
        " --config.data.train_fraction=0.1 --config.data.data_dir=/tfds"
    )


def test_template_and_shard_for_many_machines(capsys):
    sweep.main(
        [
            "configs/sweeps/uniform_switch.py",
            "--root",
            "gs://b/s",
            "--shard",
            "1/2",
            "--template",
            "ssh worker{index} '{command}' # {name} {workdir}",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # runs 1, 3, 5 of 6
    assert lines[0].startswith("ssh worker0 'python -m prs_jax.main --config=configs/cifar100.py:u")
    assert lines[0].endswith("' # uniform_switch025 gs://b/s/uniform_switch025")
    assert lines[2].endswith("# prs gs://b/s/prs")


def test_run_mode_runs_in_order_and_goes_on_after_a_failure(capsys):
    calls = []

    def fake_run(argv, cwd, check):
        calls.append(argv)
        return types.SimpleNamespace(returncode=1 if "--workdir=/r/b" in argv else 0)

    runs = [
        sweep.Run("a", "configs/digits.py"),
        sweep.Run("b", "configs/digits.py"),
        sweep.Run("c", "configs/digits.py", {"num_epochs": 2.0}),
    ]
    commands = [(r.name, sweep.command(r, "/r")) for r in runs]
    assert sweep.run_all(commands, runner=fake_run) == ["b"]
    assert [c[4] for c in calls] == ["--workdir=/r/a", "--workdir=/r/b", "--workdir=/r/c"]
    assert calls[2][-1] == "--config.num_epochs=2.0"
    assert "b: FAILED (exit 1)" in capsys.readouterr().out


def test_a_rerun_skips_the_runs_that_finished_with_the_same_config(tmp_path, capsys):
    runs = [
        sweep.Run("done", "configs/digits.py"),
        sweep.Run("changed", "configs/digits.py", {"num_epochs": 2.0}),
        sweep.Run("new", "configs/digits.py"),
    ]
    digits = sweep.load_config("configs/digits.py").to_dict()
    for run in runs:
        (tmp_path / run.name).mkdir()
    completion.mark_finished(str(tmp_path / "done"), 660, digits)
    completion.mark_finished(str(tmp_path / "changed"), 660, digits)  # with 30 epochs, not 2
    finished = sweep.finished_runs(runs, str(tmp_path))
    assert finished == {"done": 660}
    # Flags after `--` that may change every config: nothing counts as finished.
    assert sweep.finished_runs(runs, str(tmp_path), ["--config.seed=1"]) == {}
    assert sweep.finished_runs(runs, str(tmp_path), ["--library_log_level=info"]) == finished

    calls = []

    def fake_run(argv, cwd, check):
        calls.append(argv)
        return types.SimpleNamespace(returncode=0)

    commands = [(r.name, sweep.command(r, str(tmp_path))) for r in runs]
    assert sweep.run_all(commands, runner=fake_run, finished=finished) == []
    assert [c[4].rsplit("/", 1)[-1] for c in calls] == ["changed", "new"]
    assert "[1/3] done: finished at step 660" in capsys.readouterr().out


def test_the_sweep_reports_all_its_runs_under_its_own_name(tmp_path, monkeypatch):
    """--only runs a subset, but the report covers every run of the sweep with a workdir, as
    ROOT/report_<sweep stem>, so two sweeps sharing a root do not overwrite each other's."""
    sweep_file = tmp_path / "my_grid.py"
    sweep_file.write_text(
        "from prs_jax.sweep import Run\n"
        "def get_sweep(arg=None):\n"
        "    return [Run(n, 'configs/digits.py') for n in ('a', 'b', 'c')]\n"
    )
    root = tmp_path / "runs"
    for name in ("a", "b"):  # c has not started
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
    ran, reported = [], []
    monkeypatch.setattr(sweep, "run_all", lambda commands, finished: ran.extend(commands) or [])
    monkeypatch.setattr(
        study,
        "write_study_report",
        lambda workdirs, prefix: reported.append((workdirs, prefix)) or [prefix + ".md"],
    )
    assert sweep.main([str(sweep_file), "--root", str(root), "--only", "a"]) == 0
    assert [name for name, _ in ran] == ["a"]
    assert reported == [([f"{root}/a", f"{root}/b"], str(root / "report_my_grid"))]
    assert sweep.report_prefix("configs/sweeps/cifar10_study.py:steps=10") == "report_cifar10_study"


def test_an_unreadable_completion_record_is_not_finished(tmp_path):
    (tmp_path / completion.FINISHED_FILE).write_text("{")
    assert completion.finished_step(str(tmp_path), {"a": 1}) is None
    assert completion.finished_step(str(tmp_path / "absent"), {"a": 1}) is None


def test_cli_entry_point_prints_commands():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prs_jax.sweep",
            "configs/sweeps/uniform_switch.py",
            "--root",
            "/r",
            "--dry_run",
            "--only",
            "prs",
        ],
        cwd=sweep.REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = "python -m prs_jax.main --config=configs/cifar100.py:prs --workdir=/r/prs\n"
    assert result.stdout == expected


# --- report -------------------------------------------------------------------------------------


def fabricate_run(root, name, arg, fraction, evals, overrides=None):
    """A workdir with the config of configs/cifar100.py:ARG and eval records {step: accuracy}."""
    config = sweep.load_config(f"configs/cifar100.py:{arg}", overrides)
    config.data.train_fraction = fraction
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"hparams": {"seed": 0}}) + "\n")
        for step, accuracy in evals.items():
            f.write(json.dumps({"step": step - 1, "train/loss": 2.0}) + "\n")
            f.write(json.dumps({"step": step, "eval/accuracy": accuracy, "eval/loss": 1.0}) + "\n")
    return workdir


@pytest.fixture
def runs(tmp_path):
    root = str(tmp_path / "runs")
    fabricate_run(root, "resnet_data010", "resnet18", 0.1, {100: 0.31, 200: 0.35, 300: 0.34})
    fabricate_run(root, "resnet_data100", "resnet18", 1.0, {100: 0.60, 200: 0.71})
    fabricate_run(root, "prs_data010", "prs", 0.1, {100: 0.30, 200: 0.4125})
    fabricate_run(root, "prs_data100", "prs", 1.0, {100: 0.65, 200: 0.7731})
    for switch, accuracy in ((0, 0.52), (150, 0.58), (300, 0.55)):
        overrides = {
            "schedule.first_layer_switch_epoch": float(switch),
            "schedule.last_layer_switch_epoch": float(switch),
        }
        fabricate_run(
            root, f"uniform_switch{switch:03d}", "uniform", 1.0, {50: 0.1, 99: accuracy}, overrides
        )
    os.makedirs(os.path.join(root, "not_started"))  # no config.json: not a run
    return root


def test_report_table_holds_the_runs_metrics(runs, tmp_path):
    prefix = str(tmp_path / "out" / "report")
    assert report.main(["--workdirs", runs, "--out", prefix]) == 0
    with open(prefix + ".csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert len(rows) == 7
    resnet = rows["resnet_data010"]
    assert (float(resnet["final_accuracy"]), float(resnet["best_accuracy"])) == (0.34, 0.35)
    assert (resnet["best_step"], resnet["steps"], resnet["schedule"]) == ("200", "300", "none")
    assert float(rows["prs_data010"]["train_fraction"]) == 0.1
    assert float(rows["prs_data100"]["best_accuracy"]) == 0.7731
    assert rows["prs_data100"]["schedule"] == "prs"
    assert float(rows["prs_data100"]["conv_epochs"]) == 100.0  # mean of 150 and 50
    assert [rows[f"uniform_switch{s:03d}"]["schedule"] for s in (0, 150, 300)] == [
        "convit",
        "uniform",
        "conv",
    ]
    assert float(rows["uniform_switch150"]["conv_epochs"]) == 150.0
    assert rows["resnet_data010"]["conv_epochs"] == ""

    with open(prefix + ".md") as f:
        markdown = f.read()
    for line in (
        # last quarter: the eval at 3/4 of the last eval step (or the latest before); no uptime
        "| prs_data100 | cifar100 | convit_tiny | prs | 100 | 100 | 300 | 200 | 77.31 | 77.31 | 200 | +12.31 |  |",  # noqa: E501
        "| resnet_data010 | cifar100 | resnet18 | none | 10 |  | 300 | 300 | 34.00 | 35.00 | 200 | -1.00 |  |",  # noqa: E501
    ):
        assert line in markdown.splitlines()


def test_report_plot_is_a_png(runs, tmp_path):
    two = [os.path.join(runs, "prs_data010"), os.path.join(runs, "prs_data100")]
    paths = report_lib.write_report(two, str(tmp_path / "two"))
    with open(paths[2], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths[2]) > 10_000


def test_report_plot_shows_each_runs_final_accuracy_not_its_best(runs, tmp_path, monkeypatch):
    import matplotlib.figure  # pylint: disable=import-outside-toplevel

    figures = []
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig)
    )
    rows = [report_lib.read_run(os.path.join(runs, "resnet_data010"))]
    report_lib.plot(rows, str(tmp_path / "plot.png"))
    (line,) = figures[0].axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx([34.0])  # final 0.34; its best was 0.35
    assert figures[0].axes[0].get_ylabel() == "final top-1 (%)"


def test_report_lists_a_run_without_evals_with_empty_accuracies(tmp_path):
    workdir = fabricate_run(str(tmp_path), "fresh", "deit", 0.25, {})
    (row,) = [report_lib.read_run(workdir)]
    assert row["final_accuracy"] is None and row["best_accuracy"] is None and row["steps"] == 0
    assert row["schedule"] == "none" and row["model"] == "deit_tiny"
    with pytest.raises(FileNotFoundError, match="not a run workdir"):
        report_lib.find_workdirs([str(tmp_path / "nothing")])


def test_report_wall_time_adds_up_the_processes_of_a_resumed_run(tmp_path):
    workdir = fabricate_run(str(tmp_path), "resumed", "prs", 0.1, {300: 0.5})
    # One process reported at 60 and 600 s of uptime and was killed; the resumed one at 70 and
    # 900 s: 1,500 s in all (the last process alone would say 900).
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        for step, uptime in ((100, 60.0), (1000, 600.0), (1100, 70.0), (2000, 900.0)):
            f.write(json.dumps({"step": step, "uptime": uptime, "steps_per_sec": 2.0}) + "\n")
    assert report_lib.read_run(workdir)["wall_time_s"] == pytest.approx(1500.0)
    assert report_lib.wall_time_s([{"step": 1}]) is None


def test_report_last_quarter_gain_compares_the_last_eval_with_the_one_at_three_quarters():
    evals = [(1500, 0.50), (3000, 0.55), (4500, 0.60), (4750, 0.70), (6000, 0.61)]
    assert report_lib.last_quarter_gain(evals) == pytest.approx(0.01)  # 0.61 - 0.60 at 4500
    # no eval at exactly 3/4: the latest one before it (3000 <= 0.75 * 4500 = 3375)
    assert report_lib.last_quarter_gain(evals[:3]) == pytest.approx(0.05)
    assert report_lib.last_quarter_gain([(100, 0.3)]) is None  # nothing before 3/4 of 100
    assert report_lib.last_quarter_gain([]) is None


def test_parse_arg_of_sweep_files_rejects_unknown_arguments():
    with pytest.raises(ValueError, match="unknown config argument 'ratio'"):
        sweep.load_sweep("configs/sweeps/data_ratios.py:ratio=0.1")
    assert config_lib.parse_arg("dataset=imagenet", dataset="cifar100").dataset == "imagenet"


def test_report_summary_gives_the_mean_and_spread_over_seeds(tmp_path):
    root = str(tmp_path)
    for seed, accuracy in ((0, 0.40), (1, 0.44)):
        fabricate_run(root, f"prs_seed{seed}", "prs", 0.1, {100: accuracy}, {"seed": seed})
    fabricate_run(root, "deit_seed0", "deit", 0.1, {100: 0.30})
    fabricate_run(root, "deit_full", "deit", 1.0, {100: 0.50})
    table = report_lib.summary_table(
        [report_lib.read_run(w) for w in report_lib.find_workdirs([root])]
    )
    lines = table.splitlines()
    assert lines[0] == "| model | 10% data | 100% data |"
    assert "| convit_tiny/prs | 42.00 +- 2.83 (2 seeds) |  |" in lines
    assert "| deit_tiny | 30.00 | 50.00 |" in lines


def test_report_summary_averages_only_runs_that_differ_in_their_seed_alone(tmp_path):
    """An ablation's variants (another budget, another switch point) share a model, schedule and
    fraction with the baseline; they get rows of their own instead of passing for its seeds."""
    root = str(tmp_path)
    for seed, accuracy in ((0, 0.40), (1, 0.44)):
        fabricate_run(root, f"prs_seed{seed}", "prs", 0.1, {100: accuracy}, {"seed": seed})
    fabricate_run(root, "prs_long_seed0", "prs", 0.1, {300: 0.50}, {"num_epochs": 900.0})
    switch = {"schedule.first_layer_switch_epoch": 200.0}
    fabricate_run(root, "prs_late_seed0", "prs", 0.1, {100: 0.46}, switch)
    rows = [report_lib.read_run(w) for w in report_lib.find_workdirs([root])]
    assert report_lib.labels(rows) == {
        "prs_seed0": "convit_tiny/prs [prs]",
        "prs_seed1": "convit_tiny/prs [prs]",
        "prs_long_seed0": "convit_tiny/prs [prs_long]",
        "prs_late_seed0": "convit_tiny/prs [prs_late]",
    }
    lines = report_lib.summary_table(rows).splitlines()
    assert "| convit_tiny/prs [prs] | 42.00 +- 2.83 (2 seeds) |" in lines
    assert "| convit_tiny/prs [prs_long] | 50.00 |" in lines
    assert "| convit_tiny/prs [prs_late] | 46.00 |" in lines
    paths = report_lib.write_report([root], str(tmp_path / "report"))
    assert os.path.getsize(paths[2]) > 10_000
