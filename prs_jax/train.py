"""train_and_evaluate(config, workdir): the PRS training loop, top to bottom.

Sections: mesh -> data -> model and schedules -> steps -> state (resume, else init) -> loop
(train step, logs, evals, checkpoints) -> exit. Data parallelism is one `jax.jit` over a 1-D
("data",) mesh: the batch is sharded on "data", parameters and optimizer state are replicated,
and the train state is donated. This is the SPMD program that `pmap` used to express.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import parameter_overview, periodic_actions
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prs_jax import (
    checkpointing,
    config_lib,
    convert,
    data,
    fourier,
    metrics,
    mixing,
    models,
    optimizer,
    schedule,
    validation,
)
from prs_jax.models.gpsa import effective_gate

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a plain pytree, so it checkpoints and shards as a whole."""

    step: jax.Array  # int32[]
    params: Any
    batch_stats: Any  # BatchNorm running statistics; {} for ViTs
    opt_state: Any
    rng: jax.Array  # uint32[2] raw key; the step's key is fold_in(rng, step)


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The model named by `config.model`; its set fields override the named size, unset ones
    (None placeholders) keep the named model's defaults."""
    fields = config_lib.model_overrides(config.model)
    fields["dtype"] = jnp.dtype(fields.get("dtype", "float32"))
    return models.create_model(config.model.name, num_classes=num_classes, **fields)


def create_mesh() -> jax.sharding.Mesh:
    """All devices on one data-parallel axis. Auto axis types: see DESIGN.md."""
    return jax.make_mesh(
        (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
    )


def initial_state(
    model: nn.Module, tx: optax.GradientTransformation, image_size: int, seed: int
) -> TrainState:
    """A fresh train state; call under jit so parameters are created where they live."""
    rng = jax.random.key(seed)
    init_rng, train_rng = jax.random.split(rng)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    conv_strength = jnp.ones((model.num_gpsa_layers,), jnp.float32)
    variables = model.init(init_rng, images, conv_strength, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(train_rng),
    )


def init_from_weights(
    state: TrainState,
    init_from: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    sharding: NamedSharding,
) -> TrainState:
    """A fresh state with the weights of `init_from.path` (prs_jax.convert.load_into) and a new
    optimizer state for them; step and rng are kept."""
    # The local copy of the replicated initial variables gives the target shapes (and the fresh
    # head for head_init='init').
    local = jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0)),
        {"params": state.params, "batch_stats": state.batch_stats},
    )
    variables = convert.load_into(
        local,
        init_from.path,
        head_init=init_from.head_init or None,
        pos_embed_resize=init_from.pos_embed_resize or None,
    )
    params = jax.device_put(variables["params"], sharding)
    return state.replace(
        params=params,
        batch_stats=jax.device_put(variables.get("batch_stats", {}), sharding),
        opt_state=jax.jit(tx.init, out_shardings=sharding)(params),
    )


def gpsa_gates(params: Any, conv_strength: jax.Array) -> jax.Array:
    """Mean effective gate per GPSA layer, f32[L] (layer l is block l of the ViT)."""
    gates = [
        jnp.mean(effective_gate(params[f"blocks_{layer}"]["attn"]["gating_param"], s))
        for layer, s in enumerate(conv_strength)
    ]
    return jnp.stack(gates) if gates else jnp.zeros((0,), jnp.float32)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    conv_strength_fn: Callable[[jax.Array], jax.Array],
    learning_rate_fn: optax.Schedule,
    config: ml_collections.ConfigDict,
    num_classes: int,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure train step: (state, batch) -> (state, metrics). Jit it with shardings."""
    augment = config.augment

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        # Batch-level randomness is keyed by the step, so a resumed run draws the same numbers.
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        mix_rng, dropout_rng = jax.random.split(step_rng)
        conv_strength = conv_strength_fn(state.step)

        targets = mixing.one_hot_smoothed(batch["label"], num_classes, augment.label_smoothing)
        images, targets = mixing.mixup_cutmix(
            mix_rng,
            batch["image"],
            targets,
            mixup_alpha=augment.mixup_alpha,
            cutmix_alpha=augment.cutmix_alpha,
            switch_prob=augment.switch_prob,
            mix_prob=augment.mix_prob,
        )
        has_batch_stats = bool(state.batch_stats)

        def loss_fn(params):
            apply = functools.partial(
                model.apply, train=True, rngs={"dropout": dropout_rng}
            )
            if has_batch_stats:
                variables = {"params": params, "batch_stats": state.batch_stats}
                logits, new_model_state = apply(
                    variables, images, conv_strength, mutable=["batch_stats"]
                )
            else:
                logits, new_model_state = apply({"params": params}, images, conv_strength), {}
            loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (logits, new_model_state)

        (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        # The optimizer rests each GPSA layer's content path while the layer is a convolution.
        updates, opt_state = optax.with_extra_args_support(tx).update(
            grads, state.opt_state, state.params, conv_strength=conv_strength
        )
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=new_model_state.get("batch_stats", state.batch_stats),
            opt_state=opt_state,
        )
        step_metrics = {
            "loss": loss,
            # Against the unmixed labels: a cheap training signal, not a clean accuracy.
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "learning_rate": learning_rate_fn(state.step),
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "conv_strength": conv_strength,
            "gate": gpsa_gates(params, conv_strength),
        }
        return new_state, step_metrics

    return train_step


def make_eval_step(
    model: nn.Module, conv_strength_fn: Callable[[jax.Array], jax.Array]
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """(state, batch with mask) -> sums of correct (top-1 and top-5), loss and count over the
    real examples."""

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        # The strengths the weights were last trained with (step - 1), not the next step's.
        conv_strength = conv_strength_fn(jnp.maximum(state.step - 1, 0))
        logits = model.apply(variables, batch["image"], conv_strength, train=False)
        mask = batch["mask"].astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        # Top-5 (top-k with k = 5 or the number of classes, if fewer): the label is among the k
        # highest logits.
        _, top_k = jax.lax.top_k(logits, min(5, logits.shape[-1]))
        correct_top5 = jnp.any(top_k == batch["label"][:, None], axis=-1).astype(jnp.float32)
        return {
            "correct": jnp.sum(correct * mask),
            "correct_top5": jnp.sum(correct_top5 * mask),
            "loss": jnp.sum(loss * mask),
            "count": jnp.sum(mask),
        }

    return eval_step


@dataclasses.dataclass(frozen=True)
class RunFunctions:
    """The schedules, optimizer and jitted functions of a run, shared by training and bench."""

    conv_strength_fn: Callable[[jax.Array], jax.Array]
    learning_rate_fn: optax.Schedule
    learning_rate_note: str  # how the peak rate was resolved, for the log
    tx: optax.GradientTransformation
    train_step: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]
    eval_step: Callable[[TrainState, Batch], dict[str, jax.Array]]
    init: Callable[[], TrainState]


def build_run_functions(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    num_classes: int,
    steps: schedule.TrainingSteps,
    mesh: jax.sharding.Mesh,
) -> RunFunctions:
    """Schedules, optimizer, and the train/eval/init functions jitted over `mesh`.

    One compilation each for the whole run: the schedule is traced, not static. The train step
    donates the old state, so its buffers are reused for the new one.
    """
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    conv_strength_fn = schedule.make_conv_strength_fn(
        model.num_gpsa_layers, steps.steps_per_epoch, config.schedule
    )
    # The peak rate is resolved here, not in the config file, so a batch_size override rescales it.
    peak_learning_rate, learning_rate_note = optimizer.resolve_learning_rate(
        config.optimizer, config.batch_size
    )
    learning_rate_fn = schedule.learning_rate_schedule(
        peak_learning_rate,
        steps,
        init_learning_rate=config.optimizer.warmup_learning_rate,
        end_learning_rate=config.optimizer.min_learning_rate,
    )
    tx = optimizer.create_optimizer(config.optimizer, learning_rate_fn)
    train_step = jax.jit(
        make_train_step(model, tx, conv_strength_fn, learning_rate_fn, config, num_classes),
        in_shardings=(replicated, data_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(
        make_eval_step(model, conv_strength_fn),
        in_shardings=(replicated, data_sharding),
        out_shardings=replicated,
    )
    init = jax.jit(
        functools.partial(initial_state, model, tx, config.data.image_size, config.seed),
        out_shardings=replicated,
    )
    return RunFunctions(
        conv_strength_fn, learning_rate_fn, learning_rate_note, tx, train_step, eval_step, init
    )


def evaluate(
    eval_step: Callable[[TrainState, Batch], dict[str, jax.Array]],
    state: TrainState,
    batches: Iterable[Mapping[str, np.ndarray]],
    sharding: NamedSharding,
) -> dict[str, float]:
    """Exact top-1 and top-5 accuracy and loss over a whole split (padding is masked out)."""
    totals = {"correct": 0.0, "correct_top5": 0.0, "loss": 0.0, "count": 0.0}
    for batch in batches:
        sums = jax.device_get(eval_step(state, to_global(batch, sharding)))
        for name in totals:
            totals[name] += float(sums[name])
    count = max(totals["count"], 1.0)
    return {
        "accuracy": totals["correct"] / count,
        "top5_accuracy": totals["correct_top5"] / count,
        "loss": totals["loss"] / count,
        "num_examples": totals["count"],
    }


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's slice of a batch -> global arrays sharded along "data"."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def summarise(step_metrics: list[dict[str, jax.Array]], prefix: str = "train/") -> dict[str, float]:
    """Mean of each metric over the logged steps; per-layer vectors become one scalar per layer."""
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *step_metrics))
    summary = {}
    for name, values in stacked.items():
        mean = np.asarray(values, np.float64).mean(axis=0)
        if mean.ndim == 0:
            summary[prefix + name] = float(mean)
        else:
            for layer, value in enumerate(mean):
                summary[f"{prefix}{name}/layer_{layer:02d}"] = float(value)
    return summary


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
    """Train and evaluate the model of `config`, writing checkpoints and metrics to `workdir`."""
    # Fail in seconds, before any data or compile, on a config or workdir the run cannot use.
    validation.check_workdir(workdir)
    validation.validate_config(config, device_count=jax.device_count())
    is_chief = jax.process_index() == 0

    # Mesh: one data-parallel axis over every device of every host.
    mesh = create_mesh()
    data_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    # Data: deterministic, resumable, each process reads its own shard of every batch.
    info = data.dataset_info(config.data)
    steps = schedule.training_steps(
        info.num_train_examples, config.batch_size, config.num_epochs, config.optimizer.warmup_epochs
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
        fourier.make_spectra_step(model, conv_strength_fn),
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
                info.num_train_examples, config.data.train_split, config.data.train_fraction,
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
                    "Step %d: eval top-1 %.4f, top-5 %.4f, loss %.4f on %d examples.", step,
                    results["accuracy"], results["top5_accuracy"], results["loss"],
                    results["num_examples"],
                )

            if fourier_every_steps and (
                step % fourier_every_steps == 0 or step == steps.total_steps
            ):
                with report_progress.timed("fourier"):
                    batch = to_global(next(iter(eval_batches())), data_sharding)
                    spectra = fourier.high_frequency_scalars(
                        spectra_step(state, batch), model.feature_map_kinds()
                    )
                writer.write_scalars(step, spectra)

            with report_progress.timed("checkpoint"):
                checkpointing.save(manager, step, state, train_iter, config, force=preempted)
            if preempted:
                logging.warning("Saved step %d after a preemption notice; exiting.", step)
                break
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.flush()
        preemption.restore()
    return state


def check_finite(summary: Mapping[str, float], first_step: int, last_step: int) -> None:
    """Stop before a non-finite state can reach a checkpoint (big_vision's cheap finite check)."""
    bad = [name for name in ("train/loss", "train/grad_norm", "train/param_norm")
           if not np.isfinite(summary.get(name, 0.0))]
    if bad:
        raise FloatingPointError(
            f"non-finite {', '.join(bad)} in steps {first_step}-{last_step}: training stopped;"
            " no checkpoint was written from these steps, the last one saved before them is"
            " intact (lower the learning rate or check the input data)"
        )
