"""The jitted functions of a run: the train step (augmentation, mixup/cutmix, the conv strength of
the step, the optimizer update), the eval step, and their assembly over a device mesh.

One compilation each for the whole run: the step number is traced, so the per-layer conv
strength and the learning rate are computed inside the step, not baked in as constants.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prs_jax.method import mixing, optimizer, schedule
from prs_jax.models.gpsa import effective_gate
from prs_jax.training.state import TrainState, initial_state

Batch = Mapping[str, jax.Array]


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
            apply = functools.partial(model.apply, train=True, rngs={"dropout": dropout_rng})
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
