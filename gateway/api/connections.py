"""Routes: ``/v1/connectors`` and ``/v1/connections``."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import authenticate, run_write, services
from gateway.api.http import json_response, parse_model, query_int, query_text, read_body
from gateway.model import ConnectionCreate, ConnectionUpdate


async def list_connectors(request: Request) -> Response:
    """``GET /v1/connectors``: installed connector plugins."""
    await authenticate(request)
    registry = services(request).registry
    return json_response({"data": [registry.describe(name) for name in registry.names()]})


async def create_connection(request: Request) -> Response:
    """``POST /v1/connections``."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, ConnectionCreate, request.headers.get("content-type"))
    return await run_write(request, tenant_id, raw, lambda: services(request).connections.create(tenant_id, body))


async def list_connections(request: Request) -> Response:
    """``GET /v1/connections``."""
    tenant_id = await authenticate(request)
    limit = query_int(request, "limit", 50, 1, 200)
    cursor = query_text(request, "cursor", 500)
    items, next_cursor = await services(request).connections.list(tenant_id, limit=limit, cursor=cursor)
    return json_response({"data": items, "next_cursor": next_cursor})


async def get_connection(request: Request) -> Response:
    """``GET /v1/connections/{connection_id}``."""
    tenant_id = await authenticate(request)
    return json_response(await services(request).connections.get(tenant_id, request.path_params["connection_id"]))


async def update_connection(request: Request) -> Response:
    """``PATCH /v1/connections/{connection_id}``."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, ConnectionUpdate, request.headers.get("content-type"))
    connection_id = request.path_params["connection_id"]
    return await run_write(
        request, tenant_id, raw, lambda: services(request).connections.update(tenant_id, connection_id, body),
        status_code=200,
    )


async def delete_connection(request: Request) -> Response:
    """``DELETE /v1/connections/{connection_id}``: soft delete; records stop being served."""
    tenant_id = await authenticate(request)
    connection_id = request.path_params["connection_id"]
    return json_response(await services(request).connections.delete(tenant_id, connection_id))


async def connection_health(request: Request) -> Response:
    """``GET /v1/connections/{connection_id}/health``: a live check of the vendor."""
    tenant_id = await authenticate(request)
    connector = await services(request).connections.connector_for(tenant_id, request.path_params["connection_id"])
    started = time.perf_counter()
    result = await connector.health()
    result.setdefault("latency_ms", round((time.perf_counter() - started) * 1000, 3))
    return json_response({"connection_id": connector.context.id, "connector": connector.name(), **result})


routes = [
    Route("/v1/connectors", list_connectors, methods=["GET"]),
    Route("/v1/connections", create_connection, methods=["POST"]),
    Route("/v1/connections", list_connections, methods=["GET"]),
    Route("/v1/connections/{connection_id}", get_connection, methods=["GET"]),
    Route("/v1/connections/{connection_id}", update_connection, methods=["PATCH"]),
    Route("/v1/connections/{connection_id}", delete_connection, methods=["DELETE"]),
    Route("/v1/connections/{connection_id}/health", connection_health, methods=["GET"]),
]
