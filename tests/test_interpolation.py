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


def fake_result(config, label, high_frequency=-1.0):
    """A FourierResult of 3 blocks whose high-frequency values are all `high_frequency`."""
    spectra = np.array([[0.0, -0.5, high_frequency]] * 3, np.float32)
    return FourierResult(
        spectra=spectra,
        frequencies=np.tile(np.float32([0, 1, 2]), (3, 1)),
        kinds=("embedding", "attention", "mlp"),
        map_shapes=np.array([[6, 6]] * 3),
        label=label,
        step=600,
        config_json="{}" if config is None else json.dumps(config.to_dict()),
    )


def fake_run(root, name, arg, high_frequency, accuracies):
    """A workdir with config.json, metrics.jsonl (eval/accuracy at steps 200, 400, ...) and its
    fourier.npz at the default place; the npz's path."""
    config = cifar10(arg)
    workdir = root / name
    npz_dir = workdir / "fourier" / "step_600"
    npz_dir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json())
    records = [{"step": 100, "train/loss": 2.0}]
    records += [{"step": 200 * (i + 1), "eval/accuracy": a} for i, a in enumerate(accuracies)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fake_result(config, name, high_frequency).save_npz(str(npz_dir / "fourier.npz"))
    return str(npz_dir / "fourier.npz")


def compare(output_dir, runs):
    fourier.main(["--compare", *runs, "--output_dir", str(output_dir)])
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
