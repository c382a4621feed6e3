"""The lines a run ends with: how it did, how fast, what it wrote, and what to run next.

Read from the workdir itself (metrics.jsonl, the checkpoint folders), so a run resumed several
times reports its whole record, not only the last session's.
"""

from __future__ import annotations

import dataclasses
import shlex

from etils import epath

from prs_jax.training import checkpointing, metrics


@dataclasses.dataclass(frozen=True)
class Session:
    """What this process did: the steps it trained and how long it took."""

    first_step: int  # the step it started from (0, or the resumed checkpoint's)
    last_step: int  # the step it stopped at
    total_steps: int  # the run's length
    batch_size: int  # global, images per step
    wall_seconds: float  # from the start of train_and_evaluate to the end
    loop_seconds: float  # the training loop alone: steps, evals, checkpoints


def duration(seconds: float) -> str:
    """'42.0 s', '3 min 05 s', '2 h 01 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def eval_accuracies(workdir: str) -> dict[int, float]:
    """{step: eval top-1} from metrics.jsonl; a step evaluated twice (a resumed run redoes the
    steps after its checkpoint) keeps its last value."""
    try:
        records = metrics.read_metrics(workdir)
    except FileNotFoundError:
        return {}
    return {r["step"]: r["eval/accuracy"] for r in records if "eval/accuracy" in r}


def summary_lines(workdir: str, session: Session) -> list[str]:
    """The end-of-run summary of `workdir`, one item per line."""
    if session.last_step < session.total_steps:  # SIGTERM or a preemption notice
        head = (
            f"Run stopped at step {session.last_step} of {session.total_steps} in {workdir};"
            " the same command resumes it."
        )
    else:
        head = f"Run finished: {session.total_steps} steps in {workdir}."
    lines = [head]

    accuracies = eval_accuracies(workdir)
    if accuracies:
        final_step = max(accuracies)
        best_step = max(accuracies, key=lambda s: (accuracies[s], -s))  # the earliest best
        lines.append(
            f"  eval top-1: final {100 * accuracies[final_step]:.2f}% at step {final_step},"
            f" best {100 * accuracies[best_step]:.2f}% at step {best_step}"
        )
    else:
        lines.append("  eval top-1: no evaluation yet")

    trained = session.last_step - session.first_step
    rate = trained * session.batch_size / session.loop_seconds if session.loop_seconds else 0.0
    lines.append(
        f"  this session: steps {session.first_step}-{session.last_step} in"
        f" {duration(session.wall_seconds)} wall time; {rate:.1f} images/s in the training loop"
        " (evals and checkpoints included)"
    )

    root = epath.Path(workdir)
    steps = checkpointing.checkpoint_steps(workdir)
    saved = f"steps {', '.join(map(str, steps))}" if steps else "none"
    written = [f"{checkpointing.CHECKPOINT_DIR}/ ({saved})"]
    written += [
        name for name in (metrics.METRICS_FILENAME, "config.json") if (root / name).exists()
    ]
    if any(root.glob("events.out.tfevents.*")):
        written.append("TensorBoard events (tensorboard --logdir " + shlex.quote(workdir) + ")")
    lines.append("  workdir: " + ", ".join(written))

    quoted = shlex.quote(workdir)
    lines.append(f"  evaluate it: python -m prs_jax.evaluate --workdir {quoted}")
    lines.append(f"  its Fourier spectra: python -m prs_jax.fourier --workdir {quoted}")
    return lines
