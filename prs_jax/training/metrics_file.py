"""A run's metrics.jsonl: its name and its reader.

Apart from the writers (prs_jax.training.metrics, which need clu and through it TensorFlow), so
that the commands which only read runs (report, fourier --compare) start without importing
TensorFlow: seconds faster, and none of its start-up notices in their output.
"""

from __future__ import annotations

import json

from etils import epath

METRICS_FILENAME = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The scalar records of a run's metrics.jsonl, in order (hyperparameter lines skipped)."""
    text = (epath.Path(workdir) / METRICS_FILENAME).read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in records if "step" in r]
