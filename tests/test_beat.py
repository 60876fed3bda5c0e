"""Two beat processes against one broker schedule every run once (the RedBeat lock)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.schedules import schedule as every
from redbeat import RedBeatSchedulerEntry

from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parent.parent
OBSERVE_S = 8.0


@pytest.fixture
def beats(base_env: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_beat(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "workers", "beat"],
            env=subprocess_env(env),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_two_beats_send_each_scheduled_run_once(
    worker_app: Celery, base_env: dict[str, str], redis_url: str, tmp_path: Path, beats: list[subprocess.Popen[bytes]]
) -> None:
    # A one-second entry stored in RedBeat, as the schedule's entries are, so the test needs no minute-long wait.
    RedBeatSchedulerEntry("every-second-check", "ops.check", every(timedelta(seconds=1)), app=worker_app).save()
    client = redis.Redis.from_url(redis_url)

    beats.append(start_beat(base_env, tmp_path / "beat-1.log"))
    beats.append(start_beat(base_env, tmp_path / "beat-2.log"))
    deadline = time.monotonic() + 30
    while client.llen("default") == 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # waiting for an external process's first tick; no event to wait on
    start = client.llen("default")
    time.sleep(OBSERVE_S)  # the measured window itself
    sent = client.llen("default") - start

    # One scheduler sends ~1 per second; two unlocked schedulers would send ~2 per second. A loaded
    # machine may delay ticks (fewer sent), never add any, so only the lower bound is loose.
    assert 2 <= sent <= 1.4 * OBSERVE_S, sent
    assert all(proc.poll() is None for proc in beats), "a beat process died"
