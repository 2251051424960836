"""Routes: ``/v1/webhook-endpoints``, outbound webhooks (thin over
:class:`gateway.services.webhook_endpoints.WebhookEndpointService`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import authenticate, run_write, services
from gateway.api.http import json_response, parse_model, query_int, query_text, read_body
from gateway.errors import BadRequest
from gateway.model.webhooks import ReplayRequest, WebhookEndpointCreate, WebhookEndpointUpdate

BASE = "/v1/webhook-endpoints"
DELIVERY_STATUSES = ("pending", "delivered", "failed", "cancelled")


async def create_endpoint(request: Request) -> Response:
    """``POST /v1/webhook-endpoints``: 201 with the ``whsec_`` secret, shown this once."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, WebhookEndpointCreate, request.headers.get("content-type"))
    return await run_write(request, tenant_id, raw, lambda: services(request).webhooks.create(tenant_id, body))


async def list_endpoints(request: Request) -> Response:
    """``GET /v1/webhook-endpoints?limit=&cursor=``."""
    tenant_id = await authenticate(request)
    items, next_cursor = await services(request).webhooks.list(
        tenant_id, limit=query_int(request, "limit", 50, 1, 200), cursor=query_text(request, "cursor", 500))
    return json_response({"data": items, "next_cursor": next_cursor})


async def get_endpoint(request: Request) -> Response:
    """``GET /v1/webhook-endpoints/{endpoint_id}``."""
    tenant_id = await authenticate(request)
    return json_response(await services(request).webhooks.get(tenant_id, request.path_params["endpoint_id"]))


async def update_endpoint(request: Request) -> Response:
    """``PATCH /v1/webhook-endpoints/{endpoint_id}``: url, events, connection_ids, description,
    ``status`` (``enabled`` / ``disabled``)."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, WebhookEndpointUpdate, request.headers.get("content-type"))
    endpoint_id = request.path_params["endpoint_id"]
    return await run_write(request, tenant_id, raw,
                           lambda: services(request).webhooks.update(tenant_id, endpoint_id, body), status_code=200)


async def delete_endpoint(request: Request) -> Response:
    """``DELETE /v1/webhook-endpoints/{endpoint_id}``: pending deliveries are cancelled."""
    tenant_id = await authenticate(request)
    return json_response(await services(request).webhooks.delete(tenant_id, request.path_params["endpoint_id"]))


async def list_deliveries(request: Request) -> Response:
    """``GET /v1/webhook-endpoints/{endpoint_id}/deliveries?status=&limit=&cursor=``: the
    delivery log, newest first."""
    tenant_id = await authenticate(request)
    status = query_text(request, "status", 20)
    if status is not None and status not in DELIVERY_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(DELIVERY_STATUSES)}", code="invalid_parameter",
                         errors=[{"loc": ["query", "status"], "msg": "unknown status", "type": "enum"}])
    items, next_cursor = await services(request).webhooks.deliveries(
        tenant_id, request.path_params["endpoint_id"], status=status,
        limit=query_int(request, "limit", 50, 1, 200), cursor=query_text(request, "cursor", 500))
    return json_response({"data": items, "next_cursor": next_cursor})


async def get_delivery(request: Request) -> Response:
    """``GET /v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}``: with its attempt log."""
    tenant_id = await authenticate(request)
    return json_response(await services(request).webhooks.delivery(
        tenant_id, request.path_params["endpoint_id"], request.path_params["delivery_id"]))


async def retry_delivery(request: Request) -> Response:
    """``POST /v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry``: 202, sent again now."""
    tenant_id = await authenticate(request)
    endpoint_id, delivery_id = request.path_params["endpoint_id"], request.path_params["delivery_id"]
    raw = await read_body(request)
    return await run_write(request, tenant_id, raw,
                           lambda: services(request).webhooks.retry(tenant_id, endpoint_id, delivery_id),
                           status_code=202)


async def replay(request: Request) -> Response:
    """``POST /v1/webhook-endpoints/{endpoint_id}/replay`` ``{"from_seq", "to_seq"?}``: 202."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, ReplayRequest, request.headers.get("content-type"))
    endpoint_id = request.path_params["endpoint_id"]
    return await run_write(request, tenant_id, raw,
                           lambda: services(request).webhooks.replay(tenant_id, endpoint_id, body), status_code=202)


routes = [
    Route(BASE, create_endpoint, methods=["POST"]),
    Route(BASE, list_endpoints, methods=["GET"]),
    Route(f"{BASE}/{{endpoint_id}}", get_endpoint, methods=["GET"]),
    Route(f"{BASE}/{{endpoint_id}}", update_endpoint, methods=["PATCH"]),
    Route(f"{BASE}/{{endpoint_id}}", delete_endpoint, methods=["DELETE"]),
    Route(f"{BASE}/{{endpoint_id}}/deliveries", list_deliveries, methods=["GET"]),
    Route(f"{BASE}/{{endpoint_id}}/deliveries/{{delivery_id}}", get_delivery, methods=["GET"]),
    Route(f"{BASE}/{{endpoint_id}}/deliveries/{{delivery_id}}/retry", retry_delivery, methods=["POST"]),
    Route(f"{BASE}/{{endpoint_id}}/replay", replay, methods=["POST"]),
]
