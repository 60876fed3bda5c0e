"""run_playbook(), the one runner: gates (pause, flapping, lock, cooldown, budget), steps, check, notify."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

from workers import metrics
from workers.errors import UnsafeParameter, WorkersError
from workers.incidents.actions.base import ActionContext, ActionResult, ArchiveStore, ParamValue
from workers.incidents.actions.registry import ACTIONS
from workers.incidents.audit import RUNNING, ActionRecord, AuditTrail, FinishedRow
from workers.incidents.lifecycle import Incident, load_incident, recent_episodes
from workers.incidents.notify import Notification, Notifier, notify_all
from workers.incidents.playbooks import Catalog, OnFailure, Playbook, Step, matches
from workers.incidents.rails import Rails
from workers.incidents.templates import render
from workers.logs import log_context
from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

OK, FAILED = "ok", "failed"
SKIPPED_CONDITION, SKIPPED_DRY_RUN = "skipped_condition", "skipped_dry_run"
# Notification kinds: the page (or ticket, or log line) before the steps, the outcome or escalation after them.
TRIGGER, UPDATE, ESCALATE, RESOLVE = "trigger", "update", "escalate", "resolve"


@dataclass(frozen=True, slots=True)
class Edges:
    """What the runner acts through; operations.py builds it from Settings, tests from their own parts."""

    settings: Settings
    trail: AuditTrail
    rails: Rails
    channels: Mapping[str, Notifier]
    archive: ArchiveStore
    clock: Callable[[], datetime]
    celery_app: Celery | None = None


@dataclass(frozen=True, slots=True)
class RunReport:
    incident_id: int
    playbook: str | None
    status: str  # completed | failed | escalated | dry_run | skipped_<reason> | no_playbook | already_<status>
    steps: tuple[tuple[str, str], ...] = ()  # (action, outcome) of the steps this call ran or skipped
    notified: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (channel, outcome)

    def to_json(self) -> dict[str, object]:
        return {
            "incident_id": self.incident_id,
            "playbook": self.playbook,
            "status": self.status,
            "steps": [list(s) for s in self.steps],
            "notified": [list(n) for n in self.notified],
        }


def _render_params(step: Step, incident: Incident, catalog: Catalog) -> dict[str, ParamValue]:
    """The step's parameters with labels and variables substituted. Raises UnsafeParameter."""
    spec = ACTIONS[step.action].params
    rendered: dict[str, ParamValue] = {}
    for name, value in step.params.items():
        declared = spec[name]
        if isinstance(value, str) and declared.templated:
            escape: Callable[[str, str], str] = (
                (lambda _f, v: quote(v, safe="")) if declared.url_quoted else (lambda _f, v: v)
            )
            rendered[name] = render(f"params.{name}", value, incident.labels, catalog.variables, escape)
            if declared.choices and rendered[name] not in declared.choices:
                choices = ", ".join(declared.choices)
                raise UnsafeParameter(f"params.{name}", f"must be one of {choices} (got {rendered[name]!r})")
        elif isinstance(value, str):
            rendered[name] = render(f"params.{name}", value, {}, catalog.variables)
        else:
            rendered[name] = value
    return rendered


def _record_metric(action: str, outcome: str) -> None:
    metrics.REMEDIATION_ACTIONS.labels(action=action, outcome=outcome).inc()


class _Run:
    """One attempt at one incident's playbook; holds the per-attempt bookkeeping."""

    def __init__(self, incident: Incident, playbook: Playbook, catalog: Catalog, edges: Edges, dry_run: bool) -> None:
        self.incident, self.playbook, self.catalog, self.edges = incident, playbook, catalog, edges
        self.dry_run = dry_run
        self.outcomes: dict[str, str] = {}  # step id -> outcome, for if_failed and if_ok
        self.ran: list[tuple[str, str]] = []
        self.first_action_seen = False

    def skip_all(self, outcome: str, detail: Mapping[str, object]) -> None:
        """Record every step not finished by an earlier attempt as skipped with the gate's reason."""
        now = self.edges.clock()
        finished = self.edges.trail.finished_steps(self.incident.id)
        skipped = [(i, step) for i, step in enumerate(self.playbook.steps) if i not in finished]
        rows = [FinishedRow(self.incident.id, i, step.action, step.params, outcome, now, detail) for i, step in skipped]
        self.edges.trail.record_many(rows)
        for _, step in skipped:
            _record_metric(step.action, outcome)
            self.ran.append((step.action, outcome))

    def applies(self, step: Step) -> bool:
        """Whether the step's conditions hold: its label matchers, and how the steps it names ended."""
        if step.if_failed and self.outcomes.get(step.if_failed) != FAILED:
            return False
        # In a dry run a step that would have succeeded counts as succeeded: the rehearsal shows the whole path.
        if step.if_ok and self.outcomes.get(step.if_ok) not in (OK, SKIPPED_DRY_RUN):
            return False
        return matches(step.when, self.incident.labels)

    def execute(self, index: int, step: Step) -> str:
        """Run one step (or record why it is skipped); return its outcome."""
        trail, now = self.edges.trail, self.edges.clock()
        if not self.applies(step):
            trail.record(
                self.incident.id,
                index,
                step.action,
                step.params,
                SKIPPED_CONDITION,
                now,
                {"when": dict(step.when), "if_failed": step.if_failed, "if_ok": step.if_ok},
            )
            _record_metric(step.action, SKIPPED_CONDITION)
            return SKIPPED_CONDITION
        try:
            params = _render_params(step, self.incident, self.catalog)
        except WorkersError as exc:
            trail.record(self.incident.id, index, step.action, step.params, FAILED, now, None, str(exc))
            _record_metric(step.action, FAILED)
            return FAILED
        row = trail.start(self.incident.id, index, step.action, params, now)
        if not self.first_action_seen:
            self.first_action_seen = True
            metrics.ALERT_TO_ACTION.observe(max(0.0, (now - self.incident.received_at).total_seconds()))
        context = ActionContext(
            settings=self.edges.settings,
            dry_run=self.dry_run,
            timeout_s=step.timeout_s or self.edges.settings.remediation.action_timeout_s,
            commands=self.catalog.commands,
            archive=self.edges.archive,
            labels=self.incident.labels,
            variables=self.catalog.variables,
            celery_app=self.edges.celery_app,
        )
        result, error = self._call(step, params, context)
        outcome = FAILED if result is None or not result.ok else (SKIPPED_DRY_RUN if self.dry_run else OK)
        detail = {"summary": result.summary, **result.detail} if result is not None else None
        trail.finish(row, outcome, self.edges.clock(), detail, error)
        _record_metric(step.action, outcome)
        log.info(
            "playbook step finished",
            extra={
                "step": index,
                "action": step.action,
                "outcome": outcome,
                "summary": result.summary if result else error,
            },
        )
        return outcome

    def _call(
        self, step: Step, params: Mapping[str, ParamValue], context: ActionContext
    ) -> tuple[ActionResult | None, str | None]:
        try:
            result = ACTIONS[step.action].run(params, context)
        except WorkersError as exc:
            return None, str(exc)
        except Exception as exc:
            # One broken action must not take the incident's other steps and notifications with it.
            log.exception("remediation action crashed", extra={"action": step.action})
            return None, f"{type(exc).__name__}: {exc}"
        return result, None if result.ok else result.summary

    def steps(self) -> str:
        """Run the steps not finished by an earlier attempt, then the check; return the run's status."""
        finished = self.edges.trail.finished_steps(self.incident.id)
        status = "dry_run" if self.dry_run else "completed"
        for index, step in enumerate(self.playbook.steps):
            if index in finished:
                outcome = finished[index]  # done by an earlier attempt of this run: never repeated
            else:
                outcome = self.execute(index, step)
                self.ran.append((step.action, outcome))
            if step.id:
                self.outcomes[step.id] = outcome
            if outcome == FAILED:
                if step.on_failure == OnFailure.ESCALATE:
                    return "escalated"
                if step.on_failure == OnFailure.STOP:
                    return "failed"
        check = self.playbook.check
        if check is not None:
            index = len(self.playbook.steps)
            outcome = finished.get(index) or self.execute(index, check)
            self.ran.append((check.action, outcome))
            if outcome == FAILED:
                return "escalated"
        return status


def _gate(run: _Run, target: str, claim_resumed: bool) -> str | None:
    """Why this run must not act (skipped_<reason>), or None; claims cooldown and budget when it may act for real."""
    edges, playbook, incident = run.edges, run.playbook, run.incident
    rails, rem = edges.rails, edges.settings.remediation
    if rails.paused() is not None:
        return "skipped_paused"
    if not claim_resumed:
        episodes = recent_episodes(
            edges.trail.engine, incident.fingerprint, edges.clock(), timedelta(seconds=rem.flap_window_s)
        )
        if episodes > rem.flap_threshold:
            return "skipped_flapping"
    if run.dry_run:
        # A dry run acts on nothing: claiming would hold off real remediation of the target.
        return None
    holder = f"incident:{incident.id}"
    cooldown_s = playbook.cooldown_s if playbook.cooldown_s is not None else rem.cooldown_s
    if not rails.claim_cooldown(playbook.name, target, holder, cooldown_s):
        return "skipped_cooldown"
    if not rails.claim_budget(playbook.name, holder, playbook.budget_per_hour or rem.budget_per_hour):
        rails.release_cooldown(playbook.name, target, holder)
        return "skipped_budget"
    return None


def run_playbook(incident: Incident, playbook: Playbook, catalog: Catalog, edges: Edges) -> RunReport:
    """Run playbook for a firing incident once per episode, resuming an interrupted run.

    The severity-routed notification (page, ticket, log) goes out before any step, the outcome or
    escalation after the last one.
    """
    now = edges.clock()
    try:
        target = render("target", playbook.target, incident.labels, catalog.variables)
    except WorkersError:
        target = f"{playbook.name}:{incident.fingerprint}"  # a missing label: key on the alert itself
    claim = edges.trail.claim_run(incident.id, playbook.name, target, now)
    if claim.status != RUNNING:
        return RunReport(incident.id, playbook.name, f"already_{claim.status}")
    dry_run = edges.settings.remediation.dry_run or playbook.dry_run
    run = _Run(incident, playbook, catalog, edges, dry_run)
    with log_context(incident_id=incident.id, playbook=playbook.name):
        if not claim.resumed:
            metrics.INCIDENTS.labels(alertname=incident.alertname, severity=incident.severity).inc()
        # Before the steps: the on-call is paged without waiting for them, and a resolve handled
        # while they run finds the trigger it pairs with.
        notified = send_notifications(
            incident, catalog, playbook, edges, TRIGGER, {"playbook": playbook.name, "target": target}
        )
        holder = f"incident:{incident.id}"
        with edges.rails.target_lock(target, holder) as lock:
            if not lock.acquired and lock.holder == holder:
                # Another live delivery of this same incident holds the lock and runs it.
                return RunReport(incident.id, playbook.name, "already_running", (), tuple(notified))
            if claim.resumed:
                # The earlier attempt is dead: a live one would hold the lock, and that case returned above.
                edges.trail.mark_interrupted(incident.id, edges.clock())
            reason = "skipped_locked" if not lock.acquired else _gate(run, target, claim.resumed)
            if reason is not None:
                run.skip_all(reason, {"target": target})
                status = reason
            else:
                status = run.steps()
        edges.trail.finish_run(incident.id, status, edges.clock())
        metrics.PLAYBOOK_RUNS.labels(playbook=playbook.name, outcome=status).inc()
        log.info("playbook finished", extra={"status": status, "attempt": claim.attempts})
        kind = ESCALATE if status in ("escalated", "skipped_flapping") else UPDATE
        details = {"playbook": playbook.name, "status": status, "target": target}
        notified += notify_unless_resolved(incident, catalog, playbook, edges, kind, details)
    return RunReport(incident.id, playbook.name, status, tuple(run.ran), tuple(notified))


def is_closed(incident: Incident) -> bool:
    """The alert resolved, or someone resolved the incident by hand: nothing more to page about."""
    return not incident.is_firing or incident.status == "resolved"


def _deliveries(records: Sequence[ActionRecord]) -> list[tuple[str, str]]:
    """(channel, kind) of every notification that went out, oldest first. Pure."""
    return [
        (r.action[len("notify.") :], str(r.params.get("kind")))
        for r in records
        if r.action.startswith("notify.") and r.outcome == "ok"
    ]


def open_channels(records: Sequence[ActionRecord]) -> set[str]:
    """Channels told of the incident (trigger or escalation) and not of a resolve since. Pure."""
    told: set[str] = set()
    for channel, kind in _deliveries(records):
        if kind in (TRIGGER, ESCALATE):
            told.add(channel)
        elif kind == RESOLVE:
            told.discard(channel)
    return told


def notify_unless_resolved(
    incident: Incident,
    catalog: Catalog,
    playbook: Playbook | None,
    edges: Edges,
    kind: str,
    details: Mapping[str, object],
) -> list[tuple[str, str]]:
    """Send kind unless the incident closed meanwhile; when it closed, send the resolve its channels still need.

    The resolve task may run while a playbook does, and resolves only what had been sent by then:
    what went out since (or was about to) would stay open in PagerDuty without this.
    """
    current = load_incident(edges.trail.engine, incident.id)
    notified: list[tuple[str, str]] = []
    if not is_closed(current):
        notified = send_notifications(current, catalog, playbook, edges, kind, details)
        if kind not in (TRIGGER, ESCALATE) or all(outcome != "ok" for _, outcome in notified):
            return notified
        current = load_incident(edges.trail.engine, incident.id)  # it may have resolved while this went out
        if not is_closed(current):
            return notified
    return notified + send_notifications(current, catalog, playbook, edges, RESOLVE, {"status": "resolved"})


def _channels(
    incident: Incident, catalog: Catalog, playbook: Playbook | None, kind: str, records: Sequence[ActionRecord]
) -> list[str]:
    """Who gets a notification of kind: severity routing plus the playbook's channels, less those already told."""
    routed = catalog.channels_for(incident.severity, playbook)
    if kind == RESOLVE:
        # Whoever was told it fired, including PagerDuty paged by the escalation of a warning.
        told = open_channels(records)
        return [c for c in routed if c in told] + sorted(told - set(routed))
    wanted = list(routed)
    if kind == ESCALATE and "pagerduty" not in wanted:
        wanted.insert(0, "pagerduty")
    if kind == UPDATE:
        # PagerDuty has paged already, and any event but a resolve is another trigger there.
        wanted = [c for c in wanted if c != "pagerduty"]
    sent = set(_deliveries(records))
    return [c for c in wanted if (c, kind) not in sent]


def send_notifications(
    incident: Incident,
    catalog: Catalog,
    playbook: Playbook | None,
    edges: Edges,
    kind: str,
    details: Mapping[str, object],
) -> list[tuple[str, str]]:
    """Notify the incident's channels (routing + playbook), recording every send; skip those already sent."""
    wanted = _channels(incident, catalog, playbook, kind, edges.trail.records(incident.id))
    note = Notification(
        kind,
        incident.id,
        incident.fingerprint,
        incident.alertname,
        incident.severity,
        incident.summary,
        dict(details),
    )
    settings = edges.settings.notify
    deliveries = notify_all(edges.channels, wanted, note, settings.attempts, settings.backoff_s)
    now = edges.clock()
    edges.trail.record_many(
        [
            FinishedRow(
                incident.id,
                None,
                f"notify.{d.channel}",
                {"kind": kind},
                d.outcome,
                now,
                {"attempts": d.attempts, "receipt": d.receipt},
                d.error or None,
            )
            for d in deliveries
        ]
    )
    for delivery in deliveries:
        metrics.NOTIFICATIONS.labels(channel=delivery.channel, outcome=delivery.outcome).inc()
    return [(d.channel, d.outcome) for d in deliveries]
