"""Random-access sources of {'image': uint8[H, W, 3], 'label': int} records, and dataset metadata.

Datasets (`config.data.name`), one record format:
  cifar100      TFDS `cifar100` through `tfds.data_source` (array_record files, random access);
                downloaded and prepared on first use.
  digits        scikit-learn's shipped digits (1797 8x8 images): the offline default for tests
                and laptops; split 80/20 train/test, stratified by label, with a fixed seed.
  image_folder  ROOT/<split>/<class>/*.jpg|png (prs_jax.data.folders).
  any other     a TFDS image-classification dataset ('image' and 'label' features, or its
                supervised keys) prepared as array_record in data_dir, e.g. `imagenet2012`
                (built from `data.manual_dir`, the folder holding ILSVRC2012_img_*.tar).

Images are brought to `image_size` here (PIL bicubic, as DeiT's transforms resize) so that
everything downstream sees one resolution, unless the caller asks for `native_size` (the
ImageNet-style crops, which resize from the original image); grayscale is replicated to three
channels either way.
Every source also gives `labels()`, all its labels without decoding an image (for subsets).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from typing import Any

import numpy as np
from absl import logging

from prs_jax.data import folders
from prs_jax.data.specs import (
    FOLDER_DATASET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    DataError,
    DatasetSpec,
    to_rgb_uint8,
)

# scikit-learn's digits split: a fixed, stratified 80/20 train/test split.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_SPLITS = ("train", "test")

# Labels read per __getitems__ call when scanning a TFDS split for its labels.
_LABEL_READ_CHUNK = 4096


class TfdsSource:
    """A TFDS data_source split as {'image', 'label'} records (drops other features, e.g. 'id')."""

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None,
        image_size: int | None,
        *,
        download: bool = True,
        manual_dir: str | None = None,
        label_cache_dir: str | None = None,
    ):
        self._open = functools.partial(
            open_tfds, name, split, data_dir, download=download, manual_dir=manual_dir
        )
        self._source = self._open()
        self._image_key, self._label_key = tfds_keys(self._source.dataset_info)
        self._name, self._split = name, split
        self._image_size = image_size
        self._label_cache_dir = label_cache_dir

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[index]
        return {
            "image": to_rgb_uint8(record[self._image_key], self._image_size),
            "label": int(record[self._label_key]),
        }

    def labels(self) -> np.ndarray:
        """int64[len]: every label of the split, read without decoding an image.

        Cost: one sequential read of the split's records (for imagenet2012 train about 150 GB
        of array_record files and 1.28 M proto parses: minutes on a local SSD, longer from a
        bucket); images stay encoded bytes (SkipDecoding). The result is cached as a .npy file
        in `label_cache_dir`, else next to the dataset's own files when that folder is writable,
        and read back from there by later runs.
        """
        cache = self._label_cache_path()
        if cache and os.path.exists(cache):
            labels = np.load(cache)
            if len(labels) == len(self):
                return labels
            logging.warning("Ignoring %s: %d labels for %d records.", cache, len(labels), len(self))
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        features = self._source.dataset_info.features
        skip = {
            key: tfds.decode.SkipDecoding()
            for key, feature in features.items()
            if isinstance(feature, tfds.features.Image)
        }
        source = self._open(decoders=skip, download=False)
        logging.info("Reading the %d labels of %s:%s once.", len(source), self._name, self._split)
        labels = np.empty(len(source), np.int64)
        for start in range(0, len(source), _LABEL_READ_CHUNK):
            keys = list(range(start, min(start + _LABEL_READ_CHUNK, len(source))))
            try:
                records = source.__getitems__(keys)  # array_record reads these in parallel
            except TypeError:
                # tfds.testing.mock_data's __getitems__ is set on the instance, without `self`.
                records = [source[k] for k in keys]
            labels[start : start + len(keys)] = [int(r[self._label_key]) for r in records]
        if cache:
            _save_npy_atomically(cache, labels)
        return labels

    def _label_cache_path(self) -> str | None:
        info = self._source.dataset_info
        split = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(self._split))
        name = f"prs_jax_labels.{info.name}-{info.version}.{split}.npy"
        if self._label_cache_dir:
            return os.path.join(self._label_cache_dir, name)
        data_dir = str(info.data_dir)
        if os.path.isdir(data_dir) and os.access(data_dir, os.W_OK):
            return os.path.join(data_dir, name)
        return None  # a bucket or a read-only folder: set data.label_cache_dir to cache

    def __repr__(self) -> str:
        return f"TfdsSource({self._source!r}, image_size={self._image_size})"


def _save_npy_atomically(path: str, array: np.ndarray) -> None:
    """np.save through a temporary file and a rename, so concurrent hosts never read half a file."""
    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npy", delete=False) as f:
            np.save(f, array)
        os.replace(f.name, path)
    except OSError as e:
        logging.warning("Could not cache labels in %s: %s", path, e)


def tfds_keys(info: Any) -> tuple[str, str]:
    """(image feature, label feature) of a TFDS dataset: its supervised keys, else image/label."""
    keys = info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    return "image", "label"


def unknown_name_error(name: str, cause: Exception) -> DataError:
    """The error for a name that is neither built in nor a TFDS dataset (TFDS's first line kept)."""
    return DataError(
        f"unknown config.data.name={name!r} ({str(cause).splitlines()[0]}); allowed: one of"
        f" {sorted(DATASETS)}, {FOLDER_DATASET!r} (with data.folder_root), or the name of a TFDS"
        " image-classification dataset (e.g. imagenet2012)"
    )


def open_tfds(
    name: str,
    split: str,
    data_dir: str | None,
    *,
    download: bool,
    manual_dir: str | None = None,
    decoders: Any = None,
) -> Any:
    """tfds.data_source(name, split), with TFDS's errors wrapped in the fix for the config."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    kwargs = {}
    if manual_dir:
        download = True  # imagenet2012 and friends are built from the files in manual_dir
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)
        }
    try:
        return tfds.data_source(
            name, split=split, data_dir=data_dir, download=download, decoders=decoders, **kwargs
        )
    except tfds.core.registered.DatasetNotFoundError as e:
        raise unknown_name_error(name, e) from None
    except ValueError as e:  # e.g. "Unknown split 'validation'. Should be one of [...]"
        raise DataError(f"config.data.name={name!r}, split {split!r}: {e}") from None
    except (AssertionError, KeyError, FileNotFoundError, NotImplementedError) as e:
        where = data_dir or "TFDS's default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
        cause = " ".join(str(e).split())  # TFDS's message, on one line
        raise DataError(
            f"config.data.name={name!r} split {split!r} cannot be read from {where} ({cause})."
            f" Built in: {sorted(DATASETS)}. To use a TFDS dataset, prepare it as array_record:"
            f" `tfds build {name} --data_dir DIR --file_format array_record` (imagenet2012: add"
            " --manual_dir with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, or set"
            " --config.data.manual_dir), then set --config.data.data_dir=DIR; or let the run"
            " prepare it with --config.data.download=True. A dataset prepared as tfrecord converts"
            f" with `tfds convert_format --dataset_dir DIR/{name}/VERSION --out_file_format"
            " array_record`."
        ) from e


@functools.cache
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
        raise DataError(f"digits has splits {DIGITS_SPLITS}; got split={split!r}")
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

    def labels(self) -> np.ndarray:
        return self._labels


def _folder(data_config: Any, field: str) -> str | None:
    """data_config.FIELD with ~ expanded (flags like --config.data.data_dir=~/x keep the ~)."""
    value = data_config.get(field)
    return os.path.expanduser(value) if value else None


def _open_tfds_split(
    name: str, split: str, data_config: Any, native_size: bool, *, download: bool
) -> TfdsSource:
    return TfdsSource(
        name,
        split,
        _folder(data_config, "data_dir"),
        None if native_size else data_config.image_size,
        download=download,
        manual_dir=_folder(data_config, "manual_dir"),
        label_cache_dir=_folder(data_config, "label_cache_dir"),
    )


def _open_cifar100(split: str, data_config: Any, native_size: bool = False) -> TfdsSource:
    # CIFAR-100 is small and public: downloaded and prepared on first use, whatever
    # data.download says (as it always was).
    return _open_tfds_split("cifar100", split, data_config, native_size, download=True)


def _open_digits(split: str, data_config: Any, native_size: bool = False) -> DigitsSource:
    return DigitsSource(split, data_config.image_size)  # 8x8: always resized


DATASETS = {
    # CIFAR-100's train-set statistics, for normalization='dataset' (common in CIFAR code bases;
    # DeiT and ConViT use ImageNet's for CIFAR too, the default).
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


# Normalisation statistics of TFDS datasets that are not built in; others use ImageNet's.
TFDS_STATISTICS = {"imagenet2012": (IMAGENET_MEAN, IMAGENET_STD)}


@functools.lru_cache(maxsize=16)
def _tfds_spec(name: str, data_dir: str | None, download: bool) -> DatasetSpec:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
        info = tfds.builder(name, data_dir=data_dir).info
    except tfds.core.registered.DatasetNotFoundError as e:
        raise unknown_name_error(name, e) from None
    image_key, label_key = tfds_keys(info)
    features = info.features
    if not (
        image_key in features
        and isinstance(features[image_key], tfds.features.Image)
        and label_key in features
        and isinstance(features[label_key], tfds.features.ClassLabel)
    ):
        raise DataError(
            f"config.data.name={name!r} is not an image-classification dataset: it needs an Image"
            f" feature {image_key!r} and a ClassLabel feature {label_key!r}; it has {features}"
        )
    mean, std = TFDS_STATISTICS.get(name, (IMAGENET_MEAN, IMAGENET_STD))
    return DatasetSpec(
        num_classes=features[label_key].num_classes,
        mean=mean,
        std=std,
        open_split=functools.partial(_open_tfds_split, name, download=download),
    )


def dataset_spec(data_config: Any) -> DatasetSpec:
    """The spec of `data_config.name`; a ValueError saying what is allowed otherwise."""
    name = data_config.name
    if name in DATASETS:
        return DATASETS[name]
    if name == FOLDER_DATASET:
        return folders.folder_spec(data_config)
    if not isinstance(name, str) or not name:
        raise DataError(f"config.data.name={name!r}; allowed: one of {sorted(DATASETS)}")
    return _tfds_spec(name, _folder(data_config, "data_dir"), bool(data_config.get("download")))


def normalization(data_config: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that images in [0, 1] are normalised with (data.normalization)."""
    choice = data_config.get("normalization", "imagenet")
    if choice not in NORMALIZATIONS:
        raise DataError(f"config.data.normalization={choice!r}; choose one of {NORMALIZATIONS}")
    if choice == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    spec = dataset_spec(data_config)
    return spec.mean, spec.std


def open_source(data_config: Any, split: str, *, native_size: bool = False) -> Any:
    """A random-access source (len, [i], labels()) of `split` of `data_config.name`.

    Images are image_size x image_size, or their stored size with `native_size` (digits: always
    resized).
    """
    return dataset_spec(data_config).open_split(split, data_config, native_size)
