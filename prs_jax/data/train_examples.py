"""The examples a run trains on: the configured train split, or its `train_fraction` subset
(prs_jax.data.subsets), and the record of that choice in the workdir.

Cost: the labels of the whole train split are read once (sources' `labels()`: no image is
decoded; TFDS splits cache them as a .npy file), then an argsort: a second for ImageNet.
"""

from __future__ import annotations

import io
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from prs_jax.data import sources
from prs_jax.data.specs import DataError
from prs_jax.data.subsets import SubsetSource, class_balanced_subset, source_labels

TRAIN_IDS_FILENAME = "train_example_ids.npy"  # in the workdir: the chosen indices, int64[n]

# In-process cache of labels, keyed by what identifies a train split (and its length).
_LABELS: dict[tuple[Any, ...], np.ndarray] = {}


def _split_key(data_config: ml_collections.ConfigDict, num_examples: int) -> tuple[Any, ...]:
    fields = (
        "name",
        "data_dir",
        "train_split",
        "folder_root",
        "folder_validation_fraction",
        "folder_on_corrupt",
    )
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
        raise DataError(f"config.data.train_fraction={fraction}; must be in (0, 1]")
    labels = train_labels(data_config)
    ids = class_balanced_subset(labels, fraction, data_config.get("subset_seed", 0))
    logging.info(
        "Train subset: %d of %d examples (train_fraction=%s, subset_seed=%s).",
        len(ids),
        len(labels),
        fraction,
        data_config.get("subset_seed", 0),
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
