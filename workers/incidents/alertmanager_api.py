"""Alertmanager's HTTP API (GET /api/v2/alerts): reads back the alerts a truncated notification left out."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime

import httpx

from workers.errors import AlertmanagerUnavailable, InvalidAlert
from workers.http_client import http_client
from workers.incidents.alerts import Alert, parse_api_alerts
from workers.redaction import redact_text

REQUEST_TIMEOUT_S = 10.0


def matcher(name: str, value: str) -> str:
    """An equality matcher in Alertmanager's filter syntax; the value is quoted, never interpolated raw."""
    return f"{name}={json.dumps(value, ensure_ascii=False)}"


class AlertmanagerClient:
    """Reads alerts from one Alertmanager (OPS_ALERTMANAGER_URL)."""

    def __init__(self, base_url: str, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def group_alerts(self, receiver: str, group_labels: Mapping[str, str], now: datetime) -> list[Alert]:
        """The active alerts routed to `receiver` that carry every group label.

        Raises:
            AlertmanagerUnavailable: Alertmanager could not be reached or answered badly.
        """
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("active", "true"),
            ("silenced", "true"),
            ("inhibited", "true"),
        ]
        if receiver:
            # Alertmanager anchors this regular expression itself: ^(?:...)$.
            params.append(("receiver", re.escape(receiver)))
        params.extend(("filter", matcher(name, value)) for name, value in sorted(group_labels.items()))
        url = f"{self.base_url}/api/v2/alerts"
        # The message goes to logs and alert_fetches.last_error: never the user:password of the URL.
        # httpx's own messages repeat the URL, so they are redacted too, and not chained.
        try:
            response = http_client().get(url, params=params, timeout=self.timeout_s)
            response.raise_for_status()
            return parse_api_alerts(response.json(), now)
        except httpx.HTTPError as exc:
            problem = f"failed: {type(exc).__name__}: {exc}"
        except (ValueError, InvalidAlert) as exc:
            problem = f"returned an unexpected body: {exc}"
        raise AlertmanagerUnavailable(f"GET {redact_text(url)} {redact_text(problem)}")
