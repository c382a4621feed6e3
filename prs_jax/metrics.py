"""Metric writers: TensorBoard (clu) plus a JSON-lines file, written by process 0 only."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers

METRICS_FILENAME = "metrics.jsonl"


class JsonlWriter(metric_writers.MetricWriter):
    """Appends one JSON object per `write_scalars` call: {"step": s, name: value, ...}.

    clu has no JSON writer; a line-per-record file is what scripts and notebooks read most easily.
    Only scalars and hyperparameters are recorded; other kinds are TensorBoard's job.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self._file = open(path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step)}
        record.update({name: float(np.asarray(value)) for name, value in scalars.items()})
        self._file.write(json.dumps(record) + "\n")

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._file.write(json.dumps({"hparams": {k: _jsonable(v) for k, v in hparams.items()}}) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    # Not recorded in the JSON-lines file.
    def write_summaries(self, step, values, metadata=None) -> None:  # noqa: D102
        pass

    def write_images(self, step, images) -> None:  # noqa: D102
        pass

    def write_videos(self, step, videos) -> None:  # noqa: D102
        pass

    def write_audios(self, step, audios, *, sample_rate) -> None:  # noqa: D102
        pass

    def write_texts(self, step, texts) -> None:  # noqa: D102
        pass

    def write_histograms(self, step, arrays, num_buckets=None) -> None:  # noqa: D102
        pass


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard events + metrics.jsonl in `workdir` on process 0; logging only elsewhere."""
    if jax.process_index() > 0:
        return metric_writers.create_default_writer(workdir, just_logging=True)
    tensorboard = metric_writers.create_default_writer(workdir, asynchronous=False)
    return metric_writers.MultiWriter([tensorboard, JsonlWriter(os.path.join(workdir, METRICS_FILENAME))])


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The scalar records of a run's metrics.jsonl, in order (hyperparameter lines skipped)."""
    with open(os.path.join(workdir, METRICS_FILENAME), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if "step" in r]
