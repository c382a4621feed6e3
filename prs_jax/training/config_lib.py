"""Shared pieces of the experiment configs in configs/: the `:arg` parser and the base config.

A config file is `get_config(arg)`; `arg` is the text after ':' in `--config FILE:arg`, a
comma-separated list of words (`prs,runlocal`) and `key=value` pairs (`epochs=100`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from prs_jax import data
from prs_jax.errors import UserError


class ConfigArgumentError(UserError, ValueError):
    """A config file's ':arg' (or a value derived from it) names nothing the file offers."""


# The conv-strength schedules a ViT config can select by name (DESIGN.md, "The schedule is a
# pure function"): (first_layer_switch_epoch, last_layer_switch_epoch) as fractions of training.
# Layer 0 is the shallowest GPSA layer.
SCHEDULE_VARIANTS = {
    # PRS for small data: late layers become self-attention earlier, linearly in depth.
    "prs": (0.5, 1.0 / 6.0),
    # Reversed PRS: early layers switch first.
    "reversed": (1.0 / 6.0, 0.5),
    # Every layer switches at the same epoch (a third of training by default).
    "uniform": (1.0 / 3.0, 1.0 / 3.0),
    # ConViT: self-attention from the first step, the gate learns.
    "convit": (0.0, 0.0),
    # A pure convolution throughout: no layer ever switches.
    "conv": (1.0, 1.0),
}


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse 'word,key=value' into a ConfigDict typed by `defaults` (big_vision's convention).

    A bare word sets a boolean default to True (`runlocal`) or, if it is not a boolean field,
    names the `variant`. Unknown keys are an error naming the allowed ones.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        key, sep, value = token.partition("=")
        if not sep:
            if isinstance(defaults.get(key), bool):
                parsed[key] = True
                continue
            if "variant" not in defaults:
                raise ConfigArgumentError(
                    f"unknown config argument {token!r}; allowed: {sorted(defaults)}"
                )
            key, value = "variant", token
        if key not in defaults:
            raise ConfigArgumentError(
                f"unknown config argument {key!r}; allowed: {sorted(defaults)}"
            )
        kind = type(defaults[key])
        parsed[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return parsed


def set_schedule(config: ml_collections.ConfigDict, variant: str, switch: float = -1.0) -> None:
    """Fill `config.schedule` for a named schedule variant, in epochs of `config.num_epochs`.

    `switch` >= 0 moves the uniform variant's switch epoch.
    """
    if variant not in SCHEDULE_VARIANTS:
        raise ConfigArgumentError(
            f"unknown schedule {variant!r}; choose one of {sorted(SCHEDULE_VARIANTS)}"
        )
    first, last = (config.num_epochs * f for f in SCHEDULE_VARIANTS[variant])
    if variant == "uniform" and switch >= 0:
        first = last = switch
    config.schedule.first_layer_switch_epoch = first
    config.schedule.last_layer_switch_epoch = last


# The 'deit' variant of each ConViT size: the DeiT of the same width class (d'Ascoli et al.,
# Table 1 pairs ConViT-Ti/S/B with DeiT-Ti/S/B).
DEIT_TWINS = {"convit_tiny": "deit_tiny", "convit_small": "deit_small", "convit_base": "deit_base"}


def select_variant(
    config: ml_collections.ConfigDict,
    variant: str,
    *,
    vit: str = "convit_tiny",
    switch: float = -1.0,
    resnets: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Sets config.model (and config.schedule) for a config file's `:variant` word.

    A schedule variant (SCHEDULE_VARIANTS) trains the ConViT `vit` (a name in DEIT_TWINS);
    `switch` >= 0 moves uniform's switch epoch. 'deit' trains the DeiT twin of a ConViT `vit`
    (DEIT_TWINS), or `vit` itself if it names a DeiT. A name in `resnets` selects that ResNet
    with the given fields (stem, dtype). Any other `vit` is an error naming the choices.
    config.num_epochs must be final: the schedule is set in epochs.
    """
    resnets = dict(resnets or {})
    if variant in SCHEDULE_VARIANTS:
        _check_choice(vit, DEIT_TWINS, f"variant {variant!r} schedules GPSA layers: model")
        config.model.name = vit
        set_schedule(config, variant, switch)
    elif variant == "deit":
        deits = [*DEIT_TWINS, *DEIT_TWINS.values()]
        _check_choice(vit, deits, "variant 'deit' trains a DeiT: model")
        config.model.name = DEIT_TWINS.get(vit, vit)
    elif variant in resnets:
        # A fresh model section: the ViT fields set so far (patch_size, ...) do not apply.
        config.model = model_config(variant)
        config.model.update(resnets[variant])
    else:
        choices = [*SCHEDULE_VARIANTS, "deit", *resnets]
        raise ConfigArgumentError(
            f"unknown variant {variant!r}; choose one of {', '.join(choices)}"
        )


def _check_choice(value: str, choices: Iterable[str], what: str) -> None:
    if value not in choices:
        raise ConfigArgumentError(
            f"{what}={value!r} is not allowed; choose one of {', '.join(choices)}"
        )


def model_config(name: str) -> ml_collections.ConfigDict:
    """A `config.model` for the model `name` with every model field present but unset.

    An unset field (a None placeholder) means the named model's default (models.VIT_VARIANTS,
    the model's dataclass); being present, any field can be set on the command line
    (`--config.model.hidden_size=128`). A field set for a model that has no such field is a
    ConfigError (prs_jax.training.validation); `model_overrides` gives the fields that are set.
    """
    unset = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(
        {
            "name": name,  # one of prs_jax.models.MODEL_NAMES
            # ViTs (models.vit.VisionTransformer): patch_size has no default.
            "patch_size": unset(int),
            "hidden_size": unset(int),
            "depth": unset(int),
            "num_heads": unset(int),
            "num_gpsa_layers": unset(int),
            "mlp_ratio": unset(float),
            "qkv_bias": unset(bool),
            "class_token_position_embedding": unset(bool),
            "locality_strength": unset(float),
            "drop_path_rate": unset(float),
            "dropout_rate": unset(float),
            "layer_norm_epsilon": unset(float),
            # ResNets (models.resnet.ResNet).
            "stem": unset(str),
            "width": unset(int),
            "zero_init_residual": unset(bool),
            # Both: the compute dtype ("float32", "bfloat16"); parameters stay float32.
            "dtype": unset(str),
        }
    )


def model_overrides(model: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a `config.model` that are set: everything but `name` and unset fields."""
    return {k: v for k, v in dict(model).items() if k != "name" and v is not None}


def base_config() -> ml_collections.ConfigDict:
    """Every field the train loop reads, with DeiT-recipe defaults; configs override them."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Model: `name` is one of prs_jax.models.MODEL_NAMES; the other fields, unset unless a config
    # or the command line sets them, override its size (model_config).
    config.model = model_config("convit_tiny")
    config.model.patch_size = 4
    config.model.drop_path_rate = 0.1
    config.model.dtype = "float32"  # compute dtype; "bfloat16" on TPU/GPU. Params stay float32.

    config.data = data.default_data_config()

    # Conv strength per GPSA layer (prs_jax.method.schedule): layer l switches at
    # first + (last - first) * l / (L - 1) epochs, over `ramp_epochs` (0 = a hard switch).
    config.schedule = ml_collections.ConfigDict()
    config.schedule.first_layer_switch_epoch = 0.0
    config.schedule.last_layer_switch_epoch = 0.0
    config.schedule.ramp_epochs = 0.0

    config.num_epochs = 300.0
    config.batch_size = 128
    config.eval_batch_size = 256

    config.optimizer = ml_collections.ConfigDict()
    # The peak learning rate (prs_jax.method.optimizer.resolve_learning_rate, at the start of a run):
    # DeiT's linear scaling rule, learning_rate_per_512 x batch_size / 512, so it follows a
    # --config.batch_size override; or an absolute `learning_rate` (> 0), which needs
    # learning_rate_per_512 = 0: a config that sets both is rejected.
    config.optimizer.learning_rate_per_512 = 5e-4
    config.optimizer.learning_rate = 0.0
    config.optimizer.min_learning_rate = 1e-5
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.warmup_learning_rate = 1e-6  # the warmup's first rate (DeiT's warmup_lr)
    config.optimizer.weight_decay = 0.05
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    # 0 disables clipping: DeiT and ConViT do not clip (their clip_grad defaults to None).
    config.optimizer.grad_clip_norm = 0.0
    # While a GPSA layer is a convolution (s = 1) its content path (qk, gating_param) gets zero
    # gradient; True rests it (no weight decay, no Adam moment or count advance), so it starts
    # training at its switch like a fresh Adam. False: plain AdamW, as before issue 16.
    config.optimizer.pause_content_path_while_conv = True

    # On-device batch augmentation (prs_jax.method.mixing).
    config.augment = ml_collections.ConfigDict()
    config.augment.label_smoothing = 0.1
    config.augment.mixup_alpha = 0.8
    config.augment.cutmix_alpha = 1.0
    config.augment.switch_prob = 0.5
    config.augment.mix_prob = 1.0

    config.log_every_steps = 50
    config.eval_every_epochs = 5.0
    # Fourier analysis in training (prs_jax.fourier): every N epochs, the high-frequency relative
    # log amplitude of each block on the first eval batch, to TensorBoard. 0 turns it off.
    config.fourier_every_epochs = 0.0
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3

    # Start a new run from converted weights (prs_jax.convert): a timm state dict (.safetensors,
    # or .pth with torch) or a prs_jax variables file, fitting config.model. A workdir with a
    # checkpoint resumes from it instead. The head is re-initialised ('zeros' or 'init') for
    # another number of classes; the position embedding resized for another grid.
    config.init_from = ml_collections.ConfigDict()
    config.init_from.path = ""
    config.init_from.head_init = "zeros"
    config.init_from.pos_embed_resize = "bilinear"
    return config
