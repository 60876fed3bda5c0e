"""Secrets out of text that is recorded or logged: URL userinfo, credential query parameters and options. Pure.

Settings keep secrets in Secret, but values built from them (a URL with user:password@, a webhook
URL with ?token=, an allow-listed argv with --password=...) travel as plain strings into audit
rows, log lines and exception messages. Everything written there passes through here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MASK = "***"
# Names whose value is a credential: parameters, query parameters, command-line options.
SECRET_NAME = re.compile(r"token|passw(?:or)?d|secret|key|authorization|credential|signature", re.IGNORECASE)
_NAME_CHARS = r"[A-Za-z0-9_.\-]"
# scheme://userinfo@host: everything before the last @ of the authority (a password may hold an @).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s\"'<>]*@")
# ?name=value and &name=value for a secret-looking name (token, access_token, api_key, X-Amz-Signature, ...).
_QUERY = re.compile(
    rf"([?&;]{_NAME_CHARS}*?(?:token|passw(?:or)?d|secret|key|auth|credential|signature|sig)"
    rf"{_NAME_CHARS}*=)[^&;#\s\"'<>]*",
    re.IGNORECASE,
)
# --password=value, password=value (conninfo), api_key=value in free text.
_ASSIGNMENT = re.compile(
    rf"(?<![?&;A-Za-z0-9_.\-])(-{{0,2}}{_NAME_CHARS}*?(?:token|passw(?:or)?d|secret|api[_-]?key|credential)"
    rf"{_NAME_CHARS}*=)(\"[^\"]*\"|'[^']*'|[^\s&,;\"'<>]+)",
    re.IGNORECASE,
)
# Authorization: Bearer abc... / Basic dXNlcjpwYXNz
_SCHEME_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
# An option whose next argument is the secret: --token abc, --password abc.
_SECRET_OPTION = re.compile(
    rf"-{{1,2}}{_NAME_CHARS}*(?:token|passw(?:or)?d|secret|key|credential){_NAME_CHARS}*", re.IGNORECASE
)
# curl's -u/--user USER:PASSWORD (only an argument with a colon: `python -u script.py` keeps its script).
_USER_OPTIONS = frozenset({"-u", "--user"})


def redact_text(text: str) -> str:
    """text with URL userinfo, secret query parameters, secret assignments and bearer/basic credentials masked."""
    if not any(mark in text for mark in ("@", "=", " ")):
        return text
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _QUERY.sub(rf"\1{MASK}", text)
    text = _ASSIGNMENT.sub(rf"\1{MASK}", text)
    return _SCHEME_CREDENTIAL.sub(rf"\1 {MASK}", text)


def redact_argv(argv: list[object] | tuple[object, ...]) -> list[object]:
    """A list (an argv, most often) with each item redacted, and the argument after a secret option masked."""
    out: list[object] = []
    previous: object = None
    for item in argv:
        if (
            isinstance(item, str)
            and isinstance(previous, str)
            and (_SECRET_OPTION.fullmatch(previous) or (previous in _USER_OPTIONS and ":" in item))
        ):
            out.append(MASK)
        else:
            out.append(redact_value(item))
        previous = item
    return out


def redact_value(value: object) -> object:
    """A JSON-like value with every string in it redacted (mapping keys are kept; lists as argv)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return redact_argv(value)
    return value


def masked(params: Mapping[str, object]) -> dict[str, object]:
    """params with the values of secret-looking names replaced, recursively, and every other string redacted."""
    out: dict[str, object] = {}
    for name, value in params.items():
        if SECRET_NAME.search(name):
            out[name] = MASK
        elif isinstance(value, Mapping):
            out[name] = masked(value)
        else:
            out[name] = redact_value(value)
    return out
