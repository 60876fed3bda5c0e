"""Notification channels (PagerDuty Events v2, ticket webhook, Slack, email, log) and sending with retries.

apprise covers chat and email, but its PagerDuty and Slack plugins post to fixed vendor hosts and
cannot send a PagerDuty `resolve` on our dedup_key; these few channels are small enough to own.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

import httpx

from workers.errors import NotificationFailed
from workers.http_client import http_client
from workers.settings import NotifySettings

log = logging.getLogger(__name__)

# PagerDuty's severities; ours map onto them.
_PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# A Subject is one header line: EmailMessage refuses CR/LF in it, and mail clients cut long ones anyway.
# The full text goes in the body.
SUBJECT_LIMIT_CHARS = 200
_LINE_BREAKING = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")  # any Unicode whitespace, and control characters


def one_line(text: str, limit_chars: int) -> str:
    """text as a single line: runs of whitespace and control characters become one space; capped with '…'."""
    line = _LINE_BREAKING.sub(" ", text).strip()
    return line if len(line) <= limit_chars else line[: limit_chars - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class Notification:
    """What happened to one incident, for every channel."""

    kind: str  # trigger | update | resolve | escalate | request
    incident_id: int
    fingerprint: str  # PagerDuty dedup_key: trigger and resolve of one episode pair on it
    alertname: str
    severity: str
    summary: str
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def title(self) -> str:
        word = {"trigger": "FIRING", "update": "UPDATE", "resolve": "RESOLVED", "escalate": "ESCALATED",
                "request": "REQUEST"}[self.kind]  # fmt: skip
        return f"[{word}] {self.alertname} ({self.severity}) incident {self.incident_id}: {self.summary}"


class Notifier(Protocol):
    @property
    def name(self) -> str: ...

    def send(self, note: Notification) -> str:
        """Deliver note; return a short receipt. Raises NotificationFailed (retryable or not)."""
        ...


class RetryableFailure(NotificationFailed):
    """The channel may accept the same notification later (timeouts, 5xx, 429)."""


def _post(channel: str, url: str, payload: Mapping[str, object], timeout_s: float, headers: Mapping[str, str]) -> str:
    try:
        response = http_client().post(url, json=payload, timeout=timeout_s, headers=dict(headers))
    except httpx.HTTPError as exc:
        raise RetryableFailure(channel, f"unreachable: {type(exc).__name__}") from exc
    if response.status_code in _RETRYABLE_STATUS:
        raise RetryableFailure(channel, f"HTTP {response.status_code}")
    if not response.is_success:
        raise NotificationFailed(channel, f"HTTP {response.status_code}: {response.text[:200]}")
    return f"HTTP {response.status_code}"


@dataclass(frozen=True, slots=True)
class PagerDuty:
    routing_key: str = field(repr=False)
    url: str
    timeout_s: float
    name: str = "pagerduty"

    def send(self, note: Notification) -> str:
        action = "resolve" if note.kind == "resolve" else "trigger"
        payload: dict[str, object] = {
            "routing_key": self.routing_key,
            "event_action": action,
            "dedup_key": note.fingerprint,
        }
        if action == "trigger":
            payload["payload"] = {
                "summary": note.title[:1024],
                "source": "ops-workers",
                "severity": _PAGERDUTY_SEVERITY.get(note.severity, "error"),
                "custom_details": {"incident_id": note.incident_id, **note.details},
            }
        return _post(self.name, self.url, payload, self.timeout_s, {})


@dataclass(frozen=True, slots=True)
class TicketWebhook:
    url: str = field(repr=False)  # OPS_TICKET_WEBHOOK_URL is a secret: it may carry a key
    token: str | None = field(repr=False)
    timeout_s: float
    name: str = "ticket"

    def send(self, note: Notification) -> str:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        payload = {
            "kind": note.kind,
            "title": note.title,
            "incident_id": note.incident_id,
            "fingerprint": note.fingerprint,
            "alertname": note.alertname,
            "severity": note.severity,
            "summary": note.summary,
            "details": dict(note.details),
        }
        return _post(self.name, self.url, payload, self.timeout_s, headers)


@dataclass(frozen=True, slots=True)
class Slack:
    webhook_url: str = field(repr=False)  # the URL is the credential
    timeout_s: float
    name: str = "slack"

    def send(self, note: Notification) -> str:
        lines = [note.title, *(f"- {k}: {v}" for k, v in note.details.items() if k != "actions")]
        return _post(self.name, self.webhook_url, {"text": "\n".join(lines)}, self.timeout_s, {})


@dataclass(frozen=True, slots=True)
class Email:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool
    user: str | None
    password: str | None = field(repr=False)
    ca_file: str | None
    timeout_s: float
    name: str = "email"

    def send(self, note: Notification) -> str:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = (
            self.sender,
            ", ".join(self.recipients),
            one_line(note.title, SUBJECT_LIMIT_CHARS),
        )
        message.set_content("\n".join([note.summary, "", *(f"{k}: {v}" for k, v in note.details.items())]))
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=self.ca_file))
                if self.user and self.password:
                    smtp.login(self.user, self.password)
                refused = smtp.send_message(message)
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
            raise RetryableFailure(self.name, f"{type(exc).__name__}: {exc}") from exc
        except smtplib.SMTPException as exc:
            raise NotificationFailed(self.name, f"{type(exc).__name__}: {exc}") from exc
        return f"sent to {len(self.recipients) - len(refused)} recipient(s)"


@dataclass(frozen=True, slots=True)
class LogChannel:
    """Info-level incidents go to the log (and from there to the dashboards)."""

    name: str = "log"

    def send(self, note: Notification) -> str:
        log.info(
            "incident notification",
            extra={
                "kind": note.kind,
                "incident_id": note.incident_id,
                "alertname": note.alertname,
                "severity": note.severity,
            },
        )
        return "logged"


def build_channels(settings: NotifySettings) -> dict[str, Notifier]:
    """The channels that are configured, by name; the others are absent (recorded as unconfigured)."""
    channels: dict[str, Notifier] = {"log": LogChannel()}
    if settings.pagerduty_routing_key is not None:
        channels["pagerduty"] = PagerDuty(
            settings.pagerduty_routing_key.value, settings.pagerduty_url, settings.timeout_s
        )
    if settings.ticket_url is not None:
        token = settings.ticket_token.value if settings.ticket_token else None
        channels["ticket"] = TicketWebhook(settings.ticket_url.value, token, settings.timeout_s)
    if settings.slack_webhook_url is not None:
        channels["slack"] = Slack(settings.slack_webhook_url.value, settings.timeout_s)
    if settings.smtp_host and settings.smtp_to:
        channels["email"] = Email(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_from,
            settings.smtp_to,
            settings.smtp_starttls,
            settings.smtp_user,
            settings.smtp_password.value if settings.smtp_password else None,
            str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
            settings.timeout_s,
        )
    return channels


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    outcome: str  # ok | failed | unconfigured
    attempts: int
    receipt: str = ""
    error: str = ""


def send_with_retries(
    channel: Notifier,
    note: Notification,
    attempts: int,
    backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """Send, retrying retryable failures with exponential backoff; never raises for a channel failure."""
    for attempt in range(1, attempts + 1):
        try:
            return Delivery(channel.name, "ok", attempt, receipt=channel.send(note))
        except RetryableFailure as exc:
            if attempt == attempts:
                return Delivery(channel.name, "failed", attempt, error=str(exc))
            sleep(backoff_s * 2 ** (attempt - 1))
        except NotificationFailed as exc:
            return Delivery(channel.name, "failed", attempt, error=str(exc))
        except Exception as exc:
            # A channel bug must not silence the others during an incident.
            log.exception("notification channel crashed", extra={"channel": channel.name})
            return Delivery(channel.name, "failed", attempt, error=f"{type(exc).__name__}: {exc}")
    raise AssertionError("attempts must be at least 1")


def notify_all(
    channels: Mapping[str, Notifier],
    wanted: Sequence[str],
    note: Notification,
    attempts: int,
    backoff_s: float,
) -> list[Delivery]:
    """Send note on every wanted channel at once; a slow or failing channel never holds up the others."""
    names = list(dict.fromkeys(wanted))
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="notify") as pool:
        futures = {
            name: pool.submit(send_with_retries, channels[name], note, attempts, backoff_s)
            for name in names
            if name in channels
        }
        return [futures[n].result() if n in futures else Delivery(n, "unconfigured", 0) for n in names]
