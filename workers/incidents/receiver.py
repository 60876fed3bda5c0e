"""The alert receiver's HTTP surface: POST /alertmanager, GET /healthz, /readyz, /metrics, the incidents API.

Routes are thin: each request is checked (auth, type, size) and handed to intake.accept(), which
commits before the route answers 200. A 5xx makes Alertmanager retry; any 4xx makes it give up.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import anyio.to_thread
from celery import Celery
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers import metrics
from workers.checks import probe_broker
from workers.errors import DatabaseUnavailable, InvalidAlert
from workers.incidents.api import incident_routes
from workers.incidents.credentials import Credentials, require_auth
from workers.incidents.intake import Accepted, accept, loggable
from workers.incidents.request_body import BodyTooLarge, read_body
from workers.logs import log_context
from workers.settings import Settings
from workers.state.db import create_state_engine

log = logging.getLogger(__name__)

ENDPOINTS = frozenset({"/alertmanager", "/healthz", "/readyz", "/metrics"})
# A caller's X-Request-ID is kept only if it is a plain token; anything else is replaced, not echoed.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_JSON_TYPES = ("application/json",)
RETRY_AFTER_S = "5"
# Notifications recorded at once per process; the state-database pool holds as many connections, so a
# burst waits for a thread instead of opening (and closing) a connection per request beyond the pool.
ACCEPT_CONCURRENCY = 16

# Called after each POST /alertmanager with the status code and, on 2xx, what was accepted. Tests use
# it to wait for Alertmanager's deliveries without polling; production passes nothing.
Observer = Callable[[int, Accepted | None], None]


def _incident_endpoint(path: str) -> str:
    # Ids never become label values: /incidents/42/ack is counted as /incidents/{id}/ack.
    parts = path.strip("/").split("/")
    if parts[0] != "incidents" or len(parts) > 3 or (len(parts) == 3 and parts[2] != "ack"):
        return "other"
    return "/" + "/".join(["incidents", "{id}", "ack"][: len(parts)])


class RequestContext:
    """ASGI middleware: a request id (kept from X-Request-ID or made), bound to the log context and
    returned in the response, and the http_requests_total / http_request_duration_seconds metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else _incident_endpoint(path)
        method = scope["method"] if scope["method"] in ("GET", "POST", "HEAD") else "other"
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            with log_context(request_id=request_id):
                await self.app(scope, receive, send_with_id)
        finally:
            metrics.HTTP_REQUESTS.labels(method=method, endpoint=endpoint, status=str(status)).inc()
            metrics.HTTP_REQUEST_DURATION.labels(method=method, endpoint=endpoint).observe(
                time.perf_counter() - started
            )


def _error(status: int, message: str, request_id: str, **extra: str) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": request_id, **extra}, status_code=status)


class Routes:
    """The route handlers, holding what they share: credentials, limits, the engine and the Celery app."""

    def __init__(self, settings: Settings, engine: Engine, celery_app: Celery, observer: Observer | None) -> None:
        self.settings = settings
        self.credentials = Credentials.from_settings(settings.receiver)
        self.limit_bytes = settings.receiver.max_body_bytes
        self.engine = engine
        self.celery_app = celery_app
        self.observer = observer
        self.limiter = anyio.CapacityLimiter(ACCEPT_CONCURRENCY)

    def _observed(self, response: JSONResponse, accepted: Accepted | None = None) -> JSONResponse:
        if self.observer is not None:
            self.observer(response.status_code, accepted)
        return response

    async def _refusal(self, request: Request, request_id: str) -> JSONResponse | bytes:
        """The 401/415/413/400 answer for a request that cannot be accepted, else its body."""
        if not self.credentials.allow(request.headers.get("authorization")):
            response = _error(401, "missing or wrong credentials", request_id)
            response.headers["WWW-Authenticate"] = self.credentials.challenge()
            return response
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in _JSON_TYPES:
            return _error(415, "Content-Type must be application/json", request_id)
        try:
            return await read_body(request, self.limit_bytes)
        except BodyTooLarge:
            return _error(413, f"body larger than {self.limit_bytes} bytes (OPS_RECEIVER_MAX_BODY)", request_id)
        except ClientDisconnect:
            return _error(400, "client disconnected before sending the whole body", request_id)

    async def alertmanager(self, request: Request) -> JSONResponse:
        request_id: str = request.state.request_id
        body = await self._refusal(request, request_id)
        if isinstance(body, JSONResponse):
            return self._observed(body)
        try:
            work = functools.partial(
                accept, body, engine=self.engine, app=self.celery_app, now=datetime.now(UTC),
                request_id=request_id, fetch_truncated=self.settings.receiver.alertmanager_url is not None,
            )  # fmt: skip
            accepted = await anyio.to_thread.run_sync(work, limiter=self.limiter)
        except InvalidAlert as exc:
            log.info("notification refused", extra={"field": loggable(exc.field), "problem": exc.problem})
            return self._observed(_error(400, str(exc), request_id, field=exc.field))
        except DatabaseUnavailable:
            log.exception("state database unavailable; answering 503 so Alertmanager retries")
            response = _error(503, "state database unavailable; retry later", request_id)
            response.headers["Retry-After"] = RETRY_AFTER_S
            return self._observed(response)
        return self._observed(JSONResponse({"request_id": request_id, **accepted.to_json()}), accepted)

    async def healthz(self, _: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def _state_database_problem(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            return f"unreachable: {type(exc).__name__}"
        return None

    async def readyz(self, _: Request) -> JSONResponse:
        state_problem = await run_in_threadpool(self._state_database_problem)
        broker = await run_in_threadpool(probe_broker, self.settings.broker_url.value)
        checks = {"state_database": state_problem or "ok", "broker": "ok" if broker.ok else "unreachable"}
        ready = state_problem is None and broker.ok
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                            status_code=200 if ready else 503)  # fmt: skip

    async def metrics(self, _: Request) -> Response:
        registry = metrics.registry_for(self.settings.metrics_dir) or REGISTRY
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_receiver_app(
    settings: Settings, *, engine: Engine, celery_app: Celery, observer: Observer | None = None
) -> Starlette:
    """The receiver as an ASGI app, wired to a state-database engine and the Celery app that sends tasks.

    Raises:
        UsageError: no credentials are configured and serving without them is not allowed (see require_auth).
    """
    require_auth(settings.receiver)
    routes = Routes(settings, engine, celery_app, observer)
    app = Starlette(
        routes=[
            Route("/alertmanager", routes.alertmanager, methods=["POST"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/readyz", routes.readyz, methods=["GET"]),
            Route("/metrics", routes.metrics, methods=["GET"]),
            *incident_routes(settings, routes.credentials, engine),
        ],
    )
    app.add_middleware(RequestContext)
    return app


def receiver_engine(settings: Settings) -> Engine:
    """The receiver's state-database engine: a connection per accepting thread, no pre-ping round trip.

    intake records a notification again when a pooled connection turns out dead (a server restart).
    """
    return create_state_engine(settings.state_database_url.value, pre_ping=False, pool_size=ACCEPT_CONCURRENCY)


def create_app_from_settings() -> Starlette:
    """uvicorn's factory (`ops-workers receiver`): this process's settings, logging, engine and Celery app."""
    # Imported here: workers.app is the composition root and reads settings when imported.
    from workers.app import app as celery_app
    from workers.logs import configure_logging
    from workers.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_receiver_app(settings, engine=receiver_engine(settings), celery_app=celery_app)
