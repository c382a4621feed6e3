"""Per-example host augmentation: the DeiT recipes, each step driven by a numpy Generator.

Train order (timm `create_transform`, as DeiT uses it):
crop -> horizontal flip -> RandAugment (uint8) -> normalise (float32) -> random erasing (on the
normalised image, per-pixel normal noise). The crop is
  'pad_crop'             random crop of the image's own size after zero padding (images <= 32 px,
                         DeiT on CIFAR); the source has already resized images to image_size;
  'random_resized_crop'  torchvision RandomResizedCrop(image_size, scale=(min_scale, 1),
                         ratio=(3/4, 4/3)), bicubic (DeiT on ImageNet, from the original image).
Eval: 'none' (the source's image_size) or 'resize_center_crop' (shorter side to
floor(image_size / crop_pct), bicubic, then the central image_size square: 256 -> 224 at 0.875).
Batch-level augmentations (mixup/cutmix) run on device, in prs_jax.method.mixing.

Crop, flip and erasing are a few lines of numpy here: a library version (torchvision, timm, keras)
would bring torch or tf tensors and its own random state into a per-example numpy pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from prs_jax.data import randaugment

# timm RandomErasing defaults (DeiT: reprob 0.25, mode 'pixel', one rectangle).
ERASING_AREA = (0.02, 1.0 / 3.0)  # fraction of the image
ERASING_ASPECT = (0.3, 1.0 / 0.3)  # height / width, sampled log-uniformly
ERASING_ATTEMPTS = 10

# torchvision RandomResizedCrop defaults (DeiT: scale (0.08, 1), bicubic).
CROP_ASPECT = (3.0 / 4.0, 4.0 / 3.0)  # width / height, sampled log-uniformly
CROP_ATTEMPTS = 10
TRAIN_CROPS = ("pad_crop", "random_resized_crop")
EVAL_CROPS = ("none", "resize_center_crop")


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


def random_resized_crop_box(
    height: int, width: int, rng: np.random.Generator, min_scale: float = 0.08
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: (top, left, h, w) of the crop in the image.

    Area uniform in [min_scale, 1] of the image, aspect (w / h) log-uniform in CROP_ASPECT; up to
    CROP_ATTEMPTS draws until the box fits, else the largest central box with a clamped aspect.
    """
    area = height * width
    log_aspect = (math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(*log_aspect))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < CROP_ASPECT[0]:
        w, h = width, int(round(width / CROP_ASPECT[0]))
    elif aspect > CROP_ASPECT[1]:
        h, w = height, int(round(height * CROP_ASPECT[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    image: np.ndarray, size: int, rng: np.random.Generator, min_scale: float = 0.08
) -> np.ndarray:
    """uint8[H, W, 3] (any size) -> uint8[size, size, 3]: a random box, resized bicubic."""
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, min_scale)
    resized = Image.fromarray(image).resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h)
    )
    return np.asarray(resized)


def resize_center_crop(image: np.ndarray, size: int, crop_pct: float = 0.875) -> np.ndarray:
    """timm's eval transform: shorter side to floor(size / crop_pct) (bicubic), central size^2.

    uint8[H, W, 3] (any size) -> uint8[size, size, 3]; at size 224 and crop_pct 0.875 this is
    the usual "resize 256, center crop 224".
    """
    height, width = image.shape[:2]
    short = math.floor(size / crop_pct)
    # torchvision Resize(int): the shorter side becomes `short`, the longer keeps the aspect.
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_h, new_w = int(short * height / width), short
    pil = Image.fromarray(image)
    if (new_h, new_w) != (height, width):
        pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.asarray(pil)[top : top + size, left : left + size]


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
    crop: str = "pad_crop",
    image_size: int | None = None,
    crop_min_scale: float = 0.08,
    crop_padding: int = 4,
    random_flip: bool = True,
    randaugment_num_ops: int = 2,
    randaugment_magnitude: float = 9.0,
    randaugment_magnitude_std: float = 0.0,
    randaugment_increasing: bool = False,
    random_erasing_prob: float = 0.25,
) -> dict[str, np.ndarray]:
    """{'image': uint8[H, W, 3], 'label'} -> {'image': float32[S, S, 3], 'label': int32}.

    With crop 'pad_crop' the image is already S x S (S = image_size); with 'random_resized_crop'
    it has any size and the crop makes it S x S.
    """
    image = np.asarray(record["image"], np.uint8)
    if crop == "random_resized_crop":
        image = random_resized_crop(image, image_size, rng, crop_min_scale)
    elif crop == "pad_crop":
        image = random_crop_with_padding(image, crop_padding, rng)
    else:
        raise ValueError(f"unknown train crop {crop!r}; choose one of {TRAIN_CROPS}")
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
    record: dict[str, Any],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop: str = "none",
    image_size: int | None = None,
    crop_pct: float = 0.875,
) -> dict[str, np.ndarray]:
    """{'image', 'label'} -> normalised float32 image, int32 label, mask True (a real example)."""
    image = np.asarray(record["image"], np.uint8)
    if crop == "resize_center_crop":
        image = resize_center_crop(image, image_size, crop_pct)
    elif crop != "none":
        raise ValueError(f"unknown eval crop {crop!r}; choose one of {EVAL_CROPS}")
    return {
        "image": normalize(image, mean, std),
        "label": np.int32(record["label"]),
        "mask": np.bool_(True),
    }
