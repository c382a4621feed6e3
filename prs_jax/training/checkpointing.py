"""Orbax checkpoints of a run: train state, input-iterator state and the resolved config.

Checkpoints are saved every `checkpoint_every_steps` and at every layer switch of the PRS
schedule. The latest `keep_checkpoints` are kept; the layer-switch ones are kept for good, for
the Fourier analysis of the model at each stage.

A save that fails (a full disk, a lost permission), at once or in orbax's background writer,
raises CheckpointSaveError naming the step and the cause. orbax writes each step into a
temporary folder and renames it when complete, and deletes older checkpoints only after that,
so the previous checkpoint stays whole; the temporary folder is removed when the run restarts
(`cleanup_tmp_directories`).
"""

from __future__ import annotations

import errno
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation
from orbax.checkpoint.checkpoint_managers import save_decision_policy as save_decision

from prs_jax import data
from prs_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"


class NoCheckpointError(UserError, FileNotFoundError):
    """The workdir has no checkpoint: not a training run's workdir, or one that saved none."""


class MissingStepError(UserError, ValueError):
    """The workdir has checkpoints, but none at the step asked for."""


class CheckpointSaveError(UserError):
    """A checkpoint could not be written; the message names the step, the cause, the checkpoint
    that is intact and how to resume."""


def read_only_options() -> ocp.CheckpointManagerOptions:
    """Options of a manager that only restores: with what read_only implies stated, so that orbax
    does not warn that it set them (two of its three read-only warnings per manager)."""
    return ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)


def _no_checkpoint(workdir: str) -> NoCheckpointError:
    if not epath.Path(workdir).exists():
        return NoCheckpointError(
            f"workdir {workdir} does not exist: give the --workdir of a training run"
        )
    return NoCheckpointError(
        f"no checkpoint in {workdir}/{CHECKPOINT_DIR}: give the --workdir of a training run"
        " that has saved one (python -m prs_jax.main --workdir DIR writes DIR/checkpoints)"
    )


def checkpoint_dir(workdir: str) -> epath.Path:
    """WORKDIR/checkpoints, absolute; works for local paths and gs:// alike."""
    path = epath.Path(workdir)
    if not str(workdir).startswith(("gs://", "s3://")):
        path = path.absolute()  # orbax wants absolute local paths
    return path / CHECKPOINT_DIR


def create_checkpoint_manager(
    workdir: str,
    *,
    checkpoint_every_steps: int,
    keep_checkpoints: int,
    keep_steps: Iterable[int] = (),
    save_steps: Iterable[int] = (),
) -> ocp.CheckpointManager:
    """A manager saving every N steps and at `save_steps`; keeps the latest K and `keep_steps`."""
    keep_steps, save_steps = sorted(set(keep_steps)), sorted(set(save_steps) | set(keep_steps))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_decision.AnySavePolicy(
            [
                save_decision.FixedIntervalPolicy(checkpoint_every_steps),
                save_decision.SpecificStepsPolicy(save_steps),
                # A TPU maintenance notice reaches JAX's preemption sync point (multi-host runs
                # with jax.distributed); without that service this never fires.
                save_decision.PreemptionCheckpointingPolicy(),
            ]
        ),
        preservation_policy=preservation.AnyPreservationPolicy(
            [preservation.LatestN(keep_checkpoints), preservation.CustomSteps(keep_steps)]
        ),
        # Unfinished writes of a killed run are left as tmp folders: clean them on start.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=options,
        item_names=("state", "data", "config"),
    )


# The step of each manager's newest save, to name it when its background write fails later.
_saving: weakref.WeakKeyDictionary[ocp.CheckpointManager, int] = weakref.WeakKeyDictionary()


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: Any,
    config: ml_collections.ConfigDict,
    *,
    force: bool = False,
) -> bool:
    """Save (if the policy asks for this step, or `force`); returns whether a save started.

    Called at every step: it also reports, without waiting, a failure of the previous save's
    background write. Either failure raises CheckpointSaveError.
    """
    pending = _saving.get(manager)
    try:
        manager.check_for_errors()  # non-blocking: the background write's error, if it failed
        if not (force or manager.should_save(step)):
            return False
        manager.wait_until_finished()  # the previous save first, so a failure names its step
    except Exception as error:  # orbax and tensorstore raise many kinds; all mean "not written"
        raise save_error(manager, step if pending is None else pending, error) from error
    try:
        started = manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                config=ocp.args.JsonSave(config.to_dict()),
            ),
            force=force,
        )
    except Exception as error:
        raise save_error(manager, step, error) from error
    if started:
        _saving[manager] = step
    return started


def finish(manager: ocp.CheckpointManager) -> None:
    """Wait for the last save to be written and close the manager; CheckpointSaveError if it
    failed."""
    try:
        manager.wait_until_finished()
    except Exception as error:
        raise save_error(manager, _saving.get(manager, -1), error) from error
    manager.close()


def close_after_error(manager: ocp.CheckpointManager) -> None:
    """Close the manager of a run that is stopping on an error, without raising: a second
    failure (the same full disk) must not hide the first error."""
    try:
        manager.close()
    except Exception as error:  # already failing: log it, keep the first error
        logging.warning("Closing the checkpoint manager also failed: %s", error_cause(error))
    # The save that failed leaves an orbax coroutine unawaited; Python would warn at exit.
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)


def error_cause(error: BaseException) -> str:
    """The root cause of a failed write in a few words: the OS error where one is in the chain
    ('No space left on device', 'Permission denied'), else the first line of the message."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return f"{errno.errorcode.get(seen.errno, seen.errno)}: {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    # tensorstore folds the OS error into its message ("RESOURCE_EXHAUSTED: ... [OS error: No
    # space left on device]").
    for known in ("No space left on device", "Permission denied", "Read-only file system"):
        if known in text:
            return known
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:200]


def save_error(
    manager: ocp.CheckpointManager, step: int, error: BaseException
) -> CheckpointSaveError:
    """The CheckpointSaveError of a failed save of `step`: the cause, the newest checkpoint that
    is intact, and how to resume."""
    intact = [s for s in _committed_steps(manager.directory) if s < step or step < 0]
    if intact:
        kept = f"the checkpoint of step {intact[-1]} is intact"
        resume = f"rerun the same command to resume from step {intact[-1]}"
    else:
        kept = "there is no earlier checkpoint"
        resume = "rerun the same command to start again"
    what = f"the checkpoint of step {step}" if step >= 0 else "a checkpoint"
    return CheckpointSaveError(
        f"{what} could not be written to {manager.directory} ({error_cause(error)}); training"
        f" stopped and {kept}. Free space or restore write access, then {resume}"
    )


def _committed_steps(directory: epath.Path) -> list[int]:
    """Steps of the complete checkpoints in `directory` (orbax's unfinished ones have a suffix)."""
    if not directory.is_dir():
        return []
    return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit())


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any
) -> tuple[Any, int] | None:
    """Restore the newest readable checkpoint into (state, step), the iterator in place.

    A checkpoint that fails to restore (truncated or missing files: a crash or a disk fault after
    orbax committed it) is renamed to `<step>.unreadable`, kept for inspection, and the next
    older one is tried, with a warning naming both steps. None if the workdir has no checkpoint.
    """
    unreadable = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ),
            )
        except Exception as error:  # orbax and tensorstore raise many kinds; all mean unusable
            logging.warning("Checkpoint at step %d cannot be restored: %s", step, error)
            unreadable.append(step)
            continue
        if unreadable:
            _set_aside(manager, unreadable)
            logging.warning(
                "The latest checkpoint (step %d) is incomplete or corrupted; resumed from the"
                " checkpoint at step %d instead. Set aside as %s.",
                unreadable[0],
                step,
                ", ".join(f"{s}.unreadable" for s in unreadable),
            )
        return restored.state, step
    if unreadable:
        raise RuntimeError(
            f"no checkpoint in {manager.directory} can be restored (steps {unreadable}); move the"
            " checkpoints folder aside to start afresh"
        )
    return None


def _set_aside(manager: ocp.CheckpointManager, steps: Iterable[int]) -> None:
    """Rename unreadable step folders so that new saves at those steps do not collide."""
    if jax.process_index() == 0:
        for step in steps:
            path = manager.directory / str(step)  # an etils.epath.Path: local or gs://
            path.rename(path.parent / f"{step}.unreadable")
    manager.reload()


def latest_config(manager: ocp.CheckpointManager) -> dict[str, Any] | None:
    """The config saved with the newest checkpoint that has a readable one; None if none."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            ).config
        except Exception as error:  # an unreadable checkpoint: restore_latest reports it
            logging.warning("No readable config in the checkpoint at step %d: %s", step, error)
    return None


def restore_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
    """The resolved config saved with a run's checkpoint (the latest one by default).

    Its `data` section is laid over today's data defaults, so a run saved before a data field
    existed still loads (each default keeps the earlier behaviour).
    """
    step = checkpoint_step(workdir, step)  # a clear error for a workdir without it
    with ocp.CheckpointManager(
        checkpoint_dir(workdir),
        item_names=("state", "data", "config"),
        options=read_only_options(),
    ) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    config = ml_collections.ConfigDict(restored.config)
    if "data" in config:
        saved_data, config.data = config.data, data.default_data_config()
        config.data.update(saved_data)
    return config


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs with `sharding`, to restore arrays directly onto the mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def restore_variables(
    workdir: str, model: nn.Module, image_size: int, step: int
) -> tuple[dict[str, Any], int]:
    """({'params', 'batch_stats'?}, step) from a run's checkpoint; optimizer state is not read.

    An orbax partial restore of the 'state' item (saved by save() as a StandardSave of
    train.TrainState) onto one device.
    """
    abstract = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, image_size, image_size, 3), jnp.float32),
            jnp.ones((model.num_gpsa_layers,), jnp.float32),
            train=False,
        )
    )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract["params"],
        "batch_stats": abstract.get("batch_stats", {}),
    }
    item = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), item)
    with ocp.CheckpointManager(
        checkpoint_dir(workdir),
        item_names=("state",),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
        options=read_only_options(),
    ) as manager:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                )
            ),
        ).state
    variables = {"params": restored["params"]}
    if restored["batch_stats"]:
        variables["batch_stats"] = restored["batch_stats"]
    return variables, int(restored["step"])


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the run's readable checkpoints (folders named by a number), ascending."""
    return _committed_steps(checkpoint_dir(workdir))  # local or gs://


def checkpoint_step(workdir: str, step: int | None = None) -> int:
    """`step` if the run has a checkpoint there, else an error listing those it has; the
    latest checkpoint's step when `step` is None."""
    steps = checkpoint_steps(workdir)
    if not steps:
        raise _no_checkpoint(workdir)
    step = steps[-1] if step is None else step
    if step not in steps:
        raise MissingStepError(
            f"no checkpoint at step {step} in {workdir}; there are {steps}: give one of them"
        )
    return step
