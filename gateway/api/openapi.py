"""The OpenAPI 3.1 document of the public API, built from the pydantic models.

Operations are declared here as data (path, method, request model, responses, query
parameters); component schemas come from the models with ``models_json_schema``. Entity routes
are generic in the router (``/{entity}``) but listed per entity here so each has its exact schema.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import __version__
from gateway import model as m
from gateway.services.records import ENTITIES, FILTERS

PROBLEM = "application/problem+json"
ENTITY_MODEL: dict[str, type[BaseModel]] = m.ENTITY_MODELS
ENTITY_SINGULAR = {"products": "product", "categories": "category", "locations": "location",
                   "customers": "customer", "orders": "order", "inventory": "inventory level"}

INPUT_MODELS = [m.ConnectionCreate, m.ConnectionUpdate, m.SyncRequest, m.ProductCreate, m.ProductUpdate, m.CategoryCreate,
                m.LocationCreate, m.CustomerCreate, m.CustomerUpdate, m.OrderCreate, m.RefundCreate, m.VoidCreate,
                m.AdjustmentCreate, m.CountSet, m.WebhookEndpointCreate, m.WebhookEndpointUpdate, m.ReplayRequest,
                m.InventoryLinkCreate, m.InventoryLinkUpdate]
OUTPUT_MODELS = [m.Connection, m.Connector, m.Product, m.Category, m.Location, m.Customer, m.Order,
                 m.InventoryLevel, m.Adjustment, m.Event, m.Problem, m.WebhookEndpoint, m.WebhookDelivery,
                 m.InventoryLink]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _param(name: str, where: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": description}


PATH_CONNECTION = _param("connection_id", "path", {"type": "string", "maxLength": 64}, "a connection id (con_...)", True)
LIST_PARAMS = [
    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "page size"),
    _param("cursor", "query", {"type": "string", "maxLength": 500}, "next_cursor of the previous page"),
]
_COUNT = {"type": "integer", "minimum": 0}
SYNC_RUN = {
    "type": "object",
    "required": ["id", "entity", "mode", "status", "pages", "seen", "created", "updated", "unchanged", "deleted",
                 "error", "started_at", "finished_at"],
    "properties": {
        "id": {"type": "string"}, "entity": {"type": "string"},
        "mode": {"type": "string", "enum": ["full", "incremental", "reconcile"]},
        "status": {"type": "string", "enum": ["running", "succeeded", "failed"]},
        **{name: _COUNT for name in ("pages", "seen", "created", "updated", "unchanged", "deleted")},
        "error": {"type": ["string", "null"]},
        "started_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
ERRORS_READ = ("400", "401", "404", "429")
ERRORS_WRITE = ("400", "401", "404", "409", "413", "415", "422", "429", "502", "503", "504")
ERROR_TEXT = {
    "400": "bad request (malformed JSON, invalid parameter or cursor)", "401": "missing or invalid API key",
    "404": "no such object for this tenant", "409": "conflict (stock, stale count, idempotency in flight)",
    "413": "body over 1 MiB", "415": "body is not JSON", "422": "validation failed",
    "429": "rate limited (see Retry-After)", "502": "vendor error", "503": "vendor unavailable",
    "504": "vendor timeout", "424": "vendor rejected the credentials",
}


def _op(summary: str, *, tag: str, ok: tuple[str, Any], request: type[BaseModel] | None = None,
        params: list[dict[str, Any]] | None = None, errors: tuple[str, ...] = ERRORS_READ,
        body_optional: bool = False, idempotent: bool | None = None, auth: bool = True) -> dict[str, Any]:
    status, schema = ok
    responses: dict[str, Any] = {status: {"description": "success", "content": {"application/json": {"schema": schema}}}}
    for code in errors:
        responses[code] = {"description": ERROR_TEXT[code], "content": {PROBLEM: {"schema": _ref("Problem")}}}
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses, "parameters": list(params or [])}
    if request is not None:
        op["requestBody"] = {"required": not body_optional,
                             "content": {"application/json": {"schema": _ref(request.__name__)}}}
    if idempotent is not None:
        op["parameters"].append(_param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 255,
                                                                     "pattern": "^[\\x21-\\x7e]+$"},
                                       "replays the stored response for a repeated request", idempotent))
    if not auth:
        op["security"] = []
    return op


def _receipt_op(cp: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET .../orders/{order_id}/receipt``: a PDF download, not JSON."""
    op = _op("Download the order's receipt as the POS renders it (PDF)", tag="orders", ok=("200", {}),
             params=cp + [_param("order_id", "path", {"type": "string"}, "ord_...", True)],
             errors=("401", "404", "422", "424", "429", "502", "503", "504"))
    op["description"] = ("Fetched from the vendor on every call (never cached). Connectors without receipts "
                         "(apex, local) answer 422 operation_not_supported; an unknown order answers 404.")
    op["responses"]["200"] = {
        "description": "the PDF receipt, as an attachment named receipt-<order id>.pdf",
        "headers": {"Content-Disposition": {"description": 'attachment; filename="receipt-ord_....pdf"',
                                            "schema": {"type": "string"}}},
        "content": {"application/pdf": {"schema": {"type": "string", "contentMediaType": "application/pdf"}}},
    }
    op["responses"]["422"]["description"] = "the connector does not support receipts (operation_not_supported)"
    return op


def _list_schema(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["data", "next_cursor"], "additionalProperties": False,
            "properties": {"data": {"type": "array", "items": item}, "next_cursor": {"type": ["string", "null"]}}}


def _paths() -> dict[str, Any]:
    conn = "/v1/connections/{connection_id}"
    cp = [PATH_CONNECTION]
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("Liveness", tag="system", ok=("200", {"type": "object"}), errors=(), auth=False)},
        "/readyz": {"get": _op("Readiness: database (and Redis when configured)", tag="system",
                               ok=("200", {"type": "object"}), errors=(), auth=False)},
        "/v1/connectors": {"get": _op("Installed connector plugins", tag="connectors",
                                      ok=("200", {"type": "object", "required": ["data"],
                                                  "properties": {"data": {"type": "array", "items": _ref("Connector")}}}),
                                      errors=("401", "429"))},
        "/v1/connections": {
            "post": _op("Create a connection", tag="connections", ok=("201", _ref("Connection")),
                        request=m.ConnectionCreate, errors=ERRORS_WRITE + ("424",), idempotent=False),
            "get": _op("List connections", tag="connections", ok=("200", _list_schema(_ref("Connection"))),
                       params=LIST_PARAMS),
        },
        conn: {
            "get": _op("Get a connection", tag="connections", ok=("200", _ref("Connection")), params=cp),
            "patch": _op("Update a connection", tag="connections", ok=("200", _ref("Connection")), params=cp,
                         request=m.ConnectionUpdate, errors=ERRORS_WRITE + ("424",), idempotent=False),
            "delete": _op("Delete a connection", tag="connections", ok=("200", _ref("Connection")), params=cp),
        },
        f"{conn}/health": {"get": _op("Live check of the vendor", tag="connections",
                                      ok=("200", {"type": "object", "required": ["status"]}), params=cp,
                                      errors=ERRORS_READ + ("502", "503", "504"))},
        f"{conn}/sync": {
            "post": _op("Queue a sync of the connection's entities (202)", tag="connections",
                        ok=("202", {"type": "object", "required": ["connection_id", "mode", "jobs"],
                                    "properties": {"connection_id": {"type": "string"}, "mode": {"type": "string"},
                                                   "jobs": {"type": "array", "items": {"type": "object"}}}}),
                        params=cp, request=m.SyncRequest, body_optional=True, errors=ERRORS_WRITE),
            "get": _op("Per-entity sync state and the latest sync runs", tag="connections",
                       ok=("200", {"type": "object", "required": ["connection_id", "entities", "runs"],
                                   "properties": {"connection_id": {"type": "string"},
                                                  "syncs_from_vendor": {"type": "boolean"},
                                                  "entities": {"type": "object"},
                                                  "runs": {"type": "array", "items": SYNC_RUN}}}),
                       params=cp + [_param("runs", "query", {"type": "integer", "minimum": 0, "maximum": 100,
                                                              "default": 20}, "how many recent runs to list")]),
        },
        f"{conn}/products/{{product_id}}": {
            "patch": _op("Update a product at the POS", tag="products", ok=("200", _ref("Product")),
                         params=cp + [_param("product_id", "path", {"type": "string"}, "prod_...", True)],
                         request=m.ProductUpdate, errors=ERRORS_WRITE, idempotent=False),
            "delete": _op("Delete a product at the POS", tag="products", ok=("200", _ref("Product")),
                          params=cp + [_param("product_id", "path", {"type": "string"}, "prod_...", True)],
                          errors=ERRORS_WRITE, idempotent=False),
        },
        f"{conn}/customers/{{customer_id}}": {
            "patch": _op("Update a customer", tag="customers", ok=("200", _ref("Customer")),
                         params=cp + [_param("customer_id", "path", {"type": "string"}, "cus_...", True)],
                         request=m.CustomerUpdate, errors=ERRORS_WRITE, idempotent=False),
        },
        f"{conn}/orders/{{order_id}}/refund": {
            "post": _op("Refund an order (all, or some lines)", tag="orders", ok=("200", _ref("Order")),
                        params=cp + [_param("order_id", "path", {"type": "string"}, "ord_...", True)],
                        request=m.RefundCreate, body_optional=True, errors=ERRORS_WRITE, idempotent=False),
        },
        f"{conn}/orders/{{order_id}}/void": {
            "post": _op("Void an order", tag="orders", ok=("200", _ref("Order")),
                        params=cp + [_param("order_id", "path", {"type": "string"}, "ord_...", True)],
                        request=m.VoidCreate, body_optional=True, errors=ERRORS_WRITE, idempotent=False),
        },
        f"{conn}/orders/{{order_id}}/receipt": {"get": _receipt_op(cp)},
        f"{conn}/inventory/adjustments": {
            "post": {**_op("Adjust stock by a delta (accepted durably, pushed to the POS)", tag="inventory",
                           ok=("202", _ref("Adjustment")), params=list(cp), request=m.AdjustmentCreate,
                           errors=ERRORS_WRITE, idempotent=True),
                     "description": (
                         "External POS connections: the adjustment is stored with its push job before the 202 "
                         "(status pending); a worker pushes it with retries (attempts and last_error show on GET) "
                         "and it ends applied (event adjustment.applied) or failed (adjustment.failed, e.g. "
                         "insufficient_stock at the POS). The built-in local engine applies it at once (applied). "
                         "Bad requests (unknown product or location, variants, fractional deltas where the POS "
                         "counts whole units) answer 4xx before anything is stored. A replay of the same "
                         "Idempotency-Key answers the first 202 again.")},
            "get": _op("List the connection's adjustments, newest first", tag="inventory",
                       ok=("200", _list_schema(_ref("Adjustment"))),
                       params=cp + LIST_PARAMS + [
                           _param("status", "query", {"type": "string", "enum": ["pending", "applied", "failed"]},
                                  "only this status"),
                           _param("link_id", "query", {"type": "string", "maxLength": 64},
                                  "only the adjustments this inventory link made (ilk_...)")]),
        },
        f"{conn}/inventory/reconcile": {
            "post": {**_op("Queue a full inventory count that reports drift (202)", tag="inventory",
                           ok=("202", {"type": "object", "required": ["connection_id", "mode", "jobs"],
                                       "properties": {"connection_id": {"type": "string"},
                                                      "mode": {"type": "string", "enum": ["reconcile"]},
                                                      "jobs": {"type": "array", "items": {"type": "object"}}}}),
                           params=list(cp), errors=("401", "404", "413", "422", "429", "503")),
                     "description": (
                         "External POS connections that read inventory (aipos, apex): a worker counts every stock "
                         "level at the POS and compares it with the cache. Each cached level whose on_hand differs "
                         "is corrected and reported as one inventory.drift event (data: the level as counted plus "
                         "previous_on_hand and difference), never also as inventory.updated; levels the gateway's "
                         "own adjustments are still changing are not drift. A count that finds nothing emits "
                         "nothing. Also runs every reconcile_interval_seconds (connection setting, default 3600). "
                         "While a count is queued or running, that job is answered with already_queued true. "
                         "local: 422 operation_not_supported.")},
        },
        f"{conn}/inventory/adjustments/{{adjustment_id}}": {
            "get": _op("Get an adjustment and its status", tag="inventory", ok=("200", _ref("Adjustment")),
                       params=cp + [_param("adjustment_id", "path", {"type": "string"}, "adj_...", True)]),
        },
        f"{conn}/inventory/{{product_id}}/{{location_id}}": {
            "put": _op("Set an absolute count (compare-and-set on expected_on_hand)", tag="inventory",
                       ok=("200", _ref("InventoryLevel")),
                       params=cp + [_param("product_id", "path", {"type": "string"}, "prod_...", True),
                                    _param("location_id", "path", {"type": "string"}, "loc_...", True)],
                       request=m.CountSet, errors=ERRORS_WRITE, idempotent=False),
        },
        "/hooks/{connection_id}": {
            "post": {
                **_op("Inbound vendor webhook (the vendor calls this; its signature authenticates it)", tag="webhooks",
                      ok=("200", {"type": "object", "required": ["received", "id", "duplicate"],
                                  "properties": {"received": {"const": True}, "id": {"type": "string"},
                                                 "duplicate": {"type": "boolean"}}}),
                      params=cp, errors=("400", "401", "404", "413", "422"), auth=False),
                "requestBody": {"required": True, "description": "the vendor's event, exactly as it signed it",
                                "content": {"application/json": {"schema": {}}}},
            },
        },
        "/v1/events": {
            "get": _op("The change log, in seq order", tag="events",
                       ok=("200", {"type": "object", "required": ["data", "next_after"], "additionalProperties": False,
                                   "properties": {"data": {"type": "array", "items": _ref("Event")},
                                                  "next_after": {"type": "integer", "minimum": 0}}}),
                       params=[_param("after", "query", {"type": "integer", "minimum": 0}, "return events with seq > after"),
                               _param("type", "query", {"type": "string"}, "comma-separated types; 'order.*' wildcards"),
                               _param("connection_id", "query", {"type": "string"}, "only this connection's events"),
                               _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000,
                                                         "default": 100}, "page size")],
                       errors=("400", "401", "429")),
        },
    }
    paths.update(_webhook_endpoint_paths())
    paths.update(_inventory_link_paths())
    creates = {"products": m.ProductCreate, "categories": m.CategoryCreate, "locations": m.LocationCreate,
               "customers": m.CustomerCreate, "orders": m.OrderCreate}
    for entity in ENTITIES:
        model = ENTITY_MODEL[entity]
        singular = ENTITY_SINGULAR[entity]
        filters = [_param(name, "query", {"type": "string"} if name != "active" else {"type": "boolean"},
                          f"only {entity} whose {name} equals this") for name in FILTERS[entity]]
        list_params = cp + LIST_PARAMS + [
            _param("updated_after", "query", {"type": "string", "format": "date-time"}, "changed after this time"),
            _param("include_deleted", "query", {"type": "boolean", "default": False}, "include soft-deleted records"),
            _param("expand", "query", {"type": "string", "enum": ["raw"]}, "add the vendor's payload as raw"),
        ] + filters
        item: dict[str, Any] = {"get": _op(f"List {entity} (keyset pages by updated_at, id)", tag=entity,
                                           ok=("200", _list_schema(_ref(model.__name__))), params=list_params)}
        if entity in creates:
            item["post"] = _op(f"Create a {singular} at the POS", tag=entity, ok=("201", _ref(model.__name__)),
                               params=list(cp), request=creates[entity], errors=ERRORS_WRITE, idempotent=False)
        paths[f"{conn}/{entity}"] = item
        one = paths.setdefault(f"{conn}/{entity}/{{record_id}}", {})
        one["get"] = _op(f"Get one {singular}", tag=entity, ok=("200", _ref(model.__name__)),
                         params=cp + [_param("record_id", "path", {"type": "string"}, "the record id", True),
                                      _param("expand", "query", {"type": "string", "enum": ["raw"]}, "add raw")])
    # The product and customer record paths also carry PATCH/DELETE; merge them.
    for entity, key in (("products", "product_id"), ("customers", "customer_id")):
        writes = paths.pop(f"{conn}/{entity}/{{{key}}}")
        target = paths[f"{conn}/{entity}/{{record_id}}"]
        for method, op in writes.items():
            op["parameters"] = [p if p["name"] != key else {**p, "name": "record_id"} for p in op["parameters"]]
            target[method] = op
    return paths


def _webhook_endpoint_paths() -> dict[str, Any]:
    """``/v1/webhook-endpoints``: outbound webhooks (Standard Webhooks signatures)."""
    base = "/v1/webhook-endpoints"
    ep = [_param("endpoint_id", "path", {"type": "string", "maxLength": 64}, "a webhook endpoint id (whe_...)", True)]
    dlv = [_param("delivery_id", "path", {"type": "string", "maxLength": 64}, "a delivery id (dlv_...)", True)]
    writes = ("400", "401", "404", "409", "413", "415", "422", "429")
    replay_ok = {"type": "object", "required": ["endpoint_id", "from_seq", "to_seq", "queued", "next_seq"],
                 "additionalProperties": False,
                 "properties": {"endpoint_id": {"type": "string"}, "from_seq": {"type": "integer"},
                                "to_seq": {"type": ["integer", "null"]}, "queued": {"type": "integer", "minimum": 0},
                                "next_seq": {"type": ["integer", "null"]}}}
    create = _op("Subscribe a webhook endpoint; the answer holds its whsec_ secret, shown this once", tag="webhooks",
                 ok=("201", _ref("WebhookEndpoint")), request=m.WebhookEndpointCreate,
                 errors=("400", "401", "409", "413", "415", "422", "429"), idempotent=False)
    create["description"] = (
        "Every event matching `events` (and `connection_ids`) from now on is delivered to `url` with Standard "
        "Webhooks headers (`webhook-id` = the event id, `webhook-timestamp`, `webhook-signature`), in seq order, "
        "retried on TILLGATE_WEBHOOK_RETRY_SCHEDULE. URLs on loopback, private, link-local or metadata addresses "
        "are refused (422 webhook_url_refused) unless TILLGATE_WEBHOOK_ALLOW_PRIVATE=true.")
    return {
        base: {
            "post": create,
            "get": _op("List webhook endpoints", tag="webhooks", ok=("200", _list_schema(_ref("WebhookEndpoint"))),
                       params=LIST_PARAMS),
        },
        f"{base}/{{endpoint_id}}": {
            "get": _op("Get a webhook endpoint (no secret)", tag="webhooks", ok=("200", _ref("WebhookEndpoint")),
                       params=ep),
            "patch": _op("Change, enable or disable a webhook endpoint", tag="webhooks",
                         ok=("200", _ref("WebhookEndpoint")), params=list(ep), request=m.WebhookEndpointUpdate,
                         errors=writes, idempotent=False),
            "delete": _op("Delete a webhook endpoint; its pending deliveries are cancelled", tag="webhooks",
                          ok=("200", _ref("WebhookEndpoint")), params=ep),
        },
        f"{base}/{{endpoint_id}}/deliveries": {
            "get": _op("The delivery log, newest first", tag="webhooks",
                       ok=("200", _list_schema(_ref("WebhookDelivery"))),
                       params=ep + LIST_PARAMS + [_param("status", "query", {
                           "type": "string", "enum": ["pending", "delivered", "failed", "cancelled"]}, "only this status")]),
        },
        f"{base}/{{endpoint_id}}/deliveries/{{delivery_id}}": {
            "get": _op("One delivery with its attempt log", tag="webhooks", ok=("200", _ref("WebhookDelivery")),
                       params=ep + dlv),
        },
        f"{base}/{{endpoint_id}}/deliveries/{{delivery_id}}/retry": {
            "post": _op("Send a delivery again now", tag="webhooks", ok=("202", _ref("WebhookDelivery")),
                        params=ep + dlv, errors=writes, idempotent=False),
        },
        f"{base}/{{endpoint_id}}/replay": {
            "post": _op("Deliver again the matching events from a seq", tag="webhooks", ok=("202", replay_ok),
                        params=list(ep), request=m.ReplayRequest, errors=writes, idempotent=False),
        },
    }


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document (built once)."""
    pairs = [(model, "validation") for model in INPUT_MODELS] + [(model, "serialization") for model in OUTPUT_MODELS]
    _, schema = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    components = schema.get("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tillgate", "version": __version__,
                 "description": "One normalized API for products, orders, customers and inventory in front of many "
                                "POS vendors. Money and quantities are decimal strings; errors are RFC 9457 "
                                "problem documents with a stable `code`."},
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": _paths(),
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "tgk_..."}},
        },
    }


def _inventory_link_paths() -> dict[str, Any]:
    """``/v1/inventory-links``: locations of several connections kept in one stock pool."""
    base = "/v1/inventory-links"
    lp = [_param("link_id", "path", {"type": "string", "maxLength": 64}, "an inventory link id (ilk_...)", True)]
    writes = ("400", "401", "404", "409", "413", "415", "422", "429")
    create = _op("Link locations of two or more connections into one stock pool", tag="inventory",
                 ok=("201", _ref("InventoryLink")), request=m.InventoryLinkCreate,
                 errors=("400", "401", "409", "413", "415", "422", "429"), idempotent=False)
    create["description"] = (
        "From now on, a change of on hand at one member that did not come from the link (a sale at the till, a "
        "count, a consumer's adjustment) is pushed to every other member as an adjustment with `link_id` and "
        "reason `link`, for the product with the same `sku` or `barcode`. Counts that differ when the link is "
        "made are not aligned. A location can be in one link only (409 location_already_linked).")
    return {
        base: {
            "post": create,
            "get": _op("List inventory links", tag="inventory", ok=("200", _list_schema(_ref("InventoryLink"))),
                       params=LIST_PARAMS),
        },
        f"{base}/{{link_id}}": {
            "get": _op("Get an inventory link", tag="inventory", ok=("200", _ref("InventoryLink")), params=lp),
            "patch": _op("Rename, enable or disable an inventory link", tag="inventory",
                         ok=("200", _ref("InventoryLink")), params=list(lp), request=m.InventoryLinkUpdate,
                         errors=writes, idempotent=False),
            "delete": _op("Delete an inventory link (queued adjustments are still pushed)", tag="inventory",
                          ok=("200", _ref("InventoryLink")), params=lp),
        },
    }
