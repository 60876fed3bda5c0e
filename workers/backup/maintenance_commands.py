"""`ops-workers backup cleanup` and `ops-workers backup verify`: the same functions the tasks call."""

from __future__ import annotations

import sys

import click

from workers.backup.cleanup import CleanupReport
from workers.backup.maintenance import LATEST, cleanup_backups, verify
from workers.backup.naming import BackupKind
from workers.backup.verification import VerificationResult
from workers.console import EXIT_FAILED, echo_json, settings_or_exit


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
    for key in report.skipped_in_progress:
        click.echo(f"skipped {key}: a backup of its scope is running", err=True)
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
    report = cleanup_backups(settings_or_exit(), dry_run=dry_run)
    if as_json:
        echo_json(report.to_json())
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
    result = verify(settings_or_exit(), backup_id, BackupKind(kind) if kind else None)
    if as_json:
        echo_json(result.to_json())
    else:
        _show_verification(result)
    if not result.ok:
        sys.exit(EXIT_FAILED)
