"""Schedules as pure functions of the step: per-layer conv strength (PRS) and learning rate.

Conv strength (DESIGN.md, "The schedule is a pure function"; Lee et al. 2022, Sec. 3). GPSA
layer l of L (0 = shallowest) switches from convolution to self-attention at epoch

    e_l = e_first + (e_last - e_first) * l / (L - 1)        (e_0 = e_first when L == 1)

and its conv strength at continuous epoch t = step / steps_per_epoch is

    s_l(t) = clip((e_l + w - t) / w, 0, 1)     with a ramp of w > 0 epochs,
    s_l(t) = 1 if t < e_l else 0                with w == 0 (a hard switch).

So s_l = 1 (a convolution) until e_l, then falls linearly to 0 (self-attention) at e_l + w.
Every schedule of the paper is a configuration of this one function:

    ConViT        e_first = e_last = 0, w = 0: s = 0 from the first step; the gate learns.
    pure conv     e_first, e_last > last epoch trained (e.g. inf): no layer ever switches.
                  Note that e = num_epochs switches at step total_steps itself, the step the
                  final evaluation and checkpoint see; use a larger value (or inf) for "never".
    uniform       e_first = e_last: every layer switches at the same epoch.
    PRS           e_first > e_last: late layers switch earlier (the paper's small-data setting).
    reversed PRS  e_first < e_last: shallow layers switch first.

`conv_strength` is written in jnp with the step traced, so one compiled train step serves the
whole run, across every switch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax


def switch_epochs(
    num_layers: int, first_layer_switch_epoch: float, last_layer_switch_epoch: float
) -> np.ndarray:
    """Switch epoch e_l of each GPSA layer, linear in depth: f32[num_layers]."""
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    first, last = float(first_layer_switch_epoch), float(last_layer_switch_epoch)
    if num_layers <= 1 or first == last:
        # Also keeps e = inf ("never switch") inf for every layer: inf - inf would be nan.
        return np.full((num_layers,), first, np.float32)
    depth = np.arange(num_layers, dtype=np.float64) / (num_layers - 1)
    return (first + (last - first) * depth).astype(np.float32)


def conv_strength(
    step: jax.typing.ArrayLike,
    *,
    steps_per_epoch: int,
    switch_epochs: npt.ArrayLike,
    ramp_epochs: float,
) -> jax.Array:
    """Conv strength s_l in [0, 1] of each layer at `step` (int, may be traced): f32[L].

    `switch_epochs` (f32[L]) and the other arguments are static. Epochs are converted to steps
    on the host in float64 and compared with the step, and the ramp multiplies by a reciprocal
    computed on the host: an epoch = step / steps_per_epoch in float32 made jitted and eager
    values (and so the step of a switch) differ by an ulp, since XLA may turn a division by a
    constant into a multiply.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if ramp_epochs < 0:
        raise ValueError(f"ramp_epochs must be >= 0, got {ramp_epochs}")
    switch_epochs = np.asarray(switch_epochs, np.float64)
    step = jnp.asarray(step, jnp.float32)  # exact for steps below 2**24
    switch_step = jnp.asarray(switch_epochs * steps_per_epoch, jnp.float32)
    if ramp_epochs == 0:
        return jnp.where(step < switch_step, 1.0, 0.0).astype(jnp.float32)
    ramp_steps = ramp_epochs * steps_per_epoch
    end_step = jnp.asarray((switch_epochs + ramp_epochs) * steps_per_epoch, jnp.float32)
    falling = jnp.clip((end_step - step) * np.float32(1.0 / ramp_steps), 0.0, 1.0)
    # Exactly 1 up to the switch epoch (the rounded quotient could land an ulp below 1).
    return jnp.where(step <= switch_step, 1.0, falling).astype(jnp.float32)


def make_conv_strength_fn(
    num_gpsa_layers: int, steps_per_epoch: int, schedule_config: Any
) -> Callable[[jax.typing.ArrayLike], jax.Array]:
    """step -> f32[num_gpsa_layers], from a config with the three `*_epoch(s)` fields."""
    epochs = switch_epochs(
        num_gpsa_layers,
        schedule_config.first_layer_switch_epoch,
        schedule_config.last_layer_switch_epoch,
    )
    ramp_epochs = float(schedule_config.ramp_epochs)

    def conv_strength_fn(step: jax.typing.ArrayLike) -> jax.Array:
        return conv_strength(
            step, steps_per_epoch=steps_per_epoch, switch_epochs=epochs, ramp_epochs=ramp_epochs
        )

    return conv_strength_fn


def layer_switch_steps(
    conv_strength_fn: Callable[[jax.typing.ArrayLike], jax.Array],
    total_steps: int,
    num_layers: int,
) -> list[int]:
    """Sorted steps in [0, total_steps] where some layer's strength first drops below 1 or hits 0.

    For each layer l, with s_l non-increasing in the step:
      ramp start  = min{t in [0, total_steps] : s_l(t) < 1},
      switch done = min{t in [0, total_steps] : s_l(t) == 0};
    a bound that no step in the range reaches is left out. With a hard switch the two coincide.
    The checkpoint at such a step t holds the weights trained with s(0..t-1) that are about to
    be used with the new strength s(t): the model at the moment of reparameterization.
    Found by a bisection on `conv_strength_fn` itself, so it agrees with the train step exactly.
    """
    if num_layers == 0 or total_steps < 0:
        return []
    strengths = jax.jit(jax.vmap(conv_strength_fn))  # f32[N] steps -> f32[N, L]
    layers = np.arange(num_layers)

    def first_step_where(predicate: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        # Per layer, bisect for the first step where the (monotone) predicate holds; the
        # answer total_steps + 1 means "never within the run".
        lo = np.zeros(num_layers, np.int64)
        hi = np.full(num_layers, total_steps + 1, np.int64)
        while np.any(lo < hi):
            active = lo < hi
            mid = (lo + hi) // 2
            # Row l of the [L, L] result is the strength at layer l's probe step.
            holds = predicate(np.asarray(strengths(mid.astype(np.int32)))[layers, layers])
            hi = np.where(active & holds, mid, hi)
            lo = np.where(active & ~holds, mid + 1, lo)
        return lo

    starts = first_step_where(lambda s: s < 1.0)
    ends = first_step_where(lambda s: s == 0.0)
    found = np.concatenate([starts, ends])
    return sorted({int(t) for t in found if t <= total_steps})


@dataclasses.dataclass(frozen=True)
class TrainingSteps:
    """A run's length in optimizer steps; every epochs-to-steps conversion goes through here."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def training_steps(
    num_train_examples: int, global_batch_size: int, num_epochs: float, warmup_epochs: float
) -> TrainingSteps:
    """Steps per epoch (remainder dropped, at least 1), total steps and warmup steps."""
    if num_train_examples <= 0 or global_batch_size <= 0:
        raise ValueError(
            f"num_train_examples ({num_train_examples}) and global_batch_size"
            f" ({global_batch_size}) must be positive"
        )
    if num_epochs < 0 or warmup_epochs < 0:
        raise ValueError(
            f"num_epochs ({num_epochs}) and warmup_epochs ({warmup_epochs}) must be >= 0"
        )
    steps_per_epoch = max(1, num_train_examples // global_batch_size)
    total_steps = int(round(num_epochs * steps_per_epoch))
    # Warmup cannot outlast the run (runlocal configs shrink num_epochs but not warmup).
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
    return TrainingSteps(steps_per_epoch, total_steps, warmup_steps)


def learning_rate_schedule(
    base_learning_rate: float,
    steps: TrainingSteps,
    *,
    init_learning_rate: float = 0.0,
    end_learning_rate: float = 1e-5,
) -> optax.Schedule:
    """DeiT's schedule per step: linear warmup init -> base over warmup_steps, cosine base -> end.

    This is timm's CosineLRScheduler as DeiT/ConViT build it (warmup_lr_init, warmup_t,
    lr_min, t_initial = the run, warmup_prefix=False), with t counted in steps: step t <
    warmup_steps takes init + t (base - init) / warmup_steps; every later step the cosine of
    the *global* step, end + (base - end) (1 + cos(pi t / total_steps)) / 2, so the warmup
    replaces the cosine's first steps rather than delaying it, and after total_steps the rate
    stays at `end_learning_rate`. Not matched: timm steps once per epoch, and DeiT's loop calls
    step(epoch) after each epoch, so its epoch e runs at the rate of e - 1.
    """
    alpha = 0.0 if base_learning_rate == 0 else end_learning_rate / base_learning_rate
    cosine = optax.cosine_decay_schedule(base_learning_rate, max(steps.total_steps, 1), alpha=alpha)
    if steps.warmup_steps == 0:
        return cosine
    warmup = optax.linear_schedule(init_learning_rate, base_learning_rate, steps.warmup_steps)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        return jnp.where(step < steps.warmup_steps, warmup(step), cosine(step))

    return schedule
