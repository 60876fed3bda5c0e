"""The audit trail (incident_actions) and the one-run-per-episode record (remediation_runs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from workers.incidents.lifecycle import aware
from workers.redaction import masked, redact_text, redact_value
from workers.state.schema import incident_actions, remediation_runs

RUNNING, INTERRUPTED = "running", "interrupted"
ERROR_LIMIT_CHARS = 2000


# Every row is written through these: params masked by name and redacted (URL userinfo, ?token=,
# --password=...), detail and error redacted, so a credential inside a value is never stored.
def _detail(detail: Mapping[str, object] | None) -> object:
    return redact_value(dict(detail)) if detail is not None else None


def _error(error: str | None) -> str | None:
    return redact_text(error)[:ERROR_LIMIT_CHARS] if error else None


@dataclass(frozen=True, slots=True)
class ActionRecord:
    id: int
    incident_id: int
    step: int | None
    action: str
    params: Mapping[str, object]
    outcome: str
    started_at: datetime
    finished_at: datetime | None
    detail: Mapping[str, object] | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "step": self.step,
            "action": self.action,
            "params": dict(self.params),
            "outcome": self.outcome,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "detail": self.detail,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class FinishedRow:
    incident_id: int
    step: int | None
    action: str
    params: Mapping[str, object]
    outcome: str
    at: datetime
    detail: Mapping[str, object] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RunClaim:
    status: str  # running when this caller should (continue to) run the playbook
    attempts: int
    resumed: bool  # an earlier attempt started and did not finish (its worker died)


class AuditTrail:
    """Rows of incident_actions and remediation_runs for one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(
        self, incident_id: int, step: int | None, action: str, params: Mapping[str, object], now: datetime
    ) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(incident_actions).values(
                    incident_id=incident_id,
                    step=step,
                    action=action,
                    params=masked(params),
                    outcome=RUNNING,
                    started_at=now,
                )
            )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish(
        self,
        row_id: int,
        outcome: str,
        now: datetime,
        detail: Mapping[str, object] | None = None,
        error: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(incident_actions)
                .where(incident_actions.c.id == row_id)
                .values(
                    outcome=outcome,
                    finished_at=now,
                    detail=_detail(detail),
                    error=_error(error),
                )
            )

    def record(
        self,
        incident_id: int,
        step: int | None,
        action: str,
        params: Mapping[str, object],
        outcome: str,
        now: datetime,
        detail: Mapping[str, object] | None = None,
        error: str | None = None,
    ) -> None:
        """One finished row (skips, notifications)."""
        self.record_many([FinishedRow(incident_id, step, action, params, outcome, now, detail, error)])

    def record_many(self, rows: Sequence[FinishedRow]) -> None:
        """Finished rows in one transaction (a run's skips, one round of notifications)."""
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(
                insert(incident_actions),
                [
                    {
                        "incident_id": r.incident_id, "step": r.step, "action": r.action,
                        "params": masked(r.params), "outcome": r.outcome, "started_at": r.at,
                        "finished_at": r.at, "detail": _detail(r.detail), "error": _error(r.error),
                    }
                    for r in rows
                ],
            )  # fmt: skip

    def records(self, incident_id: int) -> list[ActionRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(incident_actions)
                .where(incident_actions.c.incident_id == incident_id)
                .order_by(incident_actions.c.id)
            ).all()
        return [
            ActionRecord(
                id=int(r.id),
                incident_id=int(r.incident_id),
                step=r.step,
                action=r.action,
                params=r.params or {},
                outcome=r.outcome,
                started_at=aware(r.started_at) or r.started_at,
                finished_at=aware(r.finished_at),
                detail=r.detail,
                error=r.error,
            )
            for r in rows
        ]

    def finished_steps(self, incident_id: int) -> dict[int, str]:
        """step -> outcome of every step an earlier attempt finished (a resumed run skips these)."""
        return {
            r.step: r.outcome
            for r in self.records(incident_id)
            if r.step is not None and r.outcome not in (RUNNING, INTERRUPTED)
        }

    def mark_interrupted(self, incident_id: int, now: datetime) -> int:
        """Close rows left running by a dead worker; return how many."""
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    update(incident_actions)
                    .where(incident_actions.c.incident_id == incident_id, incident_actions.c.outcome == RUNNING)
                    .values(outcome=INTERRUPTED, finished_at=now, error="the worker running this step stopped")
                ).rowcount
            )

    def sent(self, incident_id: int) -> set[tuple[str, str]]:
        """(channel, kind) of every notification that already went out for this incident."""
        return {
            (r.action[len("notify.") :], str(r.params.get("kind")))
            for r in self.records(incident_id)
            if r.action.startswith("notify.") and r.outcome == "ok"
        }

    def claim_run(self, incident_id: int, playbook: str, target: str, now: datetime) -> RunClaim:
        """Start the one run of this episode, or find it: resumable (running) or finished (its status)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(remediation_runs).values(
                        incident_id=incident_id,
                        playbook=playbook,
                        target=target[:500],
                        status=RUNNING,
                        attempts=1,
                        started_at=now,
                    )
                )
            return RunClaim(RUNNING, 1, resumed=False)
        except IntegrityError:
            pass  # the run exists already (a redelivery or a duplicate): its row decides, read below
        with self.engine.begin() as conn:
            row = conn.execute(select(remediation_runs).where(remediation_runs.c.incident_id == incident_id)).one()
            if row.status != RUNNING:
                return RunClaim(row.status, int(row.attempts), resumed=False)
            conn.execute(
                update(remediation_runs)
                .where(remediation_runs.c.incident_id == incident_id)
                .values(attempts=remediation_runs.c.attempts + 1)
            )
        return RunClaim(RUNNING, int(row.attempts) + 1, resumed=True)

    def finish_run(self, incident_id: int, status: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(remediation_runs)
                .where(remediation_runs.c.incident_id == incident_id)
                .values(status=status, finished_at=now)
            )

    def run_status(self, incident_id: int) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(remediation_runs.c.status).where(remediation_runs.c.incident_id == incident_id)
            ).first()
        return None if row is None else str(row[0])
