"""Train subsets by ratio: class-balanced, seeded, nested, chosen by example index.

The PRS paper's data-scale study trains each model on 5, 10, 25, 50 and 100% of the train split.
For class c with n_c examples we draw one permutation of its example indices, seeded by
(seed, c); the subset at ratio r takes the first round(r * n_c) of it (at least one). A smaller
ratio takes a prefix of the same permutation, so the 10% subset lies inside the 25% subset:
nested by construction. Each class keeps its share, so a balanced split (CIFAR-100: 500 per
class) stays balanced, and ImageNet's class frequencies are kept.

The subset is a list of indices into the split, so the pipeline shuffles, shards and resumes it
exactly like the whole split. Evaluation always reads the whole eval split.

Pure functions of the labels (numpy only): the configured train split's subset, read through
the sources, is prs_jax.data.train_examples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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
