"""The switch-point study of `prs_jax.fourier --compare` (prs_jax.analysis.interpolation): the
switch point of each CIFAR-10 variant, the mean high-frequency value, the CSV rows with the
accuracies of a run's metrics.jsonl, and when interpolation.png is drawn."""

import csv
import json
import os
import pathlib

import matplotlib.image
import numpy as np
import pytest

from prs_jax import fourier, sweep
from prs_jax.analysis import interpolation
from prs_jax.analysis import spectra as spectral
from prs_jax.analysis.fourier import FourierResult

CIFAR10 = pathlib.Path(__file__).resolve().parents[1] / "configs" / "cifar10.py"


def cifar10(arg):
    return sweep.load_config(f"{CIFAR10}:{arg}")


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("convit", 0.0),
        ("uniform,first=0.25,last=0.25", 0.25),
        ("uniform,first=0.75,last=0.75", 0.75),
        ("uniform,first=0.25,last=0.25,ramp=0.1", 0.25),  # where the ramp starts
        ("conv", 1.0),  # never: 1.0, with the schedule named 'conv'
        ("prs", (1 / 2 + 1 / 6) / 2),  # the mean over GPSA layers
        ("deit", None),
        ("resnet", None),
    ],
)
def test_switch_point_of_each_cifar10_variant(arg, expected):
    config = cifar10(f"{arg},fraction=0.1")
    stored = json.loads(json.dumps(config.to_dict()))  # as config.json and fourier.npz hold it
    for value in (interpolation.switch_point(config), interpolation.switch_point(stored)):
        assert value == pytest.approx(expected) if expected is not None else value is None


def test_high_frequency_change_by_kind_averages_each_blocks_own_step():
    # high-frequency values (last finite entry per row): -1, -3, -2, -5, -4.5, NaN (side-1 map)
    spectra = np.array([[0, -1], [0, -3], [0, -2], [0, -5], [0, -4.5], [0, np.nan]], np.float32)
    kinds = ("embedding", "attention", "mlp", "attention", "mlp", "downsampling")
    changes = spectral.high_frequency_change_by_kind(spectra, kinds)
    assert changes["attention"] == pytest.approx((-2 + -3) / 2)  # -1 -> -3, -2 -> -5
    assert changes["mlp"] == pytest.approx((1 + 0.5) / 2)  # -3 -> -2, -5 -> -4.5
    assert np.isnan(changes["downsampling"])  # its only change ends on a map without one
    assert set(changes) == {"attention", "mlp", "downsampling"}


def test_mean_high_frequency_skips_the_blocks_without_one():
    spectra = np.array(
        [
            [0.0, -1.0, -2.0],  # high frequency -2
            [0.0, -3.0, np.nan],  # -3
            [0.0, np.nan, np.nan],  # a 2 x 2 map: none
        ]
    )
    assert spectral.mean_high_frequency(spectra) == pytest.approx(-2.5)
    assert np.isnan(spectral.mean_high_frequency(spectra[2:]))


def fake_result(config, label, high_frequency=-1.0, step=600):
    """A FourierResult of 3 blocks whose high-frequency values are all `high_frequency`."""
    spectra = np.array([[0.0, -0.5, high_frequency]] * 3, np.float32)
    return FourierResult(
        spectra=spectra,
        frequencies=np.tile(np.float32([0, 1, 2]), (3, 1)),
        kinds=("embedding", "attention", "mlp"),
        map_shapes=np.array([[6, 6]] * 3),
        label=label,
        step=step,
        config_json="{}" if config is None else json.dumps(config.to_dict()),
    )


def fake_run(root, name, arg, high_frequency, accuracies, step=600):
    """A workdir with config.json, metrics.jsonl (eval/accuracy evenly spaced up to step 600, the
    run's last) and its fourier.npz of `step` at the default place; the npz's path."""
    config = cifar10(arg)
    workdir = root / name
    npz_dir = workdir / "fourier" / f"step_{step}"
    npz_dir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json())
    n = len(accuracies)
    records = [{"step": 100, "train/loss": 2.0}]
    records += [{"step": 600 * (i + 1) // n, "eval/accuracy": a} for i, a in enumerate(accuracies)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fake_result(config, name, high_frequency, step).save_npz(str(npz_dir / "fourier.npz"))
    return str(npz_dir / "fourier.npz")


def compare(output_dir, runs, *options):
    fourier.main(["--compare", *runs, "--output_dir", str(output_dir), *options])
    with open(output_dir / "high_frequency_compare.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_rows_hold_switch_point_value_and_the_accuracies_of_metrics_jsonl(tmp_path):
    convit = fake_run(tmp_path, "convit", "convit", -2.0, [0.30, 0.50, 0.45])
    lone_npz = str(tmp_path / "resnet.npz")  # no workdir: no accuracies
    fake_result(cifar10("resnet"), "resnet", -0.5).save_npz(lone_npz)

    rows = compare(tmp_path / "out", [convit, lone_npz])

    assert [r["label"] for r in rows] == ["convit", "resnet"]
    assert rows[0]["workdir"] == str(tmp_path / "convit") and rows[1]["workdir"] == ""
    assert [r["step"] for r in rows] == ["600", "600"]
    assert [r["schedule"] for r in rows] == ["convit", "none"]
    assert [r["switch_point"] for r in rows] == ["0.0", ""]
    assert [float(r["mean_high_frequency"]) for r in rows] == [-2.0, -0.5]
    assert (rows[0]["final_accuracy"], rows[0]["best_accuracy"]) == ("0.45", "0.5")
    assert rows[0]["best_step"] == "400"
    assert rows[1]["final_accuracy"] == rows[1]["best_accuracy"] == ""
    table = (tmp_path / "out" / "high_frequency_compare.md").read_text()
    # every block of the fake spectra has the same value: no kind changes it; no conv blocks
    assert "| convit | 600 | 0 | -2.000 | +0.000 | +0.000 |  |  | 45.00 | 50.00 |" in table
    assert float(rows[0]["change_per_attention"]) == 0.0 and rows[0]["change_per_convolution"] == ""


def test_interpolation_png_needs_two_distinct_switch_points(tmp_path):
    conv = fake_run(tmp_path, "conv", "conv", -0.8, [0.40])
    deit = fake_run(tmp_path, "deit", "deit", -2.5, [0.30])
    convit = fake_run(tmp_path, "convit", "convit", -2.0, [0.31])
    png = "interpolation.png"

    rows = compare(tmp_path / "one", [conv, deit])
    assert rows[0]["schedule"] == "conv" and rows[0]["switch_point"] == "1.0"  # never
    assert not os.path.exists(tmp_path / "one" / png)
    # two ConViTs (say, two learning rates) share switch point 0: no line to draw
    convit_again = fake_run(tmp_path, "convit_again", "convit", -1.9, [0.33])
    compare(tmp_path / "same", [convit, convit_again, deit])
    assert not os.path.exists(tmp_path / "same" / png)

    compare(tmp_path / "two", [convit, conv, deit])
    image = matplotlib.image.imread(tmp_path / "two" / png)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert "| conv | 600 | never |" in (tmp_path / "two" / "high_frequency_compare.md").read_text()


def test_an_npz_without_a_stored_config_has_no_switch_point(tmp_path):
    npz = str(tmp_path / "old.npz")
    fake_result(None, "old").save_npz(npz)
    (row,) = compare(tmp_path / "out", [npz])
    assert row["schedule"] == row["switch_point"] == row["final_accuracy"] == ""


def write_report(path, rows):
    """A prs_jax.report CSV (its columns that the comparison reads, and one it does not); every
    run ended at step 600."""
    columns = ("run", "model", "steps", "final_accuracy", "best_accuracy", "best_step")
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows((run, model, 600, *accuracies) for run, model, *accuracies in rows)
    return str(path)


def lone_npz(tmp_path, name, arg, high_frequency, step=600):
    """A fourier.npz away from its workdir, labelled as prs_jax.fourier labels a workdir's."""
    config = cifar10(arg)
    path = str(tmp_path / f"{name}_step{step}.npz")
    fake_result(config, f"{name}: convit_tiny", high_frequency, step).save_npz(path)
    return path


def test_a_report_csv_gives_the_accuracies_of_npz_files_whose_workdirs_are_gone(tmp_path):
    convit = lone_npz(tmp_path, "convit_lr4x_seed0", "convit", -2.0)
    uniform = lone_npz(tmp_path, "uniform_lr4x_seed0", "uniform", -1.8)
    conv = fake_run(tmp_path, "conv_lr4x_seed0", "conv", -1.0, [0.40, 0.52])  # has a workdir
    old = write_report(
        tmp_path / "old.csv",
        [
            ("convit_lr4x_seed0", "convit_tiny", 0.605, 0.6072, 5750),
            ("uniform_lr4x_seed0", "x", 0.1, 0.1, 1),
        ],
    )
    # a later report's row wins (a rerun); a workdir's own metrics win over any report
    new = write_report(
        tmp_path / "new.csv",
        [
            ("uniform_lr4x_seed0", "convit_tiny", 0.6272, 0.6298, 5500),
            ("conv_lr4x_seed0", "x", 0.9, 0.9, 1),
        ],
    )

    out = tmp_path / "out"
    rows = compare(out, [convit, uniform, conv], "--report", old, new)

    got = [(r["final_accuracy"], r["best_accuracy"], r["best_step"]) for r in rows]
    assert got == [
        ("0.605", "0.6072", "5750"),
        ("0.6272", "0.6298", "5500"),
        ("0.52", "0.52", "600"),
    ]
    assert rows[0]["switch_point"] == "0.0" and rows[2]["switch_point"] == "1.0"
    assert float(rows[1]["switch_point"]) == pytest.approx(1 / 3)
    assert (out / "interpolation.png").exists()


def test_an_npz_missing_from_the_report_fails_before_anything_is_written(tmp_path, capsys):
    convit = lone_npz(tmp_path, "convit_lr4x_seed0", "convit", -2.0)
    report = write_report(tmp_path / "r.csv", [("prs_lr4x_seed0", "convit_tiny", 0.6, 0.6, 1)])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        fourier.main(["--compare", convit, "--output_dir", str(out), "--report", report])
    assert exit_info.value.code == 2
    assert "no row for run convit_lr4x_seed0" in capsys.readouterr().err
    assert not out.exists()


def test_a_report_without_accuracy_columns_is_refused_by_name(tmp_path, capsys):
    convit = lone_npz(tmp_path, "convit_lr4x_seed0", "convit", -2.0)
    curves = tmp_path / "report_curves.csv"
    curves.write_text("run,step,accuracy\nconvit_lr4x_seed0,250,0.2\n")
    with pytest.raises(SystemExit):
        fourier.main(
            ["--compare", convit, "--output_dir", str(tmp_path / "o"), "--report", str(curves)]
        )
    err = capsys.readouterr().err
    assert "has no column best_accuracy, best_step, final_accuracy, steps" in err
    assert "_curves.csv" in err


def test_a_checkpoint_before_the_runs_end_gets_no_final_accuracy_and_is_not_drawn(tmp_path):
    # at a switch (--step) and at the end, from a workdir and from npz files with a report
    uniform_mid = fake_run(tmp_path, "uniform", "uniform", -1.9, [0.3, 0.5], step=200)
    uniform_end = str(tmp_path / "uniform" / "fourier" / "step_600" / "fourier.npz")
    os.makedirs(os.path.dirname(uniform_end))
    fake_result(cifar10("uniform"), "uniform", -1.7).save_npz(uniform_end)
    conv_mid = lone_npz(tmp_path, "conv_lr4x_seed0", "conv", -2.2, step=300)
    conv_end = lone_npz(tmp_path, "conv_lr4x_seed0", "conv", -2.0)
    report = write_report(tmp_path / "r.csv", [("conv_lr4x_seed0", "x", 0.6, 0.62, 500)])

    rows = compare(
        tmp_path / "out", [uniform_mid, uniform_end, conv_mid, conv_end], "--report", report
    )

    assert [(r["step"], r["final_accuracy"]) for r in rows] == [
        ("200", ""),
        ("600", "0.5"),
        ("300", ""),
        ("600", "0.6"),
    ]
    drawn = interpolation.latest_per_run(
        [{"label": r["label"], "step": int(r["step"])} for r in rows]
    )
    assert [(r["label"], r["step"]) for r in drawn] == [
        ("uniform", 600),
        ("conv_lr4x_seed0: convit_tiny", 600),
    ]
