"""HTTP API on the receiver for incidents: GET /incidents, GET /incidents/{id}, POST /incidents/{id}/ack.

Thin: authentication (the receiver's credentials), argument checks, then the operations functions,
on the receiver's own state-database engine.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import anyio.to_thread
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from workers.errors import IncidentNotFound, ServiceUnavailable, UsageError
from workers.incidents.credentials import Credentials
from workers.incidents.lifecycle import ACKNOWLEDGED, ACTIVE, RESOLVED
from workers.incidents.operations import acknowledge_incident, incident_document, incidents_document
from workers.incidents.request_body import BodyTooLarge, read_body
from workers.settings import Settings

MAX_LIMIT = 1000
ACK_BODY_LIMIT_BYTES = 4096
# Requests served at once: they share the receiver's connection pool with POST /alertmanager, whose
# own limit (receiver.ACCEPT_CONCURRENCY) plus this one stays within the pool and its overflow.
API_CONCURRENCY = 4

T = TypeVar("T")


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _json(value: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(value, default=_default, ensure_ascii=False)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(request: Request, status: int, message: str) -> Response:
    """An error body like the webhook's: the message and the request id to find the log lines by."""
    return _json({"error": message, "request_id": request.state.request_id}, status)


def _unavailable(request: Request) -> Response:
    return _error(request, 503, "state database unavailable; retry later")


class IncidentRoutes:
    """Handlers sharing the settings, the receiver's credentials and its state-database engine."""

    def __init__(self, settings: Settings, credentials: Credentials, engine: Engine) -> None:
        self.settings = settings
        self.credentials = credentials
        self.engine = engine
        self.limiter = anyio.CapacityLimiter(API_CONCURRENCY)

    async def _run(self, operation: Callable[..., T], *args: object) -> T:
        """operation(settings, *args, engine=the receiver's engine) in a worker thread, API_CONCURRENCY at a time."""
        work = functools.partial(operation, self.settings, *args, engine=self.engine)
        return await anyio.to_thread.run_sync(work, limiter=self.limiter)

    def _refused(self, request: Request) -> Response | None:
        if self.credentials.allow(request.headers.get("authorization")):
            return None
        response = _error(request, 401, "missing or wrong credentials")
        response.headers["WWW-Authenticate"] = self.credentials.challenge()
        return response

    @staticmethod
    def _incident_id(request: Request) -> int | None:
        raw = str(request.path_params["incident_id"])
        return int(raw) if raw.isdigit() and len(raw) < 19 else None

    async def list(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        status = request.query_params.get("status")
        if status is not None and status not in (ACTIVE, ACKNOWLEDGED, RESOLVED):
            return _error(request, 400, "status must be active, acknowledged or resolved")
        raw_limit = request.query_params.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            return _error(request, 400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
        try:
            found = await self._run(incidents_document, status, int(raw_limit))
        except (ServiceUnavailable, OperationalError):
            return _unavailable(request)
        return _json({"incidents": found})

    async def show(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        incident_id = self._incident_id(request)
        if incident_id is None:
            return _error(request, 404, "no such incident")
        try:
            document = await self._run(incident_document, incident_id)
        except IncidentNotFound as exc:
            return _error(request, 404, str(exc))
        except (ServiceUnavailable, OperationalError):
            return _unavailable(request)
        return _json(document)

    async def ack(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        incident_id = self._incident_id(request)
        if incident_id is None:
            return _error(request, 404, "no such incident")
        try:
            body = await read_body(request, ACK_BODY_LIMIT_BYTES)
        except BodyTooLarge:
            return _error(request, 413, f"body larger than {ACK_BODY_LIMIT_BYTES} bytes")
        except ClientDisconnect:
            return _error(request, 400, "client disconnected before sending the whole body")
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            return _error(request, 400, 'body must be JSON: {"by": "NAME"}')
        by = document.get("by") if isinstance(document, dict) else None
        if not isinstance(by, str) or not by.strip():
            return _error(request, 400, 'body must name who acknowledges: {"by": "NAME"}')
        try:
            incident = await self._run(acknowledge_incident, incident_id, by)
        except IncidentNotFound as exc:
            return _error(request, 404, str(exc))
        except UsageError as exc:
            return _error(request, 409, str(exc))
        except (ServiceUnavailable, OperationalError):
            return _unavailable(request)
        return _json(incident.to_json())


def incident_routes(settings: Settings, credentials: Credentials, engine: Engine) -> list[Route]:
    """The routes the receiver app mounts, authenticated like POST /alertmanager, on its engine."""
    handlers = IncidentRoutes(settings, credentials, engine)
    return [
        Route("/incidents", handlers.list, methods=["GET"]),
        Route("/incidents/{incident_id}", handlers.show, methods=["GET"]),
        Route("/incidents/{incident_id}/ack", handlers.ack, methods=["POST"]),
    ]
