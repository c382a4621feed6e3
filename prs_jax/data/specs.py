"""What every data module shares: a dataset's spec, the normalisation constants and the one record
format, {'image': uint8[image_size, image_size, 3], 'label': int}.

The bottom of prs_jax/data: sources, folders and the pipeline import it; it imports none of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from prs_jax.errors import UserError

# torchvision's ImageNet statistics: DeiT and ConViT normalise every dataset with them
# (config.data.normalization='imagenet', the default).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATIONS = ("imagenet", "dataset")
FOLDER_DATASET = "image_folder"  # config.data.name of a folder of images (prs_jax.data.folders)


class DataError(UserError, ValueError):
    """Data the config names cannot be used (an unknown dataset or split, a folder without
    images, an unreadable file); the message names the config field or file and the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset besides its records."""

    num_classes: int
    # The dataset's own statistics per channel, images scaled to [0, 1] (ImageNet's where unknown);
    # used with config.data.normalization='dataset'.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # (split, data_config, native_size) -> random-access source of records, at
    # data_config.image_size unless native_size.
    open_split: Callable[[str, Any, bool], Any]


def to_rgb_uint8(image: np.ndarray, image_size: int | None) -> np.ndarray:
    """uint8[H, W] or [H, W, C in {1, 3}] -> uint8[image_size, image_size, 3] (PIL bicubic).

    image_size None keeps H x W.
    """
    image = np.asarray(image, np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image_size is not None and image.shape[:2] != (image_size, image_size):
        resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BICUBIC)
        image = np.asarray(resized)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image
