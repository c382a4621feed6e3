"""Per-example host augmentation: the DeiT CIFAR recipe, each step driven by a numpy Generator.

Train order (timm `create_transform` for images <= 32 px, as DeiT uses on CIFAR):
random crop with zero padding -> horizontal flip -> RandAugment (uint8) -> normalise
(float32) -> random erasing (on the normalised image, per-pixel normal noise).
Batch-level augmentations (mixup/cutmix) run on device, in prs_jax.mixing.

Crop, flip and erasing are a few lines of numpy here: a library version (torchvision, timm, keras)
would bring torch or tf tensors and its own random state into a per-example numpy pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from prs_jax.data import randaugment

# timm RandomErasing defaults (DeiT: reprob 0.25, mode 'pixel', one rectangle).
ERASING_AREA = (0.02, 1.0 / 3.0)  # fraction of the image
ERASING_ASPECT = (0.3, 1.0 / 0.3)  # height / width, sampled log-uniformly
ERASING_ATTEMPTS = 10


def pad_and_crop(image: np.ndarray, padding: int, top: int, left: int) -> np.ndarray:
    """Zero-pad [H, W, C] by `padding` on every side, then crop [H, W] at (top, left).

    (top, left) = (padding, padding) is the identity; (0, 0) shifts the content down-right by
    `padding` pixels.
    """
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    return padded[top : top + height, left : left + width]


def random_crop_with_padding(
    image: np.ndarray, padding: int, rng: np.random.Generator
) -> np.ndarray:
    """torchvision RandomCrop(size, padding): offsets uniform in {0, ..., 2 * padding}."""
    if padding <= 0:
        return image
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return pad_and_crop(image, padding, int(top), int(left))


def random_horizontal_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror [H, W, C] left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8[H, W, C] in 0..255 -> float32 (image / 255 - mean) / std, per channel."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return (image.astype(np.float32) * np.float32(1.0 / 255.0) - mean) / std


def random_erasing(image: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """timm RandomErasing (mode 'pixel'): with `probability`, one rectangle -> N(0, 1) noise.

    Area is uniform in ERASING_AREA of the image, aspect (h / w) log-uniform in ERASING_ASPECT;
    up to ERASING_ATTEMPTS draws until the rectangle fits, else the image is left unchanged.
    Works on the normalised float image, so the noise matches the data's scale.
    """
    if probability <= 0 or rng.random() >= probability:
        return image
    height, width, channels = image.shape
    log_aspect = (math.log(ERASING_ASPECT[0]), math.log(ERASING_ASPECT[1]))
    for _ in range(ERASING_ATTEMPTS):
        area = rng.uniform(*ERASING_AREA) * height * width
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            image = image.copy()
            image[top : top + h, left : left + w] = rng.standard_normal(
                (h, w, channels), dtype=np.float32
            )
            return image
    return image


def train_example(
    record: dict[str, Any],
    rng: np.random.Generator,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding: int = 4,
    random_flip: bool = True,
    randaugment_num_ops: int = 2,
    randaugment_magnitude: float = 9.0,
    randaugment_magnitude_std: float = 0.0,
    randaugment_increasing: bool = False,
    random_erasing_prob: float = 0.25,
) -> dict[str, np.ndarray]:
    """{'image': uint8[S, S, 3], 'label'} -> {'image': float32[S, S, 3], 'label': int32}."""
    image = np.asarray(record["image"], np.uint8)
    image = random_crop_with_padding(image, crop_padding, rng)
    if random_flip:
        image = random_horizontal_flip(image, rng)
    if randaugment_num_ops > 0:
        image = randaugment.rand_augment(
            np.ascontiguousarray(image),
            rng,
            num_ops=randaugment_num_ops,
            magnitude=randaugment_magnitude,
            magnitude_std=randaugment_magnitude_std,
            increasing=randaugment_increasing,
            # timm fills geometric ops with the dataset mean colour.
            fill=tuple(min(255, round(255 * m)) for m in mean),
        )
    image = normalize(image, mean, std)
    image = random_erasing(image, rng, random_erasing_prob)
    return {"image": image, "label": np.int32(record["label"])}


def eval_example(
    record: dict[str, Any], *, mean: Sequence[float], std: Sequence[float]
) -> dict[str, np.ndarray]:
    """{'image', 'label'} -> normalised float32 image, int32 label, mask True (a real example)."""
    return {
        "image": normalize(np.asarray(record["image"], np.uint8), mean, std),
        "label": np.int32(record["label"]),
        "mask": np.bool_(True),
    }
