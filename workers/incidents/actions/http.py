"""HTTP actions: check an endpoint's health, call a platform endpoint (circuit breaker, scale, deploys)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx

from workers.http_client import http_client
from workers.incidents.actions.base import (
    ActionContext,
    ActionResult,
    ActionSpec,
    Kind,
    Param,
    ParamValue,
    integer,
    text,
    text_map,
)

BODY_LIMIT_CHARS = 2000

CHECK_PARAMS: Mapping[str, Param] = {
    "url": Param(Kind.TEXT, required=True, templated=True, url_quoted=True),
    "expect_status": Param(Kind.INT, default=200),
    "contains": Param(Kind.TEXT, default=""),
}

REQUEST_PARAMS: Mapping[str, Param] = {
    "url": Param(Kind.TEXT, required=True, templated=True, url_quoted=True),
    "method": Param(Kind.TEXT, default="POST", choices=("GET", "POST", "PUT", "PATCH", "DELETE")),
    "json": Param(Kind.TEXT_MAP, default={}),
    "expect_status": Param(Kind.INT, default=0),  # 0: any 2xx
}


def _checked_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be http(s): {url!r}")
    return url


def check_http(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """GET url; ok when the status is expect_status and the body contains `contains` (when given)."""
    url = _checked_url(text(params, "url"))
    if ctx.dry_run:
        return ActionResult(True, f"would GET {url}", {"url": url})
    started = time.monotonic()
    try:
        response = http_client().get(url, timeout=ctx.timeout_s)
    except httpx.HTTPError as exc:
        return ActionResult(False, f"GET {url} failed: {type(exc).__name__}", {"url": url, "error": str(exc)})
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    expected, needle = integer(params, "expect_status"), text(params, "contains")
    ok = response.status_code == expected and (not needle or needle in response.text)
    detail = {
        "url": url,
        "status": response.status_code,
        "latency_ms": elapsed_ms,
        "body": response.text[:BODY_LIMIT_CHARS],
    }
    return ActionResult(ok, f"GET {url} -> {response.status_code} in {elapsed_ms} ms", detail)


def request_http(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Send method url with the json body; ok on expect_status (or any 2xx when it is 0)."""
    url = _checked_url(text(params, "url"))
    method = text(params, "method")
    body = dict(text_map(params, "json"))
    if ctx.dry_run:
        return ActionResult(True, f"would {method} {url}", {"url": url, "method": method, "json": body})
    try:
        response = http_client().request(method, url, json=body or None, timeout=ctx.timeout_s)
    except httpx.HTTPError as exc:
        return ActionResult(False, f"{method} {url} failed: {type(exc).__name__}", {"url": url, "error": str(exc)})
    expected = integer(params, "expect_status")
    ok = response.status_code == expected if expected else response.is_success
    detail = {
        "url": url,
        "method": method,
        "status": response.status_code,
        "body": response.text[:BODY_LIMIT_CHARS],
    }
    return ActionResult(ok, f"{method} {url} -> {response.status_code}", detail)


CHECK = ActionSpec(check_http, CHECK_PARAMS, "check an HTTP endpoint")
REQUEST = ActionSpec(request_http, REQUEST_PARAMS, "call an HTTP endpoint of the platform")
