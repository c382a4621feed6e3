"""A run's log reads like a report: our own lines, clu's steps/s-and-ETA line, and every warning.

Libraries log their INFO through absl too (orbax writes about 35 lines per checkpoint save:
atomicity, handlers, the manager, event tracking; clu's LoggingWriter echoes every scalar
written; JAX names the backends it did not find). A filter on the absl handler drops records
below `level` from files outside prs_jax, except clu's progress line; `--library_log_level=info`
on the commands brings them all back.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging

# Library files whose INFO lines stay: clu's ReportProgress line (steps/s, percent, ETA) is set
# as the work-unit notes in clu/platform/local.py.
KEPT_LIBRARY_FILES = (os.path.join("clu", "platform", "local.py"),)
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the prs_jax folder
LEVELS = {
    "debug": std_logging.DEBUG,
    "info": std_logging.INFO,
    "warning": std_logging.WARNING,
    "error": std_logging.ERROR,
}


class LibraryLogFilter(std_logging.Filter):
    """Keeps a record if it is ours, a kept library line, or at `level` or above."""

    def __init__(self, level: int = std_logging.WARNING) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        path = os.path.abspath(record.pathname)
        return path.startswith(_OURS + os.sep) or path.endswith(KEPT_LIBRARY_FILES)


def quiet_library_logs(level: str = "warning") -> LibraryLogFilter | None:
    """Install the filter on absl's handler (the one every absl and Python log line reaches
    under absl.app); None, and nothing installed, for level 'info' or 'debug'."""
    if level not in LEVELS:
        raise ValueError(f"library log level {level!r}; choose one of {sorted(LEVELS)}")
    if LEVELS[level] <= std_logging.INFO:
        return None
    log_filter = LibraryLogFilter(LEVELS[level])
    logging.get_absl_handler().addFilter(log_filter)
    return log_filter
