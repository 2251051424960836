"""The ASGI application.

``create_app()`` wires routes, error handlers and middleware over one :class:`Services`
container. Every error leaves as ``application/problem+json``; an unexpected exception is
logged and answered 500 ``internal_error`` without details.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from gateway import jsonutil
from gateway.aio import cancel_and_wait
from gateway.api import connections, events, hooks, inventory_links, records, system, webhook_endpoints
from gateway.api.deps import Services
from gateway.api.middleware import RequestContextMiddleware
from gateway.errors import PROBLEM_CONTENT_TYPE, MethodNotAllowed, NotFound, TillgateError
from gateway.services.idempotency import purge_expired
from gateway.settings import Settings, get_settings

log = logging.getLogger("tillgate.api")

#: seconds; set for the serving process by the app's lifespan (CPython's default is 0.005)
GIL_SWITCH_INTERVAL = 0.0005


def problem_response(error: TillgateError, request: Request) -> Response:
    """Render ``error`` as a problem+json response."""
    request_id = request.scope.get("state", {}).get("request_id")
    return Response(
        jsonutil.dumps(error.problem(request_id)),
        status_code=error.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=error.headers,
    )


async def _tillgate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TillgateError)
    return problem_response(exc, request)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error: TillgateError = NotFound(f"no route {request.method} {request.url.path}", code="route_not_found")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}",
                                 headers=dict(exc.headers or {}))
    else:
        error = TillgateError(str(exc.detail), code="http_error")
        error.status = exc.status_code
    return problem_response(error, request)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(TillgateError("an unexpected error occurred; it has been logged"), request)


HOUSEKEEPING_SECONDS = 3600.0


async def _housekeeping(svc: Services, every: float = HOUSEKEEPING_SECONDS) -> None:
    """Periodic upkeep of a serving process: drop expired ``Idempotency-Key`` rows."""
    while True:
        try:
            removed = await purge_expired(svc.db)
            if removed:
                log.info("purged %d expired idempotency keys", removed)
        except Exception:
            log.exception("housekeeping failed; retrying in %.0f s", every)
        await asyncio.sleep(every)


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Starlette:
    """Build the gateway's ASGI app.

    Args:
        settings: defaults to the ``TILLGATE_*`` environment.
        services: a prepared container (tests, embedding); built from ``settings`` otherwise.
    """
    settings = settings or get_settings()
    svc = services or Services.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Everything alive now (modules, models, the engine) lives as long as the process: keep it
        # out of the cyclic GC's full collections, which would otherwise rescan it every few
        # hundred requests.
        gc.collect()
        gc.freeze()
        # Database calls run on driver threads (aiosqlite: one hop per cursor operation). With
        # CPython's default 5 ms GIL switch interval, each hop back to a busy event loop can wait
        # that long, so a transaction of a dozen hops took ~60 ms under load (bench/webhook_ingest.py:
        # ack p99 411 ms at 500/s); at 0.5 ms the same run measured p99 30 ms.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        housekeeping = asyncio.create_task(_housekeeping(svc))
        await svc.start_dispatcher()
        try:
            yield
        finally:
            await cancel_and_wait(housekeeping)
            await svc.stop_dispatcher()
            await svc.db.dispose()

    app = Starlette(
        # Connection routes with a fixed last segment (``/health``) come before the generic
        # ``/{connection_id}/{entity}`` read route, which would otherwise answer them 404 unknown_entity.
        routes=[*records.hot_routes, *connections.routes, *system.routes, *records.routes, *events.routes,
                *hooks.routes, *webhook_endpoints.routes, *inventory_links.routes],
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers={TillgateError: _tillgate_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.services = svc
    return app
