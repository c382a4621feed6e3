"""Reliability: crashes, preemption, non-finite values, resume safety and config validation."""

import errno
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prs_jax import sweep
from prs_jax.cpu import cpu_devices
from prs_jax.training import checkpointing, completion, train, validation, workdir_lock
from prs_jax.training import metrics as metrics_lib
from tests.support.compile_flags import TEST_XLA_FLAGS
from tests.support.mocked_run import TOTAL_STEPS, copy_of_run, mocked_cifar100, tiny_run_config
from tests.test_configs import load

REPO = pathlib.Path(__file__).resolve().parents[1]

# A tiny PRS-ViT on the shipped digits: 22 steps per epoch, 88 steps in all.
DIGITS_ARGS = [
    "--config",
    str(REPO / "configs" / "digits.py") + ":epochs=4",
    "--config.model.hidden_size=16",
    "--config.model.depth=2",
    "--config.model.num_gpsa_layers=1",
    "--config.log_every_steps=5",
    "--config.checkpoint_every_steps=10",
    "--config.eval_every_epochs=2",
]
DIGITS_TOTAL_STEPS = 88


def main_command(workdir, *extra, module="prs_jax.main"):
    """(argv, env) of a training process on the digits."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=TEST_XLA_FLAGS, TF_CPP_MIN_LOG_LEVEL="2")
    argv = [sys.executable, "-m", module, *DIGITS_ARGS, "--workdir", str(workdir), *extra]
    return argv, env


def run_main(workdir, *extra, module="prs_jax.main"):
    """Run a training process to its end (or its death); returns the completed process."""
    argv, env = main_command(workdir, *extra, module=module)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def start_main(workdir, *extra, module="prs_jax.main"):
    """Start a training process; returns the running process."""
    argv, env = main_command(workdir, *extra, module=module)
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path, process, timeout=300):
    """Wait until `path` exists; fail early if `process` ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(
                f"the process ended before {path} appeared: {process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


def assert_one_line_error(result, *fragments):
    """Exit code 2, no traceback, and the last line of stderr is prs_jax.main's with fragments."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("prs_jax.main: "), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


def saved_steps(workdir):
    folder = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def saved_state(workdir, step):
    """The raw train state of a checkpoint, as numpy arrays."""
    path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
    return ocp.StandardCheckpointer().restore(path)


def assert_same_state(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


# Session scope: a module fixture is torn down whenever xdist runs another module's test
# in between, and then trained again; the group keeps its tests on one worker.
@pytest.fixture(scope="session")
def uninterrupted_digits(tmp_path_factory):
    """The digits run trained to its end in one process: the reference of the resume tests.

    While it trains, held in step 5 (which changes no number), a second prs_jax.main on the same
    workdir is started and must be refused; its outcome is kept for
    test_a_second_run_on_the_same_workdir_is_refused_and_the_first_record_is_intact.
    """
    workdir = tmp_path_factory.mktemp("uninterrupted")
    pause = tmp_path_factory.mktemp("pause")
    first = start_main(
        workdir,
        "--pause_at_step=5",
        f"--pause_dir={pause}",
        module="tests.support.interrupting_main",
    )
    try:
        wait_for(pause / "paused", first)
        second = run_main(workdir)
    finally:
        (pause / "resume").touch()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    (workdir / "stderr.txt").write_text(stderr)
    (workdir / "second_run.json").write_text(
        json.dumps({"returncode": second.returncode, "stderr": second.stderr, "first": first.pid})
    )
    return workdir


@pytest.mark.xdist_group("digits_run")  # one worker trains the shared run
@pytest.mark.slow  # a training process of prs_jax.main; -m 'not slow' skips it
def test_main_trains_on_one_cpu_device_per_core(uninterrupted_digits):
    """prs_jax.main on a CPU host with no device count of its own: one device per usable core
    (at most as many as split the digits batches of 64 and 128 evenly)."""
    expected = cpu_devices.device_count_for([64, 128], cpu_devices.usable_cores())
    devices = ", ".join(f"CpuDevice(id={i})" for i in range(expected))
    assert f"devices [{devices}]" in (uninterrupted_digits / "stderr.txt").read_text()


@pytest.mark.xdist_group("digits_run")  # one worker trains the shared run
@pytest.mark.slow  # a training process of prs_jax.main; -m 'not slow' skips it
def test_a_second_run_on_the_same_workdir_is_refused_and_the_first_record_is_intact(
    uninterrupted_digits,
):
    second = json.loads((uninterrupted_digits / "second_run.json").read_text())
    result = subprocess.CompletedProcess([], second["returncode"], "", second["stderr"])
    assert_one_line_error(
        result,
        f"workdir {uninterrupted_digits} is in use by the run of pid {second['first']} on host"
        f" {socket.gethostname()}",
        "another --workdir",
    )
    # Refused before it read data or wrote anything: the first run's record is whole, in order.
    assert "Initialised" not in second["stderr"] and "Resumed" not in second["stderr"]
    records = metrics_lib.read_metrics(str(uninterrupted_digits))
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == sorted(set(train_steps))  # one writer: each step once, in order
    assert train_steps[-1] == DIGITS_TOTAL_STEPS
    assert workdir_lock.read_holder(str(uninterrupted_digits)) is None  # released at the end


@pytest.mark.xdist_group("digits_run")  # one worker trains the shared run
@pytest.mark.slow  # a long end-to-end run; -m 'not slow' skips it
@pytest.mark.parametrize(
    "how", [["--at_step=37"], ["--during_save=30"]], ids=["mid-step", "mid-save"]
)
def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted_digits, how):
    killed = run_main(tmp_path, "--signal=KILL", *how, module="tests.support.interrupting_main")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert saved_steps(tmp_path)[-1] < DIGITS_TOTAL_STEPS
    if how == ["--during_save=30"]:
        # Step 30's write was cut short: it is not a committed checkpoint.
        assert 30 not in saved_steps(tmp_path)

    # The killed process's lock record is left; the rerun takes the lock over and says so.
    left = workdir_lock.read_holder(str(tmp_path))
    resumed = run_main(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    assert f"Took over the lock of {tmp_path} from pid {left['pid']} on host" in resumed.stderr
    final = saved_state(tmp_path, DIGITS_TOTAL_STEPS)
    assert int(final["step"]) == DIGITS_TOTAL_STEPS
    assert_same_state(final, saved_state(uninterrupted_digits, DIGITS_TOTAL_STEPS))


@pytest.mark.xdist_group("digits_run")  # one worker trains the shared run
@pytest.mark.slow  # a training process of prs_jax.main; -m 'not slow' skips it
def test_the_sweeps_config_of_a_run_is_the_one_main_records_when_it_finishes(
    uninterrupted_digits,
):
    """prs_jax.sweep skips a run by comparing the config it builds (config file, then override
    values) with the one prs_jax.main parsed from its flags and recorded at the end."""
    config_arg = DIGITS_ARGS[1].split("/configs/")[1]  # 'digits.py:epochs=4'
    overrides = dict(arg[len("--config.") :].split("=") for arg in DIGITS_ARGS[2:])
    overrides = {key: int(value) for key, value in overrides.items()}
    config = sweep.load_config(f"configs/{config_arg}", overrides).to_dict()
    assert completion.finished_step(str(uninterrupted_digits), config) == DIGITS_TOTAL_STEPS


@pytest.mark.slow  # a training process of prs_jax.main; -m 'not slow' skips it
def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
    stopped = run_main(
        tmp_path, "--signal=TERM", "--at_step=23", module="tests.support.interrupting_main"
    )
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not (tmp_path / completion.FINISHED_FILE).exists()  # a sweep will resume it
    assert f"Run stopped at step 23 of {DIGITS_TOTAL_STEPS}" in stopped.stderr
    assert saved_steps(tmp_path)[-1] == 23  # not a multiple of checkpoint_every_steps
    state = saved_state(tmp_path, 23)
    assert int(state["step"]) == 23
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


# ---------------------------------------------------------------------------------------------
# In-process runs on mocked CIFAR-100.


@pytest.fixture(name="mocked_cifar100")
def mocked_cifar100_fixture():
    with mocked_cifar100():
        yield


@pytest.fixture
def finished_run(tmp_path, mocked_run, mocked_cifar100):
    """A copy of the session's tiny mocked run, for tests that resume or damage it."""
    return copy_of_run(mocked_run, str(tmp_path / "run"))


def test_a_background_write_that_fails_is_reported_with_its_own_step(tmp_path, monkeypatch):
    """orbax writes a checkpoint in the background; its failure surfaces at a later step, and
    the error names the step whose checkpoint was lost, not the step that noticed."""
    manager = checkpointing.create_checkpoint_manager(
        str(tmp_path), checkpoint_every_steps=10, keep_checkpoints=3
    )
    iterator = iter(grain.MapDataset.range(8).to_iter_dataset())
    config = ml_collections.ConfigDict({"seed": 0})
    state = {"x": np.zeros(3, np.float32)}
    assert checkpointing.save(manager, 10, state, iterator, config)
    assert checkpointing.save(manager, 20, state, iterator, config)
    assert not checkpointing.save(manager, 21, state, iterator, config)  # not a save step

    def background_write_failed():  # as orbax reports a failed commit of the last save
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(manager, "check_for_errors", background_write_failed)
    with pytest.raises(
        checkpointing.CheckpointSaveError,
        match=r"^the checkpoint of step 20 could not be written to .*/checkpoints \(ENOSPC: No"
        r" space left on device\); training stopped and the checkpoint of step 10 is intact",
    ):
        checkpointing.save(manager, 22, state, iterator, config)
    checkpointing.close_after_error(manager)


def test_metrics_that_cannot_be_written_stop_with_the_step_and_the_cause():
    writer = metrics_lib.JsonlWriter("/dev/full")  # every write: ENOSPC
    with pytest.raises(
        metrics_lib.MetricsWriteError,
        match=r"the metrics of step 5 could not be written to /dev/full \(No space left on device\)",
    ):
        writer.write_scalars(5, {"train/loss": 1.0})


def test_injected_nan_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, mocked_cifar100
):
    workdir = str(tmp_path / "nan")
    to_global = train.to_global
    train_batches = []

    def poison_step_5(batch, sharding):
        if "mask" not in batch:
            train_batches.append(1)
            if len(train_batches) == 5:
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        return to_global(batch, sharding)

    monkeypatch.setattr(train, "to_global", poison_step_5)
    with pytest.raises(FloatingPointError, match=r"non-finite train/loss.*in steps 5-6"):
        train.train_and_evaluate(tiny_run_config(), workdir)
    # Checkpoints at 2 and 4 (layer switches) and 3 (every 3 steps); none from step 5 on.
    assert saved_steps(workdir) == [2, 3, 4]
    assert not (pathlib.Path(workdir) / completion.FINISHED_FILE).exists()
    good = saved_state(workdir, 4)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(good["params"]))


@pytest.mark.xdist_group("mocked_run")  # one worker trains the shared run
def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(finished_run, caplog):
    config, workdir, uninterrupted = finished_run
    assert saved_steps(workdir)[-2:] == [6, 8]
    for path in (pathlib.Path(workdir) / "checkpoints" / "8" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"")  # truncate the array data of the latest checkpoint

    with caplog.at_level(logging.WARNING):
        resumed = train.train_and_evaluate(config, workdir)
    assert "latest checkpoint (step 8) is incomplete or corrupted" in caplog.text
    assert "checkpoint at step 6 instead" in caplog.text
    assert (pathlib.Path(workdir) / "checkpoints" / "8.unreadable").is_dir()
    # Steps 7 and 8 were trained again, to the same numbers.
    assert int(resumed.step) == TOTAL_STEPS
    assert_same_state(jax.device_get(resumed.params), jax.device_get(uninterrupted.params))


@pytest.mark.xdist_group("mocked_run")  # one worker trains the shared run
def test_resume_with_an_incompatible_config_is_refused_with_the_differences(finished_run):
    config, workdir, _ = finished_run
    before = (pathlib.Path(workdir) / "config.json").read_text()
    changed = config.copy_and_resolve_references()
    changed.model.hidden_size = 32
    changed.batch_size = 32
    with pytest.raises(
        validation.ConfigError, match=r"(?s)batch_size: 16 -> 32.*model.hidden_size: 16 -> 32"
    ):
        train.train_and_evaluate(changed, workdir)
    assert (pathlib.Path(workdir) / "config.json").read_text() == before  # nothing overwritten


@pytest.mark.xdist_group("mocked_run")  # one worker trains the shared run
def test_resume_with_more_epochs_is_allowed_and_logged(finished_run, caplog):
    config, workdir, _ = finished_run
    longer = config.copy_and_resolve_references()
    longer.num_epochs = 3.0
    with caplog.at_level(logging.INFO):
        state = train.train_and_evaluate(longer, workdir)
    assert int(state.step) == 12
    assert "Resuming with a changed config: num_epochs: 2.0 -> 3.0" in caplog.text


# ---------------------------------------------------------------------------------------------
# Config validation: each bad value gets a message naming the field and what is allowed.


def cifar(**changes):
    config = load("cifar100")("prs")
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


BAD_CONFIGS = [
    (dict(model__name="convit_huge"), r"model.name='convit_huge'.*one of convit_tiny"),
    (dict(model__patch_size=5), r"model.patch_size=5.*divisor of data.image_size=32"),
    (dict(model__patch_size=0), r"model.patch_size=0"),
    (dict(model__num_gpsa_layers=12), r"model.num_gpsa_layers=12.*0 to depth - 1 = 11"),
    (dict(model__num_gpsa_layers=-1), r"model.num_gpsa_layers=-1"),
    (dict(model__num_heads=5), r"model.num_heads=5.*divisor of hidden_size=192"),
    (dict(model__drop_path_rate=1.5), r"model.drop_path_rate=1.5.*\[0, 1\)"),
    (dict(model__dtype="float64"), r"model.dtype='float64'.*float32, bfloat16"),
    (dict(data__image_size=0), r"data.image_size=0.*positive integer"),
    (dict(num_epochs=0.0), r"num_epochs=0.0.*> 0"),
    (
        dict(schedule__first_layer_switch_epoch=-1.0),
        r"schedule.first_layer_switch_epoch=-1.0.*\[0, num_epochs=300.0\]",
    ),
    (dict(schedule__last_layer_switch_epoch=400.0), r"schedule.last_layer_switch_epoch=400.0"),
    (dict(schedule__ramp_epochs=-2.0), r"schedule.ramp_epochs=-2.0.*>= 0"),
    (
        dict(batch_size=127),
        r"batch_size=127.*multiple of the number of devices \(2; on a CPU host PRS_JAX_CPU_DEVICES",
    ),
    (dict(eval_batch_size=0), r"eval_batch_size=0"),
    (dict(data__train_fraction=0.0), r"data.train_fraction=0.0.*\(0, 1\]"),
    (dict(data__train_fraction=1.5), r"data.train_fraction=1.5"),
    (dict(optimizer__learning_rate_per_512=0.0), r"optimizer.learning_rate_per_512=0.0.*> 0"),
    (dict(optimizer__min_learning_rate=1.0), r"optimizer.min_learning_rate=1.0"),
    (dict(optimizer__warmup_epochs=400.0), r"optimizer.warmup_epochs=400.0"),
    (dict(optimizer__weight_decay=-0.1), r"optimizer.weight_decay=-0.1"),
    (dict(optimizer__grad_clip_norm=-1.0), r"optimizer.grad_clip_norm=-1.0"),
    (dict(augment__label_smoothing=1.0), r"augment.label_smoothing=1.0.*\[0, 1\)"),
    (dict(augment__mixup_alpha=-0.5), r"augment.mixup_alpha=-0.5"),
    (dict(augment__mix_prob=2.0), r"augment.mix_prob=2.0.*\[0, 1\]"),
    (dict(log_every_steps=0), r"log_every_steps=0.*positive integer"),
    (dict(eval_every_epochs=0.0), r"eval_every_epochs=0.0"),
]


@pytest.mark.parametrize("changes,message", BAD_CONFIGS, ids=[str(c) for c, _ in BAD_CONFIGS])
def test_bad_config_is_rejected_with_a_message_naming_the_field(changes, message):
    config = cifar(**changes)
    with pytest.raises(validation.ConfigError, match=message):
        validation.validate_config(config, device_count=2)


def test_good_configs_pass_validation():
    for arg in ("prs", "convit", "conv", "deit", "resnet18", "prs,runlocal"):
        validation.validate_config(load("cifar100")(arg), device_count=2)
    validation.validate_config(load("digits")(), device_count=2)


def test_unwritable_workdir_is_rejected(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(validation.ConfigError, match=r"workdir .*a_file/run.* cannot be written"):
        validation.check_workdir(str(blocker / "run"))


@pytest.mark.xdist_group("mocked_run")  # one worker trains the shared run
def test_bad_config_fails_before_touching_an_existing_run(finished_run):
    config, workdir, _ = finished_run
    files = {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*") if p.is_file()}
    bad = config.copy_and_resolve_references()
    bad.model.patch_size = 3
    with pytest.raises(validation.ConfigError, match="model.patch_size=3"):
        train.train_and_evaluate(bad, workdir)
    assert files == {
        p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*") if p.is_file()
    }


def test_unknown_dataset_is_rejected_before_compiling(tmp_path):
    config = load("cifar100")("prs")
    config.data.name = "no_such_dataset_xyz"
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.xdist_group("digits_run")  # one worker trains the shared run
@pytest.mark.slow  # a training process of prs_jax.main; -m 'not slow' skips it
def test_a_runs_default_log_has_our_lines_and_clus_progress_but_no_library_chatter(
    uninterrupted_digits,
):
    log = (uninterrupted_digits / "stderr.txt").read_text()
    assert "eval top-1" in log and "ETA" in log  # our eval line; clu's steps/s-and-ETA line
    # orbax's save lines and clu's LoggingWriter echo of every scalar, as absl names the files.
    for chatter in ("checkpoint_manager.py", "atomicity.py", "logging_writer.py", "xla_bridge.py"):
        assert f" {chatter}:" not in log, chatter
    # TensorFlow's C++ start-up notices (TF_CPP_MIN_LOG_LEVEL=2, set here, does not stop them).
    for notice in ("oneDNN custom operations", "absl::InitializeLog()"):
        assert notice not in log, notice


@pytest.mark.xdist_group("digits_run")  # one worker trains the shared run
@pytest.mark.slow  # a training process of prs_jax.main; -m 'not slow' skips it
def test_a_run_ends_with_its_accuracy_speed_contents_and_next_commands(uninterrupted_digits):
    log = (uninterrupted_digits / "stderr.txt").read_text()
    head = f"] Run finished: {DIGITS_TOTAL_STEPS} steps in {uninterrupted_digits}."
    assert head in log
    summary = log[log.index(head) :].splitlines()[1:6]
    evals = {
        r["step"]: r["eval/accuracy"]
        for r in metrics_lib.read_metrics(str(uninterrupted_digits))
        if "eval/accuracy" in r
    }
    best = max(evals, key=lambda s: (evals[s], -s))
    assert summary[0] == (
        f"  eval top-1: final {100 * evals[88]:.2f}% at step 88,"
        f" best {100 * evals[best]:.2f}% at step {best}"
    )
    assert summary[1].startswith(f"  this session: steps 0-{DIGITS_TOTAL_STEPS} in ")
    assert " wall time; " in summary[1] and " images/s in the training loop" in summary[1]
    assert summary[2] == (
        "  workdir: checkpoints/ (steps 44, 70, 80, 88), metrics.jsonl, config.json, TensorBoard"
        f" events (tensorboard --logdir {uninterrupted_digits})"
    )
    assert (
        summary[3] == f"  evaluate it: python -m prs_jax.evaluate --workdir {uninterrupted_digits}"
    )
    assert summary[4] == (
        f"  its Fourier spectra: python -m prs_jax.fourier --workdir {uninterrupted_digits}"
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs at tmp_path/disk; None where mounting is not allowed (not root, or a
    container without CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mount = ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)]
        mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
    except FileNotFoundError:  # no mount command
        mounted = False
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


@pytest.mark.xdist_group("digits_run")  # one worker trains the shared run
@pytest.mark.slow  # training processes of prs_jax.main; -m 'not slow' skips it
@pytest.mark.parametrize("fault", ["full_disk", "injected"])
def test_a_failed_save_stops_with_one_line_and_the_rerun_resumes_bit_identically(
    tmp_path, small_disk, uninterrupted_digits, fault
):
    """The checkpoint of step 20 (the second) meets a full disk: on a small filesystem filled
    just before that save, or, where none can be mounted, with ENOSPC injected into the writes
    of that checkpoint (tests/support/interrupting_main.py). Exactly one variant runs."""
    if fault == "full_disk":
        if small_disk is None:
            pytest.skip("mounting a small filesystem is not allowed here; 'injected' runs instead")
        workdir, filler = small_disk / "run", small_disk / "filler"
        how = ["--fill_disk_before_save=20", f"--filler={filler}"]
    else:
        if small_disk is not None:
            pytest.skip("a small filesystem could be mounted: 'full_disk' covers this")
        workdir, filler = tmp_path / "run", None
        how = ["--fault_before_save=20"]

    failed = run_main(workdir, *how, module="tests.support.interrupting_main")
    assert_one_line_error(
        failed,
        f"the checkpoint of step 20 could not be written to {workdir}/checkpoints (ENOSPC: No"
        " space left on device); training stopped and the checkpoint of step 10 is intact. Free"
        " space or restore write access, then rerun the same command to resume from step 10",
    )
    assert saved_steps(workdir) == [10]
    assert int(saved_state(workdir, 10)["step"]) == 10  # the previous checkpoint restores
    # orbax's unfinished folder of step 20 is left behind...
    assert any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())

    if filler is not None:
        filler.unlink()  # the user frees space
    resumed = run_main(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {workdir} at step 10." in resumed.stderr
    # ...and removed when the run starts again.
    assert all(p.name.isdigit() for p in (workdir / "checkpoints").iterdir())
    final = saved_state(workdir, DIGITS_TOTAL_STEPS)
    assert_same_state(final, saved_state(uninterrupted_digits, DIGITS_TOTAL_STEPS))


@pytest.mark.slow  # a training process of prs_jax.main; -m 'not slow' skips it
def test_library_log_level_info_brings_the_library_lines_back(tmp_path):
    # One epoch is enough: the manager's lines come with the first checkpoint save.
    one_epoch = [
        "--config.num_epochs=1",
        "--config.eval_every_epochs=1",
        "--config.schedule.first_layer_switch_epoch=0.5",
    ]
    result = run_main(tmp_path / "run", *one_epoch, "--library_log_level=info")
    assert result.returncode == 0, result.stderr[-3000:]
    assert " checkpoint_manager.py:" in result.stderr


def test_a_bad_config_prints_its_message_alone_and_exits_2(tmp_path):
    result = run_main(tmp_path / "run", "--config.model.patch_size=3")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("prs_jax.main: ") and "model.patch_size=3" in last_line
    assert not (tmp_path / "run" / "checkpoints").exists()
