"""The Celery application, built from Settings: the composition root and the one module whose import reads settings."""

from __future__ import annotations

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from beat_schedule import build_beat_schedule
from workers import hooks
from workers.settings import Settings, get_settings

QUEUES = ("incidents", "backups", "default")
# Redis emulates priorities with one list per step; workers drain lower numbers first.
PRIORITY_STEPS = list(range(10))
REDBEAT_KEY_PREFIX = "redbeat"  # workers.beat_state reads REDBEAT_KEY_PREFIX:lock and :schedule
# kombu's default separator between a queue's name and its priority step: list names are
# "incidents", "incidents\x06\x163" ... Keep the default: every Celery client sharing this Redis
# (the celery-exporter, `celery inspect`, Flower) also reads kombu's binding sets with it, and a
# different one makes their control replies fail to parse ("not enough values to unpack").
PRIORITY_SEP = "\x06\x16"
TASK_MODULES = ["workers.tasks", "workers.incidents.tasks", "workers.backup.tasks", "workers.backup.maintenance_tasks"]


def create_app(settings: Settings, *, name: str = "workers") -> Celery:
    """A Celery app configured from settings; tests build their own with a different broker."""
    app = Celery(name, include=TASK_MODULES)
    broker_url = settings.broker_url.value
    app.conf.update(
        broker_url=broker_url,
        result_backend=broker_url,
        result_expires=settings.result_expires_s,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        # A task still running when the broker connection drops would be redelivered
        # (acks_late) while this worker finishes it: cancel it instead of running it twice.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={
            # With acks_late on Redis, a message not acked within visibility_timeout is given
            # to another worker. A backup can run for hours: this must exceed the longest task,
            # or a second pg_dump starts beside the first.
            "visibility_timeout": settings.longest_task_s + 600,
            "priority_steps": PRIORITY_STEPS,
            "queue_order_strategy": "priority",
        },
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],  # type: ignore[no-untyped-call]
        task_default_queue="default",
        task_routes={"backup.*": {"queue": "backups"}, "incidents.*": {"queue": "incidents"}},
        beat_schedule=build_beat_schedule(settings.schedule),
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=broker_url,
        redbeat_key_prefix=REDBEAT_KEY_PREFIX,
        redbeat_redis_options={"retry_period": 60},
        # A second beat waits on this lock and takes over within this many seconds if the first dies.
        redbeat_lock_timeout=60,
        beat_max_loop_interval=5,
        timezone="UTC",
        enable_utc=True,
    )
    return app


app = create_app(get_settings())
hooks.connect()
