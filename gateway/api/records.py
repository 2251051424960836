"""Routes: the six entities of a connection, read from the cache and written through the connector.

Reads (``GET .../{entity}`` and ``GET .../{entity}/{record_id}``) never call the vendor. Writes
call the connector, which carries the change out at the POS and caches the result. An order's
receipt (``GET .../orders/{order_id}/receipt``) is the one read the vendor serves: a PDF download.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import jsonutil
from gateway.api.deps import authenticate, run_write, services
from gateway.api.http import JSONBytes, parse_model, query_bool, query_int, query_text, query_time, read_body
from gateway.errors import BadRequest, NotFound
from gateway.model import (
    AdjustmentCreate,
    CategoryCreate,
    CountSet,
    CustomerCreate,
    CustomerUpdate,
    LocationCreate,
    OrderCreate,
    ProductCreate,
    ProductUpdate,
    RefundCreate,
    VoidCreate,
)
from gateway.services import adjustments, records
from gateway.services.adjustments import get_adjustment


def _memo_key(request: Request, tenant_id: str) -> tuple[str, str, bytes]:
    """Key of a cached read response: the tenant and the exact path and query."""
    return (tenant_id, request.scope["path"], request.scope["query_string"])


def _entity(request: Request) -> str:
    entity = request.path_params["entity"]
    if entity not in records.ENTITIES:
        raise NotFound(f"unknown entity {entity!r}; one of {', '.join(records.ENTITIES)}", code="unknown_entity")
    return entity


def _expand_raw(request: Request) -> bool:
    expand = request.query_params.get("expand")
    if expand in (None, ""):
        return False
    if expand != "raw":
        raise BadRequest("expand accepts only 'raw'", code="invalid_parameter",
                         errors=[{"loc": ["query", "expand"], "msg": "must be 'raw'", "type": "enum"}])
    return True


async def list_records(request: Request) -> Response:
    """``GET /v1/connections/{id}/{entity}``: keyset pages ordered by (updated_at, id)."""
    tenant_id = await authenticate(request)
    reader = services(request).db.reader
    memo_key = _memo_key(request, tenant_id)
    if (memo := reader.memo_get(memo_key)) is not None:
        return JSONBytes(memo)
    connection_id = request.path_params["connection_id"]
    entity = _entity(request)
    limit = query_int(request, "limit", 50, 1, 200)
    cursor = query_text(request, "cursor", 500)
    filters: dict[str, str] = {}
    for name in records.FILTERS[entity]:
        value = query_text(request, name)
        if value is not None:
            if name == "active" and value not in ("true", "false"):
                raise BadRequest("active must be true or false", code="invalid_parameter",
                                 errors=[{"loc": ["query", "active"], "msg": "must be true or false", "type": "bool"}])
            filters[name] = value
    items, next_cursor = await records.list_json(
            reader,
            tenant_id=tenant_id,
            connection_id=connection_id,
            entity=entity,
            limit=limit,
            cursor=cursor,
            updated_after=query_time(request, "updated_after"),
            include_deleted=query_bool(request, "include_deleted"),
            filters=filters,
            expand_raw=_expand_raw(request),
        )
    tail = b'],"next_cursor":' + (b'"' + next_cursor.encode() + b'"' if next_cursor else b"null") + b"}"
    body = b'{"data":[' + b",".join(items) + tail
    if not items:
        await services(request).connections.require(tenant_id, connection_id)  # 404 for a foreign one
    else:
        reader.memo_put(memo_key, body)
    return JSONBytes(body)


async def get_record(request: Request) -> Response:
    """``GET /v1/connections/{id}/{entity}/{record_id}`` (soft-deleted records included, with ``deleted_at``)."""
    tenant_id = await authenticate(request)
    reader = services(request).db.reader
    memo_key = _memo_key(request, tenant_id)
    if (memo := reader.memo_get(memo_key)) is not None:
        return JSONBytes(memo)
    body = await records.get_json(
        reader,
        tenant_id=tenant_id,
        connection_id=request.path_params["connection_id"],
        entity=_entity(request),
        record_id=request.path_params["record_id"],
        expand_raw=_expand_raw(request),
    )
    reader.memo_put(memo_key, body)
    return JSONBytes(body)


def _write(model: type[BaseModel] | None, method: str, *, status_code: int = 201, optional_body: bool = False,
           require_key: bool = False, path_args: tuple[str, ...] = ()):
    """Build a route handler that parses ``model`` and calls ``connector.<method>(*path_args, body)``."""

    async def handler(request: Request) -> Response:
        tenant_id = await authenticate(request)
        raw = await read_body(request)
        body = (
            parse_model(raw, model, request.headers.get("content-type"), optional=optional_body)
            if model is not None
            else None
        )
        connector = await services(request).connections.connector_for(tenant_id, request.path_params["connection_id"])
        args: list[Any] = [request.path_params[name] for name in path_args]
        if body is not None:
            args.append(body)
        return await run_write(
            request, tenant_id, raw, lambda: getattr(connector, method)(*args),
            status_code=status_code, require_key=require_key,
        )

    handler.__name__ = method
    handler.__doc__ = f"Calls the connector's ``{method}``."
    return handler


async def download_receipt(request: Request) -> Response:
    """``GET /v1/connections/{id}/orders/{order_id}/receipt``: the vendor's PDF receipt of a cached
    order, ``200 application/pdf`` with ``Content-Disposition: attachment; filename="receipt-<order
    id>.pdf"``. 404 for an unknown connection or order, 422 ``operation_not_supported`` for a
    connector without receipts, vendor failures as their problem documents
    (:func:`gateway.services.records.order_receipt`)."""
    tenant_id = await authenticate(request)
    connector = await services(request).connections.connector_for(tenant_id, request.path_params["connection_id"])
    receipt = await records.order_receipt(connector, request.path_params["order_id"])
    return Response(receipt.content, media_type=receipt.media_type, headers={
        "Content-Disposition": f'attachment; filename="{receipt.filename}"',
        # the receipt changes with the sale (a refund prints on it) and names the customer
        "Cache-Control": "private, no-store",
    })


async def create_adjustment(request: Request) -> Response:
    """``POST /v1/connections/{id}/inventory/adjustments`` (``Idempotency-Key`` required): 202
    with the Adjustment. External POS connections store it ``pending`` with its push job, durable
    before the answer, and the dispatcher is rung; the ``local`` engine applies it at once
    (:func:`gateway.services.adjustments.accept`)."""
    tenant_id = await authenticate(request)
    raw = await read_body(request)
    body = parse_model(raw, AdjustmentCreate, request.headers.get("content-type"))
    svc = services(request)
    connector = await svc.connections.connector_for(tenant_id, request.path_params["connection_id"])
    return await run_write(request, tenant_id, raw,
                           lambda: adjustments.accept(connector, body),
                           status_code=202, require_key=True)


async def list_adjustments(request: Request) -> Response:
    """``GET /v1/connections/{id}/inventory/adjustments?status=&link_id=&limit=&cursor=``: newest first."""
    tenant_id = await authenticate(request)
    svc = services(request)
    connection_id = request.path_params["connection_id"]
    await svc.connections.require(tenant_id, connection_id)
    status = query_text(request, "status", 20)
    if status is not None and status not in adjustments.STATUSES:
        raise BadRequest(f"status must be one of {', '.join(adjustments.STATUSES)}", code="invalid_parameter",
                         errors=[{"loc": ["query", "status"], "msg": "unknown status", "type": "enum"}])
    async with svc.db.read() as conn:
        items, next_cursor = await adjustments.list_adjustments(
            conn, tenant_id=tenant_id, connection_id=connection_id, status=status,
            link_id=query_text(request, "link_id", 64), limit=query_int(request, "limit", 50, 1, 200),
            cursor=query_text(request, "cursor", 500))
    return JSONBytes(jsonutil.dumps({"data": items, "next_cursor": next_cursor}))


async def read_adjustment(request: Request) -> Response:
    """``GET /v1/connections/{id}/inventory/adjustments/{adjustment_id}``."""
    tenant_id = await authenticate(request)
    async with services(request).db.read() as conn:
        adjustment = await get_adjustment(
            conn, tenant_id=tenant_id, connection_id=request.path_params["connection_id"],
            adjustment_id=request.path_params["adjustment_id"],
        )
    return JSONBytes(jsonutil.dumps(adjustment))


BASE = "/v1/connections/{connection_id}"

class EntityConvertor(Convertor[str]):
    """Matches only the six entity names, so ``{entity:entity}`` never captures ``health`` & co."""

    regex = "|".join(records.ENTITIES)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("entity", EntityConvertor())

#: The two hot read routes come first (routing is a linear scan). They match only real entity
#: names, and the write routes of the same shape differ by method, so order changes nothing else;
#: the adjustments list, which the record route would take for an inventory level, precedes them.
hot_routes = [
    Route(f"{BASE}/inventory/adjustments", list_adjustments, methods=["GET"]),
    Route(f"{BASE}/{{entity:entity}}/{{record_id}}", get_record, methods=["GET"]),
    Route(f"{BASE}/{{entity:entity}}", list_records, methods=["GET"]),
]

routes = [
    Route(f"{BASE}/products", _write(ProductCreate, "create_product"), methods=["POST"]),
    Route(f"{BASE}/products/{{product_id}}", _write(ProductUpdate, "update_product", status_code=200,
                                                      path_args=("product_id",)), methods=["PATCH"]),
    Route(f"{BASE}/products/{{product_id}}", _write(None, "delete_product", status_code=200,
                                                      path_args=("product_id",)), methods=["DELETE"]),
    Route(f"{BASE}/categories", _write(CategoryCreate, "create_category"), methods=["POST"]),
    Route(f"{BASE}/locations", _write(LocationCreate, "create_location"), methods=["POST"]),
    Route(f"{BASE}/customers", _write(CustomerCreate, "create_customer"), methods=["POST"]),
    Route(f"{BASE}/customers/{{customer_id}}", _write(CustomerUpdate, "update_customer", status_code=200,
                                                        path_args=("customer_id",)), methods=["PATCH"]),
    Route(f"{BASE}/orders", _write(OrderCreate, "create_order"), methods=["POST"]),
    Route(f"{BASE}/orders/{{order_id}}/refund", _write(RefundCreate, "refund_order", status_code=200,
                                                         optional_body=True, path_args=("order_id",)), methods=["POST"]),
    Route(f"{BASE}/orders/{{order_id}}/void", _write(VoidCreate, "void_order", status_code=200, optional_body=True,
                                                       path_args=("order_id",)), methods=["POST"]),
    Route(f"{BASE}/orders/{{order_id}}/receipt", download_receipt, methods=["GET"]),
    Route(f"{BASE}/inventory/adjustments", create_adjustment, methods=["POST"]),
    Route(f"{BASE}/inventory/adjustments/{{adjustment_id}}", read_adjustment, methods=["GET"]),
    Route(f"{BASE}/inventory/{{product_id}}/{{location_id}}", _write(CountSet, "set_inventory_count", status_code=200,
                                                                    path_args=("product_id", "location_id")),
          methods=["PUT"]),
    # Last: any other name in the entity position answers 404 unknown_entity, not route_not_found.
    Route(f"{BASE}/{{entity}}/{{record_id}}", get_record, methods=["GET"]),
    Route(f"{BASE}/{{entity}}", list_records, methods=["GET"]),
]
