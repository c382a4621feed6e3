"""Runs `prs_jax.main` with a signal sent to itself at a chosen moment, for crash tests.

  python -m tests.support.interrupting_main --signal KILL --at_step 37 --config ... --workdir ...
  python -m tests.support.interrupting_main --signal KILL --during_save 30 ...

--at_step N: the signal arrives while train step N runs (after its batch was read).
--during_save N: SIGKILL right after the checkpoint of step N was handed to orbax's
asynchronous writer, so the process dies while that checkpoint is being written.

Also, for the tests of a full disk and of a second run on the same workdir:

--fill_disk_before_save N --filler PATH: just before the checkpoint of step N is saved, write
PATH until its filesystem is full (ENOSPC), so that the save meets a full disk.
--fault_before_save N: where no small filesystem can be mounted, the same failure injected:
every file orbax's writers open for step N's checkpoint raises ENOSPC.
--pause_at_step N --pause_dir DIR: during train step N, create DIR/paused and wait until
DIR/resume exists (the run holds its workdir meanwhile).
"""

import errno
import os
import pathlib
import signal
import sys
import time

from absl import flags
from etils import epath

from prs_jax import cli, main
from prs_jax.training import logs

flags.DEFINE_enum("signal", "KILL", ["KILL", "TERM"], "Signal to send to this process.")
flags.DEFINE_integer("at_step", 0, "Send the signal during this train step (1-based).")
flags.DEFINE_integer("during_save", 0, "SIGKILL while the checkpoint of this step is written.")
flags.DEFINE_integer("fill_disk_before_save", 0, "Fill --filler's disk before this step's save.")
flags.DEFINE_string("filler", None, "The file that fills the disk.")
flags.DEFINE_integer("fault_before_save", 0, "Writes of this step's checkpoint raise ENOSPC.")
flags.DEFINE_integer("pause_at_step", 0, "Wait in this train step for --pause_dir/resume.")
flags.DEFINE_string("pause_dir", None, "Where the paused and resume files are.")
FLAGS = flags.FLAGS


def fill_disk(path: str) -> None:
    """Write `path` until its filesystem has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def fail_writes_of_step(step: int) -> None:
    """Every epath write into step `step`'s unfinished checkpoint folder raises ENOSPC (the
    first thing orbax writes there is the data iterator's state, through epath)."""
    write_text = epath.Path.write_text

    def failing_write_text(self, *args, **kwargs):
        if f"/{step}.orbax-checkpoint-tmp" in os.fspath(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
        return write_text(self, *args, **kwargs)

    epath.Path.write_text = failing_write_text


def install_interruptions(checkpointing, train) -> None:
    signum = getattr(signal, f"SIG{FLAGS.signal}")
    to_global, save = train.to_global, checkpointing.save
    train_batches = []

    def to_global_then_signal(batch, sharding):
        if "mask" not in batch:  # a train batch
            train_batches.append(1)
            if len(train_batches) == FLAGS.at_step:
                os.kill(os.getpid(), signum)
            if len(train_batches) == FLAGS.pause_at_step:
                pause_dir = pathlib.Path(FLAGS.pause_dir)
                (pause_dir / "paused").touch()
                while not (pause_dir / "resume").exists():
                    time.sleep(0.1)
        return to_global(batch, sharding)

    def save_then_kill(manager, step, *args, **kwargs):
        if step == FLAGS.fill_disk_before_save and manager.should_save(step):
            fill_disk(FLAGS.filler)
        if step == FLAGS.fault_before_save:
            fail_writes_of_step(step)
        started = save(manager, step, *args, **kwargs)
        if started and step == FLAGS.during_save:
            os.kill(os.getpid(), signal.SIGKILL)
        return started

    train.to_global = to_global_then_signal
    checkpointing.save = save_then_kill


def run(argv):
    # Imported here, with TensorFlow's start-up notices dropped as prs_jax.main drops them, so
    # that this process's log is prs_jax.main's.
    with logs.native_start_up_noise_dropped(FLAGS.library_log_level):
        from prs_jax.training import checkpointing, train
    install_interruptions(checkpointing, train)
    main.main(argv)


if __name__ == "__main__":
    sys.exit(cli.run_absl(run, "prs_jax.main"))
