"""The library-log filter: which records a run's default log keeps."""

import logging
import os

import pytest

from prs_jax.training import logs


def record(path: str, level: int) -> logging.LogRecord:
    return logging.LogRecord("absl", level, path, 1, "message", None, None)


OURS = os.path.join(os.path.dirname(os.path.dirname(logs.__file__)), "training", "train.py")
SITE = os.path.join(os.sep, "venv", "lib", "python3.11", "site-packages")


@pytest.mark.parametrize(
    "path, level, kept",
    [
        (OURS, logging.INFO, True),
        (os.path.join(SITE, "orbax", "checkpoint", "checkpoint_manager.py"), logging.INFO, False),
        (os.path.join(SITE, "orbax", "checkpoint", "checkpoint_manager.py"), logging.WARNING, True),
        (os.path.join(SITE, "clu", "metric_writers", "logging_writer.py"), logging.INFO, False),
        (os.path.join(SITE, "clu", "platform", "local.py"), logging.INFO, True),  # steps/s, ETA
        (os.path.join(SITE, "jax", "_src", "xla_bridge.py"), logging.INFO, False),
        (os.path.join(SITE, "jax", "_src", "xla_bridge.py"), logging.ERROR, True),
    ],
)
def test_filter_keeps_ours_the_progress_line_and_warnings(path, level, kept):
    assert logs.LibraryLogFilter(logging.WARNING).filter(record(path, level)) is kept


def test_an_error_level_filter_drops_library_warnings_too():
    orbax = os.path.join(SITE, "orbax", "checkpoint", "utils.py")
    assert not logs.LibraryLogFilter(logging.ERROR).filter(record(orbax, logging.WARNING))


def test_info_installs_no_filter_and_an_unknown_level_is_refused():
    assert logs.quiet_library_logs("info") is None
    with pytest.raises(ValueError, match="choose one of"):
        logs.quiet_library_logs("loud")
