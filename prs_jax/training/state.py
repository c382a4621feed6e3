"""The train state and what makes it: the model factory, the device mesh and the initialisation
(from a seed, or from converted weights)."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding

from prs_jax import models
from prs_jax.models import timm_weights
from prs_jax.training import config_lib


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
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


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
    """A fresh state with the weights of `init_from.path` (prs_jax.models.timm_weights.load_into) and a new
    optimizer state for them; step and rng are kept."""
    # The local copy of the replicated initial variables gives the target shapes (and the fresh
    # head for head_init='init').
    local = jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0)),
        {"params": state.params, "batch_stats": state.batch_stats},
    )
    variables = timm_weights.load_into(
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
