"""ResNet baselines (He et al., 2016) with torchvision's layout, for CIFAR and ImageNet stems.

The layout follows torchvision's ResNet v1.5 (the stride of a bottleneck sits on its 3x3 conv)
so that weights convert from torchvision/timm one to one: convs have no bias, padding is
PyTorch's symmetric padding (never 'SAME', which pads even inputs asymmetrically), BatchNorm
uses PyTorch's momentum 0.1 and epsilon 1e-5, and submodules are named as in torchvision
(`conv1`, `bn1`, `layer1_0` for `layer1.0`, `downsample_conv` for `downsample.0`, `fc`).

One difference from PyTorch's BatchNorm in training: flax updates the running variance with the
biased batch variance, PyTorch with the unbiased one (a factor n / (n - 1), n = B * H * W).
Inference from converted weights is unaffected.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# torchvision's init: convs kaiming_normal_(mode='fan_out', nonlinearity='relu'); the head keeps
# nn.Linear's default, kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for weight and bias.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BLOCK_EXPANSION = {"basic": 1, "bottleneck": 4}
STEMS = ("cifar", "imagenet")


def _pad(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch's padding = k // 2 on both sides of H and W."""
    return ((kernel_size // 2, kernel_size // 2),) * 2


def _conv(features: int, kernel_size: int, strides: int = 1, *, dtype: Dtype, name: str) -> nn.Conv:
    """A bias-free k x k conv with PyTorch padding and torchvision's init: [B,H,W,C] -> [B,H/s,W/s,F]."""
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=_pad(kernel_size),
        use_bias=False,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _batch_norm(train: bool, *, dtype: Dtype, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    """BatchNorm with PyTorch's semantics: running = 0.9 running + 0.1 batch, epsilon 1e-5, and
    the batch variance as the mean squared deviation from the batch mean, as PyTorch computes it.

    Not flax's default E[x^2] - E[x]^2 (`use_fast_variance`), which cancels in float32 where a
    channel's mean is large against its spread: the parity harness (prs_jax.parity) measured it
    moving a CIFAR ResNet-18's first gradient norm 3e-5 away from PyTorch's, against 7e-6 here.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        use_fast_variance=False,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first): [B, H, W, C] -> [B, H/s, W/s, features]."""

    features: int
    strides: int = 1
    projection: bool = False
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        conv = functools.partial(_conv, dtype=self.dtype)
        norm = functools.partial(_batch_norm, train, dtype=self.dtype)
        y = nn.relu(norm(name="bn1")(conv(self.features, 3, self.strides, name="conv1")(x)))
        y = conv(self.features, 3, name="conv2")(y)
        # Zero-init of the last BN scale makes the block start as the identity (Goyal et al. 2017).
        y = norm(name="bn2", zero_scale=self.zero_init_residual)(y)
        shortcut = x
        if self.projection:
            shortcut = conv(self.features, 1, self.strides, name="downsample_conv")(x)
            shortcut = norm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, v1.5) -> 1x1 x4: [B, H, W, C] -> [B, H/s, W/s, 4 * features]."""

    features: int
    strides: int = 1
    projection: bool = False
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        conv = functools.partial(_conv, dtype=self.dtype)
        norm = functools.partial(_batch_norm, train, dtype=self.dtype)
        out_features = self.features * BLOCK_EXPANSION["bottleneck"]
        y = nn.relu(norm(name="bn1")(conv(self.features, 1, name="conv1")(x)))
        y = nn.relu(norm(name="bn2")(conv(self.features, 3, self.strides, name="conv2")(y)))
        y = conv(out_features, 1, name="conv3")(y)
        y = norm(name="bn3", zero_scale=self.zero_init_residual)(y)
        shortcut = x
        if self.projection:
            shortcut = conv(out_features, 1, self.strides, name="downsample_conv")(x)
            shortcut = norm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class BlockSpec(NamedTuple):
    """One residual block: its torchvision name, width, stride and whether it projects."""

    name: str
    features: int
    strides: int
    projection: bool


class ResNet(nn.Module):
    """ResNet: images f32[B, H, W, 3] -> logits f32[B, num_classes]; conv_strength is ignored.

    Stems: 'cifar' is a 3x3 stride-1 conv + BN + ReLU (resolution kept); 'imagenet' is a 7x7
    stride-2 conv + BN + ReLU + 3x3 stride-2 max-pool (resolution / 4). Stage i has width
    `width * 2**i` (times 4 for bottlenecks) and halves the resolution from stage 1 on.

    With `mutable=['intermediates']`, feature maps are sown as ('intermediates', 'feature_maps'):
    a tuple of [B, H, W, C] arrays in compute dtype, in the order of `feature_map_kinds()`: the
    stem output (after the max-pool for the 'imagenet' stem), then each residual block's output.
    """

    stage_sizes: Sequence[int]
    block: str  # 'basic' | 'bottleneck'
    num_classes: int
    stem: str  # 'cifar' | 'imagenet'
    width: int = 64
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32  # compute dtype; parameters stay float32

    # No GPSA layer: the train loop passes an empty conv_strength vector.
    num_gpsa_layers: ClassVar[int] = 0

    @nn.nowrap
    def block_specs(self) -> tuple[BlockSpec, ...]:
        """The residual blocks in order, from the fields alone (works on an unbound module)."""
        if self.block not in BLOCK_EXPANSION:
            raise ValueError(f"block must be one of {sorted(BLOCK_EXPANSION)}, got {self.block!r}")
        expansion = BLOCK_EXPANSION[self.block]
        specs, in_features = [], self.width
        for stage, num_blocks in enumerate(self.stage_sizes):
            features = self.width * 2**stage
            for index in range(num_blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                projection = strides != 1 or in_features != features * expansion
                specs.append(BlockSpec(f"layer{stage + 1}_{index}", features, strides, projection))
                in_features = features * expansion
        return tuple(specs)

    @nn.nowrap
    def feature_map_kinds(self) -> tuple[str, ...]:
        """'embedding' (stem), then per block 'downsampling' if it projects, else 'convolution'."""
        return ("embedding",) + tuple(
            "downsampling" if spec.projection else "convolution" for spec in self.block_specs()
        )

    @nn.compact
    def __call__(
        self, images: Array, conv_strength: Array | None = None, *, train: bool = False
    ) -> Array:
        self._check(images, conv_strength)
        conv = functools.partial(_conv, dtype=self.dtype)
        norm = functools.partial(_batch_norm, train, dtype=self.dtype)

        x = images.astype(self.dtype)
        if self.stem == "cifar":
            x = nn.relu(norm(name="bn1")(conv(self.width, 3, name="conv1")(x)))
        else:
            x = nn.relu(norm(name="bn1")(conv(self.width, 7, 2, name="conv1")(x)))
            # Padding with -inf (flax's max_pool does), as PyTorch's MaxPool2d(3, 2, padding=1).
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        self.sow("intermediates", "feature_maps", x)

        block_cls = BasicBlock if self.block == "basic" else Bottleneck
        for spec in self.block_specs():
            x = block_cls(
                spec.features,
                strides=spec.strides,
                projection=spec.projection,
                zero_init_residual=self.zero_init_residual,
                dtype=self.dtype,
                name=spec.name,
            )(x, train=train)
            self.sow("intermediates", "feature_maps", x)

        # Pool in float32: a bf16 sum over H * W positions loses precision.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        fan_in = x.shape[-1]
        logits = nn.Dense(
            self.num_classes,
            kernel_init=linear_init,
            bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                key, shape, dtype, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in)
            ),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="fc",
        )(x)
        return logits.astype(jnp.float32)

    @nn.nowrap
    def _check(self, images: Array, conv_strength: Array | None) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if images.ndim != 4:
            raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
        if conv_strength is not None and jnp.shape(conv_strength) != (0,):
            raise ValueError(
                f"ResNet has no GPSA layer: conv_strength must be None or shape (0,),"
                f" got {jnp.shape(conv_strength)}"
            )


def resnet18(num_classes: int, stem: str = "cifar", **kwargs: Any) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2] (11.7 M params with the ImageNet stem, 1000 classes)."""
    return ResNet(
        stage_sizes=(2, 2, 2, 2), block="basic", num_classes=num_classes, stem=stem, **kwargs
    )


def resnet50(num_classes: int, stem: str = "imagenet", **kwargs: Any) -> ResNet:
    """ResNet-50 v1.5: bottlenecks [3, 4, 6, 3] (25.6 M params with the ImageNet stem, 1000 classes)."""
    return ResNet(
        stage_sizes=(3, 4, 6, 3), block="bottleneck", num_classes=num_classes, stem=stem, **kwargs
    )
