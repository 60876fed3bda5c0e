"""The `ops-workers` command: operators' entry point. Commands call the same functions the tasks call."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import NoReturn

import click
import redis.exceptions
import sqlalchemy.exc

from workers import __version__
from workers.backup.commands import backup_group
from workers.backup.maintenance_commands import cleanup_command, verify_command
from workers.checks import ProbeResult, run_probes
from workers.console import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, echo_json, settings_or_exit
from workers.demo import SeedSize, seed
from workers.embedded import Embedded, embedded_environment
from workers.errors import ConfigError, UsageError, WorkersError
from workers.exporter import BrokerLayout, exporter_sources, start_exporter
from workers.incidents.commands import incidents, receiver, remediation
from workers.incidents.credentials import Credentials
from workers.incidents.playbook_file import load_playbooks
from workers.logs import configure_logging
from workers.processes import (
    EXPORTER_VENV,
    QUEUE_NAMES,
    ProcessSpec,
    beat_argv,
    celery_exporter_spec,
    exec_process,
    fresh_metrics_dir,
    node_name,
    python_module_argv,
    require_free_port,
    supervise,
    worker_argv,
    worker_concurrency,
)
from workers.settings import Bind, Settings, get_settings, parse_bind, parse_postgres_url
from workers.state.db import create_state_engine, current_revision, migrate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ops-workers")
def cli() -> None:
    """Operations workers: backups, restore drills and alert-driven incident response."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def check(as_json: bool) -> None:
    """Validate every setting and the playbooks, then probe each service. Exit 0 all good, 2 bad settings or
    playbooks, 1 a service down."""
    checked: list[ProbeResult] = []
    stage = "settings"
    try:
        settings = get_settings()
        configure_logging(settings.log_level, settings.log_format)
        checked.append(ProbeResult("settings", True, "every OPS_* variable valid"))
        stage = "playbooks"
        catalog = load_playbooks(settings.remediation.playbooks_file)
        checked.append(ProbeResult("playbooks", True, f"{len(catalog.playbooks)} from {catalog.source}"))
    except ConfigError as exc:  # nothing is probed: exit 2 with every problem listed
        if as_json:
            problem = {"service": stage, "ok": False, "detail": "invalid", "problems": list(exc.problems)}
            echo_json([*(r.to_json() for r in checked), problem])
        else:
            for result in checked:
                click.echo(f"{result.service}: ok - {result.detail}")
            click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    results = run_probes(settings)
    if as_json:
        echo_json([r.to_json() for r in [*checked, *results]])
    else:
        for result in [*checked, *results]:
            click.echo(f"{result.service}: {'ok' if result.ok else 'FAILED'} - {result.detail}")
    if not all(r.ok for r in results):
        sys.exit(EXIT_FAILED)


@cli.group()
def db() -> None:
    """The state database (incidents, audit trail, verification records)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    settings = settings_or_exit()
    click.echo(f"state database at revision {migrate(settings.state_database_url.value)}")


@db.command("current")
def db_current() -> None:
    """Print the schema revision the state database is at."""
    settings = settings_or_exit()
    click.echo(current_revision(create_state_engine(settings.state_database_url.value)) or "empty")


@cli.group()
def demo() -> None:
    """The demo platform database."""


@demo.command("seed")
@click.option("--database-url", help="Target database (default: OPS_DATABASE_URL).")
@click.option("--organizations", default=SeedSize().organizations, show_default=True, type=click.IntRange(1))
@click.option("--molecules-per-org", default=SeedSize().molecules_per_org, show_default=True, type=click.IntRange(1))
@click.option("--results-per-job", default=SeedSize().results_per_job, show_default=True, type=click.IntRange(0))
@click.option("--reset", is_flag=True, help="Drop and recreate the database first.")
def demo_seed(
    database_url: str | None, organizations: int, molecules_per_org: int, results_per_job: int, reset: bool
) -> None:
    """Create the demo platform database (organizations, molecules, pipelines, docking jobs, results)."""
    settings = settings_or_exit()
    try:
        target = parse_postgres_url(database_url) if database_url else settings.platform_database()
    except ValueError as exc:
        raise UsageError(f"--database-url {exc}") from None
    size = SeedSize(
        organizations=organizations, molecules_per_org=molecules_per_org, results_per_job=results_per_job
    )
    result = seed(target, size, reset=reset)
    state = "seeded" if result.created else "already seeded"
    click.echo(f"{result.database}: {state}; " + ", ".join(f"{t}={n}" for t, n in result.rows.items()))


@cli.command()
@click.option("-Q", "--queues", default="incidents,backups,default", show_default=True)
@click.option("-c", "--concurrency", default=None, type=click.IntRange(1),
              help="Pool processes [default: 2; 1, the only value allowed, with the backups queue].")  # fmt: skip
@click.option("--hostname", default=None,
              help="Celery node name (default: QUEUE@%h); also names the worker's metrics directory.")  # fmt: skip
@click.option("--metrics-bind", default=None, help="HOST:PORT for /metrics (default: OPS_METRICS_BIND).")
def worker(queues: str, concurrency: int | None, hostname: str | None, metrics_bind: str | None) -> None:
    """Run a Celery worker consuming QUEUES (with backups among them: one process, -c 1); migrates the state
    database first."""
    settings = settings_or_exit()
    names = [name.strip() for name in queues.split(",") if name.strip()]
    known = QUEUE_NAMES.split(",")
    unknown = sorted(set(names) - set(known))
    if not names or unknown:
        # A worker on a queue nothing is routed to would sit idle while the real queue backs up.
        raise UsageError(f"unknown queue(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    processes = worker_concurrency(names, concurrency)
    if "incidents" in names:
        load_playbooks(settings.remediation.playbooks_file)  # refuse to start on invalid playbooks (exit 2)
    hostname = hostname or f"{names[0]}@%h"
    try:
        bind = parse_bind(metrics_bind) if metrics_bind else settings.metrics_bind
    except ValueError as exc:
        raise UsageError(f"--metrics-bind {metrics_bind}: {exc}") from None
    # The worker serves /metrics from a signal handler, where a taken port would only be logged.
    require_free_port(bind, "--metrics-bind" if metrics_bind else "OPS_METRICS_BIND")
    click.echo(f"state database at revision {migrate(settings.state_database_url.value)}", err=True)
    env = worker_env(settings, hostname, metrics_bind)
    exec_process(worker_argv(",".join(names), processes, hostname, settings.log_level), env)


def worker_env(settings: Settings, hostname: str, metrics_bind: str | None) -> dict[str, str]:
    """The worker's own multiprocess metrics directory, emptied, and its metrics address.

    The directory is named after the node, not a queue: two workers on one queue that share
    OPS_VAR_DIR would otherwise empty each other's directory at start and mix their samples.
    """
    metrics_dir = fresh_metrics_dir(settings.var_dir / "metrics" / node_name(hostname).replace(os.sep, "_"))
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    if metrics_bind:
        env["OPS_METRICS_BIND"] = metrics_bind
    return env


@cli.command()
def beat() -> None:
    """Run the scheduler. Run exactly one; a second one waits on the Redis lock and takes over if the first dies."""
    settings = settings_or_exit()
    exec_process(beat_argv(settings.log_level), {})


@cli.command()
def flower() -> None:
    """Run Celery Flower on OPS_FLOWER_BIND; basic auth (OPS_FLOWER_BASIC_AUTH) is required off loopback."""
    settings = settings_or_exit()
    bind = settings.flower.bind
    if settings.flower.basic_auth is None and not bind.is_loopback:
        raise UsageError(f"OPS_FLOWER_BASIC_AUTH must be set to serve Flower on {bind} (not loopback)")
    require_free_port(bind, "OPS_FLOWER_BIND")
    # Flower reads FLOWER_* variables; the credentials go there, never into argv.
    env = {"FLOWER_BASIC_AUTH": settings.flower.basic_auth.value} if settings.flower.basic_auth else {}
    argv = python_module_argv(
        "celery", "-A", "workers.app", "flower", f"--address={bind.host}", f"--port={bind.port}"
    )
    exec_process(argv, env)


@cli.command()
def exporter() -> None:
    """Serve system, database, worker-count and exact queue metrics on OPS_EXPORTER_BIND until stopped."""
    settings = settings_or_exit()
    # The exporter reads the queue layout of the real app; importing it here keeps `cli` import-free.
    from workers.app import PRIORITY_SEP, PRIORITY_STEPS, QUEUES, REDBEAT_KEY_PREFIX, app

    require_free_port(settings.exporter.bind, "OPS_EXPORTER_BIND")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    layout = BrokerLayout(QUEUES, tuple(PRIORITY_STEPS), PRIORITY_SEP, REDBEAT_KEY_PREFIX)
    sources = exporter_sources(settings, app, layout)
    server, _thread = start_exporter(sources, settings.exporter.bind)
    click.echo(f"exporter serving http://{settings.exporter.bind.host}:{server.server_port}/metrics")
    stop.wait()
    server.shutdown()
    server.server_close()


@cli.command()
@click.option("--embedded/--no-embedded", default=True, show_default=True,
              help="Start a Redis server and seed a demo database when none is configured.")  # fmt: skip
def run(embedded: bool) -> None:
    """Start the receiver, both workers, beat and the exporter in one terminal; Ctrl-C stops them all."""
    settings = settings_or_exit()
    # Before any child starts: the workers (plain `celery worker`) do not migrate on their own.
    click.echo(f"run | state database at revision {migrate(settings.state_database_url.value)}")
    extra = Embedded()
    if embedded:
        extra = embedded_environment(settings, echo=lambda line: click.echo(f"run | {line}"))
    specs = [*extra.specs, *process_specs(settings, extra.env)]
    sys.exit(supervise(specs, sys.stdout))


def process_specs(settings: Settings, base_env: dict[str, str]) -> list[ProcessSpec]:
    """The processes `run` supervises, each with its own metrics port and multiprocess directory."""
    metrics = settings.metrics_bind
    incidents_bind = Bind(metrics.host, metrics.port)
    backups_bind = Bind(metrics.host, metrics.port + 1 if metrics.port else 0)
    level = settings.log_level
    return [
        ProcessSpec(
            "worker-incidents",
            worker_argv("incidents,default", 4, "incidents@%h", level),
            {**base_env, **worker_env(settings, "incidents@%h", str(incidents_bind))},
            listens=f"metrics http://{incidents_bind}/metrics",
        ),
        ProcessSpec(
            "worker-backups",
            worker_argv("backups", 1, "backups@%h", level),
            {**base_env, **worker_env(settings, "backups@%h", str(backups_bind))},
            listens=f"metrics http://{backups_bind}/metrics",
        ),
        ProcessSpec("beat", beat_argv(level), base_env),
        ProcessSpec(
            "receiver",
            python_module_argv("workers", "receiver"),
            {**base_env, **receiver_env(settings)},
            listens=f"http://{settings.receiver.bind}/alertmanager",
        ),
        ProcessSpec(
            "exporter",
            python_module_argv("workers", "exporter"),
            base_env,
            listens=f"metrics http://{settings.exporter.bind}/metrics",
        ),
        *celery_exporter_specs(settings, base_env),
    ]


def celery_exporter_specs(settings: Settings, base_env: dict[str, str]) -> list[ProcessSpec]:
    """The reference celery-exporter from its own venv (`make exporter`), when it is installed."""
    spec = celery_exporter_spec(EXPORTER_VENV, settings.exporter.celery_exporter_bind, QUEUE_NAMES)
    if spec is None:
        return []
    # The broker URL may hold a password: it goes to the exporter's environment, never its argv.
    return [ProcessSpec(spec.name, spec.argv, {**base_env, **spec.env,
                                               "CE_BROKER_URL": base_env.get("OPS_BROKER_URL")
                                               or settings.broker_url.value}, spec.listens)]  # fmt: skip


def receiver_env(settings: Settings) -> dict[str, str]:
    """`run` is the one-terminal development entry: on loopback, a receiver without credentials may serve."""
    if Credentials.from_settings(settings.receiver).required or not settings.receiver.bind.is_loopback:
        return {}
    return {"OPS_RECEIVER_ALLOW_NO_AUTH": "1"}


cli.add_command(receiver)
cli.add_command(incidents)
backup_group.add_command(cleanup_command)
backup_group.add_command(verify_command)
cli.add_command(backup_group)
cli.add_command(remediation)


def main() -> NoReturn:
    """Console entry point: our errors become one line on stderr and a named exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_CONFIG)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except WorkersError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    # Last line of defence for a path that did not translate its own outage: one line, not a traceback.
    except sqlalchemy.exc.OperationalError as exc:
        click.echo(f"error: database unreachable: {exc.orig}", err=True)
        sys.exit(EXIT_FAILED)
    except redis.exceptions.ConnectionError as exc:
        click.echo(f"error: broker unreachable: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK)
