"""Retention: which stored backups a policy no longer keeps, and why. Pure: no I/O, the clock is passed in.

Every backup belongs to a series, (kind, database or organization). Each series is decided on its own.
A backup is kept when any keep rule holds for it; the floors (newest `keep_min`, newest verified) can
never be outvoted, and a series whose recent backups never passed verification is held whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import groupby


class Verification(StrEnum):
    """What the restore drills last said about one backup."""

    OK = "ok"
    FAILED = "failed"
    UNVERIFIED = "unverified"


class Rule(StrEnum):
    """The rule behind one decision: why a backup is kept, or what allowed its deletion."""

    KEEP_MIN = "keep_min"  # among the newest keep_min of its series
    NEWEST_VERIFIED = "newest_verified"  # the newest backup of its series that passed verification
    SERIES_HELD = "series_held"  # nothing recent in the series passed verification: keep everything
    WITHIN_RETENTION = "within_retention"  # younger than retention_days
    KEEP_DAILY = "keep_daily"
    KEEP_WEEKLY = "keep_weekly"
    KEEP_MONTHLY = "keep_monthly"
    EXPIRED = "expired"  # older than retention_days and kept by no rule: may be deleted


@dataclass(frozen=True, slots=True)
class Candidate:
    """Retention's view of one stored backup."""

    id: str
    kind: str  # "full" | "org"
    series: str  # the database name (full) or the organization id (org)
    taken_at: datetime  # timezone-aware
    verification: Verification = Verification.UNVERIFIED


@dataclass(frozen=True, slots=True)
class Policy:
    """Keep rules; GFS counts of 0 switch that rule off."""

    retention_days: int
    keep_min: int
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    def __post_init__(self) -> None:
        if self.retention_days < 1 or self.keep_min < 1:
            raise ValueError("retention_days and keep_min must be at least 1")
        if min(self.keep_daily, self.keep_weekly, self.keep_monthly) < 0:
            raise ValueError("keep_daily, keep_weekly and keep_monthly must not be negative")

    def describe(self) -> str:
        parts = [f"retention_days={self.retention_days}", f"keep_min={self.keep_min}"]
        parts += [
            f"{name}={count}"
            for name, count in (
                ("keep_daily", self.keep_daily),
                ("keep_weekly", self.keep_weekly),
                ("keep_monthly", self.keep_monthly),
            )
            if count
        ]
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Decision:
    """Keep or delete one backup, with the rule that decided it (the first that applies, floors first)."""

    backup: Candidate
    delete: bool
    rule: Rule
    detail: str


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    kind: str
    series: str
    decisions: tuple[Decision, ...]  # newest first
    held: bool  # True: nothing recent passed verification, so the whole series is kept


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    series: tuple[SeriesPlan, ...]

    @property
    def expired(self) -> list[Decision]:
        """Deletions, oldest first across every series."""
        doomed = [d for s in self.series for d in s.decisions if d.delete]
        return sorted(doomed, key=lambda d: (d.backup.taken_at, d.backup.id))

    @property
    def held(self) -> list[SeriesPlan]:
        return [s for s in self.series if s.held]

    @property
    def kept(self) -> int:
        return sum(1 for s in self.series for d in s.decisions if not d.delete)


def _series_key(backup: Candidate) -> tuple[str, str]:
    return (backup.kind, backup.series)


def plan_retention(backups: Iterable[Candidate], policy: Policy, now: datetime) -> RetentionPlan:
    """Decide every backup of every series. Pure; `now` is the clock.

    Raises:
        ValueError: a naive datetime (as `now` or a `taken_at`), or one backup id listed twice.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    ordered = sorted(backups, key=_series_key)
    seen: set[str] = set()
    for backup in ordered:
        if backup.taken_at.tzinfo is None:
            raise ValueError(f"backup {backup.id}: taken_at must be timezone-aware")
        if backup.id in seen:
            raise ValueError(f"backup {backup.id} listed twice")
        seen.add(backup.id)
    plans = [
        _plan_series(kind, series, list(members), policy, now)
        for (kind, series), members in groupby(ordered, key=_series_key)
    ]
    return RetentionPlan(series=tuple(plans))


def select_expired(backups: Sequence[Candidate], policy: Policy, now: datetime) -> list[Candidate]:
    """The backups the policy no longer keeps, oldest first. Pure."""
    return [d.backup for d in plan_retention(backups, policy, now).expired]


def _plan_series(
    kind: str, series: str, members: list[Candidate], policy: Policy, now: datetime
) -> SeriesPlan:
    newest_first = sorted(members, key=lambda b: (b.taken_at, b.id), reverse=True)
    cutoff = now - timedelta(days=policy.retention_days)
    recent = {b.id for b in newest_first[: policy.keep_min]} | {
        b.id for b in newest_first if b.taken_at > cutoff
    }
    newest_verified = next((b for b in newest_first if b.verification is Verification.OK), None)
    # The backups kept anyway (newest keep_min, within retention) are the ones a restore would use.
    # If none of them passed verification, older ones may be the only good copies left: delete nothing.
    held = not any(b.verification is Verification.OK for b in newest_first if b.id in recent)
    gfs = _gfs_keepers(newest_first, policy)
    decisions: list[Decision] = []
    for index, backup in enumerate(newest_first):
        decisions.append(_decide(backup, index, policy, cutoff, newest_verified, held, gfs))
    return SeriesPlan(kind=kind, series=series, decisions=tuple(decisions), held=held)


def _decide(
    backup: Candidate,
    index: int,
    policy: Policy,
    cutoff: datetime,
    newest_verified: Candidate | None,
    held: bool,
    gfs: dict[str, Rule],
) -> Decision:
    if index < policy.keep_min:
        return Decision(backup, False, Rule.KEEP_MIN, f"one of the newest {policy.keep_min} of its series")
    if newest_verified is not None and backup.id == newest_verified.id:
        return Decision(
            backup, False, Rule.NEWEST_VERIFIED, "the newest backup of its series that passed verification"
        )
    if held:
        return Decision(
            backup, False, Rule.SERIES_HELD, "no recent backup of its series passed verification; keeping all"
        )
    if backup.taken_at > cutoff:
        return Decision(backup, False, Rule.WITHIN_RETENTION, f"younger than {policy.retention_days} days")
    if backup.id in gfs:
        rule = gfs[backup.id]
        return Decision(backup, False, rule, f"newest of its period under {rule.value}")
    return Decision(
        backup,
        True,
        Rule.EXPIRED,
        f"older than {policy.retention_days} days and kept by no other rule ({policy.describe()})",
    )


def _day(at: datetime) -> tuple[int, ...]:
    return (at.year, at.month, at.day)


def _week(at: datetime) -> tuple[int, ...]:
    iso = at.isocalendar()
    return (iso.year, iso.week)


def _month(at: datetime) -> tuple[int, ...]:
    return (at.year, at.month)


def _gfs_keepers(newest_first: Sequence[Candidate], policy: Policy) -> dict[str, Rule]:
    """Backup id -> the GFS rule keeping it: the newest backup of each of the N newest periods that have one.

    Periods are UTC calendar days, ISO weeks and calendar months (borg/restic semantics: a period with
    no backup does not count against N).
    """
    keepers: dict[str, Rule] = {}
    rules: tuple[tuple[Rule, int, Callable[[datetime], tuple[int, ...]]], ...] = (
        (Rule.KEEP_DAILY, policy.keep_daily, _day),
        (Rule.KEEP_WEEKLY, policy.keep_weekly, _week),
        (Rule.KEEP_MONTHLY, policy.keep_monthly, _month),
    )
    for rule, count, period_of in rules:
        periods: set[tuple[int, ...]] = set()
        for backup in newest_first:
            if len(periods) >= count:
                break
            period = period_of(_utc(backup.taken_at))
            if period not in periods:
                periods.add(period)
                keepers.setdefault(backup.id, rule)
    return keepers


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC)
