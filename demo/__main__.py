"""`make demo`: the closed loop on this machine, three scenarios, their timelines and a summary table.

    python -m demo [SCENARIO ...]   # BackupTooOld DatabaseConnectionHigh QueueBacklogHigh (default: all)

Needs PostgreSQL and Redis (DEMO_POSTGRES_URL, DEMO_REDIS_URL; defaults: the local servers,
Redis database 13) and the Debian prometheus and prometheus-alertmanager binaries.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import redis

from demo.scenarios import SCENARIOS, run_all, summary
from demo.stack import start_stack


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    postgres_url = os.environ.get("DEMO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/13")
    # The demo owns this Redis database: queues, locks and cooldowns of a previous run would skew it.
    redis.Redis.from_url(redis_url).flushdb()
    keep = os.environ.get("DEMO_KEEP_DIR")  # keep logs and configs there for a look afterwards
    with tempfile.TemporaryDirectory(prefix="ops-loop-") as scratch:
        tmp = tempfile.mkdtemp(prefix="ops-loop-", dir=keep) if keep else scratch
        print("starting redis-backed workers, receiver, beat, exporter, prometheus, alertmanager ...", flush=True)
        stack = start_stack(Path(tmp), redis_url, postgres_url)
        try:
            print(f"prometheus {stack.url('prometheus')}  alertmanager {stack.url('alertmanager')}  "
                  f"receiver {stack.url('receiver')}  (logs in {tmp}/logs)", flush=True)  # fmt: skip
            timelines = run_all(stack, argv or None)
        finally:
            stack.stop()
    for timeline in timelines:
        print(timeline.render())
    print()
    print(summary(timelines))
    return 0 if all(t.error is None for t in timelines) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
