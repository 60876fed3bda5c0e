"""`ops-workers receiver`, `ops-workers incidents list|show|ack|resolve|reconcile`, `ops-workers remediation`."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import click
from sqlalchemy import Connection

from workers.console import echo_json, settings_or_exit
from workers.errors import UsageError
from workers.incidents.credentials import require_auth
from workers.incidents.operations import (
    acknowledge_incident,
    incident_audit,
    pause_remediation,
    remediation_status,
    resolve_incident,
    resume_remediation,
)
from workers.incidents.records import STATUSES, IncidentView, get_incident, list_incidents
from workers.processes import exec_process, fresh_metrics_dir, python_module_argv, require_free_port
from workers.server_pool import serve_pool
from workers.settings import Settings
from workers.state.db import create_state_engine, migrate, state_connection

# Ids are 64-bit; a larger number is refused as usage (exit 2) instead of reaching the database.
INCIDENT_ID = click.IntRange(1, 2**63 - 1)
RECEIVER_FACTORY = "workers.incidents.receiver:create_app_from_settings"


@contextmanager
def _connection(settings: Settings) -> Iterator[Connection]:
    engine = create_state_engine(settings.state_database_url.value)
    try:
        with state_connection(engine) as conn:
            yield conn
    finally:
        engine.dispose()


def receiver_argv(
    settings: Settings, certfile: str | None, keyfile: str | None, *, fd: int | None = None
) -> tuple[str, ...]:
    """uvicorn's command line for one receiver process: on OPS_RECEIVER_BIND, or on the inherited socket fd.

    TLS files are paths, never secrets.
    """
    bind = settings.receiver.bind
    where = ["--fd", str(fd)] if fd is not None else ["--host", bind.host, "--port", str(bind.port)]
    argv = [
        "uvicorn", RECEIVER_FACTORY, "--factory", *where,
        "--log-level", settings.log_level.lower(), "--no-access-log", "--no-server-header",
        "--timeout-graceful-shutdown", "30",
    ]  # fmt: skip
    if certfile:
        argv += ["--ssl-certfile", certfile]
    if keyfile:
        argv += ["--ssl-keyfile", keyfile]
    return python_module_argv(*argv)


@click.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="uvicorn processes (default: OPS_RECEIVER_WORKERS).",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Serve HTTPS with this certificate.",
)
@click.option(
    "--ssl-keyfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The certificate's private key.",
)
def receiver(workers: int | None, ssl_certfile: str | None, ssl_keyfile: str | None) -> None:  # fmt: skip
    """Serve the Alertmanager webhook receiver on OPS_RECEIVER_BIND (migrates the state database first)."""
    settings = settings_or_exit()
    require_auth(settings.receiver)
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise UsageError("--ssl-certfile and --ssl-keyfile go together")
    require_free_port(settings.receiver.bind, "OPS_RECEIVER_BIND")
    click.echo(f"state database at revision {migrate(settings.state_database_url.value)}", err=True)
    # uvicorn's workers are processes: their metrics meet in one multiprocess directory.
    metrics_dir = fresh_metrics_dir(settings.var_dir / "metrics" / "receiver")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    processes = workers or settings.receiver.workers
    if processes == 1:
        exec_process(receiver_argv(settings, ssl_certfile, ssl_keyfile), env)
    # Several processes: a socket each, so the kernel spreads connections evenly (workers/server_pool.py).
    status = serve_pool(lambda fd: receiver_argv(settings, ssl_certfile, ssl_keyfile, fd=fd),
                        settings.receiver.bind, processes, env)  # fmt: skip
    sys.exit(status)


@click.group()
def incidents() -> None:
    """Incidents recorded from Alertmanager notifications."""


def _line(view: IncidentView) -> str:
    return (
        f"{view.id:>6}  {view.severity:<8}  {view.status:<12}  {view.alert_status:<8}  "
        f"{view.starts_at.isoformat(timespec='seconds')}  {view.fingerprint}  {view.alertname}"
    )


@incidents.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only incidents in this state.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_command(status: str | None, limit: int, as_json: bool) -> None:
    """The most recent incidents, newest first."""
    settings = settings_or_exit()
    with _connection(settings) as conn:
        views = list_incidents(conn, status=status, limit=limit)
    if as_json:
        echo_json([v.to_json() for v in views])
        return
    click.echo(f"{'id':>6}  {'severity':<8}  {'status':<12}  {'alert':<8}  {'starts_at':<25}  fingerprint  alertname")
    for view in views:
        click.echo(_line(view))


@incidents.command("show")
@click.argument("incident_id", type=INCIDENT_ID)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def show_command(incident_id: int, as_json: bool) -> None:
    """One incident with its labels and annotations."""
    settings = settings_or_exit()
    with _connection(settings) as conn:
        view = get_incident(conn, incident_id)
    if view is None:
        raise UsageError(f"no incident {incident_id}")
    audit = incident_audit(settings, incident_id)
    if as_json:
        echo_json({**view.to_json(), **audit})
        return
    for key, value in view.to_json().items():
        shown = json.dumps(value, ensure_ascii=False, sort_keys=True) if isinstance(value, dict | list) else value
        click.echo(f"{key}: {shown}")
    for key in ("acknowledged_by", "acknowledged_at", "run_status"):
        click.echo(f"{key}: {audit[key]}")
    click.echo("actions:")
    for action in audit["actions"]:
        step = "" if action["step"] is None else f"#{action['step']} "
        summary = (action["detail"] or {}).get("summary") or action["error"] or ""
        click.echo(
            f"  {action['started_at']:%Y-%m-%d %H:%M:%S}  {step}{action['action']}  {action['outcome']}  {summary}"
        )


@incidents.command("reconcile")
@click.option("--grace-s", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Leave episodes changed this recently to the receiver.")  # fmt: skip
def reconcile_command(grace_s: float) -> None:
    """Fetch truncated alert groups, then enqueue every recorded episode that has no task yet."""
    settings = settings_or_exit()
    from workers.app import app
    from workers.incidents.reconcile import run_reconcile

    result = run_reconcile(settings, app, grace=timedelta(seconds=grace_s))
    echo_json(result.to_json())


@incidents.command("ack")
@click.argument("incident_id", type=INCIDENT_ID)
@click.option("--by", "by", required=True, help="Who acknowledges (recorded with the time).")
def ack_command(incident_id: int, by: str) -> None:
    """Acknowledge an active incident."""
    incident = acknowledge_incident(settings_or_exit(), incident_id, by)
    click.echo(f"incident {incident.id} {incident.status} by {incident.acknowledged_by} at {incident.acknowledged_at}")


@incidents.command("resolve")
@click.argument("incident_id", type=INCIDENT_ID)
def resolve_command(incident_id: int) -> None:
    """Resolve an incident by hand: resolve notifications go out; a critical one gets a post-mortem draft."""
    incident = resolve_incident(settings_or_exit(), incident_id)
    click.echo(f"incident {incident.id} resolved at {incident.resolved_at}")


@click.group()
def remediation() -> None:
    """Global switches of automatic remediation."""


@remediation.command("pause")
@click.option("--by", default=None, help="Who pauses (default: the current user).")
@click.option("--reason", default="", help="Why, for the others on call.")
def pause_command(by: str | None, reason: str) -> None:
    """Stop every playbook from acting (each skip is recorded as skipped_paused) until resumed."""
    pause_remediation(settings_or_exit(), by or getpass.getuser(), reason)
    click.echo("remediation paused")


@remediation.command("resume")
def resume_command() -> None:
    """Let playbooks act again."""
    was_paused = resume_remediation(settings_or_exit())
    click.echo("remediation resumed" if was_paused else "remediation was not paused")


@remediation.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def status_command(as_json: bool) -> None:
    """Paused or running, global dry-run, and the playbooks in force."""
    status = remediation_status(settings_or_exit())
    if as_json:
        echo_json(status)
        return
    pause = status["pause"]
    if isinstance(pause, dict):
        click.echo(
            f"remediation: PAUSED by {pause.get('by')} since {pause.get('since')} ({pause.get('reason') or '-'})"
        )
    else:
        click.echo("remediation: running")
    click.echo(f"dry-run (global): {'on' if status['dry_run'] else 'off'}")
    click.echo(f"playbooks ({status['source']}): " + ", ".join(status["playbooks"]))
