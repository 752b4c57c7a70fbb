"""Structured logging: one JSON object per line, with context from contextvars.

Why contextvars: pynetdicom runs each association in its own thread, and the
completion monitor in another; a log line must say which association or study
it is about without every call passing it along. Only identifiers go in:
association ids, AE titles, database ids, counts (and UIDs at DEBUG). Patient
names, IDs, birth dates and accession numbers are never logged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "segnode_log_context", default=None
)

_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ``values`` to every log line emitted inside the block (this thread only)."""
    token = _context.set({**(_context.get() or {}), **values})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**values: Any) -> None:
    """Add ``values`` for the rest of this thread's (or context's) life."""
    _context.set({**(_context.get() or {}), **values})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_context.get() or {})
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = (
            f"{self.formatTime(record)} {record.levelname:7} {record.name}: {record.getMessage()}"
        )
        line = f"{line} [{extras}]" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log line to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO, including the datasets' identifiers; keep
    # it at WARNING so its lines cannot carry patient data into the node's logs.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # SQLAlchemy logs statement parameters (header attributes) at INFO/DEBUG.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
