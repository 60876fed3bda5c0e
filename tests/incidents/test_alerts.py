"""Parsing Alertmanager bodies into Alert values: pure, table-driven."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from workers.errors import InvalidAlert
from workers.incidents.alerts import (
    Alert,
    AlertStatus,
    Severity,
    episodes,
    fingerprint,
    normalise_severity,
    parse_api_alerts,
    parse_notification,
    parse_timestamp,
)
from workers.incidents.intake import loggable

CASES = Path("/work/shared/cases/alertmanager")
LOCAL_CASES = Path(__file__).parent / "cases"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def load_case(name: str) -> dict[str, Any]:
    return json.loads((LOCAL_CASES / name).read_text())


def alert(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "status": "firing",
        "labels": {"alertname": "DiskFull", "severity": "critical", "instance": "db1"},
        "annotations": {"summary": "disk full"},
        "startsAt": "2026-12-03T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
    }
    doc.update(overrides)
    return doc


def body(*alerts: dict[str, object], **top: object) -> dict[str, object]:
    return {"version": "4", "status": "firing", "receiver": "ops", "alerts": list(alerts), **top}


def test_every_shared_case_is_a_local_copy() -> None:
    # The shared directory is the source; tests/incidents/cases keeps the bodies with the tests (and in CI).
    if not CASES.is_dir():
        pytest.skip("shared cases directory not present on this machine")
    for path in sorted(CASES.glob("*.json")):
        assert (LOCAL_CASES / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "01-firing-two-alerts-empty-urls.json",
            [("InstanceDown", "firing", "critical", "f404ecabc8dd5cd7"),
             ("InstanceDown", "firing", "critical", "f8f08d4e32c61a9d")],
        ),
        ("02-disk-full-relative-generator-url.json",
         [("disk_full", "firing", "warning", "355cfca350bfe294")]),
        ("03-resolved-single-capitalised-severity.json",
         [("Deployment", "resolved", "warning", "fbab788ec4c1018b")]),
    ],
)  # fmt: skip
def test_shared_cases_give_the_right_alerts(case: str, expected: list[tuple[str, str, str, str]]) -> None:
    notification = parse_notification(load_case(case), NOW)
    assert [(a.name, a.status.value, a.severity.value, a.fingerprint) for a in notification.alerts] == expected
    assert notification.truncated_alerts == 0


def test_case_01_empty_generator_url_and_zero_ends_at() -> None:
    first = parse_notification(load_case("01-firing-two-alerts-empty-urls.json"), NOW).alerts[0]
    assert first.generator_url is None
    assert first.ends_at is None
    assert first.starts_at == datetime(2023, 6, 12, 8, 24, 38, 326000, tzinfo=UTC)


def test_case_02_keeps_relative_generator_url_and_multiline_annotation() -> None:
    only = parse_notification(load_case("02-disk-full-relative-generator-url.json"), NOW).alerts[0]
    assert only.generator_url is not None and only.generator_url.startswith("/prometheus/graph?")
    assert "(< 10% left)\n" in only.annotations["description"]


def test_case_03_capitalised_severity_and_one_digit_fraction() -> None:
    only = parse_notification(load_case("03-resolved-single-capitalised-severity.json"), NOW).alerts[0]
    assert only.severity is Severity.WARNING and only.severity_is_known
    assert only.starts_at == datetime(2022, 7, 29, 11, 13, 27, 300000, tzinfo=UTC)
    assert only.ends_at == datetime(2022, 7, 29, 11, 17, 27, 300000, tzinfo=UTC)


def test_case_04_legacy_alerts_get_computed_fingerprints_and_firing_status() -> None:
    notification = parse_notification(load_case("04-nineteen-alerts-legacy-no-fingerprints.json"), NOW)
    assert len(notification.alerts) == 19
    assert all(a.status is AlertStatus.FIRING for a in notification.alerts)
    assert all(a.fingerprint == fingerprint(a.labels) for a in notification.alerts)
    assert len({a.fingerprint for a in notification.alerts}) == 19
    # "page" is not one of ours: counted as warning, and flagged so the receiver logs it.
    assert all(a.severity is Severity.WARNING and not a.severity_is_known for a in notification.alerts)
    # startsAt is kept to the millisecond: Alertmanager's API prints no finer, and reconcile must meet it.
    assert notification.alerts[0].starts_at == datetime(2019, 1, 9, 15, 20, 40, 341000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        # Values taken from the shared cases, which carry Alertmanager's own fingerprints.
        ({"alertname": "InstanceDown", "group": "production", "instance": "localhost:8081", "job": "node",
          "severity": "critical"}, "f404ecabc8dd5cd7"),
        ({"alertname": "disk_full", "device": "/dev/vda2", "fstype": "xfs", "instance": "10.5.4.1:9100",
          "job": "providers", "mountpoint": "/boot", "node": "1", "severity": "warning"}, "355cfca350bfe294"),
        # FNV-1a 64 of the empty input is its offset basis.
        ({}, "cbf29ce484222325"),
    ],
)  # fmt: skip
def test_fingerprint_matches_alertmanager(labels: dict[str, str], expected: str) -> None:
    assert fingerprint(labels) == expected


@pytest.mark.parametrize(
    ("given", "kept"), [("F404ECABC8DD5CD7", "f404ecabc8dd5cd7"), (" 0aB ", "0ab"), ("f" * 64, "f" * 64)]
)
def test_a_given_hex_fingerprint_is_kept_in_lower_case(given: str, kept: str) -> None:
    [parsed] = parse_notification(body(alert(fingerprint=given)), NOW).alerts
    assert parsed.fingerprint == kept


def test_a_blank_fingerprint_is_computed_from_the_labels() -> None:
    [parsed] = parse_notification(body(alert(fingerprint="  ")), NOW).alerts
    assert parsed.fingerprint == fingerprint(parsed.labels)


def test_fingerprint_ignores_label_order_and_separates_names_from_values() -> None:
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})
    assert len(fingerprint({"名前": "値"})) == 16


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-12-03T10:00:00Z", datetime(2026, 12, 3, 10, 0, tzinfo=UTC)),
        ("2026-12-03T10:00:00.123456789Z", datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-12-03T11:30:00+01:30", datetime(2026, 12, 3, 10, 0, tzinfo=UTC)),
        ("2026-12-03T05:00:00.5-05:00", datetime(2026, 12, 3, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2026-12-03t10:00:00z", datetime(2026, 12, 3, 10, 0, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
    ],
)
def test_parse_timestamp(raw: str, expected: datetime | None) -> None:
    assert parse_timestamp(raw, "x") == expected


@pytest.mark.parametrize("raw", ["yesterday", "2026-13-01T00:00:00Z", "2026-12-03", 1733220000, None,
                                 "0001-01-01T00:00:00+01:00"])  # fmt: skip
def test_parse_timestamp_rejects(raw: object) -> None:
    with pytest.raises(InvalidAlert) as caught:
        parse_timestamp(raw, "alerts[0].startsAt")
    assert caught.value.field == "alerts[0].startsAt"


@pytest.mark.parametrize(
    ("label", "expected"),
    [("critical", Severity.CRITICAL), ("CRITICAL", Severity.CRITICAL), ("Warning", Severity.WARNING),
     ("info", Severity.INFO), (" Info ", Severity.INFO), ("page", Severity.WARNING), ("", Severity.WARNING),
     (None, Severity.WARNING)],
)  # fmt: skip
def test_normalise_severity(label: str | None, expected: Severity) -> None:
    assert normalise_severity(label) is expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, AlertStatus.FIRING),
        ({"status": "resolved", "endsAt": "2026-12-03T11:00:00Z"}, AlertStatus.RESOLVED),
        # No status: endsAt decides, measured against now.
        ({"status": None, "endsAt": "2026-12-03T11:00:00Z"}, AlertStatus.RESOLVED),
        ({"status": None, "endsAt": "2026-12-03T13:00:00Z"}, AlertStatus.FIRING),
        ({"status": None, "endsAt": "0001-01-01T00:00:00Z"}, AlertStatus.FIRING),
        ({"status": None, "endsAt": None}, AlertStatus.FIRING),
        # The alert's own status wins over an endsAt in the past.
        ({"status": "firing", "endsAt": "2026-12-03T11:00:00Z"}, AlertStatus.FIRING),
    ],
)
def test_alert_status_from_own_status_else_ends_at(overrides: dict[str, object], expected: AlertStatus) -> None:
    raw = alert(**overrides)
    if raw.get("status") is None:
        del raw["status"]
    assert parse_notification(body(raw), NOW).alerts[0].status is expected


def test_top_level_status_never_decides_an_alerts_status() -> None:
    mixed = body(alert(), alert(status="resolved", startsAt="2026-12-03T09:00:00Z"), status="resolved")
    statuses = [a.status for a in parse_notification(mixed, NOW).alerts]
    assert statuses == [AlertStatus.FIRING, AlertStatus.RESOLVED]


def test_shapes_seen_in_the_wild_are_accepted() -> None:
    labels = {"alertname": "Ünïcode 警告", "status": "not-the-status", "severity": "info"}
    grafana = body(
        alert(labels=labels, fingerprint="", generatorURL="/graph?g0.expr=up", silenceURL="http://x/silence",
              dashboardURL="", panelURL="", values={"B": 1.0}, valueString="[ var='B' value=1 ]"),
        version="1", groupKey=12345, orgId=1, title="[FIRING:1]", state="alerting", message="x",
    )  # fmt: skip
    only = parse_notification(grafana, NOW).alerts[0]
    assert only.name == "Ünïcode 警告"
    assert only.status is AlertStatus.FIRING  # a label named "status" is just a label
    assert only.fingerprint == fingerprint(labels)
    assert only.severity is Severity.INFO
    assert parse_notification(body(alert(), version="3"), NOW).alerts[0].name == "DiskFull"


def test_crlf_body_parses_like_lf() -> None:
    text = json.dumps(body(alert()), indent=2)
    crlf = json.loads(text.replace("\n", "\r\n"))
    assert parse_notification(crlf, NOW) == parse_notification(json.loads(text), NOW)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([], "body"),
        ({}, "alerts"),
        ({"alerts": {}}, "alerts"),
        ({"alerts": ["x"]}, "alerts[0]"),
        ({"alerts": [alert(labels=None)]}, "alerts[0].labels"),
        ({"alerts": [alert(labels={})]}, "alerts[0].labels"),
        ({"alerts": [alert(labels={"alertname": 3})]}, "alerts[0].labels.alertname"),
        ({"alerts": [alert(annotations=[1])]}, "alerts[0].annotations"),
        ({"alerts": [alert(startsAt="soon")]}, "alerts[0].startsAt"),
        ({"alerts": [{"labels": {"a": "b"}}]}, "alerts[0].startsAt"),
        ({"alerts": [alert(endsAt=5)]}, "alerts[0].endsAt"),
        ({"alerts": [alert(status="pending")]}, "alerts[0].status"),
        ({"alerts": [alert(fingerprint=7)]}, "alerts[0].fingerprint"),
        ({"alerts": [alert(fingerprint="f" * 65)]}, "alerts[0].fingerprint"),
        ({"alerts": [alert(fingerprint="fp-1")]}, "alerts[0].fingerprint"),
        ({"alerts": [alert(fingerprint="abc\ndef")]}, "alerts[0].fingerprint"),
        ({"alerts": [alert(fingerprint="0x1f")]}, "alerts[0].fingerprint"),
        ({"alerts": [alert(), alert(fingerprint="\u0661\u0662")]}, "alerts[1].fingerprint"),  # Arabic-Indic digits
        ({"alerts": [alert(generatorURL=["x"])]}, "alerts[0].generatorURL"),
        ({"alerts": [alert(labels={"alertname": "a\x00b"})]}, "alerts[0].labels.alertname"),
        ({"alerts": [alert(labels={"alertname": "x" * 201})]}, "alerts[0].labels.alertname"),
        ({"alerts": [alert(annotations={"d": "\ud800"})]}, "alerts[0].annotations.d"),
        ({"alerts": [], "truncatedAlerts": -1}, "truncatedAlerts"),
        ({"alerts": [], "truncatedAlerts": "3"}, "truncatedAlerts"),
        ({"alerts": [], "truncatedAlerts": 2**31}, "truncatedAlerts"),
        ({"alerts": [], "truncatedAlerts": 10**30}, "truncatedAlerts"),
        ({"alerts": [], "groupLabels": "x"}, "groupLabels"),
        ({"alerts": [alert(), alert(startsAt=None)]}, "alerts[1].startsAt"),
    ],
)
def test_invalid_bodies_name_the_field(doc: object, field: str) -> None:
    with pytest.raises(InvalidAlert) as caught:
        parse_notification(doc, NOW)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_the_largest_truncated_count_the_database_holds_is_accepted() -> None:
    assert parse_notification(body(truncatedAlerts=2**31 - 1), NOW).truncated_alerts == 2**31 - 1


def test_truncated_count_receiver_and_group_labels_are_kept() -> None:
    notification = parse_notification(
        body(alert(), truncatedAlerts=3, groupLabels={"alertname": "DiskFull"}, receiver="web\\.hook"), NOW
    )
    assert notification.truncated_alerts == 3
    assert notification.receiver == "web\\.hook"
    assert notification.group_labels == {"alertname": "DiskFull"}


def test_api_alerts_ignore_the_state_object_and_use_ends_at() -> None:
    raw = alert(status={"state": "active", "silencedBy": [], "inhibitedBy": []},
                endsAt=(NOW + timedelta(minutes=5)).isoformat(), fingerprint="0123456789abcdef",
                receivers=[{"name": "ops"}], updatedAt="2026-12-03T11:59:00Z")  # fmt: skip
    (only,) = parse_api_alerts([raw], NOW)
    assert only.status is AlertStatus.FIRING
    assert only.fingerprint == "0123456789abcdef"
    with pytest.raises(InvalidAlert):
        parse_api_alerts({"alerts": []}, NOW)


def test_episodes_keep_one_per_key_resolved_winning_in_key_order() -> None:
    parsed = parse_notification(
        body(
            alert(labels={"alertname": "B"}),
            alert(labels={"alertname": "A"}),
            alert(labels={"alertname": "B"}, status="resolved", endsAt="2026-12-03T11:00:00Z"),
            alert(labels={"alertname": "B"}),
        ),
        NOW,
    ).alerts
    unique: list[Alert] = episodes(parsed)
    assert [(a.name, a.status) for a in unique] == sorted(
        [("A", AlertStatus.FIRING), ("B", AlertStatus.RESOLVED)],
        key=lambda p: fingerprint({"alertname": p[0]}),
    )


def test_payload_text_in_log_fields_cannot_forge_lines() -> None:
    assert loggable("disk\r\nlevel=critical forged") == "disk\\r\\nlevel=critical forged"
    assert loggable("警告") == "警告"
    assert len(loggable("x" * 1000)) == 200
