"""Checks that run before any compile or long work: the config, the workdir, and a resume.

Every error names the field, the value and what is allowed, so a bad run fails in seconds
instead of after a compile or an epoch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import ml_collections

from prs_jax import data, models
from prs_jax.errors import UserError
from prs_jax.method import optimizer as optimizer_lib
from prs_jax.training import config_lib


class ConfigError(UserError, ValueError):
    """A config field has a value the run cannot use."""


def validate_config(config: ml_collections.ConfigDict, *, device_count: int) -> None:
    """Raise ConfigError for the first problem found in `config`; see the checks below."""
    # config.data.name is checked by prs_jax.data.dataset_info, which knows the sources.
    _check(
        config.model.name in models.MODEL_NAMES,
        "model.name",
        config.model.name,
        f"one of {', '.join(models.MODEL_NAMES)}",
    )
    image_size = config.data.image_size
    _check(
        isinstance(image_size, int) and image_size > 0,
        "data.image_size",
        image_size,
        "a positive integer",
    )

    # Only the fields that are set: an unset one (None) keeps the named model's default.
    model_name, overrides = config.model.name, config_lib.model_overrides(config.model)
    allowed = models.model_fields(model_name)
    for field, value in overrides.items():
        if field not in allowed:
            raise ConfigError(
                f"config.model.{field}={value!r} does not apply to model {model_name!r}: leave it"
                f" unset, or set one of its fields: {', '.join(allowed)}"
            )
    is_vit = model_name in models.VIT_VARIANTS
    if is_vit:
        fields = {**models.VIT_VARIANTS[model_name], **overrides}
        patch = fields.get("patch_size")
        _check(
            isinstance(patch, int) and patch > 0 and image_size % patch == 0,
            "model.patch_size",
            patch,
            f"a positive divisor of data.image_size={image_size}",
        )
        depth, gpsa = fields["depth"], fields["num_gpsa_layers"]
        _check(
            isinstance(gpsa, int) and 0 <= gpsa < depth,
            "model.num_gpsa_layers",
            gpsa,
            f"0 to depth - 1 = {depth - 1} (the class token needs one self-attention block)",
        )
        _check(
            fields["hidden_size"] % fields["num_heads"] == 0,
            "model.num_heads",
            fields["num_heads"],
            f"a divisor of hidden_size={fields['hidden_size']}",
        )
        if gpsa:
            # GPSA's local init points heads at a k x k kernel; at least one head is needed.
            _check(fields["num_heads"] >= 1, "model.num_heads", fields["num_heads"], ">= 1")
    for name in ("drop_path_rate", "dropout_rate"):
        if name in overrides:
            _check(0.0 <= overrides[name] < 1.0, f"model.{name}", overrides[name], "in [0, 1)")
    if "dtype" in overrides:
        _check(
            overrides["dtype"] in ("float32", "bfloat16", "float16"),
            "model.dtype",
            overrides["dtype"],
            "float32, bfloat16 or float16",
        )

    _check(config.num_epochs > 0, "num_epochs", config.num_epochs, "> 0")
    schedule = config.schedule
    for name in ("first_layer_switch_epoch", "last_layer_switch_epoch"):
        value = schedule[name]
        _check(
            0.0 <= value <= config.num_epochs,
            f"schedule.{name}",
            value,
            f"in [0, num_epochs={config.num_epochs}] (num_epochs: never switch)",
        )
    _check(
        schedule.ramp_epochs >= 0.0,
        "schedule.ramp_epochs",
        schedule.ramp_epochs,
        ">= 0 (0 is a hard switch)",
    )

    for name in ("batch_size", "eval_batch_size"):
        value = config[name]
        _check(
            isinstance(value, int) and value > 0 and value % device_count == 0,
            name,
            value,
            f"a positive multiple of the number of devices ({device_count}; on a CPU host"
            " PRS_JAX_CPU_DEVICES=N sets that number)",
        )
    train_fraction = config.data.get("train_fraction", 1.0)
    _check(0.0 < train_fraction <= 1.0, "data.train_fraction", train_fraction, "in (0, 1]")

    optimizer = config.optimizer
    try:  # the rule train.py applies: an absolute rate or one per 512 images, never both
        peak, _ = optimizer_lib.resolve_learning_rate(optimizer, config.batch_size)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    for name in ("min_learning_rate", "warmup_learning_rate"):
        _check(
            0 <= optimizer[name] <= peak,
            f"optimizer.{name}",
            optimizer[name],
            f"in [0, the peak learning rate {peak:g}]",
        )
    _check(
        0 <= optimizer.warmup_epochs <= config.num_epochs,
        "optimizer.warmup_epochs",
        optimizer.warmup_epochs,
        f"in [0, num_epochs={config.num_epochs}]",
    )
    _check(optimizer.weight_decay >= 0, "optimizer.weight_decay", optimizer.weight_decay, ">= 0")
    _check(
        optimizer.grad_clip_norm >= 0,
        "optimizer.grad_clip_norm",
        optimizer.grad_clip_norm,
        ">= 0 (0 disables clipping)",
    )

    augment = config.augment
    _check(
        0.0 <= augment.label_smoothing < 1.0,
        "augment.label_smoothing",
        augment.label_smoothing,
        "in [0, 1)",
    )
    for name in ("mixup_alpha", "cutmix_alpha"):
        _check(augment[name] >= 0, f"augment.{name}", augment[name], ">= 0 (0 disables it)")
    for name in ("mix_prob", "switch_prob"):
        _check(0.0 <= augment[name] <= 1.0, f"augment.{name}", augment[name], "in [0, 1]")

    for name in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        _check(
            isinstance(config[name], int) and config[name] > 0,
            name,
            config[name],
            "a positive integer",
        )
    _check(config.eval_every_epochs > 0, "eval_every_epochs", config.eval_every_epochs, "> 0")
    fourier_every_epochs = config.get("fourier_every_epochs", 0.0)
    _check(fourier_every_epochs >= 0, "fourier_every_epochs", fourier_every_epochs, ">= 0 (0: off)")


def check_workdir(workdir: str) -> None:
    """The workdir must be creatable and writable (checked with a throwaway file)."""
    if not workdir:
        raise ConfigError("--workdir is empty: give a directory for checkpoints and metrics")
    if workdir.startswith("gs://"):
        return  # written through TensorStore/TF's filesystems; no local check is possible
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise ConfigError(
            f"workdir {workdir!r} cannot be written ({e.strerror}); choose a writable directory"
        ) from None


# Fields that fix the shapes of the saved state or the meaning of its input stream: a resume
# that changes them would continue a different experiment.
RESUME_INCOMPATIBLE = (
    "model.",
    "data.name",
    "data.image_size",
    "data.train_split",
    "data.train_fraction",
    "data.subset_seed",
    "data.folder_root",
    "data.folder_validation_fraction",
    "data.folder_on_corrupt",
    "data.num_workers",
    "seed",
    "batch_size",
    "optimizer.grad_clip_norm",
)


def resume_differences(
    saved: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(incompatible, compatible) differences between a run's saved config and a new one."""
    saved_flat, new_flat = flatten(saved), flatten(new)
    incompatible, compatible = [], []
    for key in sorted(set(saved_flat) | set(new_flat)):
        old, value = saved_flat.get(key, "<unset>"), new_flat.get(key, "<unset>")
        # A None placeholder (config_lib.model_config) and a field a run's config did not have
        # yet both mean the named model's default.
        if old == value or (old in (None, "<unset>") and value in (None, "<unset>")):
            continue
        line = f"{key}: {old!r} -> {value!r}"
        if key == "optimizer.grad_clip_norm" and bool(old) == bool(value):
            compatible.append(line)  # only switching clipping on/off changes the state's shape
        elif old == "<unset>" and key.startswith("data.") and _is_data_default(key, value):
            compatible.append(line)  # a data field added after the run started, at its default
        elif any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUME_INCOMPATIBLE):
            incompatible.append(line)
        else:
            compatible.append(line)
    return incompatible, compatible


def check_resume(saved: Mapping[str, Any], new: Mapping[str, Any], workdir: str) -> list[str]:
    """Refuse an incompatible resume; return the compatible differences for the log."""
    incompatible, compatible = resume_differences(saved, new)
    if incompatible:
        raise ConfigError(
            f"cannot resume {workdir} with this config: it differs from the saved run in fields"
            " that fix the model, its state or its data stream:\n  "
            + "\n  ".join(incompatible)
            + "\nUse a new --workdir for a new experiment, or restore these values to resume."
        )
    return compatible


def _check(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}={value!r} is not allowed: use {allowed}")


def _is_data_default(key: str, value: Any) -> bool:
    defaults = data.default_data_config()
    field = key[len("data.") :]
    return field in defaults and defaults[field] == value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: a nested config as dotted field names."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
