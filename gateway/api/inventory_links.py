"""Routes: ``/v1/inventory-links``, stock locations of several connections kept in one pool
(thin over :class:`gateway.services.inventory_links.InventoryLinkService`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import authenticate, run_write, services
from gateway.api.http import json_response, parse_model, query_int, query_text, read_body
from gateway.model.inventory import InventoryLinkCreate, InventoryLinkUpdate

BASE = "/v1/inventory-links"


async def create_link(request: Request) -> Response:
    """``POST /v1/inventory-links`` ``{name?, match_by, members: [{connection_id, location_id}, ...]}``: 201."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, InventoryLinkCreate, request.headers.get("content-type"))
    return await run_write(request, tenant_id, raw, lambda: services(request).links.create(tenant_id, body))


async def list_links(request: Request) -> Response:
    """``GET /v1/inventory-links?limit=&cursor=``."""
    tenant_id = await authenticate(request)
    items, next_cursor = await services(request).links.list(
        tenant_id, limit=query_int(request, "limit", 50, 1, 200), cursor=query_text(request, "cursor", 500))
    return json_response({"data": items, "next_cursor": next_cursor})


async def get_link(request: Request) -> Response:
    """``GET /v1/inventory-links/{link_id}``."""
    tenant_id = await authenticate(request)
    return json_response(await services(request).links.get(tenant_id, request.path_params["link_id"]))


async def update_link(request: Request) -> Response:
    """``PATCH /v1/inventory-links/{link_id}``: ``name``, ``status`` (``enabled`` / ``disabled``)."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, InventoryLinkUpdate, request.headers.get("content-type"))
    link_id = request.path_params["link_id"]
    return await run_write(request, tenant_id, raw,
                           lambda: services(request).links.update(tenant_id, link_id, body), status_code=200)


async def delete_link(request: Request) -> Response:
    """``DELETE /v1/inventory-links/{link_id}``: later changes are no longer propagated."""
    tenant_id = await authenticate(request)
    return json_response(await services(request).links.delete(tenant_id, request.path_params["link_id"]))


routes = [
    Route(BASE, create_link, methods=["POST"]),
    Route(BASE, list_links, methods=["GET"]),
    Route(f"{BASE}/{{link_id}}", get_link, methods=["GET"]),
    Route(f"{BASE}/{{link_id}}", update_link, methods=["PATCH"]),
    Route(f"{BASE}/{{link_id}}", delete_link, methods=["DELETE"]),
]
