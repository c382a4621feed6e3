"""Folders of images as a dataset: ROOT/<split>/<class>/<image>, read at random with PIL.

  config.data.name = 'image_folder'
  config.data.folder_root = ROOT       # ROOT/train/cat/001.jpg, ROOT/test/cat/002.png, ...
  config.data.train_split = 'train'    # folder names under ROOT
  config.data.eval_split = 'test'
  config.data.folder_validation_fraction = 0.1  # instead of ROOT/test: hold out 10% of train

Labels are the indices of the class folder names of the train split, sorted. The eval split
must have the same class folders (an error lists the differences). Files whose names end in
IMAGE_EXTENSIONS are images; other files are ignored.

Why not `tfds.folder_dataset.ImageFolder`: it offers tf.data only (no `as_data_source`, so no
random access for grain's index-arithmetic pipeline) and reports a bad file as a TensorFlow
decode error in the middle of training. Here the file list is the source, and every image is
decoded once when a split is first opened in a process (threads; PIL releases the GIL while it
decodes): a corrupt or unreadable file is an error naming it before training starts, or, with
`folder_on_corrupt='skip'`, is left out and counted. That check costs one decode of every
image (JPEGs at 1/8 scale): about 1,000 photos of 500 x 375 px per second per core, so minutes
for 100,000 images; for ImageNet-sized folders prefer a TFDS dataset (array_record).

Small folders are kept in memory (`folder_cache`): the check then decodes every image at full
resolution and keeps the uint8 arrays, so training reads no file and decodes nothing (CIFAR-10's
50,000 JPEGs: 150 MB). 'auto' does so when the decoded images, one copy per process (the main
one and each grain worker), fit in `folder_cache_max_gib`; the image headers give that size
before anything is decoded.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from prs_jax.data import specs, subsets

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ON_CORRUPT = ("raise", "skip")
FOLDER_CACHE = ("auto", "always", "never")
VALIDATION_SEED = 0  # the held-out part of train is fixed: it must not move with subset_seed
_CHECK_THREADS = min(32, 4 * (os.cpu_count() or 1))


class CorruptImageError(specs.DataError):
    """An image file that PIL cannot read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """The images of one split: paths[i] has label labels[i]; `skipped` were unreadable."""

    paths: tuple[str, ...]
    labels: np.ndarray  # int64[len(paths)]
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    # The decoded images, uint8[H, W, 3] (read-only) each, parallel to paths; None: read files.
    images: tuple[np.ndarray, ...] | None = None


def read_image(path: str) -> np.ndarray:
    """uint8[H, W, 3] of an image file (grayscale, palette and alpha images become RGB)."""
    try:
        with Image.open(path) as image:
            return _rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot read image file {path}: {e}") from None


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))  # a read-only copy of the decoded pixels


def _class_folders(split_dir: str) -> dict[str, list[str]]:
    """class name -> sorted image paths under split_dir/<class>/."""
    classes = {}
    for name in sorted(os.listdir(split_dir)):
        class_dir = os.path.join(split_dir, name)
        if os.path.isdir(class_dir):
            classes[name] = sorted(
                os.path.join(class_dir, f)
                for f in os.listdir(class_dir)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
    return classes


def _split_dir(root: str, split: str, field: str) -> str:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise specs.DataError(
            f"no folder {split_dir} for config.data.{field}={split!r} (data.folder_root={root!r})"
        )
    return split_dir


def _decoded_bytes(paths: list[str]) -> int:
    """Bytes of all the images decoded to uint8 RGB, from their headers (nothing is decoded)."""

    def size(path: str) -> int:
        try:
            with Image.open(path) as image:
                return 3 * image.width * image.height
        except (OSError, ValueError, Image.DecompressionBombError):
            return 0  # unreadable: the decoding pass reports it

    with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
        return sum(pool.map(size, paths))


def _decode_all(paths: list[str], keep: bool) -> tuple[list[np.ndarray | None], dict[str, str]]:
    """(each image's array if `keep` else None, path -> error for each file that does not
    decode); all decoded in threads."""

    def check(path: str) -> np.ndarray | str | None:
        try:
            with Image.open(path) as image:
                if keep:
                    return _rgb(image)
                # JPEGs decode at 1/8 scale (DCT scaling), which still reads every byte of the
                # entropy-coded data: a truncated file fails here, in about half the time.
                image.draft(image.mode, (image.width // 8, image.height // 8))
                image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return str(e) or type(e).__name__
        return None

    with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
        results = list(pool.map(check, paths))
    errors = {path: r for path, r in zip(paths, results) if isinstance(r, str)}
    return [r if isinstance(r, np.ndarray) else None for r in results], errors


@functools.lru_cache(maxsize=32)
def scan_split(
    root: str, split: str, field: str, on_corrupt: str, cache_max_bytes: float = 0.0
) -> FolderSplit:
    """Every image of ROOT/split with its class index; unreadable files raise or are skipped.

    The decoded images are kept (FolderSplit.images) when they take at most cache_max_bytes
    (0: never; inf: always).
    """
    if on_corrupt not in ON_CORRUPT:
        raise specs.DataError(
            f"config.data.folder_on_corrupt={on_corrupt!r}; choose one of {ON_CORRUPT}"
        )
    classes = _class_folders(_split_dir(root, split, field))
    if not classes:
        raise specs.DataError(
            f"{os.path.join(root, split)} has no class folders (ROOT/{split}/<class>/)"
        )
    for name, paths in classes.items():
        if not paths:
            raise specs.DataError(
                f"class folder {os.path.join(root, split, name)} has no image files"
                f" ({', '.join(IMAGE_EXTENSIONS)})"
            )
    paths = [p for name in classes for p in classes[name]]
    labels = np.concatenate(
        [np.full(len(ps), c, np.int64) for c, ps in enumerate(classes.values())]
    )
    keep_images = cache_max_bytes == float("inf")
    if 0 < cache_max_bytes < float("inf"):
        decoded = _decoded_bytes(paths)
        keep_images = decoded <= cache_max_bytes
        logging.info(
            "%s: %.2f GiB of decoded images; %s (data.folder_cache_max_gib).",
            os.path.join(root, split),
            decoded / 2**30,
            "keeping them in memory" if keep_images else "reading the files while training",
        )
    images, bad = _decode_all(paths, keep_images)
    if bad and on_corrupt == "raise":
        first = next(iter(bad))
        raise CorruptImageError(
            f"cannot read image file {first}: {bad[first]} ({len(bad)} unreadable file(s) in"
            f" {os.path.join(root, split)}; fix or remove them, or set"
            " config.data.folder_on_corrupt='skip' to leave them out)"
        )
    if bad:
        logging.warning(
            "Skipped %d unreadable image file(s) in %s, e.g. %s.",
            len(bad),
            os.path.join(root, split),
            ", ".join(list(bad)[:3]),
        )
    keep = np.array([p not in bad for p in paths], bool)
    return FolderSplit(
        paths=tuple(p for p, k in zip(paths, keep) if k),
        labels=labels[keep],
        class_names=tuple(classes),
        skipped=tuple(bad),
        images=tuple(im for im, k in zip(images, keep) if k) if keep_images else None,
    )


def cache_max_bytes(data_config: ml_collections.ConfigDict) -> float:
    """The `scan_split` limit for the config's folder_cache: per process, so that the copies
    in the main process and in each grain worker together fit in folder_cache_max_gib."""
    mode = data_config.get("folder_cache", "auto")
    if mode not in FOLDER_CACHE:
        raise specs.DataError(f"config.data.folder_cache={mode!r}; choose one of {FOLDER_CACHE}")
    if mode == "never":
        return 0.0
    if mode == "always":
        return float("inf")
    processes = 1 + data_config.get("num_workers", 0)
    return data_config.get("folder_cache_max_gib", 4.0) * 2**30 / processes


def _check_same_classes(
    train: FolderSplit, other: FolderSplit, root: str, split: str, train_split: str
) -> None:
    if train.class_names != other.class_names:
        only_train = sorted(set(train.class_names) - set(other.class_names))
        only_other = sorted(set(other.class_names) - set(train.class_names))
        raise specs.DataError(
            f"class folders differ between {os.path.join(root, train_split)} and"
            f" {os.path.join(root, split)}: only in {train_split}: {only_train}; only in"
            f" {split}: {only_other}"
        )


def folder_split(data_config: ml_collections.ConfigDict, split: str) -> FolderSplit:
    """The images of `split` (the train or the eval split of the config), with checked classes."""
    root = data_config.get("folder_root")
    if not root:
        raise specs.DataError(
            "config.data.name='image_folder' needs config.data.folder_root=ROOT, a folder with"
            " ROOT/train/<class>/*.jpg (and ROOT/test/<class>/*)"
        )
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise specs.DataError(f"config.data.folder_root={root!r} is not a folder")
    on_corrupt = data_config.get("folder_on_corrupt", "raise")
    train_split, eval_split = data_config.train_split, data_config.eval_split
    if split not in (train_split, eval_split):
        raise specs.DataError(
            f"split {split!r} is neither data.train_split={train_split!r} nor"
            f" data.eval_split={eval_split!r}"
        )
    cache = cache_max_bytes(data_config)
    train = scan_split(root, train_split, "train_split", on_corrupt, cache)
    fraction = data_config.get("folder_validation_fraction", 0.0)
    if not fraction:
        if split == train_split:
            return train
        other = scan_split(root, eval_split, "eval_split", on_corrupt, cache)
        _check_same_classes(train, other, root, eval_split, train_split)
        return other

    if not 0.0 < fraction < 1.0:
        raise specs.DataError(
            f"config.data.folder_validation_fraction={fraction}; must be in [0, 1)"
        )
    if os.path.isdir(os.path.join(root, eval_split)):
        raise specs.DataError(
            f"both {os.path.join(root, eval_split)} and data.folder_validation_fraction={fraction}"
            " give an eval split: remove one"
        )
    # A class-balanced, fixed part of train is the eval split; the rest is the train split.
    held_out = np.zeros(len(train.paths), bool)
    held_out[subsets.class_balanced_subset(train.labels, fraction, VALIDATION_SEED)] = True
    keep = held_out if split == eval_split else ~held_out
    return dataclasses.replace(
        train,
        paths=tuple(p for p, k in zip(train.paths, keep) if k),
        labels=train.labels[keep],
        images=None
        if train.images is None
        else tuple(im for im, k in zip(train.images, keep) if k),
    )


class ImageFolderSource:
    """One split of a folder of images as {'image': uint8[H, W, 3], 'label': int} records."""

    def __init__(self, split: FolderSplit, image_size: int | None):
        self._split = split
        self._image_size = image_size

    def __len__(self) -> int:
        return len(self._split.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._split.images is None:
            image = read_image(self._split.paths[index])
        else:
            image = self._split.images[index]
        return {
            "image": specs.to_rgb_uint8(image, self._image_size),
            "label": int(self._split.labels[index]),
        }

    def labels(self) -> np.ndarray:
        return self._split.labels

    @property
    def skipped(self) -> tuple[str, ...]:
        """The unreadable files left out of this split (folder_on_corrupt='skip')."""
        return self._split.skipped

    @property
    def in_memory(self) -> bool:
        """Whether the decoded images are kept in memory (config.data.folder_cache)."""
        return self._split.images is not None

    def __repr__(self) -> str:
        where = "decoded in memory" if self.in_memory else "read from files"
        return (
            f"ImageFolderSource({len(self)} images, {len(self._split.class_names)} classes,"
            f" {where})"
        )


def _open_folder_split(
    split: str, data_config: ml_collections.ConfigDict, native_size: bool = False
) -> ImageFolderSource:
    return ImageFolderSource(
        folder_split(data_config, split), None if native_size else data_config.image_size
    )


def folder_spec(data_config: ml_collections.ConfigDict) -> specs.DatasetSpec:
    """The DatasetSpec of a folder dataset: classes from the train split, ImageNet statistics."""
    train = folder_split(data_config, data_config.train_split)
    return specs.DatasetSpec(
        num_classes=len(train.class_names),
        mean=specs.IMAGENET_MEAN,
        std=specs.IMAGENET_STD,
        open_split=_open_folder_split,
    )
