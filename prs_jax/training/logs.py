"""A run's log reads like a report: our own lines, clu's steps/s-and-ETA line, and every warning.

Libraries log their INFO through absl too (orbax writes about 35 lines per checkpoint save:
atomicity, handlers, the manager, event tracking; clu's LoggingWriter echoes every scalar
written; JAX names the backends it did not find). A filter on the absl handler drops records
below `level` from files outside prs_jax, except clu's progress line; `--library_log_level=info`
on the commands brings them all back.

TensorFlow's C++ start-up lines (the oneDNN notice, CPU-instruction hints, and absl's "before
absl::InitializeLog()" note that comes with them) bypass Python's logging: they are written
to the process's stderr while TensorFlow is imported, and `native_start_up_noise_dropped`
removes them there.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
import tempfile
from collections.abc import Iterator

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
    """Keeps a record if it is ours, a kept library line, or at `level` or above; a library's
    record keeps its line but not its traceback (orbax logs each failed write of a full disk
    with one, from each of its threads; the error that stops the run is reported whole)."""

    def __init__(self, level: int = std_logging.WARNING) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: std_logging.LogRecord) -> bool:
        path = os.path.abspath(record.pathname)
        if path.startswith(_OURS + os.sep) or path.endswith(KEPT_LIBRARY_FILES):
            return True
        if record.levelno < self.level:
            return False
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


# Lines printed by TensorFlow's C++ code while it is imported, none of which needs an action.
NATIVE_START_UP_NOISE = (
    "oneDNN custom operations are on",
    "All log messages before absl::InitializeLog() is called",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
)


@contextlib.contextmanager
def native_start_up_noise_dropped(level: str = "warning") -> Iterator[None]:
    """Run the block (an import of TensorFlow) with the process's stderr (fd 2) captured, then
    write back every line but NATIVE_START_UP_NOISE's, in order. At 'info' or 'debug' nothing
    is captured."""
    if LEVELS[level] <= std_logging.INFO:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = [line for line in lines if not any(n in line for n in NATIVE_START_UP_NOISE)]
            if kept:
                os.write(2, "".join(kept).encode())


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
