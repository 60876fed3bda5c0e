"""A real prometheus-alertmanager process (the Debian package) routing to our receiver, for end-to-end tests."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from .redis_server import free_port

BINARY = "/usr/bin/prometheus-alertmanager"
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Alertmanager:
    url: str

    def post_alerts(self, *alerts: dict[str, object]) -> None:
        """POST /api/v2/alerts, as Prometheus does."""
        response = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=10)
        response.raise_for_status()


def api_alert(labels: dict[str, str], starts_at: datetime, ends_at: datetime | None = None) -> dict[str, object]:
    alert: dict[str, object] = {
        "labels": labels,
        "annotations": {"summary": f"{labels['alertname']} on {labels.get('instance', '?')}"},
        "startsAt": starts_at.isoformat(),
        "generatorURL": "http://prometheus.test/graph?g0.expr=up",
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat()
    return alert


def _config(receiver_url: str, token: str, max_alerts: int) -> dict[str, object]:
    return {
        "route": {
            "receiver": "ops",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            # Short, so the test sees Alertmanager re-send a group it already delivered.
            "repeat_interval": "2s",
        },
        "receivers": [
            {
                "name": "ops",
                "webhook_configs": [
                    {
                        "url": f"{receiver_url}/alertmanager",
                        "send_resolved": True,
                        "max_alerts": max_alerts,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": token}},
                    }
                ],
            }
        ],
    }


@contextmanager
def running_alertmanager(
    receiver_url: str, token: str, tmp_path: Path, *, max_alerts: int = 0
) -> Iterator[Alertmanager]:
    """Start Alertmanager (no clustering, its own storage) and return once it listens; stop it on exit."""
    if not Path(BINARY).exists() and shutil.which("prometheus-alertmanager") is None:
        pytest.skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(_config(receiver_url, token, max_alerts)))
    port = free_port()
    proc = subprocess.Popen(
        [BINARY, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=debug"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    timer = threading.Timer(READY_TIMEOUT_S, proc.kill)
    timer.start()
    log: list[str] = []
    try:
        for line in proc.stderr:
            log.append(line)
            if 'msg="Listening on"' in line:
                break
        else:
            raise AssertionError("alertmanager exited before listening:\n" + "".join(log[-20:]))
    finally:
        timer.cancel()
    drain = threading.Thread(target=lambda: log.extend(proc.stderr or []), daemon=True)
    drain.start()
    try:
        yield Alertmanager(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drain.join(timeout=10)
        proc.stderr.close()
