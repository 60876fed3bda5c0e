"""What every remediation action shares: its parameter declarations, its context and its result."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

# A parameter after loading: durations are seconds, lists are tuples of text, maps are text -> text.
ParamValue = str | int | float | bool | tuple[str, ...] | Mapping[str, str]


class Kind(StrEnum):
    TEXT = "text"
    INT = "int"
    NUMBER = "number"
    BOOL = "bool"
    DURATION = "duration"  # "5m", "30s", "1h", "2d" or a number of seconds
    TEXT_LIST = "text_list"
    TEXT_MAP = "text_map"


@dataclass(frozen=True, slots=True)
class Param:
    """One declared parameter of an action; the playbook loader checks every step against these."""

    kind: Kind
    required: bool = False
    default: ParamValue | None = None
    choices: tuple[str, ...] = ()
    # Only text may carry {labels.x} placeholders; a label never decides a number, a flag or a choice.
    templated: bool = False
    # A label substituted into a URL is percent-encoded whole, so it cannot add a path, query or host.
    url_quoted: bool = False


class ArchiveStore(Protocol):
    """Where archived logs go; put_file returns only once the object is stored and its size confirmed."""

    def put_file(self, key: str, path: Path) -> int: ...

    def describe(self, key: str) -> str: ...


@dataclass(frozen=True, slots=True)
class ActionContext:
    """Everything an action may touch, handed in by the runner (no action reads settings itself)."""

    settings: Settings
    dry_run: bool
    timeout_s: float
    commands: Mapping[str, tuple[str, ...]]
    archive: ArchiveStore
    labels: Mapping[str, str] = field(default_factory=dict)
    variables: Mapping[str, str] = field(default_factory=dict)
    celery_app: Celery | None = None

    @property
    def allowed_roots(self) -> tuple[Path, ...]:
        return self.settings.remediation.allowed_roots


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an action did (or, in dry-run, would do): ok, one summary line, and structured detail."""

    ok: bool
    summary: str
    detail: Mapping[str, object] = field(default_factory=dict)


Action = Callable[[Mapping[str, ParamValue], ActionContext], ActionResult]


@dataclass(frozen=True, slots=True)
class ActionSpec:
    run: Action
    params: Mapping[str, Param]
    description: str


def text(params: Mapping[str, ParamValue], name: str) -> str:
    value = params[name]
    assert isinstance(value, str), name
    return value


def number(params: Mapping[str, ParamValue], name: str) -> float:
    value = params[name]
    assert isinstance(value, int | float) and not isinstance(value, bool), name
    return float(value)


def integer(params: Mapping[str, ParamValue], name: str) -> int:
    value = params[name]
    assert isinstance(value, int) and not isinstance(value, bool), name
    return value


def text_list(params: Mapping[str, ParamValue], name: str) -> tuple[str, ...]:
    value = params[name]
    assert isinstance(value, tuple), name
    return value


def text_map(params: Mapping[str, ParamValue], name: str) -> Mapping[str, str]:
    value = params[name]
    assert isinstance(value, Mapping), name
    return value


def flag(params: Mapping[str, ParamValue], name: str) -> bool:
    value = params[name]
    assert isinstance(value, bool), name
    return value
