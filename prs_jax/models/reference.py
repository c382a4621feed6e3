"""The straightforward ViT/GPSA, written as the papers state them: the baseline of the fast path.

ConViT's GPSA (d'Ascoli et al., 2021, Eq. 5) with the PRS gate, computed the obvious way: for
every example, the content map softmax(QK^T / sqrt(d)) and the positional map (broadcast over
the batch) are mixed into A [B, H, N, N], then A V; LayerNorm and exact GELU are Flax's. The
parameter tree (names, shapes, initialisers) is that of `vit.VisionTransformer`, so the same
variables apply to both: tests/test_fast_path.py checks that the fast model equals this one,
and `python -m prs_jax.bench` times it as the baseline. Not used for training.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prs_jax.models.gpsa import (
    dense_init,
    effective_gate,
    grid_size_of,
    identity_init,
    local_init,
    relative_indices,
)
from prs_jax.models.vit import VisionTransformer, torch_conv_init

Array = jax.Array


class ReferenceGPSA(nn.Module):
    """GPSA over patch tokens [B, N, C] with the mixed attention matrix built per example."""

    num_heads: int
    locality_strength: float = 1.0

    @nn.compact
    def __call__(self, x: Array, conv_strength: Array) -> Array:
        batch, num_tokens, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        dense = functools.partial(nn.Dense, use_bias=False, kernel_init=dense_init)
        qk = dense(2 * width, name="qk")(x).reshape(batch, num_tokens, 2, heads, head_dim)
        q, k = qk[:, :, 0], qk[:, :, 1]
        v = dense(width, kernel_init=identity_init, name="v")(x)
        v = v.reshape(batch, num_tokens, heads, head_dim)
        pos_proj = nn.Dense(heads, kernel_init=local_init(self.locality_strength), name="pos_proj")
        pos_logits = pos_proj(jnp.asarray(relative_indices(grid_size_of(num_tokens))))
        positional = jax.nn.softmax(jnp.transpose(pos_logits, (2, 0, 1)), axis=-1)  # [H, N, N]
        gating_param = self.param("gating_param", nn.initializers.ones, (heads,), jnp.float32)
        gate = effective_gate(gating_param, conv_strength)[None, :, None, None]
        content = jax.nn.softmax(jnp.einsum("bnhd,bmhd->bhnm", q, k) * head_dim**-0.5, axis=-1)
        attention = (1.0 - gate) * content + gate * positional[None]  # [B, H, N, N]
        out = jnp.einsum("bhnm,bmhd->bnhd", attention, v).reshape(batch, num_tokens, width)
        return nn.Dense(width, kernel_init=dense_init, name="proj")(out)


class ReferenceMHSA(nn.Module):
    """Multi-head self-attention with a fused QKV projection, [B, N, C] -> [B, N, C]."""

    num_heads: int
    qkv_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, num_tokens, width = x.shape
        head_dim = width // self.num_heads
        qkv = nn.Dense(3 * width, use_bias=self.qkv_bias, kernel_init=dense_init, name="qkv")(x)
        qkv = qkv.reshape(batch, num_tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        attention = jax.nn.softmax(jnp.einsum("bnhd,bmhd->bhnm", q, k) * head_dim**-0.5, axis=-1)
        out = jnp.einsum("bhnm,bmhd->bnhd", attention, v).reshape(batch, num_tokens, width)
        return nn.Dense(width, kernel_init=dense_init, name="proj")(out)


class ReferenceMlp(nn.Module):
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = functools.partial(nn.Dense, kernel_init=dense_init)
        hidden = nn.gelu(dense(int(x.shape[-1] * self.mlp_ratio), name="fc1")(x), approximate=False)
        return dense(x.shape[-1], name="fc2")(hidden)


class ReferenceBlock(nn.Module):
    """Pre-norm block; stochastic depth drops a residual branch per example, as in vit.Block."""

    num_heads: int
    use_gpsa: bool
    mlp_ratio: float
    qkv_bias: bool
    locality_strength: float
    drop_path_rate: float
    layer_norm_epsilon: float

    @nn.compact
    def __call__(self, x: Array, conv_strength: Array | None, train: bool) -> Array:
        norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_epsilon)
        drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2))
        y = norm(name="norm1")(x)
        if self.use_gpsa:
            y = ReferenceGPSA(self.num_heads, self.locality_strength, name="attn")(y, conv_strength)
        else:
            y = ReferenceMHSA(self.num_heads, self.qkv_bias, name="attn")(y)
        x = x + drop_path(y, deterministic=not train)
        y = ReferenceMlp(self.mlp_ratio, name="mlp")(norm(name="norm2")(x))
        return x + drop_path(y, deterministic=not train)


class ReferenceVisionTransformer(nn.Module):
    """ConViT / PRS-ViT / DeiT, float32: images [B, H, W, 3], conv_strength [L] -> logits [B, K].

    Fields are those of `vit.VisionTransformer` (`from_model` copies them); dropout_rate must
    be 0 (the configs' value): only stochastic depth is modelled.
    """

    num_classes: int
    patch_size: int
    hidden_size: int
    depth: int
    num_heads: int
    num_gpsa_layers: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    class_token_position_embedding: bool = False
    locality_strength: float = 1.0
    drop_path_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6

    @classmethod
    def from_model(cls, model: VisionTransformer) -> ReferenceVisionTransformer:
        """The reference of the same configuration as `model` (same parameter tree)."""
        if model.dropout_rate:
            raise ValueError("the reference models stochastic depth only: dropout_rate must be 0")
        fields = cls.__dataclass_fields__.values()
        names = [f.name for f in fields if f.name not in ("parent", "name")]
        return cls(**{name: getattr(model, name) for name in names})

    @nn.compact
    def __call__(self, images: Array, conv_strength: Array, *, train: bool = False) -> Array:
        x = nn.Conv(
            self.hidden_size,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            kernel_init=torch_conv_init,
            name="patch_embed",
        )(images)
        batch, grid_h, grid_w, width = x.shape
        x = x.reshape(batch, grid_h * grid_w, width)
        cls_token = self.param("cls_token", dense_init, (1, 1, width), jnp.float32)

        def join_cls(tokens: Array) -> Array:
            return jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, width)), tokens], 1)

        has_cls = self.class_token_position_embedding
        if has_cls:
            x = join_cls(x)
        x = x + self.param("pos_embed", dense_init, (1,) + x.shape[1:], jnp.float32)
        drop_path_rates = np.linspace(0.0, self.drop_path_rate, self.depth).tolist()
        for index in range(self.depth):
            if index == self.num_gpsa_layers and not has_cls:
                x, has_cls = join_cls(x), True
            use_gpsa = index < self.num_gpsa_layers
            x = ReferenceBlock(
                self.num_heads,
                use_gpsa,
                self.mlp_ratio,
                self.qkv_bias,
                self.locality_strength,
                drop_path_rates[index],
                self.layer_norm_epsilon,
                name=f"blocks_{index}",
            )(x, conv_strength[index] if use_gpsa else None, train)
        x = nn.LayerNorm(epsilon=self.layer_norm_epsilon, name="norm")(x)
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="head")(x[:, 0])


def reference_of(model: Any) -> ReferenceVisionTransformer:
    """The straightforward twin of a `VisionTransformer` (float32, same parameter tree)."""
    return ReferenceVisionTransformer.from_model(model)
