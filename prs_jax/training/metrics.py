"""Metric writers: TensorBoard (clu) plus a JSON-lines file, written by process 0 only."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from etils import epath

from prs_jax.errors import UserError
from prs_jax.training.metrics_file import METRICS_FILENAME, read_metrics

__all__ = ["METRICS_FILENAME", "JsonlWriter", "MetricsWriteError", "create_writer", "read_metrics"]


class MetricsWriteError(UserError):
    """metrics.jsonl could not be written (a full disk, a lost permission)."""


class JsonlWriter(metric_writers.MetricWriter):
    """Appends one JSON object per `write_scalars` call: {"step": s, name: value, ...}.

    clu has no JSON writer; a line-per-record file is what scripts and notebooks read most easily.
    Only scalars and hyperparameters are recorded; other kinds are TensorBoard's job. Object
    stores (gs://) cannot append, so there the whole (small) file is rewritten at each flush.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self._path = epath.Path(path)
        self._appendable = not str(path).startswith(("gs://", "s3://"))
        if self._appendable:
            self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        else:
            self._lines = self._path.read_text().splitlines(True) if self._path.exists() else []

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        if self._appendable:
            self._file.write(line)
        else:
            self._lines.append(line)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step)}
        record.update({name: float(np.asarray(value)) for name, value in scalars.items()})
        try:
            self._write(record)
            self.flush()
        except OSError as error:
            raise MetricsWriteError(
                f"the metrics of step {step} could not be written to {self._path}"
                f" ({error.strerror}); training stopped. Free space or restore write access, then"
                " rerun the same command to resume from the latest checkpoint"
            ) from error

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._write({"hparams": {k: _jsonable(v) for k, v in hparams.items()}})

    def flush(self) -> None:
        if self._appendable:
            self._file.flush()
        else:
            self._path.write_text("".join(self._lines))

    def close(self) -> None:
        self.flush()
        if self._appendable:
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
    jsonl = JsonlWriter(epath.Path(workdir) / METRICS_FILENAME)
    return metric_writers.MultiWriter([tensorboard, jsonl])
