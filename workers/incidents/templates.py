"""Label substitution in playbook parameters: "{labels.instance}" and "{vars.api_url}", nothing else. Pure."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from workers.errors import UnsafeParameter

PLACEHOLDER = re.compile(r"\{(labels|vars)\.([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> list[tuple[str, str]]:
    """The (scope, name) pairs a template refers to."""
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(template)]


def render(
    field: str,
    template: str,
    labels: Mapping[str, str],
    variables: Mapping[str, str],
    escape: Callable[[str, str], str] = lambda _field, value: value,
) -> str:
    """template with each placeholder replaced; label values pass through escape (variables are trusted).

    Substitution is one pass over the template: a label value that itself looks like a placeholder
    stays literal text.

    Raises:
        UnsafeParameter: a referenced label or variable is not set, or escape refused a label value.
    """

    def substitute(match: re.Match[str]) -> str:
        scope, name = match.group(1), match.group(2)
        source = labels if scope == "labels" else variables
        if name not in source:
            raise UnsafeParameter(field, f"{scope}.{name} is not set")
        value = source[name]
        return escape(field, value) if scope == "labels" else value

    return PLACEHOLDER.sub(substitute, template)
