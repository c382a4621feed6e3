"""Relative log-amplitude spectra of feature maps (Park & Kim, "How do vision transformers work?",
ICLR 2022, Sec. 2.2 and Fig. 2) of any model of ours: pure jnp, jit-able, float32.

Per feature map [B, H, W, C]: 2-D FFT over space per example and channel, log(|F| + 1e-6), zero
frequency shifted to the centre, mean over examples and channels, the diagonal from the centre
towards the corner, minus the zero-frequency value. Park & Kim find that attention blocks lower
the high-frequency value (low-pass filters) and convolutions and MLPs raise it (Fig. 2b, 8).
Feature maps are mostly low-pass, so values are usually <= 0; white noise sits at +log(2)/2,
since the zero-frequency coefficient of a real map is real (tests/test_fourier.py derives it).

The diagonal holds ceil(min(H, W) / 2) points, at the frequencies 2 pi k / min(H, W) with
k = 0, 1, ... below pi: H/2 points for an even square map (Park & Kim's `diag()[h // 2:]`;
their plots label the last point pi, it sits at pi (1 - 2/H)), (H + 1)/2 for an odd one. The
Nyquist corner of an even map is left out: like the zero frequency, its coefficient is real.
On a non-square map the diagonal runs at equal frequency on both axes: the shorter axis sets the
points exactly and the longer axis takes its nearest coefficient (exact when the longer side is
a multiple of the shorter). The spectra of a whole model are a [num_blocks, n] array with n the
longest block's count; the shorter rows of a ResNet's later stages are padded with NaN.

The train loop's in-training spectra (config.fourier_every_epochs) use `make_spectra_step` and
`high_frequency_scalars`: the loop's one way into prs_jax.analysis. A run's checkpoint is
analysed by prs_jax.analysis.fourier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prs_jax import models

LOG_EPSILON = 1e-6  # Park & Kim's log(|F| + 1e-6)


# ---------------------------------------------------------------------------------------------
# The spectrum of one feature map (pure jnp, jit-able, float32).


def diagonal_frequencies(height: int, width: int) -> np.ndarray:
    """f32[ceil(min(H, W) / 2)]: the frequency (radians) of each point of the diagonal."""
    side = min(height, width)
    return (2 * np.pi * np.arange(math.ceil(side / 2)) / side).astype(np.float32)


def diagonal_indices(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the diagonal in the centred ([H // 2, W // 2] = zero) spectrum."""
    side = min(height, width)
    k = np.arange(math.ceil(side / 2))
    rows = height // 2 + np.rint(k * height / side).astype(int)
    cols = width // 2 + np.rint(k * width / side).astype(int)
    assert rows[-1] < height and cols[-1] < width, (height, width)
    return rows, cols


def relative_log_amplitude_per_example(feature_map: jax.Array) -> jax.Array:
    """[B, H, W, C] (any float dtype) -> f32[B, n]: each example's spectrum, mean over channels."""
    if feature_map.ndim != 4:
        raise ValueError(f"feature_map must be [B, H, W, C], got shape {feature_map.shape}")
    _, height, width, _ = feature_map.shape
    spectrum = jnp.fft.fft2(jnp.asarray(feature_map, jnp.float32), axes=(1, 2))
    log_amplitude = jnp.mean(jnp.log(jnp.abs(spectrum) + LOG_EPSILON), axis=-1)
    log_amplitude = jnp.fft.fftshift(log_amplitude, axes=(1, 2))  # zero frequency at [H//2, W//2]
    rows, cols = diagonal_indices(height, width)
    diagonal = log_amplitude[:, rows, cols]
    return diagonal - diagonal[:, :1]


def relative_log_amplitude(feature_map: jax.Array) -> jax.Array:
    """[B, H, W, C] -> f32[n]: Park & Kim's relative log amplitude, 0 at zero frequency.

    The mean over the batch commutes with the diagonal and the subtraction, so this is also the
    mean of `relative_log_amplitude_per_example`, which is how batches are accumulated.
    """
    return jnp.mean(relative_log_amplitude_per_example(feature_map), axis=0)


# ---------------------------------------------------------------------------------------------
# Spectra of a whole model: one row per block, in `model.feature_map_kinds()` order.


def stack_padded(rows: Sequence[Any]) -> np.ndarray:
    """Rows of different lengths -> f32[len(rows), longest], padded with NaN at the end."""
    width = max(len(row) for row in rows)
    stacked = np.full((len(rows), width), np.nan, np.float32)
    for index, row in enumerate(rows):
        stacked[index, : len(row)] = np.asarray(row, np.float32)
    return stacked


def model_spectra(
    model: nn.Module, variables: Any, images: jax.Array, conv_strength: jax.Array | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Relative log amplitude of every block's feature map: (f32[num_blocks, n], block kinds).

    Kinds: 'embedding', then 'attention'/'mlp' per ViT block, or 'convolution'/'downsampling'
    per ResNet block. For a batch too big for one pass, use `make_spectra_step`.
    """

    @jax.jit
    def rows(variables, images, conv_strength):
        _, feature_maps = models.apply_with_feature_maps(model, variables, images, conv_strength)
        return [relative_log_amplitude(f) for f in feature_maps]

    spectra = stack_padded(jax.device_get(rows(variables, images, conv_strength)))
    return spectra, tuple(model.feature_map_kinds())


def make_spectra_step(
    model: nn.Module, conv_strength_fn: Callable[[jax.Array], jax.Array]
) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, Any]]:
    """(state, batch with mask) -> {'sums': per-block f32[n_b] sums over real examples, 'count'}.

    The state needs `step`, `params` and `batch_stats` (a train.TrainState). The model runs with
    the conv strengths it was last trained with (step - 1), as in train.make_eval_step.
    """

    def spectra_step(state: Any, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        conv_strength = conv_strength_fn(jnp.maximum(state.step - 1, 0))
        _, feature_maps = models.apply_with_feature_maps(
            model, variables, batch["image"], conv_strength
        )
        mask = batch["mask"].astype(jnp.float32)
        sums = tuple(
            jnp.einsum("b,bn->n", mask, relative_log_amplitude_per_example(f)) for f in feature_maps
        )
        return {"sums": sums, "count": jnp.sum(mask)}

    return spectra_step


def mean_spectra(sums: Mapping[str, Any]) -> np.ndarray:
    """The output of a spectra step (or the sum of several) -> f32[num_blocks, n], NaN-padded."""
    count = float(sums["count"])
    if count <= 0:
        raise ValueError("no example was analysed (count 0)")
    return stack_padded([np.asarray(s, np.float64) / count for s in jax.device_get(sums["sums"])])


def feature_map_shapes(model: nn.Module, variables: Any, image_size: int) -> np.ndarray:
    """int[num_blocks, 2]: (H, W) of each block's feature map, from shapes alone."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    maps = jax.eval_shape(lambda x: models.apply_with_feature_maps(model, variables, x)[1], images)
    return np.array([m.shape[1:3] for m in maps])


def high_frequency(spectra: np.ndarray) -> np.ndarray:
    """f32[num_blocks]: each row's last (highest-frequency) value, skipping the NaN padding.

    NaN for a map of side 1 or 2 (a ResNet's last stage at 32 px), whose diagonal holds only the
    zero frequency: it has no high-frequency value (Park & Kim's code would plot 0).
    """
    spectra = np.asarray(spectra)
    lengths = np.sum(np.isfinite(spectra), axis=1)
    values = spectra[np.arange(len(spectra)), lengths - 1]
    return np.where(lengths > 1, values, np.nan).astype(np.float32)


def mean_high_frequency(spectra: np.ndarray) -> float:
    """The mean over blocks of `high_frequency(spectra)`, the blocks without one (NaN) skipped;
    NaN when no block has one.

    One number for where a model sits between a CNN and a ViT (the switch-point study of
    prs_jax.analysis.interpolation): Park & Kim find that convolutions and MLPs raise the
    high-frequency value and self-attention lowers it (Fig. 2b, 8), so a model whose GPSA
    layers stay convolutions longer should sit higher. The mean over every block, not one
    block's value, because the whole profile moves: it is the mean height of the high-frequency
    profile plot over normalised depth (blocks evenly spaced), so models of different depths
    (a ResNet, a ViT) compare on one scale, and it is steadier than any single block.
    """
    values = high_frequency(spectra)
    finite = values[np.isfinite(values)]
    return float(np.mean(finite, dtype=np.float64)) if finite.size else float("nan")


# The block kinds of model.feature_map_kinds() after the embedding, in the compare table's order.
BLOCK_KINDS = ("attention", "mlp", "convolution", "downsampling")


def high_frequency_change_by_kind(spectra: np.ndarray, kinds: Sequence[str]) -> dict[str, float]:
    """{kind: the mean over the blocks of that kind of their change in the high-frequency value}:
    a block's value minus the previous block's, i.e. what the block itself does to it (Park &
    Kim's Fig. 2b reading: attention lowers it, convolutions and MLPs raise it). A change with a
    NaN on either side (a map with no high frequency) is skipped; a kind with no change left is
    NaN. Only kinds present after the first block are keys."""
    values = high_frequency(spectra)
    changes: dict[str, list[float]] = {}
    for kind, before, after in zip(kinds[1:], values[:-1], values[1:]):
        changes.setdefault(str(kind), [])
        if np.isfinite(before) and np.isfinite(after):
            changes[str(kind)].append(float(after) - float(before))
    return {
        kind: float(np.mean(c, dtype=np.float64)) if c else float("nan")
        for kind, c in changes.items()
    }


def normalised_depth(num_blocks: int) -> np.ndarray:
    """f32[num_blocks] from 0 (the embedding) to 1 (the last block)."""
    return np.linspace(0.0, 1.0, num_blocks, dtype=np.float32) if num_blocks > 1 else np.zeros(1)


def high_frequency_scalars(sums: Mapping[str, Any], kinds: Sequence[str]) -> dict[str, float]:
    """Metric-writer scalars from a spectra step: 'fourier/high_frequency/block_03_attention'."""
    values = high_frequency(mean_spectra(sums))
    return {
        f"fourier/high_frequency/block_{i:02d}_{kind}": float(v)
        for i, (kind, v) in enumerate(zip(kinds, values))
        if np.isfinite(v)
    }
