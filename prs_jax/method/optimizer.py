"""AdamW with optional gradient clipping and a weight-decay mask (DeiT recipe), and the PRS
conv phase: a GPSA layer's content path rests while the layer is a convolution."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

# Parameter paths of a GPSA layer's content path (prs_jax.models.gpsa): the fused query-key
# projection and the gate. At conv strength s = 1 their gradients are exactly 0 (the content
# term is multiplied by 1 - g = 0, and d g_eff / d lambda = (1 - s) sigmoid'(lambda) = 0); v,
# proj and pos_proj shape the convolution and train in every phase. GPSA layer l is block l.
_CONTENT_PATH = re.compile(r"blocks_(\d+)/attn/(qk/.+|gating_param)")


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


def content_path_layers(params: Any) -> Any:
    """Per leaf, the GPSA layer of which it is the content path (qk, gating_param), else -1."""

    def layer(path, _):
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        match = _CONTENT_PATH.fullmatch(name)
        return int(match.group(1)) if match else -1

    return jax.tree_util.tree_map_with_path(layer, params)


class PausedAdamWState(NamedTuple):
    """optax's Adam state over the whole tree, and the steps each layer's content path trained."""

    adam: optax.ScaleByAdamState  # count: the global step count
    decay: optax.OptState
    content_count: jax.Array  # int32[L]


def scale_by_adamw_paused(
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    decay_mask: Any,
    frozen_layers: Any = content_path_layers,
    pause: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """AdamW's direction (Adam, then masked decoupled decay; no learning rate) that rests the
    leaves of a layer while it is a convolution.

    `frozen_layers(params)` gives each leaf's GPSA layer, or -1 for a leaf that always trains.
    The update takes the step's `conv_strength` (f32[L], traced): while conv_strength[l] == 1
    the leaves of layer l get a zero update (no decay either), their moments stay and layer l's
    count does not advance, so from its switch on the layer's bias correction counts its own
    steps, as a fresh Adam's would. optax.scale_by_adam keeps one count for its whole tree, so
    it runs unchanged for every leaf and a resting layer's leaves are re-corrected with their
    own count; while that count equals the global one, optax's own value is kept (XLA may round
    the two divisions differently), so ConViT (s = 0 throughout) is optax.adamw bit for bit.
    `pause=False` trains every layer at every step: optax.adamw (the state keeps its shape, so
    a run can resume with either setting).
    """
    adam = optax.scale_by_adam(b1, b2, eps)
    decay = optax.add_decayed_weights(weight_decay, decay_mask)

    def num_layers(params) -> int:
        return 1 + max(jax.tree.leaves(frozen_layers(params)), default=-1)

    def init(params):
        # At least one count: orbax refuses to save a zero-size array, and a model without GPSA
        # layers (DeiT, ResNet) would otherwise have one in every checkpoint.
        counts = jnp.zeros((max(num_layers(params), 1),), jnp.int32)
        return PausedAdamWState(adam.init(params), decay.init(params), counts)

    def update(updates, state, params=None, *, conv_strength=None, **extra_args):
        del extra_args
        adam_updates, adam_state = adam.update(updates, state.adam)
        if num_layers(params) == 0:
            updates, decay_state = decay.update(adam_updates, state.decay, params)
            return updates, PausedAdamWState(adam_state, decay_state, state.content_count)
        if not pause:  # every layer trains at every step: optax.adamw
            trains = jnp.ones(state.content_count.shape, bool)
        elif conv_strength is None:
            raise ValueError(
                "this optimizer rests the GPSA content path while a layer is a convolution:"
                " pass the step's conv_strength to update()"
            )
        else:
            trains = jnp.asarray(conv_strength) < 1.0  # bool[L]
        content_count = jnp.where(trains, state.content_count + 1, state.content_count)
        layers = frozen_layers(params)

        def own_count(layer, update_, mu, nu):
            if layer < 0:
                return update_
            count = content_count[layer]
            # scale_by_adam's step (its bias correction, eps outside the root) at this count.
            mu_hat = mu / (1 - b1**count).astype(mu.dtype)
            nu_hat = nu / (1 - b2**count).astype(nu.dtype)
            own = mu_hat / (jnp.sqrt(nu_hat) + eps)
            return jnp.where(count == adam_state.count, update_, own)

        def rest(layer, new, old):
            return new if layer < 0 else jnp.where(trains[layer], new, old)

        adam_updates = jax.tree.map(own_count, layers, adam_updates, adam_state.mu, adam_state.nu)
        updates, decay_state = decay.update(adam_updates, state.decay, params)
        zeros = jax.tree.map(jnp.zeros_like, updates)
        adam_state = adam_state._replace(
            mu=jax.tree.map(rest, layers, adam_state.mu, state.adam.mu),
            nu=jax.tree.map(rest, layers, adam_state.nu, state.adam.nu),
        )
        return (
            jax.tree.map(rest, layers, updates, zeros),
            PausedAdamWState(adam_state, decay_state, content_count),
        )

    return optax.GradientTransformationExtraArgs(init, update)


def resolve_learning_rate(config: ml_collections.ConfigDict, batch_size: int) -> tuple[float, str]:
    """The peak learning rate of a run and how it was derived, for the log.

    `config` is the run config's `optimizer` section. An absolute `learning_rate` > 0 is used
    as it is; otherwise DeiT's linear scaling rule gives learning_rate_per_512 x batch_size /
    512 (DeiT/ConViT main.py), evaluated here so that it follows a batch_size override. Exactly
    one of the two must be > 0.
    """
    absolute, per_512 = config.learning_rate, config.learning_rate_per_512
    if absolute < 0 or per_512 < 0:
        raise ValueError(
            f"optimizer.learning_rate={absolute} and optimizer.learning_rate_per_512={per_512}"
            " must be >= 0"
        )
    if absolute > 0 and per_512 > 0:
        raise ValueError(
            f"optimizer.learning_rate={absolute} (absolute) and optimizer.learning_rate_per_512="
            f"{per_512} (scaled by batch_size / 512) are both set: set the one you mean and the"
            " other to 0"
        )
    if absolute > 0:
        return absolute, f"learning rate {_short(absolute)} (absolute, batch size {batch_size})"
    if per_512 == 0:
        raise ValueError(
            "optimizer.learning_rate_per_512=0.0 and optimizer.learning_rate=0.0: one must be > 0"
        )
    value = per_512 * batch_size / 512
    return value, f"learning rate {_short(value)} = {_short(per_512)} x {batch_size} / 512"


def _short(rate: float) -> str:
    return np.format_float_scientific(rate, precision=4, trim="-", exp_digits=1)  # 2.5e-4


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformationExtraArgs:
    """Optional global-norm clipping, then AdamW; `config` is the run config's `optimizer` section.

    Its update takes the step's `conv_strength` (f32[L]): with `pause_content_path_while_conv`
    (the default) a GPSA layer's content path is not decayed and its Adam state does not
    advance while the layer is a convolution. Otherwise the update is optax.adamw's, bit for
    bit. The learning rate follows the global step either way.
    """
    steps = []
    if config.grad_clip_norm:
        steps.append(optax.clip_by_global_norm(config.grad_clip_norm))
    steps.append(
        scale_by_adamw_paused(
            config.b1,
            config.b2,
            config.eps,
            config.weight_decay,
            decay_mask=weight_decay_mask,
            pause=config.pause_content_path_while_conv,
        )
    )
    steps.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*steps)
