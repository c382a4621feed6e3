"""One vision-transformer family: ConViT / PRS-ViT (GPSA layers first) and DeiT (none).

The model is ConViT's (d'Ascoli et al., 2021): patch embedding, learned absolute position
embedding, `num_gpsa_layers` GPSA blocks, then multi-head self-attention (MHSA) blocks. The
class token joins right after the last GPSA block (GPSA needs the bare patch grid) and is read
after the final LayerNorm. DeiT is the same model with no GPSA layer, a biased QKV projection
and a position embedding that also covers the class token. PRS is not a different model: it is
a schedule for the vector of conv strengths, one per GPSA layer, that `__call__` takes.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prs_jax.models.gpsa import (
    DenseKernel,
    GatedPositionalSelfAttention,
    content_attention,
    dense_init,
    merge_heads,
    project_heads,
)

Array = jax.Array
Dtype = Any

# PyTorch's default Conv2d init (kaiming_uniform with a = sqrt(5)), as timm's patch embedding.
torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class MultiHeadSelfAttention(nn.Module):
    """Standard MHSA with a fused QKV projection (timm's layout): x [B, N, C] -> [B, N, C].

    Written out rather than `nn.MultiHeadDotProductAttention` so that the parameter layout is
    the fused qkv/proj of ConViT and DeiT checkpoints. Heads are projected straight into
    [B, H, N, d] (the layout the batched attention products want, so no transposes between
    them), and the softmax is in float32 whatever the compute dtype.
    """

    num_heads: int
    qkv_bias: bool = False
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        width = x.shape[-1]
        qkv = DenseKernel(3 * width, use_bias=self.qkv_bias, kernel_init=dense_init, name="qkv")(
            width
        )
        proj_kernel, proj_bias = DenseKernel(
            width, use_bias=True, kernel_init=dense_init, name="proj"
        )(width)
        cast = functools.partial(jnp.asarray, dtype=self.dtype)
        x = cast(x)
        # One fused projection into [B, 3H, N, d]: the query, key and value heads, in that order.
        qkv_kernel = qkv[0] if self.qkv_bias else qkv
        heads = project_heads(x, cast(qkv_kernel), 3 * self.num_heads)
        if self.qkv_bias:
            heads = heads + cast(qkv[1]).reshape(3 * self.num_heads, 1, -1)
        q, k, v = jnp.split(heads, 3, axis=1)
        attention = content_attention(q, k).astype(self.dtype)
        out = jnp.einsum("bhnm,bhmd->bhnd", attention, v)
        out = merge_heads(out, cast(proj_kernel)) + cast(proj_bias)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


def gelu(x: Array) -> Array:
    """Exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2: PyTorch's formula.

    `nn.gelu(approximate=False)` evaluates Phi through erfc, which XLA:CPU expands into a
    tail-accurate but several times more expensive sequence (with exp); erf is one rational
    polynomial. The two agree to float32 rounding (see tests/test_fast_path.py).
    """
    return x * (0.5 + 0.5 * jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


class Mlp(nn.Module):
    """Transformer MLP: Dense(ratio * C) -> exact GELU (PyTorch's default) -> Dense(C)."""

    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        width = x.shape[-1]
        dense = functools.partial(
            nn.Dense, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init
        )
        x = dense(int(width * self.mlp_ratio), name="fc1")(x)
        x = gelu(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = dense(width, name="fc2")(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class Block(nn.Module):
    """Pre-norm transformer block with GPSA or MHSA; returns (after attention, after MLP).

    The first output, the attention residual, is only used for the Fourier analysis; XLA drops
    it otherwise.
    """

    num_heads: int
    use_gpsa: bool
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    locality_strength: float = 1.0
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, conv_strength: Array | None, *, train: bool = False
    ) -> tuple[Array, Array]:
        norm = functools.partial(
            nn.LayerNorm, epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=jnp.float32
        )
        # Stochastic depth: drop the whole residual branch per example (broadcast over N and C).
        drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2))

        y = norm(name="norm1")(x)
        if self.use_gpsa:
            y = GatedPositionalSelfAttention(
                self.num_heads,
                locality_strength=self.locality_strength,
                dropout_rate=self.dropout_rate,
                dtype=self.dtype,
                name="attn",
            )(y, conv_strength, train=train)
        else:
            y = MultiHeadSelfAttention(
                self.num_heads,
                qkv_bias=self.qkv_bias,
                dropout_rate=self.dropout_rate,
                dtype=self.dtype,
                name="attn",
            )(y, train=train)
        x = x + drop_path(y, deterministic=not train)
        after_attention = x

        y = Mlp(self.mlp_ratio, self.dropout_rate, self.dtype, name="mlp")(
            norm(name="norm2")(x), train=train
        )
        x = x + drop_path(y, deterministic=not train)
        return after_attention, x


class VisionTransformer(nn.Module):
    """ConViT / PRS-ViT / DeiT: images f32[B, H, W, 3], conv_strength f32[L] -> logits f32[B, K].

    L = num_gpsa_layers. With `mutable=['intermediates']`, the per-block feature maps are sown as
    ('intermediates', 'feature_maps'): a tuple of [B, S, S, C] grids (class token dropped) in the
    order of `feature_map_kinds()`: the patch embedding, then per block the attention residual
    and the MLP residual.
    """

    num_classes: int
    patch_size: int
    hidden_size: int
    depth: int
    num_heads: int
    num_gpsa_layers: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    # DeiT: the position embedding has a slot for the class token, which joins before block 0.
    class_token_position_embedding: bool = False
    locality_strength: float = 1.0
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    def feature_map_kinds(self) -> tuple[str, ...]:
        """Kinds of the sown feature maps: 'embedding', then ('attention', 'mlp') per block."""
        return ("embedding",) + ("attention", "mlp") * self.depth

    @nn.compact
    def __call__(self, images: Array, conv_strength: Array, *, train: bool = False) -> Array:
        self._check(images, conv_strength)
        x = nn.Conv(
            self.hidden_size,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            kernel_init=torch_conv_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="patch_embed",
        )(images.astype(self.dtype))
        batch, grid_h, grid_w, width = x.shape
        x = x.reshape(batch, grid_h * grid_w, width)

        cls_token = self.param("cls_token", dense_init, (1, 1, width), jnp.float32)
        join_cls = functools.partial(_join_class_token, cls_token.astype(self.dtype))
        has_cls = self.class_token_position_embedding
        if has_cls:
            x = join_cls(x)
        pos_embed = self.param("pos_embed", dense_init, (1,) + x.shape[1:], jnp.float32)
        x = x + pos_embed.astype(self.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        self._sow_grid(x, has_cls, grid_h)

        # Stochastic-depth rate grows linearly with depth (DeiT).
        drop_path_rates = np.linspace(0.0, self.drop_path_rate, self.depth).tolist()
        for index in range(self.depth):
            if index == self.num_gpsa_layers and not has_cls:
                x, has_cls = join_cls(x), True
            use_gpsa = index < self.num_gpsa_layers
            after_attention, x = Block(
                self.num_heads,
                use_gpsa=use_gpsa,
                mlp_ratio=self.mlp_ratio,
                qkv_bias=self.qkv_bias,
                locality_strength=self.locality_strength,
                drop_path_rate=drop_path_rates[index],
                dropout_rate=self.dropout_rate,
                layer_norm_epsilon=self.layer_norm_epsilon,
                dtype=self.dtype,
                name=f"blocks_{index}",
            )(x, conv_strength[index] if use_gpsa else None, train=train)
            self._sow_grid(after_attention, has_cls, grid_h)
            self._sow_grid(x, has_cls, grid_h)

        x = nn.LayerNorm(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=jnp.float32, name="norm"
        )(x)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=dense_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="head",
        )(x[:, 0])
        return logits.astype(jnp.float32)

    @nn.nowrap
    def _check(self, images: Array, conv_strength: Array) -> None:
        if not 0 <= self.num_gpsa_layers < self.depth:
            raise ValueError(
                f"num_gpsa_layers={self.num_gpsa_layers} must be in [0, depth - 1 = {self.depth - 1}]:"
                " the class token joins after the last GPSA layer and needs a self-attention block"
                " to read the image"
            )
        if (
            images.ndim != 4
            or images.shape[1] % self.patch_size
            or images.shape[2] % self.patch_size
        ):
            raise ValueError(
                f"images must be [B, H, W, C] with H and W divisible by patch_size={self.patch_size},"
                f" got shape {images.shape}"
            )
        if jnp.shape(conv_strength) != (self.num_gpsa_layers,):
            raise ValueError(
                f"conv_strength must have shape ({self.num_gpsa_layers},), one value per GPSA layer,"
                f" got {jnp.shape(conv_strength)}"
            )

    def _sow_grid(self, tokens: Array, has_cls: bool, grid_h: int) -> None:
        """Sow patch tokens [B, N(+1), C] as a spatial grid [B, S, S', C], class token dropped."""
        patches = tokens[:, 1:] if has_cls else tokens
        batch, _, width = patches.shape
        self.sow("intermediates", "feature_maps", patches.reshape(batch, grid_h, -1, width))


def _join_class_token(cls_token: Array, x: Array) -> Array:
    """Prepend the class token [1, 1, C] to tokens x [B, N, C] -> [B, N + 1, C]."""
    return jnp.concatenate([jnp.broadcast_to(cls_token, (x.shape[0], 1, x.shape[2])), x], axis=1)


# Named sizes. ConViT heads are 48 wide (d'Ascoli et al., Table 1); DeiT's are 64.
# DeiT: no GPSA layer, biased QKV, a position-embedding slot for the class token.
_DEIT = dict(num_gpsa_layers=0, qkv_bias=True, class_token_position_embedding=True)
VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "convit_tiny": dict(hidden_size=192, num_heads=4, depth=12, num_gpsa_layers=10),
    "convit_small": dict(hidden_size=432, num_heads=9, depth=12, num_gpsa_layers=10),
    "convit_base": dict(hidden_size=768, num_heads=16, depth=12, num_gpsa_layers=10),
    "deit_tiny": dict(hidden_size=192, num_heads=3, depth=12, **_DEIT),
    "deit_small": dict(hidden_size=384, num_heads=6, depth=12, **_DEIT),
    "deit_base": dict(hidden_size=768, num_heads=12, depth=12, **_DEIT),  # deit_base_patch16_224
}
