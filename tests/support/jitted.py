"""A module's init and apply, jitted, for tests that run a model on concrete inputs.

Eagerly, flax dispatches a model op by op, each a small compile of its own: 5-20 s for one
forward pass of a 4-block ViT on this 2-core CPU, against one compile per input shape (and a
persistent compilation cache hit on the next run) under jit.
"""

from collections.abc import Callable

import flax.linen as nn
import jax


def jit_init(model: nn.Module) -> Callable:
    """model.init, jitted; `train` is static."""
    return jax.jit(model.init, static_argnames=("train",))


def jit_apply(model: nn.Module) -> Callable:
    """model.apply, jitted; `train` and `mutable` are static."""
    return jax.jit(model.apply, static_argnames=("train", "mutable"))
