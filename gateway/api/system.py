"""Routes: liveness, readiness, Prometheus metrics, the OpenAPI document and its rendered docs."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from gateway.api.deps import services
from gateway.api.http import json_response
from gateway.api.openapi import openapi_document


async def healthz(request: Request) -> Response:
    """``GET /healthz``: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when the database (and Redis, when configured) answer; else 503."""
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(3):
            async with svc.db.read() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as not ready
        checks["database"] = f"error: {exc.__class__.__name__}"
    if svc.settings.redis_url:
        try:
            from redis.asyncio import Redis

            client = Redis.from_url(svc.settings.redis_url, socket_connect_timeout=2)
            try:
                await client.ping()
            finally:
                await client.aclose()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports any failure as not ready
            checks["redis"] = f"error: {exc.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return json_response({"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``."""
    return json_response(openapi_document())


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tillgate API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>"""


async def docs(request: Request) -> Response:
    """``GET /docs``: Swagger UI, its assets served from this process (no CDN)."""
    return HTMLResponse(DOCS_PAGE)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Mount("/docs/assets", app=StaticFiles(directory=str(swagger_ui_path)), name="docs-assets"),
]
