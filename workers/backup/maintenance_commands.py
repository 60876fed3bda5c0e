"""`ops-workers backup cleanup` and `ops-workers backup verify`: the same functions the tasks call."""

from __future__ import annotations

import json
import sys

import click

from workers.backup.cleanup import CleanupReport
from workers.backup.maintenance import LATEST, cleanup_backups, verify
from workers.backup.naming import BackupKind
from workers.backup.verification import VerificationResult
from workers.errors import ConfigError
from workers.logs import configure_logging
from workers.settings import Settings, get_settings

EXIT_VERIFIED = 0
EXIT_VERIFICATION_FAILED = 1
EXIT_USAGE = 2


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _show_cleanup(report: CleanupReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    for deletion in report.deletions:
        click.echo(f"{verb} {deletion.what} {deletion.key}  [{deletion.rule}: {deletion.detail}]")
    for held in report.held:
        click.echo(
            f"kept all {held['backups']} backups of {held['kind']} {held['series']}:"
            " none of its recent backups passed verification",
            err=True,
        )
    for backup_id in report.skipped_in_use:
        click.echo(f"skipped {backup_id}: being verified or restored", err=True)
    counts = ", ".join(
        f"{what}={report.count(what)}" for what in ("backup", "orphan", "incomplete_upload", "scratch_database")
    )
    click.echo(f"{verb}: {counts}; kept {report.kept} backups ({report.policy})")


@click.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted, and why; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def cleanup_command(dry_run: bool, as_json: bool) -> None:
    """Delete expired backups (never the newest OPS_BACKUP_KEEP_MIN or the newest verified), orphans,
    stale uploads and throwaway databases of dead drills. Each deletion is listed with its rule."""
    report = cleanup_backups(_settings(), dry_run=dry_run)
    if as_json:
        _echo_json(report.to_json())
    else:
        _show_cleanup(report)


def _show_verification(result: VerificationResult) -> None:
    if result.ok:
        click.echo(
            f"verified {result.kind} backup {result.backup_id}: {result.tables_checked} tables match"
            f" ({result.duration_s:.1f}s, restored into {result.scratch_database}, dropped)"
        )
    else:
        click.echo(f"FAILED {result.kind} backup {result.backup_id} ({result.reason}): {result.first_mismatch}")


@click.command("verify")
@click.argument("backup_id", metavar="ID|latest")
@click.option("--kind", type=click.Choice([k.value for k in BackupKind]), help="With 'latest': which kind (full).")
@click.option("--json", "as_json", is_flag=True, help="Print the verification record as JSON.")
def verify_command(backup_id: str, kind: str | None, as_json: bool) -> None:
    """Restore a backup into a throwaway database and compare every table's row count with its manifest.

    Exit 0 verified, 1 failed (the first mismatch is named), 2 bad arguments or settings.
    """
    if backup_id != LATEST and kind is not None:
        raise click.UsageError("--kind only applies to 'latest'")
    result = verify(_settings(), backup_id, BackupKind(kind) if kind else None)
    if as_json:
        _echo_json(result.to_json())
    else:
        _show_verification(result)
    if not result.ok:
        sys.exit(EXIT_VERIFICATION_FAILED)
