"""A run's completion record, WORKDIR/finished.json: written once the loop has trained and
evaluated its last step, read by prs_jax.sweep to skip a run that has nothing left to do.

Without it a resumed sweep starts every finished run again only to learn that it is finished
(about 40 s each on a 2-core CPU: imports, the data scan, the restore). The record holds the
config the run finished with, so a run whose config has since changed (say, more epochs) is
not taken for finished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from etils import epath

FINISHED_FILE = "finished.json"


def _comparable(config: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(dict(config), sort_keys=True))  # tuples -> lists, as saved


def mark_finished(workdir: str, step: int, config: Mapping[str, Any]) -> None:
    """Record that the run in `workdir` finished at `step` with `config` (a plain dict)."""
    record = {"step": step, "config": _comparable(config)}
    (epath.Path(workdir) / FINISHED_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))


def finished_step(workdir: str, config: Mapping[str, Any]) -> int | None:
    """The step at which `workdir`'s run finished with exactly `config`; None if it has not
    (no record, an unreadable one, or one for another config)."""
    path = epath.Path(workdir) / FINISHED_FILE
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("config") != _comparable(config):
        return None
    return int(record["step"])
