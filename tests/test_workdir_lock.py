"""One training run per workdir (prs_jax/training/workdir_lock.py).

The holders here are small processes that take the lock and wait; the end-to-end case (a
second prs_jax.main refused while the first trains) is in test_reliability.py.
"""

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from prs_jax import evaluate
from prs_jax.training import train, workdir_lock
from tests.support.mocked_run import copy_of_run, mocked_cifar100, tiny_run_config

REPO = pathlib.Path(__file__).resolve().parents[1]

HOLDER = """
import sys
from prs_jax.training import workdir_lock
with workdir_lock.hold(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


@pytest.fixture
def holder(tmp_path):
    """A process holding tmp_path's lock; it ends when its stdin is closed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "held\n"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_run_is_refused_with_the_holders_host_and_pid(tmp_path, holder):
    with pytest.raises(workdir_lock.WorkdirInUseError) as refused, workdir_lock.hold(str(tmp_path)):
        pytest.fail("the lock was given twice")
    message = str(refused.value)
    assert f"workdir {tmp_path} is in use by the run of pid {holder.pid}" in message
    assert f"on host {socket.gethostname()}" in message
    assert "another --workdir" in message and "\n" not in message


def test_the_quick_look_before_the_imports_refuses_only_a_held_workdir(tmp_path, holder):
    with pytest.raises(workdir_lock.WorkdirInUseError, match=f"pid {holder.pid}"):
        workdir_lock.raise_if_held(str(tmp_path))
    holder.stdin.close()
    holder.wait(timeout=60)
    workdir_lock.raise_if_held(str(tmp_path))  # free now
    workdir_lock.raise_if_held(str(tmp_path / "new"))  # no workdir yet: nothing to look at
    assert not (tmp_path / "new").exists()


def test_a_clean_exit_releases_the_lock_and_leaves_no_holder(tmp_path, holder, caplog):
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0
    assert workdir_lock.read_holder(str(tmp_path)) is None
    with caplog.at_level(logging.WARNING), workdir_lock.hold(str(tmp_path)):
        assert workdir_lock.read_holder(str(tmp_path))["pid"] == os.getpid()
    assert "Took over" not in caplog.text


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path, holder, caplog):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    left = workdir_lock.read_holder(str(tmp_path))
    assert left["pid"] == holder.pid  # the dead holder's record is still there
    with caplog.at_level(logging.WARNING), workdir_lock.hold(str(tmp_path)):
        record = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert f"Took over the lock of {tmp_path} from pid {holder.pid}" in caplog.text


def test_one_process_cannot_hold_a_workdir_twice(tmp_path):
    twice = pytest.raises(workdir_lock.WorkdirInUseError, match=f"pid {os.getpid()}")
    with workdir_lock.hold(str(tmp_path)), twice, workdir_lock.hold(str(tmp_path)):
        pass
    with workdir_lock.hold(str(tmp_path)):  # released on leaving the block
        pass


def test_a_gs_workdir_holds_no_lock_and_says_so(caplog):
    with caplog.at_level(logging.WARNING), workdir_lock.hold("gs://bucket/run"):
        pass
    assert "No lock is held on gs://bucket/run" in caplog.text


def test_only_process_0_locks_and_the_others_stop_when_it_is_refused(tmp_path, monkeypatch):
    from jax.experimental import multihost_utils

    # Process 0's outcome as the broadcast would bring it to another process.
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda flag: 0)
    with workdir_lock.hold(str(tmp_path), chief=False, process_count=2):
        assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # process 0's to take
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda flag: 1)
    refused = pytest.raises(workdir_lock.WorkdirInUseError, match="process 0 found its lock")
    with refused, workdir_lock.hold(str(tmp_path), chief=False, process_count=2):
        pytest.fail("a follower of a refused run went on")


def test_a_run_on_a_held_workdir_is_refused_before_reading_any_data(tmp_path):
    config = tiny_run_config()
    config.data.name = "no_such_dataset_xyz"  # reading the data would fail differently
    with workdir_lock.hold(str(tmp_path)), pytest.raises(workdir_lock.WorkdirInUseError):
        train.train_and_evaluate(config, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lock.LOCK_FILE]


@pytest.mark.xdist_group("mocked_run")  # one worker trains the shared run
def test_evaluate_reads_a_workdir_while_its_run_holds_it(tmp_path, mocked_run):
    _, workdir, _ = copy_of_run(mocked_run, str(tmp_path / "run"))
    with workdir_lock.hold(workdir), mocked_cifar100():
        results = evaluate.evaluate_checkpoint(workdir)
    assert results["num_examples"] > 0
