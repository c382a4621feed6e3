"""prs_jax's train step and timm's in PyTorch, side by side from the same weights on the same
batches, step by step (the command is prs_jax.parity).

Ours is train.py's own step (`build_run_functions`: the jitted step with its mixing, conv
strength, paused AdamW and learning rate). The reference is `reference.ReferenceTrainer`. Both
start from prs_jax's initial variables; each batch (augmented once on the host) goes to both;
the mixing numbers of step t are the ones our step draws from fold_in(rng, t), given to timm's
Mixup. Stochastic depth and dropout are off on both sides (their masks are drawn by different
generators); the rates and their linear growth with depth are the same code path in both.

After each step the harness records the loss and the global gradient norm of each side, the
learning rates, the conv strengths, and the largest relative difference of any parameter tensor
(|ours - theirs| / |theirs| per tensor, the tensor named) and of any BatchNorm running statistic;
and, as a check of the harness itself, the difference between our mixed batch (mixing.py on
the same key) and timm's.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prs_jax import models
from prs_jax.method import mixing, schedule
from prs_jax.models import resnet, timm_weights
from prs_jax.tools.parity import reference as torch_reference
from prs_jax.training.state import create_mesh, create_model
from prs_jax.training.steps import build_run_functions, to_global

Batch = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Relative differences allowed in float32, (at step 1, at any later step).

    Why these: the two sides add the same float32 numbers in other orders (XLA's fusions and
    PyTorch's kernels), so one step's loss and gradient norm agree to ~1e-7 and 1e-6 (measured:
    README, "Parity with the PyTorch reference"), and Adam turns a relative error e of a
    gradient element into an error e of that element's step. Training is chaotic but at these
    learning rates it amplifies little within 100 steps: the measured drift stays below 1e-5
    (loss) and 1e-4 (parameters) for the ViTs. The bounds leave 10x to 100x room and stay at or
    below what a wrong recipe gives (a plain AdamW on the resting content path: 7e-4 on qk six
    steps after the switch, tests/test_parity.py; flax's fast BatchNorm variance: 3e-5 on the
    first gradient norm, 1e-1 on BatchNorm offsets). ResNets: see RESNET_TOLERANCES.
    """

    loss: tuple[float, float] = (1e-5, 1e-4)
    grad_norm: tuple[float, float] = (1e-4, 1e-3)
    params: tuple[float, float] = (1e-4, 1e-3)
    batch_stats: tuple[float, float] = (1e-4, 1e-2)
    mixing: float = 1e-5  # absolute, on images and targets: the harness's own check
    # BatchNorm's running variance: PyTorch adds the unbiased batch variance (x n / (n - 1),
    # n = B H W), flax the biased one (prs_jax.models.resnet), so the two differ by up to
    # 1 / (n - 1) for the smallest map; `build` sets it from the model, on top of batch_stats.
    running_var_factor: float = 0.0

    def at(self, name: str, step: int) -> float:
        if name == "running_var":
            return self.at("batch_stats", step) + self.running_var_factor
        first, later = getattr(self, name)
        return first if step == 1 else later


@dataclasses.dataclass
class StepRow:
    step: int  # 1-based: the row after the step's update
    conv_strength: list[float]
    learning_rate: tuple[float, float]  # (ours, theirs)
    loss: tuple[float, float]
    grad_norm: tuple[float, float]
    params: float  # the largest per-tensor relative difference
    worst_param: str
    batch_stats: float  # running means
    worst_stat: str
    running_var: float
    mixing: float
    # With a float64 copy of the reference: timm in float32 against timm in float64 (loss,
    # gradient norm, parameters), the float32 rounding that ours is measured against.
    floor: tuple[float, float, float] | None = None

    @property
    def loss_difference(self) -> float:
        return relative(*self.loss)

    @property
    def grad_norm_difference(self) -> float:
        return relative(*self.grad_norm)

    def failures(self, tolerances: Tolerances) -> list[str]:
        """What exceeds its tolerance at this step."""
        checks = {
            "loss": self.loss_difference,
            "grad_norm": self.grad_norm_difference,
            "params": self.params,
            "batch_stats": self.batch_stats,
            "running_var": self.running_var,
        }
        found = [
            f"{name} {value:.2e} > {tolerances.at(name, self.step):.0e}"
            for name, value in checks.items()
            if not value <= tolerances.at(name, self.step)
        ]
        if not self.mixing <= tolerances.mixing:
            found.append(f"mixing {self.mixing:.2e} > {tolerances.mixing:.0e}")
        return found


def relative(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), 1e-30)


# Elements whose gradient is 0 in exact arithmetic, so that both sides move them by rounding
# noise alone (Adam scales a noise gradient of 1e-10 to a step of 1e-2 lr) and their difference
# says nothing: a softmax ignores a constant added to all its logits, which GPSA's positional
# bias (one constant per head) and the key bias of a biased QKV projection (q . b_k, one per
# query) are. Both are left out of the parameter difference.
def compared_elements(key: str, value: np.ndarray) -> np.ndarray:
    """The elements of tensor `key` whose difference is compared."""
    if key.endswith(".attn.pos_proj.bias"):
        return value[:0]
    if key.endswith(".attn.qkv.bias"):  # [3C]: queries, keys, values
        width = value.shape[0] // 3
        return np.concatenate([value[:width], value[2 * width :]])
    return value


def tensor_differences(
    ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Per timm key: |ours - theirs| / |theirs| (Euclidean norms over `compared_elements`;
    0 for equal tensors). A norm, not the largest element: a tensor that starts at 0 (biases,
    BatchNorm offsets) holds elements of the size of one Adam step, lr, whose sign flips with
    the rounding of a near-zero gradient on either side."""
    differences = {}
    for key, value in theirs.items():
        a, b = compared_elements(key, ours[key]), compared_elements(key, value)
        gap = float(np.linalg.norm((a - b).ravel()))
        differences[key] = gap / max(float(np.linalg.norm(b.ravel())), 1e-30) if gap else 0.0
    return differences


def largest(differences: Mapping[str, float]) -> tuple[float, str]:
    if not differences:
        return 0.0, "-"
    key = max(differences, key=differences.get)
    return differences[key], key


def parity_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with stochastic depth and dropout off (their masks cannot be shared)."""
    config = copy.deepcopy(config)
    if config.model.name in models.VIT_VARIANTS:
        with config.unlocked():
            config.model.drop_path_rate = 0.0
            config.model.dropout_rate = 0.0
    return config


def synthetic_batches(
    batch_size: int, image_size: int, num_classes: int, seed: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Normal images and uniform labels, for configs whose data is not on this machine."""
    rng = np.random.default_rng(seed)
    while True:
        yield {
            "image": rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
            "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
        }


def _mix_draws(rng_data, step, images, labels, *, num_classes, augment):
    """Our step's mixing on `images` and the numbers behind it, from the key our train step
    uses: fold_in(rng, step), its first half (steps.make_train_step), split five ways in
    mixing.mixup_cutmix's order (apply, switch, mixup lam, cutmix lam, box)."""
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)
    mix_rng, _ = jax.random.split(step_rng)
    targets = mixing.one_hot_smoothed(labels, num_classes, augment.label_smoothing)
    mixed, mixed_targets = mixing.mixup_cutmix(
        mix_rng,
        images,
        targets,
        mixup_alpha=augment.mixup_alpha,
        cutmix_alpha=augment.cutmix_alpha,
        switch_prob=augment.switch_prob,
        mix_prob=augment.mix_prob,
    )
    rng_apply, rng_switch, rng_mixup, rng_cutmix, rng_box = jax.random.split(mix_rng, 5)
    both = augment.mixup_alpha > 0 and augment.cutmix_alpha > 0
    draws = {
        "apply": jax.random.uniform(rng_apply) < augment.mix_prob,
        "use_cutmix": (
            jax.random.uniform(rng_switch) < augment.switch_prob
            if both
            else jnp.asarray(augment.cutmix_alpha > 0)
        ),
        "lam_mixup": (
            jax.random.beta(rng_mixup, augment.mixup_alpha, augment.mixup_alpha)
            if augment.mixup_alpha > 0
            else jnp.float32(1)
        ),
        "lam_cutmix": (
            jax.random.beta(rng_cutmix, augment.cutmix_alpha, augment.cutmix_alpha)
            if augment.cutmix_alpha > 0
            else jnp.float32(1)
        ),
    }
    _, height, width, _ = images.shape
    draws["box"] = jnp.stack(mixing.cutmix_box(rng_box, draws["lam_cutmix"], height, width))
    return draws, mixed, mixed_targets


@dataclasses.dataclass
class Setup:
    """Both sides, ready to step."""

    config: ml_collections.ConfigDict
    model: Any
    run: Any
    state: Any
    reference: Any
    trainer: torch_reference.ReferenceTrainer
    steps: schedule.TrainingSteps
    num_classes: int
    mix_draws: Callable[..., Any]
    data_sharding: NamedSharding
    tolerances: Tolerances


def build(config: ml_collections.ConfigDict, num_classes: int, num_train_examples: int) -> Setup:
    """Our run functions and initial state, and timm's model loaded with those weights."""
    config = parity_config(config)
    mesh = create_mesh()
    model = create_model(config, num_classes)
    steps = schedule.training_steps(
        num_train_examples, config.batch_size, config.num_epochs, config.optimizer.warmup_epochs
    )
    run = build_run_functions(config, model, num_classes, steps, mesh)
    state = run.init()
    reference = torch_reference.build_model(model, config, num_classes)
    torch_reference.load_variables(reference, _variables(state))
    opt = config.optimizer
    # DeiT's rule, written out: lr x batch / 512 (or an absolute rate).
    peak = opt.learning_rate or opt.learning_rate_per_512 * config.batch_size / 512
    trainer = torch_reference.ReferenceTrainer(
        reference,
        config,
        num_classes,
        peak_learning_rate=peak,
        total_steps=steps.total_steps,
        warmup_steps=steps.warmup_steps,
    )
    mix_draws = jax.jit(
        functools.partial(_mix_draws, num_classes=num_classes, augment=config.augment)
    )
    setup = Setup(
        config,
        model,
        run,
        state,
        reference,
        trainer,
        steps,
        num_classes,
        mix_draws,
        NamedSharding(mesh, P("data")),
        RESNET_TOLERANCES if isinstance(model, resnet.ResNet) else Tolerances(),
    )
    setup.tolerances = dataclasses.replace(
        setup.tolerances, running_var_factor=_running_var_factor(model, config)
    )
    return setup


# A BatchNorm ResNet's float32 trajectory departs from the exact one within tens of steps: a
# BatchNorm offset starts at 0 and its gradient, a sum over B H W values that nearly cancel,
# carries a large relative rounding error, which Adam passes to its step. Measured with
# --float64_floor on configs/cifar10.py:resnet at batch 32, timm in float32 against timm in
# float64 reaches, by step 100: loss 3e-4, gradient norm 3e-2, parameters 2.2e-1 and running
# means 5e-3, as far as ours is from timm in float32 (5e-4, 3e-2, 2.1e-1, 5e-3). After step 1 the ResNet's bounds are that noise, not a
# closer agreement than PyTorch has with itself; step 1 keeps the strict ones.
RESNET_TOLERANCES = Tolerances(
    loss=(1e-5, 1e-3), grad_norm=(1e-4, 5e-2), params=(1e-4, 5e-1), batch_stats=(1e-4, 5e-2)
)


def _running_var_factor(model: Any, config: ml_collections.ConfigDict) -> float:
    """1 / (n - 1) for the fewest values n = B H W a ResNet's BatchNorm averages; 0 for ViTs."""
    if not isinstance(model, resnet.ResNet):
        return 0.0
    side = config.data.image_size // (1 if model.stem == "cifar" else 4)
    side = max(1, side // 2 ** (len(model.stage_sizes) - 1))
    return 1.0 / (config.batch_size * side * side - 1)


def _variables(state) -> dict[str, Any]:
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def compare(
    setup: Setup,
    batches: Iterator[Batch],
    num_steps: int,
    on_step: Callable[[StepRow], None] = lambda row: None,
    *,
    float64_floor: bool = False,
) -> list[StepRow]:
    """Step both sides `num_steps` times; one StepRow per step, also given to `on_step`.

    `float64_floor`: also step a float64 copy of the reference, and record how far timm in
    float32 is from it (StepRow.floor): how far float32 rounding alone carries a trajectory.
    """
    exact = None
    if float64_floor:
        exact = torch_reference.ReferenceTrainer(
            copy.deepcopy(setup.reference).double(),
            setup.config,
            setup.num_classes,
            peak_learning_rate=setup.trainer.optimizer.defaults["lr"],
            total_steps=setup.steps.total_steps,
            warmup_steps=setup.steps.warmup_steps,
        )
    rows = []
    for step in range(num_steps):
        batch = next(batches)
        images = np.asarray(batch["image"], np.float32)
        labels = np.asarray(batch["label"], np.int32)
        conv_strength = np.asarray(setup.run.conv_strength_fn(step), np.float32)
        draws, mixed, targets = jax.device_get(
            setup.mix_draws(np.asarray(jax.device_get(setup.state.rng)), step, images, labels)
        )
        draw = torch_reference.MixDraw(
            apply=bool(draws["apply"]),
            use_cutmix=bool(draws["use_cutmix"]),
            lam_mixup=float(draws["lam_mixup"]),
            lam_cutmix=float(draws["lam_cutmix"]),
            box=tuple(int(v) for v in draws["box"]),
        )
        theirs = setup.trainer.step(step, images, labels, draw, conv_strength)
        floor = None
        if exact is not None:
            truth = exact.step(step, images.astype(np.float64), labels, draw, conv_strength)
            rounding = tensor_differences(
                torch_reference.state_arrays(setup.reference),
                torch_reference.state_arrays(exact.model),
            )
            floor = (
                relative(theirs.loss, truth.loss),
                relative(theirs.grad_norm, truth.grad_norm),
                largest({k: v for k, v in rounding.items() if not _is_stat(k)})[0],
            )
        setup.state, metrics = setup.run.train_step(
            setup.state,
            to_global({"image": images, "label": labels}, setup.data_sharding),
        )
        metrics = jax.device_get(metrics)

        ours_arrays = timm_weights.prs_to_timm(_variables(setup.state))
        theirs_arrays = torch_reference.state_arrays(setup.reference)
        differences = tensor_differences(ours_arrays, theirs_arrays)
        params = largest({k: v for k, v in differences.items() if not _is_stat(k)})
        stats = largest({k: v for k, v in differences.items() if k.endswith("running_mean")})
        variances = largest({k: v for k, v in differences.items() if k.endswith("running_var")})
        mix_gap = max(
            float(np.max(np.abs(mixed - theirs.mixed_images))),
            float(np.max(np.abs(targets - theirs.targets))),
        )
        row = StepRow(
            step=step + 1,
            conv_strength=conv_strength.tolist(),
            learning_rate=(float(metrics["learning_rate"]), theirs.learning_rate),
            loss=(float(metrics["loss"]), theirs.loss),
            grad_norm=(float(metrics["grad_norm"]), theirs.grad_norm),
            params=params[0],
            worst_param=params[1],
            batch_stats=stats[0],
            worst_stat=stats[1],
            running_var=variances[0],
            mixing=mix_gap,
            floor=floor,
        )
        rows.append(row)
        on_step(row)
    return rows


def _is_stat(key: str) -> bool:
    return key.endswith(("running_mean", "running_var"))


HEADER = (
    f"{'step':>4} {'conv strength':<14} {'lr ours':>9} {'lr rel':>7} {'loss ours':>10}"
    f" {'loss timm':>10} {'rel':>8} {'|g| ours':>9} {'|g| timm':>9} {'rel':>8}"
    f" {'param rel':>9} {'mean rel':>9} {'var rel':>9} {'mix':>7}  largest param difference"
)


def format_row(row: StepRow) -> str:
    strength = (
        "".join("1" if s >= 1 else ("0" if s <= 0 else "~") for s in row.conv_strength) or "-"
    )
    return (
        f"{row.step:>4} {strength:<14} {row.learning_rate[0]:>9.3e}"
        f" {relative(*row.learning_rate):>7.1e} {row.loss[0]:>10.6f} {row.loss[1]:>10.6f}"
        f" {row.loss_difference:>8.1e} {row.grad_norm[0]:>9.4f} {row.grad_norm[1]:>9.4f}"
        f" {row.grad_norm_difference:>8.1e} {row.params:>9.1e} {row.batch_stats:>9.1e}"
        f" {row.running_var:>9.1e}"
        f" {row.mixing:>7.0e}  {row.worst_param}"
        + (
            ""
            if row.floor is None
            else "  float32 vs float64 timm: {:.1e} / {:.1e} / {:.1e}".format(*row.floor)
        )
    )


def summary(rows: list[StepRow], at_steps: tuple[int, ...] = (1, 10, 100)) -> dict[str, Any]:
    """The largest loss, gradient-norm and parameter differences up to each of `at_steps`
    (that the run reached) and over the whole run."""
    out = {}
    for limit in [s for s in at_steps if s <= len(rows)] + [len(rows)]:
        head = rows[:limit]
        out[limit] = {
            "loss": max(r.loss_difference for r in head),
            "grad_norm": max(r.grad_norm_difference for r in head),
            "params": max(r.params for r in head),
            "batch_stats": max(r.batch_stats for r in head),
            "running_var": max(r.running_var for r in head),
            **(
                {"floor": [max(r.floor[i] for r in head) for i in range(3)]}
                if head and head[0].floor is not None
                else {}
            ),
        }
    return out


def switch_steps(rows: list[StepRow]) -> list[int]:
    """1-based steps at which some GPSA layer's conv strength first fell below 1."""
    found, previous = [], None
    for row in rows:
        current = [s < 1.0 for s in row.conv_strength]
        if previous is not None and any(c and not p for c, p in zip(current, previous)):
            found.append(row.step)
        previous = current
    return found


def is_finite(rows: list[StepRow]) -> bool:
    return all(math.isfinite(r.loss[0]) and math.isfinite(r.loss[1]) for r in rows)
