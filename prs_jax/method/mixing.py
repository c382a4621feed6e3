"""Batch-level augmentation on device: label smoothing, mixup and cutmix (DeiT recipe).

The semantics are timm's `Mixup` in its default "batch" mode, which DeiT trains with: one
mixing coefficient and one cutmix box per batch, each example mixed with the batch reversed.
Everything here is jnp with the rng traced, so it runs inside the jitted train step; the
caller keys it by `fold_in(rng, step)`, so a resumed run draws the same numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def one_hot_smoothed(labels: Array, num_classes: int, smoothing: float) -> Array:
    """int[B] -> f32[B, K] with off = smoothing / K and on = 1 - smoothing + off (timm)."""
    off_value = smoothing / num_classes
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return one_hot * (1.0 - smoothing) + off_value


def cutmix_box(
    rng: Array, lam: Array, height: int, width: int
) -> tuple[Array, Array, Array, Array]:
    """The cut box (y_low, y_high, x_low, x_high) as int32 scalars, half-open, for mix ratio lam.

    timm's `rand_bbox`: sides int(H * sqrt(1 - lam)) and int(W * sqrt(1 - lam)), a centre
    uniform over the pixels, each side extending side // 2 from the centre, clipped to the image.
    """
    ratio = jnp.sqrt(jnp.clip(1.0 - lam, 0.0, 1.0))
    half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
    half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
    rng_y, rng_x = jax.random.split(rng)
    centre_y = jax.random.randint(rng_y, (), 0, height)
    centre_x = jax.random.randint(rng_x, (), 0, width)
    return (
        jnp.clip(centre_y - half_h, 0, height),
        jnp.clip(centre_y + half_h, 0, height),
        jnp.clip(centre_x - half_w, 0, width),
        jnp.clip(centre_x + half_w, 0, width),
    )


def mixup_cutmix(
    rng: Array,
    images: Array,
    targets: Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
    mix_prob: float = 1.0,
) -> tuple[Array, Array]:
    """Mix images f32[B, H, W, C] and targets f32[B, K] with the reversed batch (timm, "batch").

    With probability `mix_prob` the batch is mixed, else returned as is. When both alphas are
    positive, cutmix is chosen with probability `switch_prob`, else mixup. lam ~ Beta(a, a).
    Mixup: x' = lam x + (1 - lam) x[::-1]. Cutmix: the box of `cutmix_box` is pasted from
    x[::-1] and lam becomes the uncut area fraction (timm's correct_lam). Targets:
    y' = lam y + (1 - lam) y[::-1]. Alphas and probabilities are static; the rng is traced.
    """
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or mix_prob <= 0:
        return images, targets
    _, height, width, _ = images.shape
    rng_apply, rng_switch, rng_mixup, rng_cutmix, rng_box = jax.random.split(rng, 5)

    # Which of the two, from the alphas (static) and a coin (traced), as timm decides it.
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(rng_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)

    # Mixup's lam, and cutmix's lam corrected to the area the clipped box really covers.
    lam_mixup = (
        jax.random.beta(rng_mixup, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
    )
    if cutmix_alpha > 0:
        lam_box = jax.random.beta(rng_cutmix, cutmix_alpha, cutmix_alpha)
        y_low, y_high, x_low, x_high = cutmix_box(rng_box, lam_box, height, width)
        rows, cols = jnp.arange(height), jnp.arange(width)
        in_box = ((rows >= y_low) & (rows < y_high))[:, None] & ((cols >= x_low) & (cols < x_high))
        lam_cutmix = 1.0 - ((y_high - y_low) * (x_high - x_low)) / (height * width)
    else:
        in_box = jnp.zeros((height, width), bool)
        lam_cutmix = jnp.float32(1)

    # One weight per pixel for x (the rest from x[::-1]): lam everywhere for mixup, 0 in the box
    # and 1 outside it for cutmix, 1 everywhere when the batch is not mixed. Weights of exactly
    # 0 and 1 copy pixels exactly, so no branch on traced values is needed.
    apply = jax.random.uniform(rng_apply) < mix_prob
    pixel_weight = jnp.where(use_cutmix, jnp.where(in_box, 0.0, 1.0), lam_mixup)
    pixel_weight = jnp.where(apply, pixel_weight, 1.0).astype(images.dtype)[None, :, :, None]
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cutmix, lam_mixup), 1.0)

    images = pixel_weight * images + (1 - pixel_weight) * images[::-1]
    targets = lam * targets + (1.0 - lam) * targets[::-1]
    return images, targets.astype(jnp.float32)
