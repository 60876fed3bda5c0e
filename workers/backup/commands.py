"""`ops-workers backup ...`: operators' commands; each calls the same function as its task."""

from __future__ import annotations

import sys
import time

import click

from workers.backup.maintenance import verification_history, verification_index, verification_summary
from workers.backup.manifest import Manifest
from workers.backup.naming import BackupKind
from workers.backup.operations import (
    backup,
    backups,
    enqueue_backup,
    restore_backup,
    take_full_backup,
    take_org_backup,
)
from workers.backup.storage import open_store
from workers.backup.stream import Progress
from workers.backup.tenant import validate_organization_id
from workers.backup.verification import VerificationResult, verification_of
from workers.console import echo_json, settings_or_exit
from workers.settings import Settings


def terminal_progress(label: str) -> Progress | None:
    """Bytes and rate on stderr, rewritten in place, when stderr is a terminal; else None."""
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()
    last = [0.0]

    def show(size_bytes: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5:
            return
        last[0] = now
        rate = size_bytes / max(now - started, 1e-6)
        click.echo(f"\r{label}: {size_bytes / 2**20:,.1f} MiB at {rate / 2**20:,.1f} MiB/s   ", err=True, nl=False)

    return show


def _done(progress: Progress | None) -> None:
    if progress is not None:
        click.echo("", err=True)


def _show_manifest(manifest: Manifest, as_json: bool) -> None:
    if as_json:
        echo_json(manifest.to_json())
        return
    scope = manifest.database if manifest.organization_id is None else f"{manifest.database}/{manifest.organization_id}"
    click.echo(f"{manifest.id}  {manifest.kind:<4}  {scope}  {manifest.size_bytes:,} bytes  sha256 {manifest.sha256}")
    click.echo(f"  key: {manifest.key}")
    click.echo(f"  taken: {manifest.started_at.isoformat()} .. {manifest.finished_at.isoformat()}")
    click.echo("  rows: " + ", ".join(f"{t}={n}" for t, n in manifest.tables.items()))


def _enqueue(settings: Settings, task: str, args: tuple[str, ...], as_json: bool) -> None:
    task_id = enqueue_backup(settings, task, args)
    if as_json:
        echo_json({"task": task, "task_id": task_id})
    else:
        click.echo(f"{task} enqueued as task {task_id}")


@click.group("backup")
def backup_group() -> None:
    """Backups of the platform database: full and per organization, and restore."""


@backup_group.command("full")
@click.option("--enqueue", is_flag=True, help="Hand the job to the workers instead of running it here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def full_command(enqueue: bool, as_json: bool) -> None:
    """Take a full backup of the platform database now and print its manifest."""
    settings = settings_or_exit()
    if enqueue:
        _enqueue(settings, "backup.full", (), as_json)
        return
    progress = terminal_progress("dumping")
    manifest = take_full_backup(settings, progress=progress)
    _done(progress)
    _show_manifest(manifest, as_json)


@backup_group.command("org")
@click.argument("organization_id")
@click.option("--enqueue", is_flag=True, help="Hand the job to the workers instead of running it here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def org_command(organization_id: str, enqueue: bool, as_json: bool) -> None:
    """Back up one organization's rows now and print the manifest."""
    settings = settings_or_exit()
    if enqueue:
        canonical = validate_organization_id(organization_id, settings.backup.tenant_id_pattern)
        _enqueue(settings, "backup.org", (canonical,), as_json)
        return
    progress = terminal_progress("copying")
    manifest = take_org_backup(settings, organization_id, progress=progress)
    _done(progress)
    _show_manifest(manifest, as_json)


@backup_group.command("list")
@click.option("--kind", type=click.Choice([k.value for k in BackupKind]), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of manifests.")
def list_command(kind: str | None, as_json: bool) -> None:
    """Every backup in the store (a backup is an object with its manifest), newest first."""
    settings = settings_or_exit()
    found = backups(settings, BackupKind(kind) if kind else None)
    checks = verification_index(settings, BackupKind(kind) if kind else None)
    if as_json:
        echo_json([{**m.to_json(), "verification": _verification_json(checks.get(m.id))} for m in found])
        return
    for manifest in found:
        scope = manifest.organization_id or manifest.database
        click.echo(
            f"{manifest.id}  {manifest.kind:<4}  {scope}  {manifest.size_bytes:>14,} bytes"
            f"  {verification_summary(checks.get(manifest.id))}"
        )


def _verification_json(result: VerificationResult | None) -> dict[str, object] | None:
    return None if result is None else result.to_json()


@backup_group.command("show")
@click.argument("backup_id")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def show_command(backup_id: str, as_json: bool) -> None:
    """One backup's manifest and its latest verification."""
    settings = settings_or_exit()
    manifest = backup(settings, backup_id)
    verification = verification_of(open_store(settings.backup), manifest)
    history = verification_history(settings, manifest.id)
    if as_json:
        doc = manifest.to_json()
        if verification is not None:
            doc["verification"] = verification.to_json()
        if history:
            doc["verification_history"] = history
        echo_json(doc)
        return
    _show_manifest(manifest, as_json)
    click.echo(f"  verification: {verification_summary(verification)}")
    if len(history) > 1:
        click.echo(f"  earlier verifications: {len(history) - 1} (state database)")


@backup_group.command("restore")
@click.argument("backup_id")
@click.option("--target-db", required=True, help="Database to restore into, on the platform's server.")
@click.option(
    "--force",
    is_flag=True,
    help="Allow the source database or a non-empty target (full: objects in the backup replace their namesakes).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def restore_command(backup_id: str, target_db: str, force: bool, as_json: bool) -> None:
    """Restore a backup: full into a new or empty database, org into one with the schema.

    Exit 0 restored, 1 failed (nothing committed), 2 bad arguments or settings.
    """
    settings = settings_or_exit()
    progress = terminal_progress("restoring")
    result = restore_backup(settings, backup_id, target_db, force=force, progress=progress)
    _done(progress)
    if as_json:
        echo_json(result.to_json())
    else:
        rows = ", ".join(f"{t}={n}" for t, n in result.tables.items())
        click.echo(f"restored {result.kind} backup {result.backup_id} into {result.database}: {rows}")
