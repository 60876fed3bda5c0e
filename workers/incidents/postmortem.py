"""Post-mortem draft (markdown) of a resolved incident: timeline, actions, notifications, durations. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from workers.incidents.audit import ActionRecord
from workers.incidents.lifecycle import Incident


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = max(0.0, (end - start).total_seconds())
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")[:200]


def _result(record: ActionRecord) -> object:
    return (record.detail or {}).get("summary") or record.error or ""


def seen_firing(incident: Incident, records: Sequence[ActionRecord]) -> bool:
    """Whether the episode was known here while it fired: something was done for it, or it was recorded firing.

    An episode whose first notification already said resolved (the receiver never saw it fire) is
    recorded resolved on arrival, resolved_at equal to received_at, with nothing in its audit trail.
    """
    return bool(records) or incident.resolved_at is None or incident.resolved_at > incident.received_at


def draft_postmortem(incident: Incident, records: Sequence[ActionRecord]) -> str:
    """A markdown draft for humans to complete; every fact comes from the incident and its audit trail."""
    actions = [r for r in records if not r.action.startswith("notify.")]
    notes = [r for r in records if r.action.startswith("notify.")]
    timeline: list[tuple[datetime, str]] = [
        (incident.starts_at, "alert fired"),
        (incident.received_at, "alert received"),
    ]
    if incident.acknowledged_at:
        timeline.append((incident.acknowledged_at, f"acknowledged by {incident.acknowledged_by}"))
    timeline += [(r.started_at, f"{r.action}: {r.outcome}") for r in records]
    if incident.ends_at:
        timeline.append((incident.ends_at, "alert resolved"))
    if incident.resolved_at:
        timeline.append((incident.resolved_at, "incident resolved"))
    lines = [
        f"# Post-mortem draft: {incident.alertname} (incident {incident.id})",
        "",
        f"- Severity: {incident.severity}",
        f"- Summary: {incident.summary}",
        f"- Fired: {incident.starts_at.isoformat()}",
        f"- Resolved: {incident.resolved_at.isoformat() if incident.resolved_at else '-'}",
        f"- Duration: {_duration(incident.starts_at, incident.resolved_at)}",
        f"- Time to acknowledge: {_duration(incident.received_at, incident.acknowledged_at)}",
        f"- Labels: {', '.join(f'{k}={v}' for k, v in sorted(incident.labels.items()))}",
        "",
        "## Timeline",
        "",
        *(f"- {at.isoformat()} {_cell(what)}" for at, what in sorted(timeline, key=lambda item: item[0])),
        "",
        "## Actions",
        "",
        "| step | action | outcome | started | duration | result |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {'' if r.step is None else r.step} | {r.action} | {r.outcome} | {r.started_at.isoformat()} | "
            f"{_duration(r.started_at, r.finished_at)} | {_cell(_result(r))} |"
            for r in actions
        ),
        "",
        "## Notifications",
        "",
        *(
            f"- {r.started_at.isoformat()} {r.action[len('notify.') :]} ({r.params.get('kind')}): {r.outcome}"
            + (f" - {_cell(r.error)}" if r.error else "")
            for r in notes
        ),
        "",
        "## Root cause",
        "",
        "_To be written._",
        "",
        "## Follow-ups",
        "",
        "_To be written._",
        "",
    ]
    return "\n".join(lines)
