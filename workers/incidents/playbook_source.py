"""The playbooks file as the incidents worker reads it: re-read when it changes, the last valid version kept."""

from __future__ import annotations

import logging
from pathlib import Path

from workers import metrics
from workers.errors import ConfigError
from workers.incidents.playbook_file import DEFAULT_PLAYBOOKS, load_playbooks, routing_only
from workers.incidents.playbooks import Catalog

log = logging.getLogger(__name__)

# The problems logged with one invalid version; more would flood the line.
LOGGED_PROBLEMS = 20


class PlaybookSource:
    """One playbooks file for one worker process; `current()` never raises for an invalid edit.

    The file is validated at start-up (the worker refuses to start on it), but it is re-read when it
    changes: an edit that breaks it must not leave alerts recorded and never handled.
    """

    def __init__(self, path: Path | None) -> None:
        self.source = str(path or DEFAULT_PLAYBOOKS)
        self.path = path
        self.last_valid: Catalog | None = None
        self.reported: tuple[str, ...] | None = None  # the problems of the invalid version last logged

    def current(self) -> Catalog:
        """The file when valid; else the last valid version this process read; else routing only, no playbooks."""
        try:
            catalog = load_playbooks(self.path)
        except ConfigError as exc:
            return self._instead_of_invalid(exc.problems)
        if self.reported is not None:
            log.info("playbooks file valid again", extra={"source": self.source})
        if self.reported is not None or self.last_valid is None:
            metrics.PLAYBOOKS_VALID.set(1)
        self.reported, self.last_valid = None, catalog
        return catalog

    def _instead_of_invalid(self, problems: tuple[str, ...]) -> Catalog:
        if problems != self.reported:
            self.reported = problems
            metrics.PLAYBOOKS_VALID.set(0)
            fields = {"source": self.source, "problems": list(problems[:LOGGED_PROBLEMS])}
            if self.last_valid is not None:
                log.error("playbooks file invalid, keeping its last valid version", extra=fields)
            else:
                log.error("playbooks file invalid, no valid version loaded: routing without remediation", extra=fields)
        return self.last_valid or routing_only(self.source, problems)
