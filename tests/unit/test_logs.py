"""fastmqtt's own log lines: one record is one line, in text and in JSON."""

from __future__ import annotations

import json
import logging
import sys
import time

from hypothesis import given
from hypothesis import strategies as st

from fastmqtt.logs import TEXT_FORMAT, JsonFormatter, TextFormatter, one_line, utc_time

# Every character str.splitlines() ends a line at, plus the C1 controls log viewers may.
SPLITTERS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_every_line_splitter_and_control_is_escaped():
    for code in range(0x3000):
        char = chr(code)
        escaped = one_line(f"a{char}b")
        assert len(escaped.splitlines()) == 1, hex(code)
        if (code < 0x20 and char != "\t") or 0x7F <= code <= 0x9F or char in "\u2028\u2029":
            assert char not in escaped, hex(code)
        else:
            assert escaped == f"a{char}b", hex(code)  # everything else is left alone
    assert one_line("a\nb\rc\x85d\u2028e") == "a\\nb\\rc\\u0085d\\u2028e"
    assert all(char not in one_line(SPLITTERS) for char in SPLITTERS)


@given(st.text())
def test_one_line_never_leaves_a_line_break(text):
    assert len(one_line(text).splitlines()) <= 1


@given(st.dictionaries(st.text(), st.text() | st.integers() | st.none()))
def test_escaped_json_is_still_the_same_json(data):
    line = one_line(json.dumps(data, ensure_ascii=False))
    assert len(line.splitlines()) == 1 and json.loads(line) == data


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("fastmqtt.test")
    return logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, message, args, None, extra=extra
    )


def test_json_lines_have_stable_keys_utc_time_and_structured_fields():
    before = time.time()
    record = _record("server %s/%s is %s", "be", "n\u20281", "DOWN", backend="be", state="DOWN")
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert list(entry) == ["time", "level", "logger", "message", "backend", "state"]
    assert entry["message"] == "server be/n\u20281 is DOWN" and "\u2028" not in line
    assert (entry["level"], entry["logger"]) == ("warning", "fastmqtt.test")
    assert entry["time"].endswith("Z")
    stamp = time.mktime(time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= stamp <= time.time()  # UTC, whatever the machine's zone
    assert json.loads(JsonFormatter(worker=3).format(_record("x")))["worker"] == 3


def test_a_traceback_stays_in_its_record():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    text = TextFormatter(TEXT_FORMAT).format(record)
    assert len(text.splitlines()) == 1 and "ValueError: bad\\nthing" in text
    record.exc_text = None
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exception"].endswith("ValueError: bad\nthing")


def test_utc_time_has_milliseconds():
    assert utc_time(0.5) == "1970-01-01T00:00:00.500Z"
    assert utc_time(1_700_000_000.042) == "2023-11-14T22:13:20.042Z"
