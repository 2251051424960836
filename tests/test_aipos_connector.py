"""The AI POS connector.

Mapping level (no vendor): the API.md sample objects map to valid unified records (exact money,
per-line taxes that add up to the sale's tax), write bodies, the rate limit arithmetic, and
webhook verification (good, tampered, wrong secret, stale, missing headers, and a hypothesis
fuzz that only ever sees the two webhook errors).

Against the in-process AI POS sandbox (``connectors/aipos/sandbox.py`` through
``httpx.ASGITransport``; SQLite and PostgreSQL): full sync mirrors the sandbox field by field,
a resync writes nothing, an incremental poll with ``updated_since`` picks up a change, writes
round-trip, refunds, an adjustment applies once however its push is retried, PDF receipts, and
``apply_webhook`` with duplicate and out-of-order deliveries.

Through the gateway app (``httpx.ASGITransport``, the sandbox wired in): the receipt download
``GET /v1/connections/{id}/orders/{order_id}/receipt`` (the vendor's PDF bytes, headers, 404s,
tenancy), 422 for connectors without receipts (apex, local), and vendor failures as problem
documents.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import time
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from connectors.aipos import AIPOSConnector
from connectors.aipos.connector import STORE_ID, StartingAfterPaginator, with_line_taxes
from connectors.aipos.sandbox import create_app, receipt_pdf
from connectors.apex import ApexConnector
from connectors.apex.sandbox import create_app as create_apex_app
from connectors.local import LocalConnector
from gateway import jsonutil
from gateway.api.app import create_app as create_gateway
from gateway.api.deps import Services
from gateway.crypto import CredentialCipher
from gateway.errors import (
    Conflict,
    NotFound,
    ValidationFailed,
    VendorCredentialsRejected,
    WebhookMalformed,
    WebhookSignatureInvalid,
)
from gateway.model import (
    ENTITY_MODELS,
    AdjustmentCreate,
    ConnectionCreate,
    CustomerCreate,
    OrderCreate,
    ProductCreate,
    ProductUpdate,
    RefundCreate,
)
from gateway.sdk.connector import ConnectionContext, InboundEvent
from gateway.sdk.http import RetryPolicy
from gateway.sdk.registry import ConnectorRegistry
from gateway.services import adjustments
from gateway.services.adjustments import PushDeferred
from gateway.services.connections import ConnectionService
from gateway.services.sync import SyncEngine
from gateway.services.tenants import create_tenant
from gateway.settings import Settings
from gateway.storage import tables as t
from gateway.testing.conformance import cached_records, sandbox_client_overrides

KEY = "aipos_test_sandbox_key"
SECRET = "whsec_test_signing_secret"
BASE_URL = "http://aipos.test/aipos/api/v1"
CENT = Decimal("0.01")

PRODUCT = {"id": "prod_001", "object": "product", "name": "Masala Chai", "sku": "CHAI-001", "barcode": "8901234567890",
           "category": "Beverages", "price": Decimal("45.00"), "tax_rate": 5, "unit": "each", "active": True,
           "stock": 120, "low_stock_threshold": 10,
           "created_at": "2026-03-01T09:00:00Z", "updated_at": "2026-03-31T10:30:00Z"}
SALE = {"id": "sale_xyz789", "object": "sale", "customer_id": "cust_abc123",
        "items": [{"product_id": "prod_001", "name": "Masala Chai", "qty": 2, "price": Decimal("45.00"), "tax_rate": 5,
                   "total": Decimal("90.00")}],
        "payment_method": "upi", "status": "completed",
        "total": Decimal("90.00"), "tax": Decimal("4.50"), "grand_total": Decimal("94.50"),
        "created_at": "2026-03-31T10:30:00Z", "updated_at": "2026-03-31T10:30:00Z", "refunded_at": None}


# -- helpers --------------------------------------------------------------------------------------------
def offline(credentials: dict[str, Any] | None = None, **settings_: Any) -> AIPOSConnector:
    """A connector with no database and no vendor: mapping and webhook verification only."""
    context = ConnectionContext(id="con_test", tenant_id="ten_test", connector="aipos", name="Shop",
                                settings=settings_, credentials={"api_key": KEY, "webhook_secret": SECRET,
                                                                 **(credentials or {})})
    return AIPOSConnector(context, None)


def unified(entity: str, remote_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A mapped body as the cache stores it (JSON round trip, common fields added), validated."""
    record = {"id": "x_1", "connection_id": "con_test", "remote_id": remote_id, "created_at": "2026-01-01T00:00:00Z",
              "updated_at": "2026-01-01T00:00:00Z", "deleted_at": None,
              **json.loads(jsonutil.dumps(body))}
    ENTITY_MODELS[entity].model_validate(record)
    return record


def resolver(**maps: dict[str, str]) -> Any:
    return offline()._ctx(maps)


def sign(body: bytes, *, event_id: str, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), f"{stamp}.{event_id}.".encode() + body, hashlib.sha256).hexdigest()
    return {"AIPOS-Event-Id": event_id, "AIPOS-Signature": f"t={stamp},v1={digest}"}


def vendor_json(value: Any) -> bytes:
    """JSON as AI POS writes it: money as bare numbers with their digits (``94.50``)."""
    from gateway.mapping import dumps_vendor_body

    def numbers(v: Any) -> Any:
        if isinstance(v, Decimal):
            return jsonutil.JsonNumber(v)
        if isinstance(v, dict):
            return {k: numbers(x) for k, x in v.items()}
        if isinstance(v, list):
            return [numbers(x) for x in v]
        return v

    return dumps_vendor_body(numbers(value))


def delivery(kind: str, obj: dict[str, Any], event_id: str = "evt_0001") -> bytes:
    return vendor_json({"id": event_id, "object": "event", "type": kind, "created_at": "2026-03-31T10:30:00Z",
                        "data": {"object": obj}})


def money(value: Any) -> str:
    return format(Decimal(str(value)).quantize(CENT), "f")


# -- mapping level ---------------------------------------------------------------------------------------
def test_the_api_md_product_maps_to_a_valid_product_and_its_stock_level() -> None:
    connector = offline()
    record = connector._record("products", PRODUCT, connector._ctx())
    assert record.remote_id == "prod_001"
    assert record.remote_updated_at == datetime(2026, 3, 31, 10, 30, tzinfo=UTC)
    assert record.created_at == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    product = unified("products", record.remote_id, record.body)
    assert (product["name"], product["sku"], product["barcode"], product["price"], product["currency"]) == (
        "Masala Chai", "CHAI-001", "8901234567890", "45.00", "INR")
    assert (product["tax_rate"], product["tax_inclusive"], product["unit"], product["active"]) == ("5", False, "each", True)
    assert product["taxes"] == [{"name": "Tax", "rate": "5", "compound": False}]
    assert product["category_ids"] == [] and product["variants"] == [] and product["cost"] is None

    level_raw = connector._level_of_product(PRODUCT)
    ctx = resolver(products={"prod_001": "prod_gw"}, locations={STORE_ID: "loc_gw"})
    level = connector._record("inventory", level_raw, ctx)
    assert level.remote_id == "prod_001" and level.remote_updated_at == record.remote_updated_at
    body = unified("inventory", level.remote_id, level.body)
    assert (body["product_id"], body["location_id"], body["on_hand"], body["available"], body["low_stock_threshold"]) == (
        "prod_gw", "loc_gw", "120", "120", "10")
    held_back = offline(safety_stock="5")._record("inventory", {**level_raw, "quantity": 3}, ctx)
    assert held_back.body["available"] == 0 and held_back.body["on_hand"] == 3


def test_the_api_md_sale_maps_to_a_valid_order() -> None:
    ctx = resolver(products={"prod_001": "prod_gw"}, customers={"cust_abc123": "cus_gw"}, locations={STORE_ID: "loc_gw"})
    record = offline()._record("orders", SALE, ctx)
    order = unified("orders", record.remote_id, record.body)
    assert (order["number"], order["status"], order["payment_status"], order["source"]) == (
        "sale_xyz789", "completed", "paid", "pos")
    assert (order["customer_id"], order["location_id"], order["currency"]) == ("cus_gw", "loc_gw", "INR")
    assert (order["subtotal"], order["discount_total"], order["tax_total"], order["total"]) == (
        "90.00", "0.00", "4.50", "94.50")
    assert order["payments"] == [{"method": "upi", "amount": "94.50", "reference": None}]
    assert (order["amount_paid"], order["change_due"], order["refunds"], order["refunded_total"]) == (
        "94.50", "0.00", [], "0.00")
    [line] = order["lines"]
    assert line["id"].startswith("line_") and line["product_id"] == "prod_gw"
    assert (line["name"], line["quantity"], line["unit_price"], line["discount"], line["total"]) == (
        "Masala Chai", "2", "45.00", "0.00", "94.50")
    assert line["taxes"] == [{"name": "Tax", "rate": "5", "amount": "4.50", "compound": False}]
    assert record.raw is SALE  # the vendor's object is stored as raw, not the connector's working copy
    again = offline()._record("orders", SALE, ctx)
    assert again.body == record.body  # stable line ids


def test_line_taxes_add_up_to_the_tax_rounded_once() -> None:
    """API.md: tax = sum of item total x rate / 100, rounded once half up. 3 lines of 33.33 at 5 %
    are 1.6665 each, 4.9995 in all: 5.00 rounded once; per line 1.67 x 3 = 5.01 would be a cent off."""
    items = [{"product_id": f"prod_00{n}", "name": f"P{n}", "qty": 1, "price": Decimal("33.33"), "tax_rate": 5,
              "total": Decimal("33.33")} for n in range(1, 4)]
    items.append({"product_id": "prod_004", "name": "Untaxed", "qty": 3, "price": Decimal("2.00"), "tax_rate": 0,
                  "total": Decimal("6.00")})
    sale = {**SALE, "items": items, "total": Decimal("105.99"), "tax": Decimal("5.00"), "grand_total": Decimal("110.99")}
    enriched = with_line_taxes(sale, "INR")
    assert [i["_tillgate_tax"] for i in enriched["items"]] == [Decimal("1.67"), Decimal("1.67"), Decimal("1.66"), 0]
    assert "_tillgate_tax" not in sale["items"][0]  # the vendor's object is not touched
    record = offline()._record("orders", sale, resolver())
    order = unified("orders", record.remote_id, record.body)
    assert sum(Decimal(line["total"]) for line in order["lines"]) == Decimal(order["total"]) == Decimal("110.99")
    assert sum(Decimal(tax["amount"]) for line in order["lines"] for tax in line["taxes"]) == Decimal("5.00")
    # a zero rate is kept as a component (it documents a zero-rated item, as the local engine does)
    assert order["lines"][3]["taxes"] == [{"name": "Tax", "rate": "0", "amount": "0.00", "compound": False}]
    assert order["lines"][3]["total"] == "6.00"
    assert order["customer_id"] is None and order["lines"][0]["product_id"] is None  # not cached yet: null


def test_a_refunded_sale_maps_to_a_refunded_order_with_one_full_refund() -> None:
    refunded = {**SALE, "status": "refunded", "refunded_at": "2026-04-01T08:00:00Z", "updated_at": "2026-04-01T08:00:00Z",
                "payment_method": "wallet"}
    order = unified("orders", "sale_xyz789", offline()._record("orders", refunded, resolver()).body)
    assert (order["status"], order["payment_status"], order["refunded_total"]) == ("refunded", "paid", "94.50")
    [refund] = order["refunds"]
    assert refund["created_at"] == "2026-04-01T08:00:00Z" and refund["restock"] is True and refund["amount"] == "94.50"
    assert refund["lines"] == [{"line_id": order["lines"][0]["id"], "quantity": "2", "amount": "94.50"}]
    assert refund["id"].startswith("refund_") and order["payments"][0]["method"] == "wallet"


def test_customer_and_location_map() -> None:
    connector = offline(store_name=None, timezone="Asia/Kolkata")
    customer = {"id": "cust_abc123", "object": "customer", "name": "Asha Rao", "email": "asha@example.in",
                "phone": "+919800000001", "created_at": "2026-03-01T09:00:00Z", "updated_at": "2026-03-02T09:00:00Z"}
    record = connector._record("customers", customer, connector._ctx())
    body = unified("customers", record.remote_id, record.body)
    assert (body["name"], body["email"], body["phone"], body["balance"], body["currency"]) == (
        "Asha Rao", "asha@example.in", "+919800000001", "0.00", "INR")
    location = connector._record("locations", {"id": STORE_ID, "name": "Chai Point"}, connector._ctx())
    assert location.remote_id == STORE_ID
    assert unified("locations", STORE_ID, location.body)["timezone"] == "Asia/Kolkata"
    assert location.body["kind"] == "store" and location.body["name"] == "Chai Point"


def test_write_bodies() -> None:
    connector = offline()
    product = connector._write_body("products", ProductCreate(name="Filter Coffee", price="30.50", sku="FC-1",
                                                              tax_rate="12", low_stock_threshold="4").model_dump(), {})
    assert json.loads(jsonutil_dumps_vendor(product)) == {
        "name": "Filter Coffee", "price": 30.5, "sku": "FC-1", "tax_rate": 12, "unit": "each", "active": True,
        "low_stock_threshold": 4}
    assert b'"price":30.50' in jsonutil_dumps_vendor(product)  # a bare number with exactly its digits
    update = connector._write_body("products", ProductUpdate(price="31").model_dump(exclude_unset=True), {})
    assert jsonutil_dumps_vendor(update) == b'{"price":31.00}'
    with pytest.raises(ValidationFailed):  # more decimals than rupees have: refused, not rounded
        connector._write_body("products", ProductCreate(name="X", price="1.005").model_dump(), {})

    order = OrderCreate.model_validate({"customer_id": "cus_gw", "payments": [{"method": "upi", "amount": "94.50"}],
                                        "lines": [{"product_id": "prod_gw", "quantity": "2", "unit_price": "45"}]})
    body = connector._write_body("orders", order.model_dump(), {"products": {"prod_gw": "prod_001"},
                                                                "customers": {"cus_gw": "cust_abc123"}})
    assert jsonutil_dumps_vendor(body) == (b'{"customer_id":"cust_abc123","items":[{"product_id":"prod_001","qty":2,'
                                           b'"price":45.00}],"payment_method":"upi"}')  # the vendor doc's example
    with pytest.raises(ValidationFailed) as info:
        connector._write_body("orders", {**order.model_dump(), "lines": [{**order.model_dump()["lines"][0],
                                                                          "quantity": Decimal("1.5")}]},
                              {"products": {"prod_gw": "prod_001"}, "customers": {"cus_gw": "cust_abc123"}})
    assert info.value.errors[0]["loc"][:3] == ["body", "items", "0"]
    adjustment = connector._write_body("inventory", {"product_id": "prod_gw", "delta": Decimal("-3"), "reason": "sale",
                                                     "vendor_reason": "sale: till 4"}, {"products": {"prod_gw": "prod_001"}})
    assert jsonutil_dumps_vendor(adjustment) == b'{"product_id":"prod_001","delta":-3,"reason":"sale: till 4"}'


def jsonutil_dumps_vendor(body: dict[str, Any]) -> bytes:
    return vendor_json(body)


def test_the_declared_rate_limit_stays_under_1000_requests_in_any_minute() -> None:
    """The kit's leaky bucket admits ``requests`` at once, then ``requests / per_seconds`` per second,
    so in any 60 s window at most ``requests + 60 * requests / per_seconds`` go out. AI POS counts
    1000 per key in a sliding 60 s window: the manifest must keep that bound under 1000."""
    limit = AIPOSConnector.manifest["rate_limit"]
    worst = limit["requests"] + 60 * limit["requests"] / limit["per_seconds"]
    assert worst < 1000
    assert 60 * limit["requests"] / limit["per_seconds"] >= 900  # and still uses 90 % of the allowance


def test_the_manifest_declares_the_six_events_and_the_replay_window() -> None:
    webhooks = AIPOSConnector.manifest["webhooks"]
    assert webhooks["events"] == ["sale.created", "sale.refunded", "product.created", "product.updated",
                                  "inventory.low", "sync.completed"]
    assert webhooks["tolerance_seconds"] == 300
    caps = AIPOSConnector.manifest["capabilities"]
    assert caps["orders"]["write"] == ["create", "refund"] and caps["inventory"]["write"] == ["adjust"]
    assert all(caps[e]["incremental"] for e in ("products", "customers", "orders", "inventory"))


async def test_the_paginator_follows_starting_after_until_has_more_is_false() -> None:
    from gateway.sdk.http import VendorClient

    rows = [{"id": f"prod_{n:03d}"} for n in range(1, 8)]
    asked: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        start = 0
        if "starting_after" in params:
            start = next(i for i, r in enumerate(rows) if r["id"] == params["starting_after"]) + 1
        page = rows[start:start + int(params["limit"])]
        return httpx.Response(200, json={"object": "list", "data": page, "has_more": start + len(page) < len(rows)})

    async with VendorClient("aipos", "http://x", transport=httpx.MockTransport(answer)) as client:
        pager = StartingAfterPaginator(page_size=3)
        pages = [page async for page in pager.pages(client, "/products", params={"updated_since": "2026-01-01T00:00:00Z"})]
    assert [[r["id"] for r in p.records] for p in pages] == [["prod_001", "prod_002", "prod_003"],
                                                               ["prod_004", "prod_005", "prod_006"], ["prod_007"]]
    assert [p.next_position for p in pages] == [{"after": "prod_003"}, {"after": "prod_006"}, None]
    assert asked[1] == {"limit": "3", "starting_after": "prod_003", "updated_since": "2026-01-01T00:00:00Z"}


# -- webhook verification ----------------------------------------------------------------------------------
def test_a_signed_delivery_is_accepted_and_parsed() -> None:
    body = delivery("sale.created", SALE)
    event = offline().verify_webhook(sign(body, event_id="evt_0001"), body, time.time())
    assert isinstance(event, InboundEvent)
    assert (event.id, event.type, event.occurred_at) == ("evt_0001", "sale.created", datetime(2026, 3, 31, 10, 30, tzinfo=UTC))
    assert event.payload["data"]["object"]["grand_total"] == Decimal("94.50")  # exact, never a float
    # headers are matched case-insensitively, whatever mapping carries them
    lower = {k.lower(): v for k, v in sign(body, event_id="evt_0001").items()}
    assert offline().verify_webhook(httpx.Headers(lower), body, time.time()).id == "evt_0001"


def test_any_one_of_several_signatures_is_enough_while_a_secret_rotates() -> None:
    body = delivery("product.updated", PRODUCT, "evt_rot")
    now = time.time()
    new = sign(body, event_id="evt_rot", secret="whsec_new", at=now)["AIPOS-Signature"].split(",")[1]
    old = sign(body, event_id="evt_rot", at=now)
    headers = {**old, "AIPOS-Signature": f"{old['AIPOS-Signature']},{new},v1={'0' * 64}"}
    for secret in (SECRET, "whsec_new"):
        assert offline({"webhook_secret": secret}).verify_webhook(headers, body, time.time()).type == "product.updated"


@pytest.mark.parametrize("case", ["tampered_body", "wrong_secret", "stale", "future", "no_signature", "no_v1",
                                  "bad_hex", "other_event_id", "no_secret"])
def test_a_bad_signature_is_refused_with_401(case: str) -> None:
    body = delivery("sale.created", SALE)
    headers = sign(body, event_id="evt_0001", at=time.time() - 400 if case == "stale" else
                   time.time() + 400 if case == "future" else None,
                   secret="whsec_someone_else" if case == "wrong_secret" else SECRET)
    connector = offline({"webhook_secret": None} if case == "no_secret" else None)
    if case == "tampered_body":
        body = body.replace(b"94.50", b"0.50")
    elif case == "no_signature":
        del headers["AIPOS-Signature"]
    elif case == "no_v1":
        headers["AIPOS-Signature"] = headers["AIPOS-Signature"].split(",")[0]
    elif case == "bad_hex":
        headers["AIPOS-Signature"] = headers["AIPOS-Signature"].split(",")[0] + ",v1=zz"
    elif case == "other_event_id":  # the id is part of what is signed
        headers["AIPOS-Event-Id"] = "evt_0002"
        body = body.replace(b"evt_0001", b"evt_0002")
    with pytest.raises(WebhookSignatureInvalid) as info:
        connector.verify_webhook(headers, body, time.time())
    assert info.value.status == 401 and info.value.code == "webhook_signature_invalid"


@pytest.mark.parametrize("case", ["no_event_id", "bad_signature_header", "bad_t", "not_json", "not_object",
                                  "id_mismatch", "no_object", "bad_created_at", "no_type"])
def test_a_malformed_delivery_is_refused_with_400(case: str) -> None:
    doc: Any = {"id": "evt_0001", "object": "event", "type": "sale.created", "created_at": "2026-03-31T10:30:00Z",
                "data": {"object": SALE}}
    if case == "not_object":
        doc = [doc]
    elif case == "id_mismatch":
        doc["id"] = "evt_other"
    elif case == "no_object":
        doc["data"] = {}
    elif case == "bad_created_at":
        doc["created_at"] = "yesterday"
    elif case == "no_type":
        del doc["type"]
    body = b"{not json" if case == "not_json" else jsonutil.dumps(doc)
    headers = sign(body, event_id="evt_0001")
    if case == "no_event_id":
        del headers["AIPOS-Event-Id"]
    elif case == "bad_signature_header":
        headers["AIPOS-Signature"] = "garbage"
    elif case == "bad_t":
        headers["AIPOS-Signature"] = headers["AIPOS-Signature"].replace("t=", "t=x")
    with pytest.raises(WebhookMalformed) as info:
        offline().verify_webhook(headers, body, time.time())
    assert info.value.status == 400 and info.value.code == "webhook_malformed"


_text = st.text(max_size=80)
_header_names = st.sampled_from(["AIPOS-Signature", "aipos-signature", "AIPOS-Event-Id", "aipos-event-id",
                                 "Content-Type", "X-Other"])
_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                            max_leaves=20)


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[dict[str, Any], bytes, float]:
    """Random headers and bodies; mostly correctly signed, often well-formed events, so every
    check (signature, replay window, JSON, event shape) is reached and sometimes passed."""
    now = 1_780_000_000.0
    kind = draw(st.sampled_from(["random", "signed_random_body", "signed_event_like", "signed_event_like"]))
    if kind == "random":
        headers = draw(st.dictionaries(_header_names, _text, max_size=4))
        body = draw(st.binary(max_size=200))
        return headers, body, now
    event_id = draw(st.sampled_from(["evt_1", "evt_abc"]) | st.text(min_size=1, max_size=20) |
                    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=201))
    if kind == "signed_random_body":
        body = draw(st.binary(max_size=200) | _json_values.map(lambda v: json.dumps(v).encode()))
    else:
        good = draw(st.booleans())
        obj = draw(st.dictionaries(_text, _json_values, max_size=4) | _json_values)
        if good and isinstance(obj, dict):
            obj.update(draw(st.fixed_dictionaries({"id": st.just("sale_1") | _json_values,
                                                   "product_id": st.just("prod_001") | _json_values})))
        doc = {"id": event_id if good else draw(st.one_of(st.just(event_id), _json_values)),
               "type": draw(st.sampled_from(["sale.created", "product.updated", "inventory.low", "sync.completed",
                                             "x"]) | _json_values),
               "created_at": draw(st.sampled_from(["2026-03-31T10:30:00Z", "2026-03-31", "nope"]) | _json_values),
               "data": {"object": obj} if good else draw(st.fixed_dictionaries({"object": _json_values}) | _json_values)}
        body = json.dumps(doc).encode()
    skew = draw(st.sampled_from([0, 0, 299, -300, 301, -301]) | st.integers(-10**6, 10**6))
    stamp = str(int(now) + skew)
    digest = hmac.new(SECRET.encode(), f"{stamp}.{event_id}.".encode("utf-8", "surrogatepass") + body,
                      hashlib.sha256).hexdigest()
    signature = draw(st.sampled_from([f"t={stamp},v1={digest}", f"t={stamp},v1={digest}", f"v1={digest},t={stamp}",
                                      f"t={stamp}", f"t={stamp},v1={digest},v1=abc", f" t={stamp} ,, v1={digest.upper()}",
                                      f"t={stamp},v1={digest[:-1]}0", f"t=0{stamp},v1={digest}"]) | _text)
    headers = {"AIPOS-Signature": signature, "AIPOS-Event-Id": event_id}
    if draw(st.booleans()):
        headers = {k.lower(): v for k, v in headers.items()}
    return headers, body, now


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_deliveries())
def test_verification_only_ever_raises_the_two_webhook_errors(case: tuple[dict[str, Any], bytes, float]) -> None:
    """Whatever arrives, the answer is an event, 401 or 400: never another exception. The inner
    ``_verify`` is checked too, so a bug is not hidden by ``verify_webhook``'s safety net."""
    headers, body, now = case
    connector = offline()
    for verify in (connector._verify, connector.verify_webhook):
        try:
            event = verify(headers, body, now)
        except (WebhookSignatureInvalid, WebhookMalformed):
            continue
        assert isinstance(event, InboundEvent) and event.id == event.payload["id"]
        assert isinstance(event.payload["data"]["object"], dict)


# -- against the sandbox -----------------------------------------------------------------------------------
def connector_for_app(app: Any, transport: httpx.AsyncBaseTransport | None = None,
                      retry: RetryPolicy | None = None) -> type[AIPOSConnector]:
    """An AIPOSConnector wired to ``app`` in process, with instant retries and no client rate limit."""

    class SandboxAIPOS(AIPOSConnector):
        client_overrides: ClassVar[dict[str, Any]] = sandbox_client_overrides(
            transport or httpx.ASGITransport(app=app), retry=retry)

    return SandboxAIPOS


class Receiver:
    """Where the sandbox delivers webhooks: keeps every delivery (headers, raw body), answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.deliveries.append((headers, body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


class Env:
    def __init__(self, db: Any, tenant_id: str, app: Any, receiver: Receiver) -> None:
        self.db, self.tenant_id, self.app, self.receiver = db, tenant_id, app, receiver
        self.store = app.state.aipos
        self.sandbox = app.state.sandbox
        self.connector_class = connector_for_app(app)
        self.service = ConnectionService(db, ConnectorRegistry([self.connector_class], load_entry_points=False),
                                         CredentialCipher([os.urandom(32)]))
        self.connection_id = ""
        self.secret: str | None = None

    async def connect(self, key: str = KEY, **settings_: Any) -> dict[str, Any]:
        credentials = {"api_key": key}
        if self.secret is not None:
            credentials["webhook_secret"] = self.secret
        connection = await self.service.create(self.tenant_id, ConnectionCreate(
            connector="aipos", name="Chai Point", credentials=credentials,
            settings={"base_url": BASE_URL, **settings_}))
        self.connection_id = connection["id"]
        return connection

    async def subscribe(self) -> str:
        """Register the receiver in the sandbox's "dashboard"; its secret signs every delivery."""
        answer = await self.admin("POST", "/_sandbox/webhooks", {"url": "http://receiver.test/hooks"})
        assert answer.status_code == 201, answer.text
        self.secret = answer.json()["secret"]
        return self.secret

    async def connector(self) -> AIPOSConnector:
        return await self.service.connector_for(self.tenant_id, self.connection_id)

    async def sync_all(self, mode: str = "full") -> dict[str, Any]:
        engine = SyncEngine(self.db, await self.connector())
        return {entity: await engine.run(entity, mode=mode) for entity in engine.entities()}

    async def cached(self, entity: str) -> dict[str, dict[str, Any]]:
        return await cached_records(self.db, self.connection_id, entity)

    async def events(self, kind: str | None = None) -> int:
        query = select(func.count()).select_from(t.events).where(t.events.c.connection_id == self.connection_id)
        if kind is not None:
            query = query.where(t.events.c.type == kind)
        async with self.db.read() as conn:
            return (await conn.execute(query)).scalar_one()

    async def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://aipos.test") as http:
            return await http.request(method, path, json=json)

    async def vendor(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """Call the sandbox's API as the POS itself would change data (not through the connector)."""
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL,
                                     headers={"Authorization": f"Bearer {KEY}"}) as http:
            return await http.request(method, BASE_URL + path, json=json)


@pytest.fixture
def make_env(db, tenant):
    def make(**options: Any) -> Env:
        receiver = Receiver()
        options.setdefault("webhook_transport", httpx.ASGITransport(app=receiver))
        options.setdefault("webhook_retry_schedule", (0.01, 0.01))
        return Env(db, tenant[0], create_app(**options), receiver)
    return make


async def assert_mirrors_sandbox(env: Env) -> None:
    """Every sandbox record equals its cached unified record (exact decimal strings, references,
    times), and every cached record is a valid unified object."""
    store = env.store
    cache = {entity: await env.cached(entity) for entity in ("locations", "products", "customers", "inventory", "orders")}
    for entity, items in cache.items():
        for record in items.values():
            ENTITY_MODELS[entity].model_validate(record)
    [location] = cache["locations"].values()
    assert (location["remote_id"], location["name"], location["kind"]) == (STORE_ID, store.name, "store")
    products = cache["products"]
    assert set(products) == set(store.products)
    for p in store.products.values():
        got = products[p.id]
        assert (got["name"], got["sku"], got["barcode"], got["unit"], got["active"], got["currency"]) == (
            p.name, p.sku, p.barcode, p.unit, p.active, "INR")
        assert got["price"] == money(p.price) and Decimal(got["tax_rate"]) == p.tax_rate
        assert got["created_at"] == jsonutil.rfc3339(p.created_at)
    customers = cache["customers"]
    assert set(customers) == set(store.customers)
    for c in store.customers.values():
        got = customers[c.id]
        assert (got["name"], got["email"], got["phone"], got["balance"]) == (c.name, c.email, c.phone, "0.00")
    inventory = cache["inventory"]
    assert set(inventory) == set(store.products)
    for p in store.products.values():
        got = inventory[p.id]
        assert (got["on_hand"], got["available"], got["low_stock_threshold"]) == (str(p.stock), str(p.stock),
                                                                                   str(p.low_stock_threshold))
        assert got["product_id"] == products[p.id]["id"] and got["location_id"] == location["id"]
    orders = cache["orders"]
    assert set(orders) == set(store.sales)
    for s in store.sales.values():
        got = orders[s.id]
        assert (got["number"], got["status"], got["payment_status"]) == (s.id, s.status, "paid")
        assert (got["subtotal"], got["tax_total"], got["total"]) == (money(s.total), money(s.tax), money(s.grand_total))
        assert got["payments"] == [{"method": s.payment_method, "amount": money(s.grand_total), "reference": None}]
        assert got["customer_id"] == (customers[s.customer_id]["id"] if s.customer_id else None)
        assert got["location_id"] == location["id"] and got["created_at"] == jsonutil.rfc3339(s.created_at)
        assert [(ln["product_id"], ln["name"], ln["quantity"], ln["unit_price"]) for ln in got["lines"]] == [
            (products[i.product_id]["id"], i.name, str(i.qty), money(i.price)) for i in s.items]
        assert sum(Decimal(ln["total"]) for ln in got["lines"]) == s.grand_total
        assert sum(Decimal(tx["amount"]) for ln in got["lines"] for tx in ln["taxes"]) == s.tax
        if s.status == "refunded":
            assert got["refunded_total"] == money(s.grand_total)
            assert got["refunds"][0]["created_at"] == jsonutil.rfc3339(s.refunded_at)
        else:
            assert got["refunds"] == [] and got["refunded_total"] == "0.00"


async def test_check_accepts_the_key_and_refuses_a_bad_one(make_env) -> None:
    env = make_env(products=3, customers=2, sales=1, api_keys=[KEY])
    connection = await env.connect()
    assert connection["connector"] == "aipos"
    health = await (await env.connector()).health()
    assert health["status"] == "ok" and health["store"] == env.store.name
    check = [r for r in env.sandbox.requests if r.path.endswith("/products")]
    assert check and check[0].query == "limit=1"
    with pytest.raises(VendorCredentialsRejected) as info:
        await env.connect(key="aipos_wrong")
    assert info.value.status == 424


async def test_full_sync_mirrors_the_sandbox_and_a_resync_writes_nothing(make_env) -> None:
    env = make_env(products=130, customers=45, sales=40, seed=3)
    await env.connect(page_size=40)
    results = await env.sync_all()
    assert list(results) == ["locations", "products", "customers", "inventory", "orders"]
    assert all(r.status == "succeeded" for r in results.values())
    assert (results["products"].pages, results["products"].created) == (4, 130)
    assert results["orders"].created == 40 and results["inventory"].created == 130
    await assert_mirrors_sandbox(env)
    events = await env.events()
    for mode in ("full", "incremental"):
        again = await env.sync_all(mode)
        assert all((r.created, r.updated, r.deleted) == (0, 0, 0) for r in again.values()), again
    # only the runs' sync_completed events are new
    assert await env.events() == events + 2 * len(results)


async def test_an_incremental_poll_asks_updated_since_and_picks_up_a_change(make_env) -> None:
    env = make_env(products=60, customers=5, sales=10)
    await env.connect()
    await env.sync_all()
    answer = await env.vendor("POST", "/products/prod_042", {"price": 99.5, "name": "Cutting Chai"})
    assert answer.status_code == 200, answer.text
    sale = await env.vendor("POST", "/sales", {"items": [{"product_id": "prod_003", "qty": 2}], "payment_method": "cash"})
    assert sale.status_code == 201, sale.text
    env.sandbox.requests.clear()
    results = await env.sync_all("incremental")
    lists = [r for r in env.sandbox.requests if r.path.endswith(("/products", "/sales", "/inventory", "/customers"))]
    assert lists and all("updated_since=" in r.query for r in lists), [r.query for r in lists]
    # prod_042 changed; prod_003 is read too (its stock moved, which bumps a product's updated_at) but
    # its unified product is unchanged: the stock is the inventory level's
    assert results["products"].seen < 10 and results["products"].updated == 1
    assert results["orders"].created == 1 and results["inventory"].updated == 1
    cached = await env.cached("products")
    assert (cached["prod_042"]["name"], cached["prod_042"]["price"]) == ("Cutting Chai", "99.50")
    assert (await env.cached("inventory"))["prod_003"]["on_hand"] == str(env.store.products["prod_003"].stock)
    await assert_mirrors_sandbox(env)


async def test_a_resumed_read_whose_cursor_the_vendor_lost_starts_the_list_again(make_env) -> None:
    env = make_env(products=12, customers=0, sales=0)
    await env.connect()
    connector = await env.connector()
    pages = [page async for page in connector.fetch("products", checkpoint={"after": "prod_999", "since": None})]
    assert sum(len(page.records) for page in pages) == 12


async def test_writes_round_trip(make_env) -> None:
    env = make_env(products=5, customers=3, sales=2)
    await env.connect()
    await env.sync_all()
    connector = await env.connector()
    product = await connector.create_product(ProductCreate.model_validate({
        "name": "Filter Coffee Large", "price": "75.50", "sku": "COFF-L", "barcode": "8900000000017",
        "tax_rate": "12", "low_stock_threshold": "3"}))
    remote = env.store.products[product["remote_id"]]
    assert (remote.name, remote.price, remote.sku, remote.tax_rate, remote.stock, remote.low_stock_threshold) == (
        "Filter Coffee Large", Decimal("75.50"), "COFF-L", Decimal(12), 0, 3)
    assert product["price"] == "75.50" and product["tax_rate"] == "12"
    assert (await env.cached("products"))[product["remote_id"]] == product
    assert (await env.cached("inventory"))[product["remote_id"]]["on_hand"] == "0"

    updated = await connector.update_product(product["id"], ProductUpdate(price="80", name="Filter Coffee XL"))
    assert updated["id"] == product["id"] and (updated["price"], updated["name"]) == ("80.00", "Filter Coffee XL")
    assert (remote.price, remote.name, remote.sku) == (Decimal("80.00"), "Filter Coffee XL", "COFF-L")
    with pytest.raises(ValidationFailed):
        await connector.update_product(product["id"], ProductUpdate(variants=[{"name": "Small"}]))
    with pytest.raises(NotFound):
        await connector.update_product("prod_nope", ProductUpdate(price="1"))
    for refused in ({"tax_inclusive": True}, {"taxes": [{"name": "CGST", "rate": "2.5"}, {"name": "SGST", "rate": "2.5"}]},
                    {"currency": "USD"}, {"tax_rate": "5.125"}):
        with pytest.raises(ValidationFailed):
            await connector.create_product(ProductCreate.model_validate({"name": "Refused", "price": "1", **refused}))
    assert not any(p.name == "Refused" for p in env.store.products.values())

    customer = await connector.create_customer(CustomerCreate(name="Ravi Kumar", phone="+919800000042",
                                                              email="ravi@example.in"))
    assert env.store.customers[customer["remote_id"]].email == "ravi@example.in"
    assert customer["name"] == "Ravi Kumar" and customer["balance"] == "0.00"

    chai = (await env.cached("products"))["prod_001"]
    stock = env.store.products["prod_001"].stock
    received = await env.vendor("POST", "/inventory/adjustments", {"product_id": product["remote_id"], "delta": 3})
    assert received.status_code == 201, received.text
    orders_created = await env.events("order.created")
    order = await connector.create_order(OrderCreate.model_validate({
        "customer_id": customer["id"], "payments": [{"method": "upi", "amount": "94.50"}],
        "lines": [{"product_id": chai["id"], "quantity": "2"}, {"sku": "COFF-L", "quantity": "1", "unit_price": "70"}]}))
    sale = env.store.sales[order["remote_id"]]
    assert (sale.customer_id, sale.payment_method, [i.qty for i in sale.items]) == (customer["remote_id"], "upi", [2, 1])
    assert sale.items[1].price == Decimal("70.00")  # the line's own price; the first line took the catalog's
    assert (order["total"], order["tax_total"], order["status"]) == (money(sale.grand_total), money(sale.tax), "completed")
    assert order["lines"][1]["product_id"] == product["id"] and order["customer_id"] == customer["id"]
    ENTITY_MODELS["orders"].model_validate(order)
    assert env.store.products["prod_001"].stock == stock - 2
    assert (await env.cached("inventory"))["prod_001"]["on_hand"] == str(stock - 2)  # re-read after the sale
    assert await env.events("order.created") == orders_created + 1

    with pytest.raises(Conflict) as conflict:
        await connector.create_order(OrderCreate.model_validate({
            "payments": [{"method": "cash", "amount": "1"}], "lines": [{"product_id": product["id"], "quantity": "3"}]}))
    assert conflict.value.code == "insufficient_stock" and remote.stock == 2
    for bad in ({"payments": [], "lines": [{"product_id": chai["id"], "quantity": "1"}]},
                {"payments": [{"method": "cash", "amount": "1"}, {"method": "card", "amount": "1"}],
                 "lines": [{"product_id": chai["id"], "quantity": "1"}]},
                {"payments": [{"method": "bank", "amount": "1"}], "lines": [{"product_id": chai["id"], "quantity": "1"}]},
                {"payments": [{"method": "cash", "amount": "1"}], "lines": [{"product_id": chai["id"], "quantity": "1.5"}]},
                {"payments": [{"method": "cash", "amount": "1"}], "lines": [{"product_id": chai["id"], "quantity": "1",
                                                                             "discount": "1"}]}):
        with pytest.raises(ValidationFailed):
            await connector.create_order(OrderCreate.model_validate(bad))

    # the next full sync agrees with what the writes cached
    again = await env.sync_all()
    for entity in ("products", "customers", "orders", "inventory"):
        assert (again[entity].created, again[entity].updated, again[entity].deleted) == (0, 0, 0), entity
    await assert_mirrors_sandbox(env)


async def test_a_whole_sale_is_refunded_once_and_partial_refunds_are_refused(make_env) -> None:
    env = make_env(products=5, customers=2, sales=3)
    await env.connect()
    await env.sync_all()
    connector = await env.connector()
    orders = await env.cached("orders")
    order = orders["sale_xyz789"]  # API.md's sale: 2 x Masala Chai by upi
    stock = env.store.products["prod_001"].stock
    line = order["lines"][0]
    with pytest.raises(ValidationFailed) as info:
        await connector.refund_order(order["id"], RefundCreate(lines=[{"line_id": line["id"], "quantity": "1"}]))
    assert info.value.code == "partial_refund_unsupported"
    with pytest.raises(ValidationFailed) as info:
        await connector.refund_order(order["id"], RefundCreate(restock=False))
    assert info.value.code == "restock_required"
    assert env.store.sales["sale_xyz789"].status == "completed"

    refunded = await connector.refund_order(order["id"], RefundCreate(lines=[{"line_id": line["id"], "quantity": "2"}]))
    assert (refunded["id"], refunded["status"], refunded["refunded_total"]) == (order["id"], "refunded", order["total"])
    assert refunded["refunds"][0]["lines"] == [{"line_id": line["id"], "quantity": "2", "amount": line["total"]}]
    assert env.store.sales["sale_xyz789"].status == "refunded"
    assert env.store.products["prod_001"].stock == stock + 2
    assert (await env.cached("inventory"))["prod_001"]["on_hand"] == str(stock + 2)
    assert await env.events("order.refunded") == 1
    with pytest.raises(Conflict) as conflict:
        await connector.refund_order(order["id"], None)
    assert conflict.value.code == "order_not_refundable"

    # refunded at the POS meanwhile: the vendor's 409 is a Conflict and the cache learns the refund
    other = next(o for o in orders.values() if o["status"] == "completed" and o["remote_id"] != "sale_xyz789")
    assert (await env.vendor("POST", f"/sales/{other['remote_id']}/refund", {})).status_code == 200
    with pytest.raises(Conflict):
        await connector.refund_order(other["id"], None)
    assert (await env.cached("orders"))[other["remote_id"]]["status"] == "refunded"


class LosesFirstAnswer(httpx.AsyncBaseTransport):
    """Sends requests to the sandbox, but loses the answer to the first ``POST .../inventory/adjustments``
    (the vendor acted; the connector sees a read timeout), as a dropped connection would."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/inventory/adjustments") and not self.lost:
            self.lost += 1
            await response.aread()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


async def test_an_adjustment_applies_once_however_its_push_is_retried(make_env) -> None:
    env = make_env(products=4, customers=0, sales=0)
    await env.connect()
    await env.sync_all()
    products, locations = await env.cached("products"), await env.cached("locations")
    store_id = locations[STORE_ID]["id"]
    start = env.store.products["prod_002"].stock
    synced_levels = await env.events("inventory.updated")

    async def accept(delta: str, ref: str | None = None) -> dict[str, Any]:
        return await (await env.connector()).create_adjustment(AdjustmentCreate(
            product_id=products["prod_002"]["id"], location_id=store_id, delta=delta, reason="restock", reference=ref))

    async def push(adjustment_id: str, **options: Any) -> dict[str, Any]:
        return await (await env.connector()).push_adjustment(adjustment_id, **options)

    first = await accept("5", "PO-17")
    assert (first["status"], first["attempts"], first["delta"]) == ("pending", 0, "5")
    assert env.store.products["prod_002"].stock == start and not env.store.adjustments  # stored, not pushed
    pushed = await push(first["id"])
    assert (pushed["id"], pushed["status"], pushed["attempts"], pushed["last_error"]) == (first["id"], "applied", 1, None)
    assert env.store.products["prod_002"].stock == start + 5
    assert (await env.cached("inventory"))["prod_002"]["on_hand"] == str(start + 5)
    [vendor_adjustment] = env.store.adjustments.values()
    assert (vendor_adjustment.delta, vendor_adjustment.reason) == (5, "restock: PO-17")

    # the answer is lost after the vendor applied it: the client retries with the same key, the vendor replays
    lossy = LosesFirstAnswer(env.app)
    env.service.registry = ConnectorRegistry([connector_for_app(env.app, transport=lossy)], load_entry_points=False)
    second = await push((await accept("-2"))["id"])
    assert lossy.lost == 1 and second["status"] == "applied"
    assert env.store.products["prod_002"].stock == start + 3 and len(env.store.adjustments) == 2

    # no client retry at all: the attempt reaches no verdict (pending, the error recorded); the
    # next push (same adjustment, same key) is replayed by the vendor and applies nothing twice
    lossy = LosesFirstAnswer(env.app)
    once = RetryPolicy(attempts=1, max_total=1, backoff=0.001, backoff_max=0.001, jitter=0)
    env.service.registry = ConnectorRegistry([connector_for_app(env.app, transport=lossy, retry=once)],
                                             load_entry_points=False)
    third = await accept("4")
    with pytest.raises(PushDeferred):
        await push(third["id"])
    async with env.db.read() as conn:
        row = await adjustments.load(conn, env.connection_id, third["id"])
    assert (row["status"], row["attempts"]) == ("pending", 1) and row["last_error"].startswith("vendor_timeout:")
    assert env.store.products["prod_002"].stock == start + 7 and len(env.store.adjustments) == 3  # it did land
    for _ in range(2):
        again = await push(third["id"])
        assert (again["id"], again["status"], again["attempts"], again["last_error"]) == (third["id"], "applied", 2, None)
    assert env.store.products["prod_002"].stock == start + 7 and len(env.store.adjustments) == 3
    assert (await env.cached("inventory"))["prod_002"]["on_hand"] == str(start + 7)
    async with env.db.read() as conn:
        rows = (await conn.execute(select(t.adjustments.c.status, t.adjustments.c.delta_milli).where(
            t.adjustments.c.connection_id == env.connection_id))).all()
    assert sorted(rows, key=lambda r: r.delta_milli) == [("applied", -2000), ("applied", 4000), ("applied", 5000)]
    assert await env.events("adjustment.failed") == 0 and await env.events("adjustment.applied") == 3
    # the gateway's own writes came back in the read-backs: no inventory.updated for them
    assert await env.events("inventory.updated") == synced_levels

    short = await push((await accept(str(-(start + 8))))["id"])  # the vendor's 409: a verdict, not a retry
    assert (short["status"], short["attempts"]) == ("failed", 1) and short["last_error"].startswith("insufficient_stock:")
    assert env.store.products["prod_002"].stock == start + 7 and await env.events("adjustment.failed") == 1
    with pytest.raises(ValidationFailed):
        await accept("1.5")
    with pytest.raises(NotFound):
        await push("adj_unknown")


async def test_the_receipt_is_the_vendors_pdf(make_env) -> None:
    env = make_env(products=3, customers=1, sales=2)
    await env.connect()
    await env.sync_all()
    order = (await env.cached("orders"))["sale_xyz789"]
    pdf = await (await env.connector()).receipt_pdf(order["id"])
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]
    with pytest.raises(NotFound):
        await (await env.connector()).receipt_pdf("ord_unknown")


async def test_sync_completes_through_429s_and_503s(make_env) -> None:
    env = make_env(products=150, customers=60, sales=30, seed=7,
                   faults={"error_rate": 0.3, "error_retry_after": 1, "rate_limit_every": 4,
                           "rate_limit_burst": 2, "rate_limit_retry_after": 1})
    await env.connect()
    results = await env.sync_all()
    assert all(r.status == "succeeded" for r in results.values())
    faulted = (await env.admin("GET", "/_sandbox/state")).json()["faulted"]
    assert faulted.get("503", 0) > 0 and faulted.get("429", 0) > 0, faulted
    await assert_mirrors_sandbox(env)


# -- webhooks from the sandbox -------------------------------------------------------------------------------
async def _verified(env: Env, connector: AIPOSConnector) -> list[InboundEvent]:
    await env.store.drain()
    events = [connector.verify_webhook(headers, body, time.time()) for headers, body in env.receiver.deliveries]
    env.receiver.deliveries.clear()
    return events


async def test_sandbox_deliveries_verify_and_apply_idempotently_in_any_order(make_env) -> None:
    env = make_env(products=6, customers=2, sales=2, faults={"webhook_duplicate_rate": 1.0, "webhook_reorder": True})
    await env.subscribe()
    await env.connect()
    await env.sync_all()
    connector = await env.connector()
    sale = await env.vendor("POST", "/sales", {"customer_id": "cust_abc123", "payment_method": "card",
                                               "items": [{"product_id": "prod_004", "qty": 1}]})
    sale_id = sale.json()["id"]
    assert (await env.vendor("POST", f"/sales/{sale_id}/refund", {})).status_code == 200
    events = await _verified(env, connector)
    kinds = sorted(e.type for e in events)
    assert kinds == ["sale.created", "sale.created", "sale.refunded", "sale.refunded"]  # each sent twice
    created = next(e for e in events if e.type == "sale.created")
    refunded = next(e for e in events if e.type == "sale.refunded")
    before = await env.events()
    for event in (refunded, created, refunded, created):  # newer first, then older, then both again
        await connector.apply_webhook(event)
    order = (await env.cached("orders"))[sale_id]
    assert order["status"] == "refunded" and order["refunded_total"] == order["total"]
    assert order["customer_id"] == (await env.cached("customers"))["cust_abc123"]["id"]
    async with env.db.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(t.records).where(
            t.records.c.connection_id == env.connection_id, t.records.c.remote_id == sale_id))).scalar_one()
    assert count == 1
    # one event, from the first apply: the order is new to the cache, so "created" (already refunded)
    assert await env.events() == before + 1
    async with env.db.read() as conn:
        newest = (await conn.execute(select(t.events.c.type).where(t.events.c.connection_id == env.connection_id)
                                     .order_by(t.events.c.seq.desc()).limit(1))).scalar_one()
    assert newest == "order.created"
    # a poll after the webhooks agrees and writes nothing for the sale
    result = (await env.sync_all("incremental"))["orders"]
    assert (result.created, result.updated) == (0, 0)


async def test_product_and_inventory_webhooks_update_the_product_and_its_stock(make_env) -> None:
    env = make_env(products=6, customers=1, sales=0)
    await env.subscribe()
    await env.connect()
    await env.sync_all()
    connector = await env.connector()
    assert (await env.vendor("POST", "/products/prod_005", {"price": 12.25, "low_stock_threshold": 50})).status_code == 200
    env.store.products["prod_005"].stock = 100  # (the threshold change moved the level; the stock stays put)
    created = await env.vendor("POST", "/products", {"name": "Kulfi", "price": 35, "stock": 8, "low_stock_threshold": 2})
    assert created.status_code == 201
    events = await _verified(env, connector)
    assert [e.type for e in events] == ["product.updated", "product.created"]
    for event in (*events, *events):
        await connector.apply_webhook(event)
    products, levels = await env.cached("products"), await env.cached("inventory")
    assert products["prod_005"]["price"] == "12.25" and levels["prod_005"]["low_stock_threshold"] == "50"
    assert products["prod_007"]["name"] == "Kulfi" and levels["prod_007"]["on_hand"] == "8"

    # an adjustment crossing the threshold: inventory.low is thin, the connector fetches the rest
    adjusted = await env.vendor("POST", "/inventory/adjustments", {"product_id": "prod_007", "delta": -7, "reason": "count"})
    assert adjusted.status_code == 201, adjusted.text
    [low] = await _verified(env, connector)
    assert low.type == "inventory.low" and set(low.payload["data"]["object"]) == {"product_id", "quantity",
                                                                                   "low_stock_threshold"}
    await connector.apply_webhook(low)
    assert (await env.cached("inventory"))["prod_007"]["on_hand"] == "1"

    # an older product.created delivered late never takes the stock back to 8
    await connector.apply_webhook(events[1])
    assert (await env.cached("inventory"))["prod_007"]["on_hand"] == "1"

    # sync.completed: nothing to cache
    assert (await env.admin("POST", "/_sandbox/sync-completed", {})).status_code in (200, 201, 202)
    [done] = await _verified(env, connector)
    before = await env.events()
    await connector.apply_webhook(done)
    assert done.type == "sync.completed" and await env.events() == before


async def test_a_delivery_for_a_connection_without_a_secret_is_refused(make_env) -> None:
    env = make_env(products=2, customers=0, sales=0)
    await env.subscribe()
    secret, env.secret = env.secret, None
    await env.connect()
    connector = await env.connector()
    await env.vendor("POST", "/products/prod_001", {"price": 1})
    await env.store.drain()
    [(headers, body)] = env.receiver.deliveries
    with pytest.raises(WebhookSignatureInvalid):
        connector.verify_webhook(headers, body, time.time())
    assert offline({"webhook_secret": secret}).verify_webhook(headers, body, time.time()).type == "product.updated"


# -- the receipt through the unified API -------------------------------------------------------------------
PDF_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.S)


def pdf_text(pdf: bytes) -> bytes:
    """The PDF's bytes with every Flate stream inflated (fpdf2 compresses page contents)."""
    parts = [pdf]
    for match in PDF_STREAM.finditer(pdf):
        with contextlib.suppress(zlib.error):
            parts.append(zlib.decompress(match.group(1)))
    return b"\n".join(parts)


def sandbox_apex(app: Any) -> type[ApexConnector]:
    """An ApexConnector wired to an Apex sandbox ``app`` in process (instant retries, no rate limit)."""

    class SandboxApex(ApexConnector):
        client_overrides: ClassVar[dict[str, Any]] = connector_for_app(app).client_overrides

    return SandboxApex


@contextlib.asynccontextmanager
async def unified_api(env: Env, key: str, *, aipos: type[AIPOSConnector] | None = None,
                      apex_app: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app over ``env``'s database, as the tenant of ``key``, with the sandbox-wired
    AI POS connector (or ``aipos``), ``local``, and an Apex wired to ``apex_app`` when given.
    ``env.service`` becomes the app's connection service, so ``env.connect`` and the API share it."""
    connectors: list[type[Any]] = [aipos or env.connector_class, LocalConnector]
    if apex_app is not None:
        connectors.append(sandbox_apex(apex_app))
    registry = ConnectorRegistry(connectors, load_entry_points=False)
    env.service = ConnectionService(env.db, registry, env.service.cipher)
    settings_ = Settings(database_url=env.db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                         api_rate_limit="100000/minute")
    services = Services.build(settings_, db=env.db, registry=registry)
    services.cipher, services.connections = env.service.cipher, env.service
    app = create_gateway(settings_, services=services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tillgate.test",
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        yield http


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    doc = response.json()
    assert (doc["status"], doc["code"]) == (status, code) and doc["request_id"]
    return doc


async def test_a_synced_sales_receipt_downloads_through_the_unified_api(make_env, tenant) -> None:
    env = make_env(products=3, customers=1, sales=2)
    async with unified_api(env, tenant[1]) as api:
        await env.connect()
        await env.sync_all()
        order = (await env.cached("orders"))["sale_xyz789"]
        base = f"/v1/connections/{env.connection_id}/orders"
        response = await api.get(f"{base}/{order['id']}/receipt")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/pdf"
        assert response.headers["content-disposition"] == f'attachment; filename="receipt-{order["id"]}.pdf"'
        assert response.headers["cache-control"] == "private, no-store"
        pdf = response.content
        assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]
        assert int(response.headers["content-length"]) == len(pdf)
        # exactly the vendor's document (the sandbox renders a sale byte for byte the same)
        assert pdf == receipt_pdf(env.store, env.store.sales["sale_xyz789"])
        text = pdf_text(pdf)
        assert b"(Receipt sale_xyz789)" in text  # the document title
        assert b"(sale_xyz789) Tj" in text and b"(AI POS Demo Store) Tj" in text  # printed on the page
        logged = (await env.admin("GET", "/_sandbox/requests")).json()
        entries = logged["data"] if isinstance(logged, dict) else logged
        assert any("/sales/sale_xyz789/receipt" in json.dumps(entry) for entry in entries)

        # a sale made through the gateway has its receipt too
        product = (await env.cached("products"))["prod_001"]
        sold = await api.post(f"{base}", json={"lines": [{"product_id": product["id"], "quantity": "1"}],
                                               "payments": [{"method": "upi", "amount": "47.25"}]})
        assert sold.status_code == 201, sold.text
        again = await api.get(f"{base}/{sold.json()['id']}/receipt")
        assert again.status_code == 200 and again.content.startswith(b"%PDF-")
        assert sold.json()["remote_id"].encode() in pdf_text(again.content)

        # 404s: unknown order, unknown connection, another tenant's connection; 401 without a key
        assert_problem(await api.get(f"{base}/ord_unknown/receipt"), 404, "not_found")
        assert_problem(await api.get("/v1/connections/con_unknown/orders/" + order["id"] + "/receipt"), 404,
                       "not_found")
        _, other = await create_tenant(env.db, "receipt-other")
        foreign = await api.get(f"{base}/{order['id']}/receipt", headers={"Authorization": f"Bearer {other.secret}"})
        assert_problem(foreign, 404, "not_found")
        no_key = await api.get(f"{base}/{order['id']}/receipt", headers={"Authorization": ""})
        assert_problem(no_key, 401, "missing_api_key")


async def test_connectors_without_receipts_answer_422(make_env, tenant) -> None:
    env = make_env(products=1, customers=0, sales=0)
    apex = create_apex_app(products=3, customers=1, invoices=2, seed=7)
    async with unified_api(env, tenant[1], apex_app=apex) as api:
        local = (await api.post("/v1/connections", json={"connector": "local", "name": "Shop"})).json()
        base = f"/v1/connections/{local['id']}"
        product = await api.post(f"{base}/products", json={"sku": "RC-1", "name": "Mug", "price": "5.00",
                                                           "track_inventory": False})
        assert product.status_code == 201, product.text
        order = await api.post(f"{base}/orders", json={"lines": [{"sku": "RC-1", "quantity": "1"}],
                                                       "payments": [{"method": "cash", "amount": "5.00"}]})
        assert order.status_code == 201, order.text
        doc = assert_problem(await api.get(f"{base}/orders/{order.json()['id']}/receipt"), 422,
                             "operation_not_supported")
        assert "local" in doc["detail"] and "receipt" in doc["detail"]
        assert_problem(await api.get(f"{base}/orders/ord_unknown/receipt"), 404, "not_found")

        created = await api.post("/v1/connections", json={
            "connector": "apex", "name": "Riyadh", "credentials": {"api_key": "apx_sandbox_key"},
            "settings": {"base_url": "http://apex.test/rest_api/v1"}})
        assert created.status_code == 201, created.text
        connector = await env.service.connector_for(env.tenant_id, created.json()["id"])
        engine = SyncEngine(env.db, connector)
        for entity in engine.entities():
            assert (await engine.run(entity, mode="full")).status == "succeeded"
        orders = (await api.get(f"/v1/connections/{created.json()['id']}/orders")).json()["data"]
        assert orders
        doc = assert_problem(await api.get(f"/v1/connections/{created.json()['id']}/orders/{orders[0]['id']}/receipt"),
                             422, "operation_not_supported")
        assert "apex" in doc["detail"]


class _NotAPDF(httpx.AsyncBaseTransport):
    """Forwards to the sandbox, but answers every receipt with an HTML page."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/receipt"):
            return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>maintenance</html>")
        return await self.inner.handle_async_request(request)


async def test_vendor_failures_of_the_receipt_are_problem_documents(make_env, tenant) -> None:
    env = make_env(products=3, customers=1, sales=3)
    async with unified_api(env, tenant[1]) as api:
        await env.connect()
        await env.sync_all()
        orders = await env.cached("orders")
        base = f"/v1/connections/{env.connection_id}/orders"
        url = f"{base}/{orders['sale_xyz789']['id']}/receipt"

        # every answer a 500, then a 503: retried, then the vendor error
        assert (await env.admin("POST", "/_sandbox/faults", {"error_rate": 1.0, "error_status": 500})).status_code == 200
        doc = assert_problem(await api.get(url), 502, "vendor_error")
        assert (doc["vendor"], doc["vendor_status"], doc["retryable"]) == ("aipos", 500, True)
        assert (await env.admin("POST", "/_sandbox/faults", {"error_status": 503})).status_code == 200
        doc = assert_problem(await api.get(url), 503, "vendor_unavailable")
        assert (doc["vendor"], doc["vendor_status"], doc["retryable"]) == ("aipos", 503, True)
        assert (await env.admin("DELETE", "/_sandbox/faults")).status_code == 200
        assert (await api.get(url)).status_code == 200

        # the vendor lost the sale: its 404 is a vendor failure (502), not the gateway's 404
        lost = next(rid for rid in orders if rid != "sale_xyz789")
        del env.store.sales[lost]
        doc = assert_problem(await api.get(f"{base}/{orders[lost]['id']}/receipt"), 502, "vendor_not_found")
        assert (doc["vendor"], doc["vendor_status"], doc["retryable"]) == ("aipos", 404, False)

    # a 200 that is not a PDF
    html = connector_for_app(env.app, transport=_NotAPDF(env.app))
    async with unified_api(env, tenant[1], aipos=html) as api:
        doc = assert_problem(await api.get(url), 502, "vendor_invalid_response")
        assert doc["vendor"] == "aipos"
