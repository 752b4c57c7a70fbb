"""Structured logging: one JSON object per line, with context from contextvars.

Why contextvars: pynetdicom runs each association in its own thread, and the
completion monitor in another; a log line must say which association or study
it is about without every call passing it along. Only identifiers go in:
association ids, AE titles, database ids, counts (and UIDs at DEBUG). Patient
names, IDs, birth dates and accession numbers are never logged.

Why third-party text is withheld: pydicom's validation warnings quote raw element
values (a UID that overruns its length drags the following patient elements into
the message), pynetdicom and SQLAlchemy quote values and parameters, and warnings
and uncaught exceptions would reach stderr as plain text in a JSON log. We cannot
vet other people's messages, so every record from outside our packages keeps only
its logger, level, source location and a keyed hash of the text; exception
messages (ours included: they embed pydicom's and SQLAlchemy's) are never
rendered, only their types and frames.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import secrets
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

from pydicom import config as pydicom_config

_context: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "segnode_log_context", default=None
)

_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

OWN_PACKAGES = ("segnode",)
"""Loggers under these names are ours: their messages are written as they are."""

WITHHELD_MESSAGE = "third-party message withheld (may contain patient data)"

_HASH_KEY = secrets.token_bytes(32)
"""Per process, so a hash correlates identical messages within one run but cannot be
reversed by hashing guessed values (birth dates, short IDs) offline."""

_WITHHELD = object()

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


@contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Add ``values`` to every log line emitted inside the block (this thread only).

    Why a block and no "bind for the rest of the thread": job runner threads and worker
    processes go from one job to the next, and a job id left behind would label the next
    job's lines.
    """
    token = _context.set({**(_context.get() or {}), **values})
    try:
        yield
    finally:
        _context.reset(token)


def current_log_context() -> dict[str, object]:
    """The fields :func:`log_context` adds here, now (a copy), e.g. to carry into a worker."""
    return dict(_context.get() or {})


def is_own_logger(name: str) -> bool:
    return any(name == package or name.startswith(f"{package}.") for package in OWN_PACKAGES)


def text_hash(text: str) -> str:
    """Short keyed SHA-256 of ``text``: equal texts match within this process, nothing more."""
    return hmac.new(_HASH_KEY, text.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break logging
        return f"<unprintable {type(value).__name__}>"


def _type_name(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def describe_exception(exc: BaseException) -> str:
    """Traceback text with every exception's type and frames but not its message.

    Why no message: exception texts quote values (pydicom elements, SQL parameters,
    file paths named by UIDs); the job's event log keeps the full error for operators.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts = []
    for item in reversed(chain):
        frames = "".join(traceback.extract_tb(item.__traceback__).format())
        parts.append(
            "Traceback (most recent call last):\n"
            f"{frames}{_type_name(type(item))}: <message withheld, hash {text_hash(_safe_str(item))}>"
        )
    return "\n\nDuring handling of the above, another exception occurred:\n\n".join(parts)


class WithholdThirdParty(logging.Filter):
    """Replace the text of every record not from our packages; pass ours unchanged.

    Mutates the record (a 3.11 filter cannot return a new one), so every handler after
    this one sees the withheld version too; a record is withheld once.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if is_own_logger(record.name) or getattr(record, "_withheld_by", None) is _WITHHELD:
            return True  # the token, not the "withheld" field: an extra could set that
        try:
            original = record.getMessage()
        except Exception:  # noqa: BLE001 - mismatched args: hash the template instead
            original = _safe_str(record.msg)
        category = getattr(record, "_warning_category", None)
        exc_type = record.exc_info[0] if record.exc_info and record.exc_info[0] else None
        for key in list(vars(record)):
            if key not in _STANDARD_ATTRIBUTES or key in ("message", "asctime"):
                delattr(record, key)  # third-party extras may carry values too
        record.msg, record.args = WITHHELD_MESSAGE, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.withheld = True
        record._withheld_by = _WITHHELD
        record.source = f"{record.pathname}:{record.lineno}"
        record.message_hash = text_hash(original)
        if category is not None:
            record.warning_category = category
        if exc_type is not None:
            record.exception_type = _type_name(exc_type)
        return True


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = dict(_context.get() or {})
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
            fields[key] = value
    return fields


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[1] is not None:
        return describe_exception(record.exc_info[1])
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        exception = _exception_text(record)
        if exception is not None:
            entry["exception"] = exception
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = (
            f"{self.formatTime(record)} {record.levelname:7} {record.name}: {record.getMessage()}"
        )
        line = f"{line} [{extras}]" if extras else line
        exception = _exception_text(record)
        if exception is not None:
            line += "\n" + exception
        return line


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, like :data:`logging.lastResort`.

    Why not a StreamHandler: one bound at start keeps writing to a replaced (and
    perhaps closed) stream; every record passes :class:`WithholdThirdParty` first.
    """

    def __init__(self, formatter: logging.Formatter, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.setFormatter(formatter)
        self.addFilter(WithholdThirdParty())

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """One JSON line instead of logging's plain-text traceback with the record's args."""
        error = sys.exc_info()[1]
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "ERROR",
            "logger": __name__,
            "message": "a log record could not be written",
            "record_logger": record.name,
            "source": f"{record.pathname}:{record.lineno}",
            "error_type": type(error).__name__ if error is not None else None,
        }
        try:
            sys.stderr.write(json.dumps(line) + "\n")
        except Exception:  # noqa: BLE001, S110 - stderr itself is gone: nothing left to tell
            pass


# Before configure_logging runs (imports, argument parsing), a WARNING with no
# handler goes to logging.lastResort as raw text: make that fallback JSON and withheld.
logging.lastResort = StderrHandler(JsonFormatter(), logging.WARNING)

_log = logging.getLogger(__name__)
_warnings_logger = logging.getLogger("py.warnings")
_original_showwarning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings`` through logging (the ``py.warnings`` logger), like captureWarnings.

    Why not :func:`logging.captureWarnings`: it logs from inside the logging module,
    so the record's location says nothing; here it is the warning's file and line.
    """
    if file is not None:  # an explicit destination (warnings.showwarning(..., file=f))
        _original_showwarning(message, category, filename, lineno, file, line)
        return
    if not _warnings_logger.isEnabledFor(logging.WARNING):
        return
    record = _warnings_logger.makeRecord(
        _warnings_logger.name,
        logging.WARNING,
        filename,
        lineno,
        "%s",
        (_safe_str(message),),
        None,
        extra={"_warning_category": category.__name__},
    )
    _warnings_logger.handle(record)


def _log_uncaught(exc_info: ExcInfo, where: str) -> None:
    _log.error(
        "uncaught exception",
        exc_info=exc_info,
        extra={"where": where, "thread_name": threading.current_thread().name},
    )


def _sys_excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    _log_uncaught((exc_type, exc, tb), "main")


def _threading_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return  # the default hook ignores SystemExit too
    _log_uncaught((args.exc_type, args.exc_value, args.exc_traceback), "thread")


def _unraisable_hook(args: Any) -> None:
    """Errors in ``__del__`` and the like: the object's repr may quote values, so only its type."""
    if args.exc_value is None:
        return
    _log.error(
        "unraisable exception",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"object_type": type(args.object).__qualname__},
    )


def quiet_pydicom_reading() -> None:
    """Stop pydicom validating values on read.

    Why: each validation warning quotes the raw value (with an overrunning UID, the
    patient elements after it); the node checks what it relies on itself. The
    filter above would withhold the text anyway; this also saves the work.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log line to stderr in the chosen format (idempotent).

    Also routes ``warnings``, uncaught exceptions (main thread, other threads,
    ``__del__``) through the same handler, so stderr carries only log lines, and
    turns off pydicom's read validation (:func:`quiet_pydicom_reading`). Call it in
    every process that handles DICOM, worker processes included.
    """
    root = logging.getLogger()
    root.handlers[:] = [StderrHandler(JsonFormatter() if fmt == "json" else TextFormatter())]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO, including the datasets' identifiers; keep
    # it at WARNING so its lines cannot carry patient data into the node's logs.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # SQLAlchemy logs statement parameters (header attributes) at INFO/DEBUG.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    warnings.showwarning = _show_warning
    sys.excepthook = _sys_excepthook
    threading.excepthook = _threading_excepthook
    sys.unraisablehook = _unraisable_hook
    quiet_pydicom_reading()
