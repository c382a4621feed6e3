"""The model family: ConViT / PRS-ViT / DeiT (`vit.py`, with GPSA in `gpsa.py`) and ResNets.

Every model is called as `model.apply(variables, images, conv_strength, train=...)` with
conv_strength f32[model.num_gpsa_layers] (empty for DeiT and ResNet), and sows its per-block
feature maps as ('intermediates', 'feature_maps') in the order of `model.feature_map_kinds()`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prs_jax.models import resnet
from prs_jax.models.vit import VIT_VARIANTS, VisionTransformer

RESNET_VARIANTS = {"resnet18": resnet.resnet18, "resnet50": resnet.resnet50}
MODEL_NAMES = tuple(VIT_VARIANTS) + tuple(RESNET_VARIANTS)

# The fields `create_model` can set besides num_classes: a ViT's dataclass fields; a ResNet's
# less stage_sizes and block, which the named builders fix.
VIT_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(VisionTransformer)
    if f.name not in ("parent", "name", "num_classes")
)
RESNET_FIELDS = ("stem", "width", "zero_init_residual", "dtype")


def model_fields(name: str) -> tuple[str, ...]:
    """The fields that `create_model(name, ...)` takes as overrides."""
    if name in VIT_VARIANTS:
        return VIT_FIELDS
    if name in RESNET_VARIANTS:
        return RESNET_FIELDS
    raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def create_model(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
    """Build a named model; `overrides` set any of its `model_fields` (e.g. patch_size,
    num_gpsa_layers, dtype); another field is an error naming the field and the model.

    ViTs need `patch_size` (16 at 224 px, 4 or 2 at 32 px). ResNets take `stem` ('cifar' or
    'imagenet').
    """
    fields = model_fields(name)
    for field in overrides:
        if field not in fields:
            raise ValueError(
                f"model {name!r} has no field {field!r}; its fields: {', '.join(fields)}"
            )
    if name in VIT_VARIANTS:
        if "patch_size" not in overrides:
            raise ValueError(f"model {name!r} needs patch_size (e.g. 16 at 224 px, 4 at 32 px)")
        return VisionTransformer(num_classes=num_classes, **{**VIT_VARIANTS[name], **overrides})
    return RESNET_VARIANTS[name](num_classes, **overrides)


def apply_with_feature_maps(
    model: nn.Module, variables: Any, images: jax.Array, conv_strength: jax.Array | None = None
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Eval-mode logits and the per-block feature maps [B, H, W, C], in `feature_map_kinds()` order."""
    if conv_strength is None:
        conv_strength = jnp.zeros((model.num_gpsa_layers,), jnp.float32)
    logits, state = model.apply(
        variables, images, conv_strength, train=False, mutable=["intermediates"]
    )
    return logits, state["intermediates"]["feature_maps"]


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree (works on ShapeDtypeStructs from eval_shape)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
