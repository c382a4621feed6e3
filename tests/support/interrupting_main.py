"""Runs `prs_jax.main` with a signal sent to itself at a chosen moment, for crash tests.

  python -m tests.support.interrupting_main --signal KILL --at_step 37 --config ... --workdir ...
  python -m tests.support.interrupting_main --signal KILL --during_save 30 ...

--at_step N: the signal arrives while train step N runs (after its batch was read).
--during_save N: SIGKILL right after the checkpoint of step N was handed to orbax's
asynchronous writer, so the process dies while that checkpoint is being written.
"""

import os
import signal
import sys

from absl import app, flags

from prs_jax import main
from prs_jax.training import checkpointing, train

flags.DEFINE_enum("signal", "KILL", ["KILL", "TERM"], "Signal to send to this process.")
flags.DEFINE_integer("at_step", 0, "Send the signal during this train step (1-based).")
flags.DEFINE_integer("during_save", 0, "SIGKILL while the checkpoint of this step is written.")
FLAGS = flags.FLAGS


def install_interruptions() -> None:
    signum = getattr(signal, f"SIG{FLAGS.signal}")
    to_global, save = train.to_global, checkpointing.save
    train_batches = []

    def to_global_then_signal(batch, sharding):
        if "mask" not in batch:  # a train batch
            train_batches.append(1)
            if len(train_batches) == FLAGS.at_step:
                os.kill(os.getpid(), signum)
        return to_global(batch, sharding)

    def save_then_kill(manager, step, *args, **kwargs):
        started = save(manager, step, *args, **kwargs)
        if started and step == FLAGS.during_save:
            os.kill(os.getpid(), signal.SIGKILL)
        return started

    train.to_global = to_global_then_signal
    checkpointing.save = save_then_kill


def run(argv):
    install_interruptions()
    main.main(argv)


if __name__ == "__main__":
    sys.exit(app.run(run))
