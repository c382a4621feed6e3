"""train_and_evaluate(config, workdir): the PRS training loop, top to bottom.

Sections: mesh -> data -> model and schedules -> steps -> state (resume, else init) -> loop
(train step, logs, evals, checkpoints) -> exit. Data parallelism is one `jax.jit` over a 1-D
("data",) mesh: the batch is sharded on "data", parameters and optimizer state are replicated,
and the train state is donated. This is the SPMD program that `pmap` used to express.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import threading
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview, periodic_actions
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prs_jax import data
from prs_jax.analysis import spectra
from prs_jax.method import schedule
from prs_jax.training import (
    checkpointing,
    completion,
    metrics,
    run_summary,
    validation,
    workdir_lock,
)
from prs_jax.training.state import TrainState, create_mesh, create_model, init_from_weights
from prs_jax.training.steps import build_run_functions, evaluate, summarise, to_global


class _PreemptionFlag:
    """Set by SIGTERM; the loop then saves a checkpoint at the current step and exits."""

    def __init__(self, install: bool = True) -> None:
        self.requested = False
        # Python delivers signals to the main thread only; elsewhere (a notebook's worker
        # thread) the default SIGTERM behaviour stays.
        self._installed = install and threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint and exiting.")
        self.requested = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Train and evaluate the model of `config`, writing checkpoints and metrics to `workdir`.

    The run holds the workdir's lock throughout (workdir_lock): a second run on the same
    workdir raises WorkdirInUseError before reading any data or compiling.
    """
    started = time.monotonic()
    # Fail in seconds, before any data or compile, on a config or workdir the run cannot use.
    validation.check_workdir(workdir)
    validation.validate_config(config, device_count=jax.device_count())
    with workdir_lock.hold(
        workdir, chief=jax.process_index() == 0, process_count=jax.process_count()
    ):
        return _train_and_evaluate(config, workdir, started)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, started: float
) -> TrainState:
    is_chief = jax.process_index() == 0

    # Mesh: one data-parallel axis over every device of every host.
    mesh = create_mesh()
    data_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    # Data: deterministic, resumable, each process reads its own shard of every batch.
    info = data.dataset_info(config.data)
    steps = schedule.training_steps(
        info.num_train_examples,
        config.batch_size,
        config.num_epochs,
        config.optimizer.warmup_epochs,
    )
    train_iter = data.create_train_iterator(
        config.data,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    eval_batches = functools.partial(
        data.create_eval_iterator,
        config.data,
        global_batch_size=config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    # Model, the two schedules (conv strength per GPSA layer, learning rate) and the steps.
    model = create_model(config, info.num_classes)
    run = build_run_functions(config, model, info.num_classes, steps, mesh)
    conv_strength_fn, train_step, eval_step = run.conv_strength_fn, run.train_step, run.eval_step

    spectra_step = jax.jit(
        spectra.make_spectra_step(model, conv_strength_fn),
        in_shardings=(replicated, data_sharding),
        out_shardings=replicated,
    )

    # State: resume from the workdir's latest checkpoint, else initialise from the seed, then
    # take converted weights if config.init_from names a file.
    switch_steps = schedule.layer_switch_steps(
        conv_strength_fn, steps.total_steps, model.num_gpsa_layers
    )
    manager = checkpointing.create_checkpoint_manager(
        workdir,
        checkpoint_every_steps=config.checkpoint_every_steps,
        keep_checkpoints=config.keep_checkpoints,
        keep_steps=switch_steps,
        save_steps=[steps.total_steps],
    )
    saved_config = checkpointing.latest_config(manager)
    if saved_config is not None:
        for change in validation.check_resume(saved_config, config.to_dict(), workdir):
            logging.info("Resuming with a changed config: %s", change)
    abstract_state = checkpointing.abstract_like(jax.eval_shape(run.init), replicated)
    restored = checkpointing.restore_latest(manager, abstract_state, train_iter)
    if restored is not None:
        state, initial_step = restored
        logging.info("Resumed from %s at step %d.", workdir, initial_step)
    else:
        state, initial_step = run.init(), 0
        logging.info("Initialised a new run in %s.", workdir)
        if config.get("init_from") and config.init_from.path:
            state = init_from_weights(state, config.init_from, run.tx, replicated)
            logging.info("Weights from %s.", config.init_from.path)

    writer = metrics.create_writer(workdir)
    if is_chief:
        # epath: a local path or gs:// (a multi-host TPU slice's workdir).
        (epath.Path(workdir) / "config.json").write_text(
            json.dumps(config.to_dict(), indent=2, sort_keys=True)
        )
        # The examples a train_fraction < 1 run trains on (indices into data.train_split).
        ids_path = data.save_train_example_ids(config.data, workdir)
        if ids_path:
            logging.info(
                "Training on %d examples of %s (train_fraction=%s); their ids are in %s.",
                info.num_train_examples,
                config.data.train_split,
                config.data.train_fraction,
                ids_path,
            )
        if initial_step == 0:
            writer.write_hparams(validation.flatten(config.to_dict()))
    parameter_overview.log_parameter_overview(state.params)
    logging.info(
        "%s: %d steps (%d per epoch, %d warmup); layer switches at steps %s; %s.",
        type(model).__name__,
        steps.total_steps,
        steps.steps_per_epoch,
        steps.warmup_steps,
        switch_steps,
        run.learning_rate_note,
    )

    # Loop.
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=steps.total_steps, writer=writer
    )
    eval_every_steps = max(1, round(config.eval_every_epochs * steps.steps_per_epoch))
    # 0: off. Otherwise the high-frequency value per block on the first eval batch (Park & Kim).
    fourier_every_epochs = config.get("fourier_every_epochs", 0.0)
    fourier_every_steps = (
        max(1, round(fourier_every_epochs * steps.steps_per_epoch)) if fourier_every_epochs else 0
    )
    # One process: our SIGTERM flag. Several: every process must stop at the same step, so leave
    # SIGTERM to JAX's preemption service (started by jax.distributed.initialize), which agrees
    # on a step across processes that manager.reached_preemption(step) then reports to each.
    preemption = _PreemptionFlag(install=jax.process_count() == 1)
    pending_metrics: list[dict[str, jax.Array]] = []
    last_logged_step = step = initial_step
    preempted = False
    loop_started = time.monotonic()
    try:
        while step < steps.total_steps:
            batch = to_global(next(train_iter), data_sharding)
            state, step_metrics = train_step(state, batch)
            step += 1
            pending_metrics.append(step_metrics)
            report_progress(step)
            preempted = preemption.requested or manager.reached_preemption(step)

            if step % config.log_every_steps == 0 or step == steps.total_steps:
                summary = summarise(pending_metrics)
                check_finite(summary, last_logged_step + 1, step)
                writer.write_scalars(step, summary)
                pending_metrics, last_logged_step = [], step
            elif preempted or manager.should_save(step):
                # Never let a non-finite state reach a checkpoint, even between log steps.
                check_finite(summarise(pending_metrics), last_logged_step + 1, step)

            if step % eval_every_steps == 0 or step == steps.total_steps:
                with report_progress.timed("eval"):
                    results = evaluate(eval_step, state, eval_batches(), data_sharding)
                writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
                logging.info(
                    "Step %d: eval top-1 %.4f, top-5 %.4f, loss %.4f on %d examples.",
                    step,
                    results["accuracy"],
                    results["top5_accuracy"],
                    results["loss"],
                    results["num_examples"],
                )

            if fourier_every_steps and (
                step % fourier_every_steps == 0 or step == steps.total_steps
            ):
                with report_progress.timed("fourier"):
                    batch = to_global(next(iter(eval_batches())), data_sharding)
                    high_frequency = spectra.high_frequency_scalars(
                        spectra_step(state, batch), model.feature_map_kinds()
                    )
                writer.write_scalars(step, high_frequency)

            with report_progress.timed("checkpoint"):
                # A failed save raises CheckpointSaveError; the previous checkpoint is intact.
                checkpointing.save(manager, step, state, train_iter, config, force=preempted)
            if preempted:
                logging.warning("Saved step %d after a preemption notice; exiting.", step)
                break
    except BaseException:
        # Stopping on an error: a second failure while closing (the same full disk) is logged,
        # never raised over the first.
        checkpointing.close_after_error(manager)
        with contextlib.suppress(Exception):
            writer.flush()
        raise
    else:
        checkpointing.finish(manager)  # CheckpointSaveError if the last save failed
        writer.flush()
    finally:
        preemption.restore()
    loop_seconds = time.monotonic() - loop_started
    if is_chief and step == steps.total_steps:
        completion.mark_finished(workdir, step, config.to_dict())
    if is_chief:
        session = run_summary.Session(
            first_step=initial_step,
            last_step=step,
            total_steps=steps.total_steps,
            batch_size=config.batch_size,
            wall_seconds=time.monotonic() - started,
            loop_seconds=loop_seconds,
        )
        logging.info("%s", "\n".join(run_summary.summary_lines(workdir, session)))
    return state


def check_finite(summary: Mapping[str, float], first_step: int, last_step: int) -> None:
    """Stop before a non-finite state can reach a checkpoint (big_vision's cheap finite check)."""
    bad = [
        name
        for name in ("train/loss", "train/grad_norm", "train/param_norm")
        if not np.isfinite(summary.get(name, 0.0))
    ]
    if bad:
        raise FloatingPointError(
            f"non-finite {', '.join(bad)} in steps {first_step}-{last_step}: training stopped;"
            " no checkpoint was written from these steps, the last one saved before them is"
            " intact (lower the learning rate or check the input data)"
        )
