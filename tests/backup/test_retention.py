"""Retention decisions: pure, table-driven, with the clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from workers.backup.retention import (
    Candidate,
    Policy,
    Rule,
    Verification,
    plan_retention,
    select_expired,
)

NOW = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)
OK, FAILED, NONE = Verification.OK, Verification.FAILED, Verification.UNVERIFIED


def aged(days: float, verification: Verification = NONE, *, kind: str = "full", series: str = "platform") -> Candidate:
    taken_at = NOW - timedelta(days=days)
    return Candidate(
        id=f"{kind}-{series}-{days:g}", kind=kind, series=series, taken_at=taken_at, verification=verification
    )


def ages_deleted(backups: list[Candidate], policy: Policy) -> list[float]:
    return [round((NOW - b.taken_at) / timedelta(days=1), 3) for b in select_expired(backups, policy, NOW)]


AGE_ONLY = Policy(retention_days=30, keep_min=3)


@pytest.mark.parametrize(
    ("backups", "policy", "expected_deleted"),
    [
        # Nothing older than the retention window: nothing goes.
        ([aged(0, OK), aged(1), aged(29)], AGE_ONLY, []),
        # Older than 30 days and not among the newest 3: deleted, oldest first.
        ([aged(0, OK), aged(1), aged(2), aged(31), aged(45)], AGE_ONLY, [45, 31]),
        # Exactly 30 days is expired (not younger than the window).
        ([aged(0, OK), aged(1), aged(2), aged(30)], AGE_ONLY, [30]),
        # keep_min wins over age: the only three backups are all ancient.
        ([aged(100, OK), aged(200), aged(300)], AGE_ONLY, []),
        # keep_min=3 keeps the newest three even when all are expired; the fourth goes.
        ([aged(100, OK), aged(200), aged(300), aged(400)], AGE_ONLY, [400]),
        # keep_min=1 with a verified newest: everything expired beyond it goes.
        ([aged(0, OK), aged(40), aged(50)], Policy(retention_days=30, keep_min=1), [50, 40]),
        # Once a newer backup passed verification, older verified ones are not protected.
        ([aged(0, OK), aged(1), aged(2), aged(40, OK), aged(50, OK)], AGE_ONLY, [50, 40]),
        # Failed verifications don't count as verified.
        ([aged(0, OK), aged(1), aged(2), aged(40, FAILED), aged(50)], AGE_ONLY, [50, 40]),
        # GFS daily: the newest of each of the 5 newest days with a backup is kept
        # (NOW is 03:00, so 31.5 days ago is 15:00 on the same day as 32 days ago).
        (
            [aged(d, OK if d == 0 else NONE) for d in (0, 31, 31.5, 32, 33, 34, 35, 36)],
            Policy(retention_days=30, keep_min=1, keep_daily=5),
            [36, 35, 32],
        ),
        # GFS weekly (2026-12-03 is a Thursday): 31 days ago is week 45, 33 and 38 week 44, 39 week 43.
        (
            [aged(0, OK), aged(31), aged(33), aged(38), aged(39), aged(60)],
            Policy(retention_days=30, keep_min=1, keep_weekly=3),
            [60, 39, 38],
        ),
        # GFS monthly: newest backup of the 2 newest months that have one (Dec, then Oct; Nov has none).
        (
            [aged(0, OK), aged(40), aged(45), aged(70), aged(400)],
            Policy(retention_days=1, keep_min=1, keep_monthly=2),
            [400, 70, 45],
        ),
    ],
)
def test_select_expired(backups: list[Candidate], policy: Policy, expected_deleted: list[float]) -> None:
    assert ages_deleted(backups, policy) == expected_deleted


@pytest.mark.parametrize(
    "backups",
    [
        # Nothing ever verified.
        [aged(0), aged(1), aged(2), aged(40), aged(50)],
        # The recent ones all failed; only an old one passed.
        [aged(0, FAILED), aged(1, FAILED), aged(2), aged(40, OK), aged(50), aged(60)],
        # Recent ones unverified; verified ones only beyond retention and keep_min.
        [aged(0), aged(10), aged(20), aged(35, OK), aged(36), aged(90, OK)],
    ],
)
def test_a_series_whose_recent_backups_never_passed_verification_is_held_whole(
    backups: list[Candidate],
) -> None:
    plan = plan_retention(backups, AGE_ONLY, NOW)
    assert plan.expired == []
    [series] = plan.held
    assert series.held
    assert {d.rule for d in series.decisions} <= {Rule.KEEP_MIN, Rule.NEWEST_VERIFIED, Rule.SERIES_HELD}


def test_a_held_series_names_the_newest_verified_backup_as_the_floor_that_keeps_it() -> None:
    plan = plan_retention([aged(0), aged(1), aged(2), aged(40, OK), aged(50, OK)], AGE_ONLY, NOW)
    rules = {round((NOW - d.backup.taken_at).days): d.rule for d in plan.series[0].decisions}
    assert rules == {
        0: Rule.KEEP_MIN, 1: Rule.KEEP_MIN, 2: Rule.KEEP_MIN, 40: Rule.NEWEST_VERIFIED, 50: Rule.SERIES_HELD
    }  # fmt: skip


def test_a_verified_backup_within_retention_releases_the_hold() -> None:
    backups = [aged(0), aged(1), aged(2), aged(10, OK), aged(40), aged(50)]
    plan = plan_retention(backups, AGE_ONLY, NOW)
    assert plan.held == []
    assert [round((NOW - d.backup.taken_at).days) for d in plan.expired] == [50, 40]


def test_series_are_decided_independently_per_kind_and_database_or_organization() -> None:
    backups = [
        # full backups of "platform": verified, two expired
        aged(0, OK), aged(1), aged(2), aged(40), aged(41),
        # full backups of another database: one expired
        *[aged(d, OK if d == 0 else NONE, series="other") for d in (0, 1, 2, 60)],
        # org backups of one organization: never verified -> held
        *[aged(d, kind="org", series="org-a") for d in (0, 1, 2, 40, 41)],
        # org backups of another: only 3, all kept by keep_min
        *[aged(d, OK, kind="org", series="org-b") for d in (100, 200, 300)],
    ]  # fmt: skip
    plan = plan_retention(backups, AGE_ONLY, NOW)
    deleted = {(d.backup.kind, d.backup.series, (NOW - d.backup.taken_at).days) for d in plan.expired}
    assert deleted == {("full", "platform", 40), ("full", "platform", 41), ("full", "other", 60)}
    assert [(s.kind, s.series) for s in plan.held] == [("org", "org-a")]
    assert plan.kept == len(backups) - 3


def test_every_decision_names_its_rule_and_deletions_are_oldest_first() -> None:
    backups = [aged(0, OK), aged(1), aged(2), aged(5), aged(40, OK), aged(35), aged(50)]
    plan = plan_retention(backups, Policy(retention_days=30, keep_min=3), NOW)
    [series] = plan.series
    rules = [(round((NOW - d.backup.taken_at).days), d.rule, d.delete) for d in series.decisions]
    assert rules == [
        (0, Rule.KEEP_MIN, False),
        (1, Rule.KEEP_MIN, False),
        (2, Rule.KEEP_MIN, False),
        (5, Rule.WITHIN_RETENTION, False),
        (35, Rule.EXPIRED, True),
        (40, Rule.EXPIRED, True),  # verified, but not the newest verified one
        (50, Rule.EXPIRED, True),
    ]
    assert [round((NOW - d.backup.taken_at).days) for d in plan.expired] == [50, 40, 35]
    assert "older than 30 days" in plan.expired[0].detail


def test_gfs_periods_are_utc_calendar_periods_whatever_the_timezone_of_taken_at() -> None:
    plus_ten = timezone(timedelta(hours=10))
    # 23:30 UTC on two consecutive days, expressed at +10:00 (where both fall on the next day's morning).
    first = Candidate("a", "full", "db", datetime(2026, 10, 1, 23, 30, tzinfo=UTC).astimezone(plus_ten))
    second = Candidate("b", "full", "db", datetime(2026, 10, 2, 23, 30, tzinfo=UTC).astimezone(plus_ten))
    newest = Candidate("c", "full", "db", NOW, Verification.OK)
    plan = plan_retention([first, second, newest], Policy(retention_days=1, keep_min=1, keep_daily=3), NOW)
    assert plan.expired == []


def test_a_backup_from_the_future_counts_as_recent() -> None:
    future = Candidate("f", "full", "db", NOW + timedelta(hours=2), Verification.OK)
    old = [aged(d, series="db") for d in (40, 41, 42)]
    assert [b.id for b in select_expired([future, *old], Policy(retention_days=30, keep_min=1), NOW)] == [
        "full-db-42",
        "full-db-41",
        "full-db-40",
    ]


@pytest.mark.parametrize(
    ("backups", "now", "message"),
    [
        ([aged(1)], datetime(2026, 12, 3), "now must be timezone-aware"),
        ([Candidate("x", "full", "db", datetime(2026, 1, 1))], NOW, "taken_at must be timezone-aware"),
        ([aged(1), aged(1)], NOW, "listed twice"),
    ],
)
def test_bad_input_is_refused(backups: list[Candidate], now: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_retention(backups, AGE_ONLY, now)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retention_days": 0, "keep_min": 1},
        {"retention_days": 1, "keep_min": 0},
        {"retention_days": 1, "keep_min": 1, "keep_daily": -1},
    ],
)
def test_a_policy_that_could_delete_everything_is_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Policy(**kwargs)


def test_many_series_and_thousands_of_backups_decide_in_one_pass() -> None:
    # 3 databases + 40 organizations, a backup every 6 hours for 90 days: 15,480 backups.
    backups = [
        aged(hours / 24, OK if hours == 0 else NONE, kind=kind, series=series)
        for kind, names in (("full", [f"db{i}" for i in range(3)]), ("org", [f"org{i}" for i in range(40)]))
        for series in names
        for hours in range(0, 90 * 24, 6)
    ]
    plan = plan_retention(backups, AGE_ONLY, NOW)
    per_series = 90 * 4
    expected_deleted_per_series = per_series - 30 * 4  # within 30 days: 120 kept (incl. keep_min)
    assert len(plan.expired) == 43 * expected_deleted_per_series
    assert plan.held == []
