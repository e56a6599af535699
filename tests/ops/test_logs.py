"""Logging set-up: stderr plus a rotating file, idempotent, other handlers left alone."""

from __future__ import annotations

import io
import logging
import logging.handlers
import uuid
import warnings

import pytest
from pydantic import ValidationError

from installation.ops.logs import LogSettings, setup_logging


@pytest.fixture
def logger():
    lg = logging.getLogger(f"test-ops-logs-{uuid.uuid4().hex}")
    lg.propagate = False
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        h.close()


def test_stderr_only_by_default(logger):
    stream = io.StringIO()
    added = setup_logging(LogSettings(), logger=logger, stream=stream)
    assert len(added) == 1 and logger.level == logging.INFO
    logger.info("hello")
    logger.debug("hidden")
    assert "INFO    " in stream.getvalue() and "hello" in stream.getvalue() and "hidden" not in stream.getvalue()


def test_file_is_created_relative_to_base_dir_and_rotates(tmp_path, logger):
    settings = LogSettings(level="debug", file="logs/show.log", max_bytes=4096, backups=2)
    added = setup_logging(settings, tmp_path, logger=logger, stream=io.StringIO())
    assert any(isinstance(h, logging.handlers.RotatingFileHandler) for h in added)
    line = "x" * 200
    for i in range(100):  # ~20 KB through a 4 KB file with 2 backups
        logger.debug("%d %s", i, line)
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["show.log", "show.log.1", "show.log.2"]
    assert all((tmp_path / "logs" / f).stat().st_size <= 4096 + 300 for f in files)
    assert "99 xxx" in (tmp_path / "logs" / "show.log").read_text()


def test_calling_twice_does_not_duplicate(tmp_path, logger):
    before = len(logger.handlers)  # pytest attaches its capture handlers to non-propagating loggers too
    other = logging.StreamHandler(io.StringIO())
    logger.addHandler(other)  # someone else's handler stays
    stream = io.StringIO()
    settings = LogSettings(file=str(tmp_path / "a.log"))
    setup_logging(settings, logger=logger, stream=stream)
    setup_logging(settings, logger=logger, stream=stream)
    assert len(logger.handlers) == before + 3  # other + stderr + file
    assert other in logger.handlers
    logger.warning("once")
    assert stream.getvalue().count("once") == 1
    assert (tmp_path / "a.log").read_text().count("once") == 1
    # Switching the file off removes the file handler it added before.
    setup_logging(LogSettings(level="warning"), logger=logger, stream=stream)
    assert len(logger.handlers) == before + 2 and logger.level == logging.WARNING


def test_unwritable_log_file_warns_and_keeps_stderr(tmp_path, logger):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    stream = io.StringIO()
    # The module logs its warning through its own logger; route the root to our stream to see it.
    root_stream = io.StringIO()
    h = logging.StreamHandler(root_stream)
    logging.getLogger("installation.ops.logs").addHandler(h)
    try:
        added = setup_logging(LogSettings(file=str(blocker / "show.log")), logger=logger, stream=stream)
    finally:
        logging.getLogger("installation.ops.logs").removeHandler(h)
    assert len(added) == 1
    assert "cannot write the log file" in root_stream.getvalue()


def test_warnings_are_captured(logger):
    stream = io.StringIO()
    h = logging.StreamHandler(stream)
    logging.getLogger("py.warnings").addHandler(h)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            setup_logging(LogSettings(), logger=logger, stream=io.StringIO())
            warnings.warn("old api", DeprecationWarning, stacklevel=1)
    finally:
        logging.getLogger("py.warnings").removeHandler(h)
        logging.captureWarnings(False)
    assert "old api" in stream.getvalue()


def test_settings():
    assert LogSettings() == LogSettings(level="info", file="", max_bytes=10_000_000, backups=5)
    with pytest.raises(ValidationError):
        LogSettings(level="verbose")
    with pytest.raises(ValidationError):
        LogSettings(max_bytes=0)  # 0 would mean "never rotate"
    with pytest.raises(ValidationError):
        LogSettings(rotate=True)
