"""Every command ends a user's mistake with one line naming the problem and the fix, and exit
code 2; an internal error keeps its traceback (prs_jax/cli.py).

The absl commands (main, evaluate, bench) parse sys.argv in absl's app.run, so they run as
processes; the argparse commands (fourier, convert, sweep, report) are called in-process.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from prs_jax import cli, convert, fourier, report, sweep
from prs_jax.errors import UserError
from tests.support.compile_flags import TEST_XLA_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_command(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=TEST_XLA_FLAGS)
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_digits(workdir, *overrides):
    """prs_jax.main on configs/digits.py with `overrides`."""
    return run_command(
        "prs_jax.main", "--config", "configs/digits.py", "--workdir", workdir, *overrides
    )


def assert_one_line_error(result, command, *fragments):
    """Exit code 2, no traceback, and the last stderr line is `command: ...` with fragments."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{command}: "), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)


def call(main, argv, capsys):
    """Run an argparse command's main in-process; (exit code, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return stopped.value.code, capsys.readouterr().err


def test_main_an_unknown_config_field_is_one_line_with_the_did_you_mean(tmp_path):
    result = run_digits(tmp_path / "run", "--config.optimizer.lerning_rate=1")
    assert_one_line_error(
        result,
        "prs_jax.main",
        "--config.optimizer.lerning_rate=1",
        "no field 'lerning_rate'",
        'Did you mean "learning_rate"',
    )
    assert not (tmp_path / "run").exists()


def test_main_a_truncated_jpeg_in_a_folder_dataset_is_one_line(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.jpg")
    bad = tmp_path / "data" / "train" / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    result = run_digits(
        tmp_path / "run",
        "--config.data.name=image_folder",
        f"--config.data.folder_root={tmp_path / 'data'}",
    )
    assert_one_line_error(
        result, "prs_jax.main", f"cannot read image file {bad}", "folder_on_corrupt='skip'"
    )


def test_main_an_unknown_config_file_argument_is_one_line(tmp_path):
    result = run_command(
        "prs_jax.main", "--config", "configs/digits.py:bogus=1", "--workdir", tmp_path / "run"
    )
    assert_one_line_error(
        result, "prs_jax.main", "unknown config argument 'bogus'; allowed: ['epochs', 'variant']"
    )


def test_main_a_missing_required_flag_is_one_line():
    result = run_command("prs_jax.main", "--config", "configs/digits.py")
    assert_one_line_error(result, "prs_jax.main", "--workdir", "--helpshort")


def test_evaluate_a_workdir_without_checkpoints_is_one_line(tmp_path):
    result = run_command("prs_jax.evaluate", "--workdir", tmp_path)
    assert_one_line_error(
        result, "prs_jax.evaluate", f"no checkpoint in {tmp_path}/checkpoints", "--workdir"
    )


def test_evaluate_an_unknown_override_field_is_one_line_with_the_did_you_mean(tmp_path):
    # ml_collections applies a config dict flag's overrides when the flag is defined.
    result = run_command("prs_jax.evaluate", "--workdir", tmp_path, "--config.data.eval_splt=x")
    assert_one_line_error(
        result,
        "prs_jax.evaluate",
        "--config.data.eval_splt=x: the config has no field 'eval_splt'",
        'Did you mean "eval_split"',
    )


def test_bench_a_config_file_that_does_not_exist_is_one_line():
    result = run_command("prs_jax.bench", "--config", "configs/no_such_config.py")
    assert_one_line_error(
        result, "prs_jax.bench", "--config=configs/no_such_config.py", "No such file"
    )


def test_fourier_a_missing_workdir_is_one_line(tmp_path, capsys):
    code, err = call(fourier.main, ["--workdir", str(tmp_path / "missing")], capsys)
    assert code == 2
    assert (
        err
        == f"prs_jax.fourier: workdir {tmp_path / 'missing'} does not exist: give the --workdir of a training run\n"
    )


def test_convert_a_missing_source_is_one_line(tmp_path, capsys):
    argv = ["to-prs", str(tmp_path / "w.safetensors"), str(tmp_path / "out.safetensors")]
    code, err = call(convert.main, [*argv, "--model", "convit_tiny"], capsys)
    assert code == 2
    assert err.startswith(f"prs_jax.convert: no file or folder {tmp_path / 'w.safetensors'}")
    assert len(err.splitlines()) == 1


def test_convert_a_workdir_without_checkpoints_is_one_line(tmp_path, capsys):
    code, err = call(convert.main, ["to-timm", str(tmp_path), str(tmp_path / "o.st")], capsys)
    assert code == 2
    assert err.startswith(f"prs_jax.convert: no checkpoint in {tmp_path}/checkpoints")


def test_sweep_an_unknown_override_field_is_one_line(tmp_path, capsys):
    sweep_file = tmp_path / "typo.py"
    sweep_file.write_text(
        "def get_sweep(arg):\n"
        "    return [('a', 'configs/digits.py', {'data.train_fractoin': 0.5})]\n"
    )
    code, err = call(sweep.main, [str(sweep_file), "--root", str(tmp_path), "--dry_run"], capsys)
    assert code == 2
    assert err == (
        "prs_jax.sweep: override 'data.train_fractoin': the config 'configs/digits.py' has no"
        " field 'data.train_fractoin'\n"
    )


def test_sweep_a_missing_sweep_file_is_one_line(tmp_path, capsys):
    code, err = call(sweep.main, ["configs/sweeps/nope.py", "--root", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("prs_jax.sweep: no file ") and "nope.py" in err


def test_report_a_path_without_runs_is_one_line(tmp_path, capsys):
    argv = ["--workdirs", str(tmp_path), "--out", str(tmp_path / "report")]
    code, err = call(report.main, argv, capsys)
    assert code == 2
    assert err.startswith(f"prs_jax.report: {tmp_path} is not a run workdir")
    assert len(err.splitlines()) == 1


def test_an_internal_error_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError), cli.exit_on_user_error("prs_jax.test"):
        _ = 1 / 0


def test_a_user_error_exits_2_with_the_command_and_message(capsys):
    with pytest.raises(SystemExit) as stopped, cli.exit_on_user_error("prs_jax.test"):
        raise UserError("the problem; the fix")
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "prs_jax.test: the problem; the fix\n"


def test_unknown_field_message_names_the_flag_and_keeps_the_suggestion():
    error = AttributeError(
        "'\\'lerning_rate\\'\\nDid you mean \"learning_rate\" instead of \"lerning_rate\"?'"
    )
    message = cli.unknown_field_message(error, ["prog", "--config.optimizer.lerning_rate=1"])
    assert message == (
        "--config.optimizer.lerning_rate=1: the config has no field 'lerning_rate'. Did you mean"
        ' "learning_rate" instead of "lerning_rate"?'
    )
    assert cli.unknown_field_message(AttributeError("'other'"), ["prog", "--x=1"]) is None
