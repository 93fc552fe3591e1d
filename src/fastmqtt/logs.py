"""fastmqtt's own log lines (start, stop, reload, health changes, ...) on stderr: text as
``asctime LEVEL logger: message``, or with ``log_format = "json"`` one JSON object per line, in
UTC, with the keys ``time``, ``level``, ``logger``, ``message``, then the record's structured
fields (``extra={...}``, e.g. ``backend``/``server``/``state`` of a health change).

Either way one record is one line: every character a line-based collector (or
``str.splitlines``) may take for the end of a line is escaped, so text from outside (a config
value quoted in an error, a peer's name) cannot split a record or forge another. one_line()
is the one place that knows which characters those are.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# C0 controls but TAB (LF, CR, VT, FF, FS, GS, RS split lines), DEL and the C1 controls (NEL,
# U+0085, among them), LINE SEPARATOR and PARAGRAPH SEPARATOR.
_SPLITTERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}

# Attributes every LogRecord has; the others came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def one_line(text: str) -> str:
    """``text`` with each such character escaped as ``\\n``, ``\\r`` or ``\\uXXXX``. JSON text
    stays valid JSON: json.dumps escapes the C0 controls already, the rest become JSON escapes."""
    return _SPLITTERS.sub(lambda m: _NAMED.get(m[0]) or f"\\u{ord(m[0]):04x}", text)


def utc_time(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds, as the connection log writes it: ``...T12:00:00.123Z``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int(seconds * 1000) % 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """The classic line, escaped (a traceback too: one record, one line)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker  # set in a worker process, so interleaved lines say whose they are

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return one_line(json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":")))


def setup(level: str, fmt: str, worker: int | None = None) -> None:
    """Route the ``fastmqtt.*`` loggers to stderr in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
