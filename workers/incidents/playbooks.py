"""Playbooks as frozen values (steps, matchers, the catalog of one file) and the alert lookup. Pure.

workers/incidents/playbook_file.py builds them from YAML and validates every field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from workers.incidents.actions.base import ParamValue


class OnFailure(StrEnum):
    CONTINUE = "continue"
    STOP = "stop"
    ESCALATE = "escalate"


@dataclass(frozen=True, slots=True)
class Step:
    action: str  # a key of actions.registry.ACTIONS
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    on_failure: OnFailure = OnFailure.STOP
    timeout_s: float | None = None
    id: str = ""
    when: Mapping[str, str] = field(default_factory=dict)  # label matchers; the step is skipped otherwise
    if_failed: str = ""  # run only when the step with this id failed
    if_ok: str = ""  # run only when the step with this id succeeded


@dataclass(frozen=True, slots=True)
class Playbook:
    name: str
    match: Mapping[str, str]  # label -> exact value, or "~REGEX" (full match)
    target: str  # template naming what cooldown and locks are keyed on
    steps: tuple[Step, ...]
    notify: tuple[str, ...] = ()
    cooldown_s: float | None = None  # None: the global default
    budget_per_hour: int | None = None
    dry_run: bool = False
    check: Step | None = None  # run last; when it fails the incident escalates


@dataclass(frozen=True, slots=True)
class Catalog:
    """A validated playbooks file: playbooks in match order, routing, allow-listed commands, variables."""

    source: str
    playbooks: tuple[Playbook, ...]
    routing: Mapping[str, tuple[str, ...]]
    commands: Mapping[str, tuple[str, ...]]
    variables: Mapping[str, str]
    # Set only on the routing-only stand-in for a file that never loaded: why it has no playbooks.
    problems: tuple[str, ...] = ()

    def playbook_for(self, labels: Mapping[str, str]) -> Playbook | None:
        """The first playbook whose matchers all hold for labels; None when no playbook applies."""
        return next((p for p in self.playbooks if matches(p.match, labels)), None)

    def channels_for(self, severity: str, playbook: Playbook | None) -> tuple[str, ...]:
        """Severity routing plus the playbook's own channels, in order, without repeats."""
        routed = self.routing.get(severity, self.routing.get("warning", ()))
        extra = playbook.notify if playbook is not None else ()
        return tuple(dict.fromkeys((*routed, *extra)))


def matches(matchers: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every matcher holds: exact equality, or a full regex match for values starting with '~'."""
    for name, expected in matchers.items():
        value = labels.get(name, "")
        if expected.startswith("~"):
            if re.fullmatch(expected[1:], value) is None:
                return False
        elif value != expected:
            return False
    return True
