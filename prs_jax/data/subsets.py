"""Train subsets by ratio: class-balanced, seeded, nested, chosen by example index.

The PRS paper's data-scale study trains each model on 5, 10, 25, 50 and 100% of the train split.
For class c with n_c examples we draw one permutation of its example indices, seeded by
(seed, c); the subset at ratio r takes the first round(r * n_c) of it (at least one). A smaller
ratio takes a prefix of the same permutation, so the 10% subset lies inside the 25% subset:
nested by construction. Each class keeps its share, so a balanced split (CIFAR-100: 500 per
class) stays balanced, and ImageNet's class frequencies are kept.

The subset is a list of indices into the split, so the pipeline shuffles, shards and resumes it
exactly like the whole split. Evaluation always reads the whole eval split.

Cost: the labels of the whole train split are read once (sources' `labels()`: no image is
decoded; TFDS splits cache them as a .npy file), then an argsort: a second for ImageNet.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from prs_jax.data import sources

TRAIN_IDS_FILENAME = "train_example_ids.npy"  # in the workdir: the chosen indices, int64[n]

# In-process cache of labels, keyed by what identifies a train split (and its length).
_LABELS: dict[tuple[Any, ...], np.ndarray] = {}


def subset_size(num_examples: int, fraction: float) -> int:
    """Examples kept of a class of `num_examples`: round-half-up(fraction * n), at least 1."""
    if num_examples == 0:
        return 0
    return min(num_examples, max(1, math.floor(fraction * num_examples + 0.5)))


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of the subset at `fraction` of examples with `labels` (int[n])."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")  # each class's indices, ascending
    classes, starts = np.unique(labels[order], return_index=True)
    ends = np.append(starts[1:], len(labels))
    chosen = []
    for c, start, end in zip(classes, starts, ends):
        members = order[start:end]
        # One generator per class: a class's subset depends on (seed, c) only, not on the others.
        permutation = np.random.default_rng([seed, int(c)]).permutation(members)
        chosen.append(permutation[: subset_size(len(members), fraction)])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


class SubsetSource:
    """The records `ids` of `source`, as a random-access source of len(ids) records."""

    def __init__(self, source: Any, ids: np.ndarray):
        self._source = source
        self._ids = np.asarray(ids, np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._source[int(self._ids[index])]

    def labels(self) -> np.ndarray:
        return source_labels(self._source)[self._ids]

    def __repr__(self) -> str:
        return f"SubsetSource({self._source!r}, {len(self._ids)} ids)"


def source_labels(source: Any) -> np.ndarray:
    """int64[len(source)]: its `labels()`, or (slowly) the label of every record."""
    if hasattr(source, "labels"):
        return np.asarray(source.labels(), np.int64)
    return np.array([int(source[i]["label"]) for i in range(len(source))], np.int64)


def _split_key(data_config: ml_collections.ConfigDict, num_examples: int) -> tuple[Any, ...]:
    fields = ("name", "data_dir", "train_split", "folder_root", "folder_validation_fraction",
              "folder_on_corrupt")
    return tuple(data_config.get(f) for f in fields) + (num_examples,)


def train_labels(data_config: ml_collections.ConfigDict) -> np.ndarray:
    """int64[n]: the labels of the configured train split (read once per process)."""
    source = sources.open_source(data_config, data_config.train_split)
    key = _split_key(data_config, len(source))
    if key not in _LABELS:
        _LABELS[key] = source_labels(source)
    return _LABELS[key]


def train_example_ids(data_config: ml_collections.ConfigDict) -> np.ndarray | None:
    """Indices into the train split of the `train_fraction` subset; None for the whole split."""
    fraction = data_config.get("train_fraction", 1.0)
    if fraction == 1.0:
        return None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"config.data.train_fraction={fraction}; must be in (0, 1]")
    labels = train_labels(data_config)
    ids = class_balanced_subset(labels, fraction, data_config.get("subset_seed", 0))
    logging.info(
        "Train subset: %d of %d examples (train_fraction=%s, subset_seed=%s).",
        len(ids), len(labels), fraction, data_config.get("subset_seed", 0),
    )
    return ids


def train_source(data_config: ml_collections.ConfigDict, *, native_size: bool = False) -> Any:
    """The train split, or its `train_fraction` subset, as a random-access source."""
    source = sources.open_source(data_config, data_config.train_split, native_size=native_size)
    ids = train_example_ids(data_config)
    return source if ids is None else SubsetSource(source, ids)


def save_train_example_ids(data_config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """Write the chosen train indices to WORKDIR/train_example_ids.npy; None (no file) at 100%."""
    ids = train_example_ids(data_config)
    if ids is None:
        return None
    from etils import epath  # pylint: disable=import-outside-toplevel  (local paths and gs://)

    buffer = io.BytesIO()
    np.save(buffer, ids)
    path = epath.Path(workdir) / TRAIN_IDS_FILENAME
    path.write_bytes(buffer.getvalue())
    return os.fspath(path)
