"""Structured logging: the JSON formatter, log_context() and configure_logging()."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from workers.redaction import redact_text, redact_value

_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("log_context", default=_EMPTY)
_HANDLER_NAME = "ops-workers"
_CONTEXT_ATTR = "ops_context"
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", _CONTEXT_ATTR}


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add fields to every log record emitted inside the block (and in tasks it enqueues)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, object]:
    return _context.get()


def bind_context(**fields: object) -> object:
    """Bind fields until unbind_context(token); for signal pairs such as task_prerun/postrun."""
    return _context.set({**_context.get(), **fields})


def unbind_context(token: object) -> None:
    _context.reset(token)  # type: ignore[arg-type]


def _fields(record: logging.LogRecord) -> dict[str, object]:
    # The context is stamped on the record when it is made (see _stamp_context), because a
    # handler may format it later, outside the block that bound it.
    stamped = getattr(record, _CONTEXT_ATTR, None)
    fields = {
        **(stamped if stamped is not None else _context.get()),
        **{k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")},
    }
    # A URL with user:password@ or ?token=, wherever it came from, is masked in every format.
    return {k: redact_value(v) for k, v in fields.items()}


def _json_default(value: object) -> str:
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, the bound context and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact_text(record.getMessage()),
            **_fields(record),
        }
        if record.exc_info:
            doc["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(doc, default=_json_default, ensure_ascii=False)


def _escape_unprintable(text: str, also: str = "") -> str:
    # repr() spells a newline \n, ESC \x1b and a bidi override \u202e; printable text stays as it is.
    if text.isprintable() and not any(c in text for c in also):
        return text
    return "".join(("\\" + c) if c in also else c if c.isprintable() else repr(c)[1:-1] for c in text)


def console_value(value: object) -> str:
    """A k=v value that cannot break the line: bare when it is one printable word, else double-quoted and escaped."""
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and not any(c in text for c in ' ="\\'):
        return text
    return '"' + _escape_unprintable(text, also='"\\') + '"'


class ConsoleFormatter(logging.Formatter):
    """Readable lines for a terminal: time level logger event key=value ...

    One record is one line: values (which may hold payload text) are quoted and escaped, and so is
    anything unprintable in the message; a traceback keeps its own lines, each escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        pairs = " ".join(f"{k}={console_value(v)}" for k, v in _fields(record).items())
        event = _escape_unprintable(redact_text(record.getMessage()))
        line = f"{ts} {record.levelname:<7} {record.name}: {event} {pairs}".rstrip()
        if record.exc_info:
            lines = redact_text(self.formatException(record.exc_info)).split("\n")
            line += "\n" + "\n".join(_escape_unprintable(part) for part in lines)
        return line


def _install_context_stamp() -> None:
    base = logging.getLogRecordFactory()
    if getattr(base, "stamps_ops_context", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        setattr(record, _CONTEXT_ATTR, _context.get())
        return record

    make_record.stamps_ops_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


def configure_logging(level: str, fmt: str) -> None:
    """Send every logger (ours, Celery's, uvicorn's) through one stderr handler. Called by entry points."""
    _install_context_stamp()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler, so calling this twice (CLI, then Celery's signal) doesn't double lines.
    for existing in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("celery", "kombu", "uvicorn", "uvicorn.error", "uvicorn.access", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Alembic narrates every migration step at INFO; our own "state database migrated" line says it once.
    logging.getLogger("alembic").setLevel(max(logging.getLevelName(level), logging.WARNING))
    # boto's debug output includes request signatures; keep it quiet even at DEBUG.
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.WARNING))
