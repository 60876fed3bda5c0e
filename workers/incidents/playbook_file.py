"""The playbooks file: YAML (the bundled default or OPS_PLAYBOOKS) validated into a Catalog.

Every problem is collected and reported at once, each naming the file, the playbook and the field.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from workers.errors import ConfigError
from workers.incidents.actions.base import Kind, Param, ParamValue
from workers.incidents.actions.registry import ACTIONS
from workers.incidents.playbooks import Catalog, OnFailure, Playbook, Step
from workers.incidents.templates import placeholders

DEFAULT_PLAYBOOKS = Path(__file__).with_name("default_playbooks.yaml")
CHANNELS = ("pagerduty", "ticket", "slack", "email", "log")
SEVERITIES = ("critical", "warning", "info")

DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_STEP_FIELDS = frozenset({"action", "params", "on_failure", "timeout", "id", "when", "if_failed", "if_ok"})
# Fields naming another step by its id.
_STEP_REFERENCES = ("if_failed", "if_ok")
_PLAYBOOK_FIELDS = frozenset(
    {"name", "match", "target", "cooldown", "budget_per_hour", "dry_run", "steps", "check", "notify"}
)


def parse_duration(value: object) -> float:
    """'5m', '30s', '1.5h', '2d', '250ms' or a number of seconds -> seconds.

    Raises:
        ValueError: anything else, or a negative number.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m, 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str) and (m := DURATION.fullmatch(value.strip())):
        return float(m.group(1)) * _UNITS_S[m.group(2)]
    raise ValueError("must be a duration such as 30s, 5m, 1h")


class _Problems:
    """Collects every problem of a file, each prefixed with where it is."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{self.source}: {where}: {message}")


def _text_map(value: object, where: str, problems: _Problems) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        problems.add(where, "must be a mapping of names to text")
        return {}
    return {k: str(v) for k, v in value.items()}


def _param(value: object, spec: Param, where: str, problems: _Problems) -> ParamValue | None:
    kind = spec.kind
    if kind == Kind.DURATION:
        try:
            return parse_duration(value)
        except ValueError as exc:
            problems.add(where, f"{exc} (got {value!r})")
            return None
    expected: dict[Kind, tuple[type, ...]] = {
        Kind.TEXT: (str,),
        Kind.INT: (int,),
        Kind.NUMBER: (int, float),
        Kind.BOOL: (bool,),
        Kind.TEXT_LIST: (list,),
        Kind.TEXT_MAP: (dict,),
    }
    if not isinstance(value, expected[kind]) or (kind in (Kind.INT, Kind.NUMBER) and isinstance(value, bool)):
        problems.add(where, f"must be {kind.value} (got {type(value).__name__} {value!r})")
        return None
    converted: ParamValue
    if kind == Kind.TEXT_LIST:
        assert isinstance(value, list)
        if not all(isinstance(v, str) for v in value):
            problems.add(where, "must be a list of text")
            return None
        converted = tuple(value)
    elif kind == Kind.TEXT_MAP:
        converted = _text_map(value, where, problems)
    else:
        converted = value  # type: ignore[assignment]
    values = converted if isinstance(converted, tuple) else (converted,)
    # A placeholder's value is known only once the alert is: the runner checks the choice then.
    fixed = [v for v in values if not (spec.templated and isinstance(v, str) and placeholders(v))]
    if spec.choices and any(v not in spec.choices for v in fixed):
        problems.add(where, f"must be one of {', '.join(spec.choices)} (got {value!r})")
    texts = [v for v in values if isinstance(v, str)]
    if kind == Kind.TEXT_MAP:
        texts = list(converted.values())  # type: ignore[union-attr]
    if not spec.templated and any(placeholders(t) for t in texts):
        problems.add(where, "takes no {labels.x} placeholders (only text parameters that name a target do)")
    return converted


def _params(
    action: str, raw: object, where: str, commands: Mapping[str, object], problems: _Problems
) -> dict[str, ParamValue]:
    spec = ACTIONS[action].params
    given = raw if isinstance(raw, dict) else {}
    if raw is not None and not isinstance(raw, dict):
        problems.add(f"{where}.params", "must be a mapping")
    for name in given:
        if name not in spec:
            problems.add(
                f"{where}.params.{name}",
                f"unknown parameter of {action} (known: {', '.join(spec) or 'none'})",
            )
    params: dict[str, ParamValue] = {}
    for name, declared in spec.items():
        if name not in given:
            if declared.required:
                problems.add(f"{where}.params.{name}", f"required by {action}")
            elif declared.default is not None:
                params[name] = declared.default
            continue
        value = _param(given[name], declared, f"{where}.params.{name}", problems)
        if value is not None:
            params[name] = value
    if action == "command.run" and "command" in params and params["command"] not in commands:
        problems.add(f"{where}.params.command", f"{params['command']!r} is not defined under commands:")
    return params


def _step(raw: object, where: str, commands: Mapping[str, object], problems: _Problems) -> Step | None:
    if not isinstance(raw, dict):
        problems.add(where, "must be a mapping with an action")
        return None
    for name in raw:
        if name not in _STEP_FIELDS:
            problems.add(f"{where}.{name}", f"unknown field (known: {', '.join(sorted(_STEP_FIELDS))})")
    action = raw.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        problems.add(f"{where}.action", f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        return None
    on_failure = raw.get("on_failure", "stop")
    if on_failure not in {o.value for o in OnFailure}:
        problems.add(f"{where}.on_failure", f"must be continue, stop or escalate (got {on_failure!r})")
        on_failure = "stop"
    timeout_s = None
    if raw.get("timeout") is not None:
        try:
            timeout_s = parse_duration(raw["timeout"])
        except ValueError as exc:
            problems.add(f"{where}.timeout", str(exc))
    names: dict[str, str] = {}
    for name in ("id", *_STEP_REFERENCES):
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            problems.add(f"{where}.{name}", f"must be a step id such as recent-deploy (got {value!r})")
            value = None
        names[name] = "" if value is None else str(value)
    return Step(
        action=action,
        params=_params(action, raw.get("params"), where, commands, problems),
        on_failure=OnFailure(on_failure),
        timeout_s=timeout_s,
        id=names["id"],
        when=_text_map(raw.get("when"), f"{where}.when", problems),
        if_failed=names["if_failed"],
        if_ok=names["if_ok"],
    )


def _check_references(step: Step, where: str, earlier_ids: list[str], problems: _Problems) -> None:
    """if_failed and if_ok must each name a step that runs before this one."""
    for name in _STEP_REFERENCES:
        referenced = getattr(step, name)
        if referenced and referenced not in earlier_ids:
            problems.add(f"{where}.{name}", f"no earlier step has id {referenced!r}")


def _match(raw: object, where: str, problems: _Problems) -> dict[str, str]:
    match = _text_map(raw, f"{where}: match", problems)
    if not match:
        problems.add(f"{where}: match", "needs at least one label matcher, e.g. {alertname: HighErrorRate}")
    for label, expected in match.items():
        if expected.startswith("~"):
            try:
                re.compile(expected[1:])
            except re.error as exc:
                problems.add(f"{where}: match.{label}", f"invalid regular expression: {exc}")
    return match


def _steps(raw: object, where: str, commands: Mapping[str, object], problems: _Problems) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        problems.add(f"{where}: steps", "must be a non-empty list")
        return ()
    steps = [_step(s, f"{where}: steps[{i}]", commands, problems) for i, s in enumerate(raw)]
    earlier_ids: list[str] = []
    for i, s in enumerate(steps):
        if s is None:
            continue
        _check_references(s, f"{where}: steps[{i}]", earlier_ids, problems)
        if s.id in earlier_ids:
            problems.add(f"{where}: steps[{i}].id", f"{s.id!r} is the id of an earlier step too")
        if s.id:
            earlier_ids.append(s.id)
    return tuple(s for s in steps if s is not None)


def _options(raw: dict[str, object], where: str, problems: _Problems) -> dict[str, object]:
    """notify, cooldown, budget_per_hour, dry_run and target, each checked."""
    options: dict[str, object] = {}
    notify = raw.get("notify") or []
    if not isinstance(notify, list) or any(c not in CHANNELS for c in notify):
        problems.add(f"{where}: notify", f"must be a list of channels among {', '.join(CHANNELS)}")
        notify = []
    options["notify"] = tuple(notify)
    try:
        options["cooldown_s"] = parse_duration(raw["cooldown"]) if raw.get("cooldown") is not None else None
    except ValueError as exc:
        problems.add(f"{where}: cooldown", str(exc))
    budget = raw.get("budget_per_hour")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        problems.add(f"{where}: budget_per_hour", "must be a whole number of at least 1")
        budget = None
    options["budget_per_hour"] = budget
    dry_run = raw.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems.add(f"{where}: dry_run", "must be true or false")
        dry_run = False
    options["dry_run"] = dry_run
    target = raw.get("target", "{labels.alertname}")
    if not isinstance(target, str) or not target:
        problems.add(f"{where}: target", "must be text such as '{labels.instance}'")
        target = "{labels.alertname}"
    options["target"] = target
    return options


def _playbook(raw: object, index: int, commands: Mapping[str, object], problems: _Problems) -> Playbook | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        problems.add(f"playbooks[{index}].name", "every playbook needs a name")
        return None
    where = f"playbook {raw['name']!r}"
    for name in raw:
        if name not in _PLAYBOOK_FIELDS:
            problems.add(f"{where}: {name}", f"unknown field (known: {', '.join(sorted(_PLAYBOOK_FIELDS))})")
    steps = _steps(raw.get("steps"), where, commands, problems)
    check = None
    if raw.get("check") is not None:
        check = _step(raw["check"], f"{where}: check", commands, problems)
        if check is not None:
            _check_references(check, f"{where}: check", [s.id for s in steps if s.id], problems)
    return Playbook(
        name=raw["name"],
        match=_match(raw.get("match"), where, problems),
        steps=steps,
        check=check,
        **_options(raw, where, problems),  # type: ignore[arg-type]
    )


def _commands(raw: object, problems: _Problems) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add("commands", "must map names to argv lists")
        return {}
    commands: dict[str, tuple[str, ...]] = {}
    for name, argv in raw.items():
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            problems.add(f"commands.{name}", "must be a non-empty argv list of text (never a shell string)")
        elif not argv[0].startswith("/") or placeholders(argv[0]):
            problems.add(f"commands.{name}", "argv[0] must be an absolute path without placeholders")
        else:
            commands[str(name)] = tuple(argv)
    return commands


def _routing(raw: object, problems: _Problems) -> dict[str, tuple[str, ...]]:
    routing: dict[str, tuple[str, ...]] = {
        "critical": ("pagerduty",),
        "warning": ("ticket",),
        "info": ("log",),
    }
    if raw is None:
        return routing
    if not isinstance(raw, dict):
        problems.add("routing", "must map severities to lists of channels")
        return routing
    for severity, channels in raw.items():
        if severity not in SEVERITIES:
            problems.add(f"routing.{severity}", f"unknown severity (known: {', '.join(SEVERITIES)})")
        elif not isinstance(channels, list) or any(c not in CHANNELS for c in channels):
            problems.add(f"routing.{severity}", f"must be a list of channels among {', '.join(CHANNELS)}")
        else:
            routing[severity] = tuple(channels)
    return routing


def parse_catalog(document: object, source: str) -> Catalog:
    """Validate a parsed YAML document into a Catalog.

    Raises:
        ConfigError: every problem, each naming the source, the playbook and the field.
    """
    problems = _Problems(source)
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: must be a mapping with a playbooks: list"])
    for name in document:
        if name not in ("playbooks", "routing", "commands", "vars"):
            problems.add(str(name), "unknown top-level field (known: playbooks, routing, commands, vars)")
    commands = _commands(document.get("commands"), problems)
    raw_playbooks = document.get("playbooks")
    if not isinstance(raw_playbooks, list):
        problems.add("playbooks", "must be a list")
        raw_playbooks = []
    playbooks = [_playbook(p, i, commands, problems) for i, p in enumerate(raw_playbooks)]
    names = [p.name for p in playbooks if p is not None]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.add(f"playbook {name!r}", "defined more than once")
    catalog = Catalog(
        source=source,
        playbooks=tuple(p for p in playbooks if p is not None),
        routing=_routing(document.get("routing"), problems),
        commands=commands,
        variables=_text_map(document.get("vars"), "vars", problems),
    )
    if problems.items:
        raise ConfigError(problems.items)
    return catalog


def parse_playbooks(text: str, source: str) -> Catalog:
    """Validate YAML text into a Catalog.

    Raises:
        ConfigError: every problem, each naming the source, the playbook and the field.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None
    return parse_catalog(document, source)


def routing_only(source: str, problems: tuple[str, ...]) -> Catalog:
    """A catalog with no playbooks and the default severity routing, standing in for a file that is invalid."""
    return Catalog(source, (), _routing(None, _Problems(source)), {}, {}, problems)


@functools.lru_cache(maxsize=8)
def _load_cached(path: Path, mtime_ns: int) -> Catalog | tuple[str, ...]:
    """This version of the file as a catalog, or its problems: an invalid version is parsed once, too."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # not cached: a file made readable again keeps its mtime
        raise ConfigError([f"{path}: cannot read the playbooks file: {exc.strerror}"]) from None
    try:
        return parse_playbooks(text, str(path))
    except ConfigError as exc:
        return exc.problems


def load_playbooks(path: Path | None) -> Catalog:
    """The playbooks of path (the bundled default when None), validated; re-read when the file changes.

    Raises:
        ConfigError: the file is missing, unreadable or invalid.
    """
    file = path or DEFAULT_PLAYBOOKS
    try:
        mtime_ns = file.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the playbooks file: {exc.strerror}"]) from None
    loaded = _load_cached(file, mtime_ns)
    if isinstance(loaded, Catalog):
        return loaded
    raise ConfigError(loaded)
