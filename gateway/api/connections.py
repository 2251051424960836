"""Routes: ``/v1/connectors`` and ``/v1/connections``."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import authenticate, run_write, services
from gateway.api.http import json_response, parse_model, query_int, query_text, read_body
from gateway.errors import OperationNotSupported, ValidationFailed, VendorUnavailable
from gateway.model import ConnectionCreate, ConnectionUpdate, SyncRequest
from gateway.sdk.connector import Connector
from gateway.services.sync import SyncEngine, sync_history, sync_states
from gateway.workers.tasks import RECONCILE_JOB, reconcile_dedupe_key, sync_dedupe_key


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


def _reads_from_vendor(connector) -> bool:  # type: ignore[no-untyped-def]
    return type(connector).fetch is not Connector.fetch


async def start_sync(request: Request) -> Response:
    """``POST /v1/connections/{connection_id}/sync``: queue one sync job for the entities, run in
    dependency order (202). While a sync of the connection is queued or running, that job is
    returned with ``already_queued`` true."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, SyncRequest, request.headers.get("content-type"), optional=True)
    svc = services(request)
    connector = await svc.connections.connector_for(tenant_id, request.path_params["connection_id"])
    if not _reads_from_vendor(connector):
        raise OperationNotSupported(
            f"the {connector.name()} connector keeps the cache itself; there is nothing to sync")
    readable = SyncEngine(svc.db, connector).entities()
    wanted = body.entities or readable
    unknown = [entity for entity in wanted if entity not in readable]
    if unknown:
        raise ValidationFailed(f"the {connector.name()} connector cannot read {', '.join(unknown)}",
                               errors=[{"loc": ["body", "entities"], "msg": f"not readable: {unknown}",
                                        "type": "unsupported_entity"}])
    if svc.dispatcher is None:
        raise VendorUnavailable("this process runs no job dispatcher", vendor=connector.name(), retryable=True)
    entities = [e for e in readable if e in wanted]
    job_id, created = await svc.dispatcher.submit(
        "sync", {"connection_id": connector.context.id, "entities": entities, "mode": body.mode},
        tenant_id=tenant_id, dedupe_key=sync_dedupe_key(connector.context.id))
    job = {"job_id": job_id, "entities": entities, "already_queued": not created}
    return json_response({"connection_id": connector.context.id, "mode": body.mode, "jobs": [job]}, 202)


async def start_reconcile(request: Request) -> Response:
    """``POST /v1/connections/{connection_id}/inventory/reconcile``: queue a full count of the
    connection's inventory at the vendor, compared with the cache (202). Each cached level whose
    ``on_hand`` the count changes is corrected and reported as ``inventory.drift``. Answers
    ``{"connection_id", "mode": "reconcile", "jobs": [{"job_id", "entities": ["inventory"],
    "already_queued"}]}`` (the shape of ``POST .../sync``); while a count of the connection is
    queued or running, that job is returned with ``already_queued`` true. No body is needed.

    Raises:
        NotFound: no such connection for this tenant (404).
        OperationNotSupported: the connector keeps the cache itself (``local``) or cannot read
            inventory from its vendor (422 ``operation_not_supported``).
        VendorUnavailable: this process runs no job dispatcher (503).
    """
    tenant_id = await authenticate(request)
    await read_body(request)
    svc = services(request)
    connector = await svc.connections.connector_for(tenant_id, request.path_params["connection_id"])
    if not _reads_from_vendor(connector) or "inventory" not in SyncEngine(svc.db, connector).entities():
        raise OperationNotSupported(
            f"the {connector.name()} connector does not read inventory from a vendor; there is nothing to reconcile")
    if svc.dispatcher is None:
        raise VendorUnavailable("this process runs no job dispatcher", vendor=connector.name(), retryable=True)
    job_id, created = await svc.dispatcher.submit(
        RECONCILE_JOB, {"connection_id": connector.context.id}, tenant_id=tenant_id,
        dedupe_key=reconcile_dedupe_key(connector.context.id))
    job = {"job_id": job_id, "entities": ["inventory"], "already_queued": not created}
    return json_response({"connection_id": connector.context.id, "mode": "reconcile", "jobs": [job]}, 202)


async def sync_status(request: Request) -> Response:
    """``GET /v1/connections/{connection_id}/sync[?runs=20]``: per-entity sync state and the last
    ``runs`` (0-100) sync runs, newest first (the history).

    Raises:
        BadRequest: ``runs`` is not an integer from 0 to 100.
        NotFound: no such connection for this tenant.
    """
    tenant_id = await authenticate(request)
    runs = query_int(request, "runs", 20, 0, 100)
    svc = services(request)
    connector = await svc.connections.connector_for(tenant_id, request.path_params["connection_id"])
    states = await sync_states(svc.db, connector.context.id)
    entities = {}
    for entity in SyncEngine(svc.db, connector).entities():
        entities[entity] = states.get(entity) or {
            "status": "idle", "mode": None, "last_success_at": None, "last_full_sync_at": None,
            "last_error": None, "records": None, "lag_s": None,
        }
    return json_response({"connection_id": connector.context.id, "syncs_from_vendor": _reads_from_vendor(connector),
                          "entities": entities, "runs": await sync_history(svc.db, connector.context.id, runs)})


routes = [
    Route("/v1/connectors", list_connectors, methods=["GET"]),
    Route("/v1/connections", create_connection, methods=["POST"]),
    Route("/v1/connections", list_connections, methods=["GET"]),
    Route("/v1/connections/{connection_id}", get_connection, methods=["GET"]),
    Route("/v1/connections/{connection_id}", update_connection, methods=["PATCH"]),
    Route("/v1/connections/{connection_id}", delete_connection, methods=["DELETE"]),
    Route("/v1/connections/{connection_id}/health", connection_health, methods=["GET"]),
    Route("/v1/connections/{connection_id}/sync", start_sync, methods=["POST"]),
    Route("/v1/connections/{connection_id}/sync", sync_status, methods=["GET"]),
    Route("/v1/connections/{connection_id}/inventory/reconcile", start_reconcile, methods=["POST"]),
]
