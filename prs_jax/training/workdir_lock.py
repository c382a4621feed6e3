"""One training run per workdir: the lock a run holds on its workdir for its whole life.

On a local (or NFS) workdir the lock is an OS file lock (`fcntl.flock`) on WORKDIR/lock.json,
which records the holder's host, pid and start time. A second run on the same workdir is
refused at once, with a WorkdirInUseError naming the holder. The OS releases the lock when its
process ends, however it ends (SIGKILL, a crash), so a lock file that still names a holder but
is no longer locked was left by a process that no longer exists: the next run takes it over
with a warning. A run that ends normally empties the file. The file is never deleted: a run
that deletes it while another waits to open it would let a third lock a new file beside them.

Read-only commands (evaluate, fourier, report, convert) take no lock. With several processes
(multi-host) process 0 holds the lock, and all processes stop together when it is refused.

Cloud Storage (gs://) has no file locks, so no lock is held there: the run says so in a
warning, and keeping one run per gs:// workdir is up to the user (or the launch scripts, which
start one job per VM name).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from absl import logging

from prs_jax.errors import UserError

LOCK_FILE = "lock.json"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_ATTEMPTS = 5


class WorkdirInUseError(UserError):
    """Another run holds the workdir's lock."""


def describe(holder: dict[str, Any] | None) -> str:
    """'pid 123 on host h (started 2026-01-01 10:00:00)' for a lock record; its fields may be
    missing in a record written by hand or cut short."""
    if not holder:
        return "another run (its lock file names no holder)"
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        f" (started {holder.get('started', '?')})"
    )


def read_holder(workdir: str) -> dict[str, Any] | None:
    """The record of the lock file in `workdir`: the last holder; None when empty or absent."""
    try:
        with open(os.path.join(workdir, LOCK_FILE), encoding="utf-8") as file:
            return _parse(file.read())
    except FileNotFoundError:
        return None


def _parse(text: str) -> dict[str, Any] | None:
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}  # a record cut short: someone held it, we cannot say who
    return record if isinstance(record, dict) else {}


def _read_fd(fd: int) -> dict[str, Any] | None:
    return _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))


def raise_if_held(workdir: str) -> None:
    """WorkdirInUseError if a run holds `workdir` now; creates nothing. A quick look for the
    commands to take before their slow imports (hold() still decides, under the lock)."""
    path = os.path.join(workdir, LOCK_FILE)
    if "://" in workdir or not os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # unreadable here: hold() will say what is wrong
    try:
        if _lock(fd, workdir, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(workdir: str, *, chief: bool = True, process_count: int = 1) -> Iterator[None]:
    """Hold `workdir`'s lock while the block runs; WorkdirInUseError at once if another run
    holds it. `chief`: this process takes the lock (process 0); with `process_count` > 1 every
    process learns process 0's outcome and all raise together."""
    with contextlib.ExitStack() as stack:
        refused = None
        if chief:
            try:
                stack.enter_context(_hold_local(workdir))
            except WorkdirInUseError as error:
                refused = error
        if process_count > 1:
            refused = _agree(refused, workdir)
        if refused is not None:
            raise refused
        yield


def _agree(refused: WorkdirInUseError | None, workdir: str) -> WorkdirInUseError | None:
    """Process 0's outcome on every process: the other processes of a refused run must stop
    too, instead of waiting for process 0 in their first collective."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    flag = multihost_utils.broadcast_one_to_all(np.int32(refused is not None))
    if refused is None and int(flag):
        refused = WorkdirInUseError(
            f"workdir {workdir} is in use by another run (process 0 found its lock); wait for"
            " that run to finish or stop it, or give this run another --workdir"
        )
    return refused


def _lock(fd: int, workdir: str, mode: int = fcntl.LOCK_EX) -> bool:
    """Lock `fd` without waiting: True if locked, False if the filesystem has no locks;
    WorkdirInUseError if another process holds it."""
    for attempt in range(_ATTEMPTS):
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < _ATTEMPTS:
                time.sleep(0.05)  # raise_if_held's shared lock lasts microseconds; a run's, hours
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                raise
            return False
    raise WorkdirInUseError(
        f"workdir {workdir} is in use by the run of {describe(_read_fd(fd))}; wait for it"
        " to finish or stop it, or give this run another --workdir"
    )


@contextlib.contextmanager
def _hold_local(workdir: str) -> Iterator[None]:
    if "://" in workdir:
        logging.warning(
            "No lock is held on %s: object stores (gs://) have no file locks. Make sure no"
            " other run uses this workdir: two runs in one workdir overwrite each other's"
            " checkpoints and metrics.",
            workdir,
        )
        yield
        return
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock(fd, workdir):
            logging.warning(
                "No lock is held on %s: its filesystem has no file locks. Make sure no other"
                " run uses this workdir.",
                workdir,
            )
            yield
            return
        previous = _read_fd(fd)
        if previous is not None:
            logging.warning(
                "Took over the lock of %s from %s, which no longer holds it (it was killed, or"
                " its host went down); this run goes on from the workdir's latest checkpoint.",
                workdir,
                describe(previous),
            )
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as error:
            raise UserError(
                f"cannot write the lock file {path} ({error.strerror}); free space or restore"
                " write access to the workdir, then rerun"
            ) from None
        try:
            yield
        finally:
            # Emptied, not deleted (see the module docstring): the next run starts silently.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the file releases the lock
