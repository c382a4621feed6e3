"""Random-access sources of {'image': uint8[S, S, 3], 'label': int} records, and dataset metadata.

Two datasets, one record format:
  cifar100  TFDS `cifar100` through `tfds.data_source` (array_record files, random access).
  digits    scikit-learn's shipped digits (1797 8x8 images): the offline default for tests and
            laptops; split 80/20 train/test, stratified by label, with a fixed seed.

Images are brought to `image_size` here (PIL bilinear) so that everything downstream sees one
resolution; grayscale is replicated to three channels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

# scikit-learn's digits split: a fixed, stratified 80/20 train/test split.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset besides its records."""

    num_classes: int
    mean: tuple[float, float, float]  # per channel, images scaled to [0, 1]
    std: tuple[float, float, float]
    # (split, data_config) -> random-access source of records at data_config.image_size.
    open_split: Callable[[str, Any], Any]


def to_rgb_uint8(image: np.ndarray, image_size: int) -> np.ndarray:
    """uint8[H, W] or [H, W, C in {1, 3}] -> uint8[image_size, image_size, 3] (PIL bilinear)."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.shape[:2] != (image_size, image_size):
        resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
        image = np.asarray(resized)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image


class TfdsSource:
    """A TFDS data_source split as {'image', 'label'} records (drops other features, e.g. 'id')."""

    def __init__(self, name: str, split: str, data_dir: str | None, image_size: int):
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        self._image_size = image_size

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[index]
        return {
            "image": to_rgb_uint8(record["image"], self._image_size),
            "label": int(record["label"]),
        }

    def __repr__(self) -> str:
        return f"TfdsSource({self._source!r}, image_size={self._image_size})"


@functools.lru_cache(maxsize=None)
def digits_split_indices() -> dict[str, np.ndarray]:
    """Indices into load_digits() of the 80/20 stratified split ('train': 1437, 'test': 360)."""
    from sklearn import datasets, model_selection  # pylint: disable=import-outside-toplevel

    labels = datasets.load_digits().target
    train, test = model_selection.train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return {"train": np.sort(train), "test": np.sort(test)}


@functools.lru_cache(maxsize=8)
def _digits_arrays(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets  # pylint: disable=import-outside-toplevel

    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits has splits {DIGITS_SPLITS}; got split={split!r}")
    digits = datasets.load_digits()
    index = digits_split_indices()[split]
    # Pixel values are 0..16: scale to 0..255 before resizing.
    raw = np.round(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([to_rgb_uint8(image, image_size) for image in raw])
    images.setflags(write=False)
    return images, digits.target[index].astype(np.int64)


class DigitsSource:
    """One split of scikit-learn's digits as {'image': uint8[S, S, 3], 'label': int} records."""

    def __init__(self, split: str, image_size: int):
        self._images, self._labels = _digits_arrays(split, image_size)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self._images[index], "label": int(self._labels[index])}


def _open_cifar100(split: str, data_config: Any) -> TfdsSource:
    return TfdsSource("cifar100", split, data_config.get("data_dir"), data_config.image_size)


def _open_digits(split: str, data_config: Any) -> DigitsSource:
    return DigitsSource(split, data_config.image_size)


DATASETS = {
    # The standard CIFAR-100 train-set statistics (as in DeiT/timm CIFAR recipes).
    "cifar100": DatasetSpec(
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        open_split=_open_cifar100,
    ),
    # Statistics of the digits train split at its native 8x8 resolution, pixels / 255 after
    # scaling 0..16 -> 0..255 (tests/test_data.py recomputes them). Gray: equal channels.
    "digits": DatasetSpec(
        num_classes=10,
        mean=(0.3054, 0.3054, 0.3054),
        std=(0.3760, 0.3760, 0.3760),
        open_split=_open_digits,
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of `data.name`; a ValueError naming the allowed values otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown config.data.name={name!r}; allowed: {sorted(DATASETS)}")
    return DATASETS[name]


def open_source(data_config: Any, split: str) -> Any:
    """A random-access source (len, [i]) of `split` of `data_config.name`, at `image_size`."""
    return dataset_spec(data_config.name).open_split(split, data_config)
