"""The Celery app's configuration and the beat schedule, as production builds them."""

from __future__ import annotations

from celery import Celery

from beat_schedule import build_beat_schedule, cron
from workers.app import create_app
from workers.settings import KNOWN_VARIABLES, Settings, load_settings


def test_app_is_configured_for_at_least_once_delivery_and_visibility() -> None:
    settings = load_settings({"OPS_LONGEST_TASK_S": "7200"})
    conf = create_app(settings).conf

    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.worker_send_task_events is True and conf.task_send_sent_event is True
    assert conf.broker_transport_options["visibility_timeout"] > 7200
    assert conf.broker_connection_retry_on_startup is True
    assert conf.result_expires == settings.result_expires_s
    assert conf.timezone == "UTC"


def test_tasks_route_to_their_area_queue() -> None:
    app = create_app(load_settings({}))
    router = app.amqp.router

    assert router.route({}, "backup.full")["queue"].name == "backups"
    assert router.route({}, "incidents.handle")["queue"].name == "incidents"
    assert router.route({}, "ops.check")["queue"].name == "default"
    assert {q.name for q in app.conf.task_queues} == {"incidents", "backups", "default"}


def test_every_beat_entry_names_a_registered_task(worker_app: Celery) -> None:
    worker_app.loader.import_default_modules()
    schedule = worker_app.conf.beat_schedule

    assert schedule, "the schedule is empty"
    for name, entry in schedule.items():
        assert entry["task"] in worker_app.tasks, f"beat entry {name} names unknown task {entry['task']}"


def test_schedule_times_come_from_settings(settings: Settings) -> None:
    custom = load_settings({"OPS_SCHEDULE_BACKUP_FULL": "15 1 * * *"}).schedule
    schedule = build_beat_schedule(custom)

    full = [e for e in schedule.values() if e["task"] == "backup.full"]
    if full:  # present once the backup tasks exist
        assert full[0]["schedule"] == cron("15 1 * * *")
    assert cron("0 3 * * mon").day_of_week == {1}


def test_every_beat_entry_takes_its_time_from_its_own_setting() -> None:
    names = sorted(n for n in KNOWN_VARIABLES if n.startswith("OPS_SCHEDULE_"))
    # A distinct time per variable: an entry with a hard-coded time, or two entries sharing one
    # variable, leaves a time unmatched.
    times = {name: f"{minute} 5 * * *" for minute, name in enumerate(names)}
    schedule = build_beat_schedule(load_settings(times).schedule)

    assert sorted(str(e["schedule"]) for e in schedule.values()) == sorted(str(cron(t)) for t in times.values())
