"""AdamW with gradient clipping and a weight-decay mask (DeiT recipe)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def weight_decay_mask(params: Any) -> Any:
    """True for the leaves that are decayed: Dense and Conv kernels only.

    Biases, LayerNorm/BatchNorm scales and offsets, GPSA gates (gating_param), the position
    embedding and the class token are not decayed (DeiT/timm exclude 1-D parameters, pos_embed
    and cls_token). GPSA's 3 -> H positional projection is a Dense kernel and is decayed, as in
    timm's ConViT.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate: optax.Schedule
) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW; `config` is the run config's `optimizer` section."""
    steps = []
    if config.grad_clip_norm:
        steps.append(optax.clip_by_global_norm(config.grad_clip_norm))
    steps.append(
        optax.adamw(
            learning_rate,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*steps)
