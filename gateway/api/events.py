"""Route: ``GET /v1/events``, the tenant's gap-free change log."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import authenticate, services
from gateway.api.http import JSONBytes, query_int, query_text
from gateway.errors import BadRequest
from gateway.services.events import list_events


async def get_events(request: Request) -> Response:
    """``GET /v1/events?after=&type=&connection_id=&limit=``: events with seq > after, in seq order."""
    tenant_id = await authenticate(request)
    after_text = request.query_params.get("after", "0") or "0"
    if not after_text.isdigit() or len(after_text) > 18:
        raise BadRequest("after must be a non-negative integer sequence number", code="invalid_parameter",
                         errors=[{"loc": ["query", "after"], "msg": "not a sequence number", "type": "int"}])
    limit = query_int(request, "limit", 100, 1, 1000)
    types = [part for part in (query_text(request, "type", 500) or "").split(",") if part]
    async with services(request).db.read() as conn:
        items, next_after = await list_events(
            conn, tenant_id=tenant_id, after=int(after_text), limit=limit, types=types or None,
            connection_id=query_text(request, "connection_id", 60),
        )
    return JSONBytes(b'{"data":[' + b",".join(items) + b'],"next_after":' + str(next_after).encode() + b"}")


routes = [Route("/v1/events", get_events, methods=["GET"])]
