"""Payload text in log lines: one record stays one console line, whatever the alert carried."""

from __future__ import annotations

import json
import logging
import sys

import httpx
import pytest

from workers.logs import ConsoleFormatter, JsonFormatter

from .conftest import AUTH


def record(message: str = "notification refused", **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "workers.test", "levelname": "INFO", "levelno": 20, "msg": message})
    for key, value in extra.items():
        setattr(made, key, value)
    return made


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("db1", "db1"),
        (42, "42"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\n12:00:00 ERROR   workers: forged", '"line\\n12:00:00 ERROR   workers: forged"'),
        ("cr\rlf", '"cr\\rlf"'),
        ("\x1b[31mred", '"\\x1b[31mred"'),
        ("rtl\u202eexe.txt", '"rtl\\u202eexe.txt"'),
        ("sep\u2028arator", '"sep\\u2028arator"'),
        ("警告", "警告"),
    ],
)
def test_console_values_are_quoted_and_escaped_when_needed(value: object, shown: str) -> None:
    line = ConsoleFormatter().format(record(field=value))
    assert line.endswith(f" field={shown}")
    assert "\n" not in line and "\r" not in line and "\x1b" not in line


def test_an_unprintable_message_is_escaped_and_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("bad\x1b[2J value")
    except ValueError:
        failed = record("GET /x\n/y", path="/x")
        failed.exc_info = sys.exc_info()
    text = ConsoleFormatter().format(failed)
    first, *rest = text.split("\n")
    assert "GET /x\\n/y path=/x" in first
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad\\x1b[2J value"


def test_a_hostile_payload_gives_single_line_records_in_both_formats(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = "x\n12:00:00 ERROR   forged: line \x1b[31m"
    body = {"alerts": [{"labels": {"alertname": hostile, "severity": hostile}, "startsAt": "2026-12-03T10:00:00Z"}]}
    refused = {"alerts": [{"labels": {hostile: "v"}, "startsAt": "soon\n" + hostile}]}
    with caplog.at_level(logging.INFO, logger="workers"):
        assert client.post("/alertmanager", json=body, headers=AUTH).status_code == 200
        assert client.post("/alertmanager", json=refused, headers=AUTH).status_code == 400
    records = [r for r in caplog.records if r.name.startswith("workers.")]
    assert {r.getMessage() for r in records} >= {"unknown severity counted as warning", "notification refused"}
    for made in records:
        console, as_json = ConsoleFormatter().format(made), JsonFormatter().format(made)
        assert "\n" not in console and "\x1b" not in console, console
        assert "\n" not in as_json and "\x1b" not in as_json
        assert json.loads(as_json)["event"] == made.getMessage()
