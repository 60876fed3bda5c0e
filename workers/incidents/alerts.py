"""Alertmanager JSON -> Alert values: validation, fingerprints, status, severity. Pure: no I/O, no clock."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from workers.errors import InvalidAlert


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    status: AlertStatus
    fingerprint: str
    starts_at: datetime
    ends_at: datetime | None
    severity: Severity
    severity_label: str | None  # the label as sent; differs from severity when it was unknown or missing
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generator_url: str | None

    @property
    def severity_is_known(self) -> bool:
        return self.severity_label is not None and self.severity_label.lower() == self.severity.value


@dataclass(frozen=True, slots=True)
class Notification:
    """One webhook body: its alerts, in the order sent, and how many Alertmanager left out."""

    receiver: str
    group_labels: Mapping[str, str]
    alerts: tuple[Alert, ...]
    truncated_alerts: int


# Go's zero time.Time, which Alertmanager prints for "no end yet".
_GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))"
)
_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
_LABEL_SEPARATOR = 0xFF
# Column widths in the state database (workers/state/schema.py).
MAX_FINGERPRINT_CHARS = 64
MAX_ALERTNAME_CHARS = 200
MAX_TRUNCATED_ALERTS = 2**31 - 1  # alert_fetches.truncated_alerts is a 32-bit INTEGER
# Alertmanager's fingerprints are hex (16 digits); a given one is an identifier in rows, task
# arguments and log lines, so anything else is refused rather than carried along.
_HEX_FINGERPRINT = re.compile(f"[0-9a-fA-F]{{1,{MAX_FINGERPRINT_CHARS}}}")


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set: FNV-1a 64 over sorted pairs, 16 lower-case hex digits."""
    digest = _FNV64_OFFSET
    # Go sorts label names by bytes; sorting str by code point gives the same order as sorting UTF-8 bytes.
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                digest = ((digest ^ byte) * _FNV64_PRIME) & _MASK64
            digest = ((digest ^ _LABEL_SEPARATOR) * _FNV64_PRIME) & _MASK64
    return f"{digest:016x}"


def normalise_severity(label: str | None) -> Severity:
    """The severity label, case-insensitive; unknown or missing counts as warning."""
    try:
        return Severity((label or "").strip().lower())
    except ValueError:
        return Severity.WARNING


def parse_timestamp(value: object, where: str) -> datetime | None:
    """RFC 3339 (any offset, up to nanoseconds) -> aware UTC datetime; Go's zero time -> None.

    Raises:
        InvalidAlert: not a string in RFC 3339 form, or outside the representable range.
    """
    if not isinstance(value, str):
        raise InvalidAlert(where, "must be an RFC 3339 timestamp string")
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        raise InvalidAlert(where, "must be an RFC 3339 timestamp such as 2024-01-31T12:00:00Z")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))  # Python keeps microseconds; nanoseconds are dropped
    try:
        offset = timedelta(0) if zulu else (1 if sign == "+" else -1) * timedelta(hours=int(off_h), minutes=int(off_m))
        local = datetime(
            int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59), micros,
            tzinfo=timezone(offset),
        )  # fmt: skip
        moment = local.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidAlert(where, f"is not a valid timestamp ({exc})") from None
    return None if moment == _GO_ZERO_TIME else moment


def _text(value: object, where: str, *, max_chars: int | None = None) -> str:
    if not isinstance(value, str):
        raise InvalidAlert(where, "must be a string")
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be stored as UTF-8: refuse, don't mangle.
    if "\x00" in value:
        raise InvalidAlert(where, "must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAlert(where, "is not valid Unicode (lone surrogate)") from None
    if max_chars is not None and len(value) > max_chars:
        raise InvalidAlert(where, f"is longer than {max_chars} characters")
    return value


def _fingerprint(value: object, where: str) -> str:
    """A given fingerprint in lower case; "" when it is empty (then it is computed from the labels)."""
    if not isinstance(value, str):
        raise InvalidAlert(where, "must be a string")
    given = value.strip()
    if given and _HEX_FINGERPRINT.fullmatch(given) is None:
        raise InvalidAlert(where, f"must be 1 to {MAX_FINGERPRINT_CHARS} hexadecimal digits")
    return given.lower()


def _string_map(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidAlert(where, "must be an object of string values")
    return {_text(k, f"{where}"): _text(v, f"{where}.{k}") for k, v in value.items()}


def _to_millisecond(moment: datetime) -> datetime:
    # startsAt is half of an episode's identity. Webhooks carry nanoseconds but Alertmanager's API
    # (read back by reconcile) prints milliseconds, so both are cut to milliseconds to meet.
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _alert_status(raw: Mapping[str, Any], ends_at: datetime | None, now: datetime, where: str) -> AlertStatus:
    # The alert's own status wins; old Alertmanagers omit it, and then endsAt in the past means resolved.
    # The notification's top-level status describes the group, not each alert, so it is never used.
    status = raw.get("status")
    if status is not None:
        if status not in ("firing", "resolved"):
            raise InvalidAlert(f"{where}.status", "must be 'firing' or 'resolved'")
        return AlertStatus(status)
    return AlertStatus.RESOLVED if ends_at is not None and ends_at <= now else AlertStatus.FIRING


def parse_alert(raw: object, where: str, now: datetime) -> Alert:
    """One webhook alert object -> Alert. `now` decides the status of an alert that has none.

    Raises:
        InvalidAlert: a field is missing or has the wrong type; the message names it.
    """
    if not isinstance(raw, dict):
        raise InvalidAlert(where, "must be an object")
    if "labels" not in raw:
        raise InvalidAlert(f"{where}.labels", "is required")
    labels = _string_map(raw["labels"], f"{where}.labels")
    if not labels:
        raise InvalidAlert(f"{where}.labels", "must hold at least one label")
    annotations_raw = raw.get("annotations")
    annotations = _string_map(annotations_raw if annotations_raw is not None else {}, f"{where}.annotations")
    if "startsAt" not in raw:
        raise InvalidAlert(f"{where}.startsAt", "is required")
    starts_at = _to_millisecond(parse_timestamp(raw["startsAt"], f"{where}.startsAt") or _GO_ZERO_TIME)
    ends_raw = raw.get("endsAt")
    ends_at = None if ends_raw in (None, "") else parse_timestamp(ends_raw, f"{where}.endsAt")
    given = raw.get("fingerprint")
    given_text = "" if given is None else _fingerprint(given, f"{where}.fingerprint")
    generator = raw.get("generatorURL")
    severity_label = labels.get("severity")
    return Alert(
        name=_text(labels.get("alertname", ""), f"{where}.labels.alertname", max_chars=MAX_ALERTNAME_CHARS),
        status=_alert_status(raw, ends_at, now, where),
        fingerprint=given_text or fingerprint(labels),
        starts_at=starts_at,
        ends_at=ends_at,
        severity=normalise_severity(severity_label),
        severity_label=severity_label,
        labels=labels,
        annotations=annotations,
        generator_url=(_text(generator, f"{where}.generatorURL") or None) if generator is not None else None,
    )


def parse_notification(doc: object, now: datetime) -> Notification:
    """A decoded webhook body (versions 1 to 4, Grafana's extra keys ignored) -> Notification.

    Raises:
        InvalidAlert: the body is not a notification; the message names the first bad field.
    """
    if not isinstance(doc, dict):
        raise InvalidAlert("body", "must be a JSON object")
    if "alerts" not in doc:
        raise InvalidAlert("alerts", "is required")
    raw_alerts = doc["alerts"]
    if not isinstance(raw_alerts, list):
        raise InvalidAlert("alerts", "must be a list")
    truncated = doc.get("truncatedAlerts", 0)
    if truncated is None:
        truncated = 0
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise InvalidAlert("truncatedAlerts", "must be a whole number of at least 0")
    if truncated > MAX_TRUNCATED_ALERTS:
        raise InvalidAlert("truncatedAlerts", f"must be at most {MAX_TRUNCATED_ALERTS}")
    receiver = doc.get("receiver", "")
    group_labels = doc.get("groupLabels")
    return Notification(
        receiver=_text(receiver, "receiver") if receiver is not None else "",
        group_labels=_string_map(group_labels if group_labels is not None else {}, "groupLabels"),
        alerts=tuple(parse_alert(raw, f"alerts[{i}]", now) for i, raw in enumerate(raw_alerts)),
        truncated_alerts=truncated,
    )


def parse_api_alerts(doc: object, now: datetime) -> list[Alert]:
    """The body of Alertmanager's GET /api/v2/alerts -> Alerts (all active there, so firing unless ended).

    Raises:
        InvalidAlert: the body is not a list of alerts.
    """
    if not isinstance(doc, list):
        raise InvalidAlert("body", "must be a JSON list of alerts")
    alerts: list[Alert] = []
    for i, raw in enumerate(doc):
        if not isinstance(raw, dict):
            raise InvalidAlert(f"[{i}]", "must be an object")
        # In the API, "status" is {state, silencedBy, inhibitedBy}, not firing/resolved: decide by endsAt.
        alerts.append(parse_alert({k: v for k, v in raw.items() if k != "status"}, f"[{i}]", now))
    return alerts


def episodes(alerts: Sequence[Alert]) -> list[Alert]:
    """One alert per episode (fingerprint, startsAt), resolved winning over firing, sorted by that key.

    A body may repeat an episode; the database must see each once, and always in the same order,
    so that two concurrent bodies lock rows in one order.
    """
    chosen: dict[tuple[str, datetime], Alert] = {}
    for alert in alerts:
        key = (alert.fingerprint, alert.starts_at)
        held = chosen.get(key)
        if held is None or (held.status is AlertStatus.FIRING and alert.status is AlertStatus.RESOLVED):
            chosen[key] = alert
    return [chosen[key] for key in sorted(chosen)]
