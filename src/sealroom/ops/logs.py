"""Logging for people and for journald: one line per event, untrusted text escaped."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

from sealroom.core.text import escape_for_log

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return escape_for_log(super().format(record)).replace("\\x0a", "\n  ")


# syslog priorities: journald reads a "<N>" prefix on each line of a service's stderr.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class _JournalFormatter(_TextFormatter):
    """Text without a time (journald adds its own) and with the priority on every line."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelno
        priority = 2 if level > logging.ERROR else _PRIORITIES.get(level - level % 10, 7)
        prefix = f"<{priority}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.node is not None:
            entry["node"] = self.node
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when it was set up."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def logs_to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd connected us to.

    ``JOURNAL_STREAM`` names the device and inode of that stream; it is inherited by
    processes whose stderr was redirected elsewhere, so the descriptor must match it.
    """
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor behind it (StringIO)
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def configure_logging(
    level: str = "info", fmt: str = "text", stream: TextIO | None = None, node: str | None = None
) -> None:
    """Send the ``sealroom`` loggers to stderr.

    When stderr is systemd's journal stream journald stamps each line, so text lines carry no
    time of their own there, and a ``<N>`` prefix gives each line its priority. ``node``: a
    cluster node's name, on every line, so that the logs of many nodes can be read together.
    """
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    where = "" if node is None else escape_for_log(node).replace("%", "%%") + " "
    if fmt == "json":
        formatter: logging.Formatter = _JsonFormatter(node)
        formatter.converter = time.gmtime
    elif logs_to_journal(stream or sys.stderr):
        formatter = _JournalFormatter(f"%(levelname)s {where}%(name)s: %(message)s")
    else:
        formatter = _TextFormatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger("sealroom")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    root.propagate = False


def set_level(level: str) -> None:
    """Change the level of the ``sealroom`` loggers (a reload applies ``log.level``)."""
    logging.getLogger("sealroom").setLevel(_LEVELS.get(level, logging.INFO))
