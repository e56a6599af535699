"""Logging set-up: stderr (the journal under systemd) plus an optional size-rotated file, safe to call again.

Calling :func:`setup_logging` a second time (a reload, a test) replaces only the handlers it added earlier, so lines
are never duplicated and handlers installed by others (pytest's capture, an embedding app) stay.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Annotated, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

_MARK = "_installation_ops_handler"  # attribute set on handlers this module added
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s]: %(message)s"
STDERR_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)-7s %(name)s: %(message)s"  # journald adds its own timestamps


class LogSettings(BaseModel):
    """``[logs]``: level, and a rotating log file (empty = stderr only; relative to the config file's folder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = ""
    max_bytes: Annotated[int, Field(ge=4096, le=2**40)] = 10_000_000
    backups: Annotated[int, Field(ge=0, le=1000)] = 5


class RedactSecrets(logging.Filter):
    """A handler's filter that writes each of ``secrets`` (the web page's token) as ``***`` in every line it passes:
    the message with its arguments, a traceback, a stack. Whatever logs it (a library's debug line, an exception
    that quotes a URL), the secret never reaches the journal or the log file."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format: let the handler report it as it would
            return True
        clean = self._scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        return True


def setup_logging(settings: LogSettings, base_dir: Path | str | None = None, *,
                  logger: logging.Logger | None = None, stream=None, secrets: Iterable[str] = ()) -> list[logging.Handler]:
    """Install a stderr handler and, when ``settings.file`` is set, a RotatingFileHandler (its folder is created).

    Returns the handlers added. A log file that cannot be opened is a warning, not a failure: the show still plays
    with stderr only. ``logger`` defaults to the root logger, ``stream`` to sys.stderr. ``secrets`` (the web page's
    token) never appear in what these handlers write (:class:`RedactSecrets`).
    """
    target = logger if logger is not None else logging.getLogger()
    for h in [h for h in target.handlers if getattr(h, _MARK, False)]:
        target.removeHandler(h)
        h.close()
    target.setLevel(settings.level.upper())
    stream = sys.stderr if stream is None else stream
    under_journal = bool(os.environ.get("JOURNAL_STREAM")) and stream is sys.stderr
    err = logging.StreamHandler(stream)
    err.setFormatter(logging.Formatter(JOURNAL_FORMAT if under_journal else STDERR_FORMAT))
    added: list[logging.Handler] = [err]
    problem = ""
    if settings.file:
        path = Path(settings.file).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.handlers.RotatingFileHandler(path, maxBytes=settings.max_bytes,
                                                      backupCount=settings.backups, encoding="utf-8")
        except OSError as e:
            problem = f"cannot write the log file {path} ({e.strerror or e}); logging to stderr only"
        else:
            fh.setFormatter(logging.Formatter(FILE_FORMAT))
            added.append(fh)
    redact = RedactSecrets(secrets)
    for h in added:
        setattr(h, _MARK, True)
        h.addFilter(redact)
        target.addHandler(h)
    # Python warnings (library deprecations) go to the same places. Re-arm: captureWarnings(True) is a no-op when it
    # believes it is already capturing, even if something (a warnings.catch_warnings block) undid that since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    if problem:
        log.warning(problem)
    return added
