"""Notification channels against local recording servers and a real SMTP server with STARTTLS (aiosmtpd)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY

from tests.incidents.conftest import RecordingServer
from workers.embedded import free_port
from workers.incidents.notify import Notification, build_channels, notify_all
from workers.settings import Settings

NOTE = Notification("trigger", 7, "fp-7", "DatabaseConnectionHigh", "critical", "too many connections", {"a": 1})


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        ), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "smtp.pem", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Mailbox:
    messages: list[Message] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.tls.append(session.ssl is not None)
        self.messages.append(message_from_bytes(envelope.original_content or b"", policy=policy.default))
        return "250 OK"


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[tuple[Controller, Mailbox, Path]]:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), tls_context=context, require_starttls=True)
    controller.start()
    yield controller, mailbox, cert
    controller.stop()


def _count(channel: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("ops_notifications_total", {"channel": channel, "outcome": outcome}) or 0.0


def test_every_channel_delivers(
    ops_env: Callable[..., Settings],
    recording_server: Callable[[], RecordingServer],
    smtp_server: tuple[Controller, Mailbox, Path],
) -> None:
    pagerduty, ticket, slack = recording_server(), recording_server(), recording_server()
    controller, mailbox, cert = smtp_server
    port = controller.port
    settings = ops_env(
        OPS_PAGERDUTY_ROUTING_KEY="rk-1", OPS_PAGERDUTY_URL=f"{pagerduty.url}/v2/enqueue",
        OPS_TICKET_WEBHOOK_URL=f"{ticket.url}/t", OPS_SLACK_WEBHOOK_URL=f"{slack.url}/hook",
        OPS_SMTP_HOST="127.0.0.1", OPS_SMTP_PORT=str(port), OPS_SMTP_TO="oncall@example.org",
        OPS_SMTP_CA_FILE=str(cert),
    )  # fmt: skip
    channels = build_channels(settings.notify)

    deliveries = notify_all(channels, ["pagerduty", "ticket", "slack", "email", "log"], NOTE, 1, 0.0)

    assert [(d.channel, d.outcome) for d in deliveries] == [
        ("pagerduty", "ok"), ("ticket", "ok"), ("slack", "ok"), ("email", "ok"), ("log", "ok"),
    ]  # fmt: skip
    [page] = pagerduty.requests
    assert page.body["routing_key"] == "rk-1" and page.body["dedup_key"] == "fp-7"
    assert (
        page.body["payload"]["severity"] == "critical" and "DatabaseConnectionHigh" in page.body["payload"]["summary"]
    )
    assert ticket.requests[0].body["incident_id"] == 7
    assert slack.requests[0].body["text"].startswith("[FIRING] DatabaseConnectionHigh")
    assert mailbox.tls == [True], "the mail did not go over STARTTLS"
    assert str(mailbox.messages[0]["Subject"]).strip().startswith("[FIRING] DatabaseConnectionHigh")


def test_pagerduty_resolve_pairs_with_trigger_on_dedup_key(
    ops_env: Callable[..., Settings], recording_server: Callable[[], RecordingServer]
) -> None:
    pagerduty = recording_server()
    settings = ops_env(OPS_PAGERDUTY_ROUTING_KEY="rk-1", OPS_PAGERDUTY_URL=f"{pagerduty.url}/v2/enqueue")
    channels = build_channels(settings.notify)

    notify_all(channels, ["pagerduty"], NOTE, 1, 0.0)
    notify_all(channels, ["pagerduty"], Notification("resolve", 7, "fp-7", "X", "critical", "s"), 1, 0.0)

    trigger, resolve = pagerduty.requests
    assert (trigger.body["event_action"], resolve.body["event_action"]) == ("trigger", "resolve")
    assert trigger.body["dedup_key"] == resolve.body["dedup_key"] == "fp-7"
    assert "payload" not in resolve.body


def test_retries_with_backoff_then_succeeds(
    ops_env: Callable[..., Settings], recording_server: Callable[[], RecordingServer]
) -> None:
    slack = recording_server()
    slack.statuses.extend([503, 429])
    settings = ops_env(OPS_SLACK_WEBHOOK_URL=f"{slack.url}/hook")

    [delivery] = notify_all(build_channels(settings.notify), ["slack"], NOTE, 3, 0.01)

    assert (delivery.outcome, delivery.attempts) == ("ok", 3)
    assert len(slack.requests) == 1


def test_a_failing_channel_never_blocks_the_others(
    ops_env: Callable[..., Settings], recording_server: Callable[[], RecordingServer]
) -> None:
    slack = recording_server()
    ticket = recording_server()
    ticket.statuses.extend([400])  # refused for good: not retried
    settings = ops_env(
        OPS_SLACK_WEBHOOK_URL=f"{slack.url}/hook", OPS_TICKET_WEBHOOK_URL=f"{ticket.url}/t",
        OPS_PAGERDUTY_ROUTING_KEY="rk", OPS_PAGERDUTY_URL="http://127.0.0.1:9/unreachable",
        OPS_SMTP_HOST="127.0.0.1", OPS_SMTP_PORT="9", OPS_SMTP_TO="x@example.org",
    )  # fmt: skip
    failed_before = _count("pagerduty", "failed")

    deliveries = notify_all(build_channels(settings.notify), ["pagerduty", "email", "ticket", "slack"], NOTE, 2, 0.01)

    outcomes = {d.channel: (d.outcome, d.attempts) for d in deliveries}
    assert outcomes == {
        "pagerduty": ("failed", 2),
        "email": ("failed", 2),
        "ticket": ("failed", 1),
        "slack": ("ok", 1),
    }
    assert len(slack.requests) == 1
    assert "rk" not in str(deliveries)
    assert _count("pagerduty", "failed") == failed_before  # counted by the runner, which records each send


def test_unconfigured_channels_are_reported_not_dropped(ops_env: Callable[..., Settings]) -> None:
    settings = ops_env()
    deliveries = notify_all(build_channels(settings.notify), ["pagerduty", "log"], NOTE, 1, 0.0)
    assert [(d.channel, d.outcome) for d in deliveries] == [("pagerduty", "unconfigured"), ("log", "ok")]


def test_a_multi_line_summary_is_one_short_subject_line_and_whole_in_the_body(
    ops_env: Callable[..., Settings], smtp_server: tuple[Controller, Mailbox, Path]
) -> None:
    controller, mailbox, cert = smtp_server
    settings = ops_env(
        OPS_SMTP_HOST="127.0.0.1", OPS_SMTP_PORT=str(controller.port), OPS_SMTP_TO="oncall@example.org",
        OPS_SMTP_CA_FILE=str(cert),
    )  # fmt: skip
    summary = "disk full on db1\r\nBcc: victim@example.org\n\tsecond line\u2028third " + "x" * 600
    note = Notification("trigger", 8, "fp-8", "LowDiskSpace", "warning", summary)

    [delivery] = notify_all(build_channels(settings.notify), ["email"], note, 1, 0.0)

    assert delivery.outcome == "ok", delivery.error
    [message] = mailbox.messages
    subject = str(message["Subject"])
    assert subject.startswith("[FIRING] LowDiskSpace (warning) incident 8: disk full on db1 Bcc: victim@example.org")
    assert "victim@example.org second line third xxx" in subject
    assert "\n" not in subject and "\r" not in subject and "\u2028" not in subject
    assert len(subject) <= 200 and subject.endswith("…")
    assert message["Bcc"] is None
    body = message.get_content()
    assert all(part in body for part in ("disk full on db1", "Bcc: victim@example.org", "second line", "x" * 600))
