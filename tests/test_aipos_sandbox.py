"""The AI POS sandbox against its contract, connectors/aipos/API.md, and vendor-docs/aipos-api.txt.

API.md's example objects are compared field by field with the seeded records they describe; the
doc's curl examples are replayed unchanged but for the host and the key against a live sandbox,
and its Python example (written for the vendor's ``aipos`` SDK, which we do not have) is
translated to ``requests`` with the same body. Webhooks are delivered in-process through
``httpx.ASGITransport`` and made deterministic with ``store.drain()``; time is an injected clock.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import itertools
import json
import re
import shlex
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.aipos.sandbox import AIPOSFaults, create_app, sale_totals
from gateway.testing.sandbox import Faults, ServerThread

CSV_PATH = Path(__file__).resolve().parents[2] / "shared/data/online_retail_sample.csv"
KEY = "aipos_test_sandbox_key"
BASE = "/aipos/api/v1"
HOOK_URL = "http://receiver.test/hook"

# --- API.md's example objects, verbatim ----------------------------------------------------------

DOC_PRODUCT = {
    "id": "prod_001",
    "object": "product",
    "name": "Masala Chai",
    "sku": "CHAI-001",
    "barcode": "8901234567890",
    "category": "Beverages",
    "price": Decimal("45.00"),
    "tax_rate": 5,
    "unit": "each",
    "active": True,
    "stock": 120,
    "low_stock_threshold": 10,
    "created_at": "2026-03-01T09:00:00Z",
    "updated_at": "2026-03-31T10:30:00Z",
}
DOC_CUSTOMER = {
    "id": "cust_abc123",
    "object": "customer",
    "name": "Asha Rao",
    "email": "asha@example.in",
    "phone": "+919800000001",
}
DOC_SALE = {
    "id": "sale_xyz789",
    "object": "sale",
    "customer_id": "cust_abc123",
    "items": [
        {
            "product_id": "prod_001",
            "name": "Masala Chai",
            "qty": 2,
            "price": Decimal("45.00"),
            "tax_rate": 5,
            "total": Decimal("90.00"),
        }
    ],
    "payment_method": "upi",
    "status": "completed",
    "total": Decimal("90.00"),
    "tax": Decimal("4.50"),
    "grand_total": Decimal("94.50"),
    "created_at": "2026-03-31T10:30:00Z",
    "updated_at": "2026-03-31T10:30:00Z",
    "refunded_at": None,
}
# The vendor doc's sample answer to POST /sales (its numbers do not add up; API.md keeps its shape).
DOC_SALE_CREATED = {
    "id": "sale_xyz789",
    "total": 102.50,
    "tax": 5.13,
    "grand_total": 107.63,
    "created_at": "2026-03-31T10:30:00Z",
}
PRODUCT_KEYS = set(DOC_PRODUCT)
CUSTOMER_KEYS = {*DOC_CUSTOMER, "created_at", "updated_at"}
SALE_KEYS = set(DOC_SALE)
LEVEL_KEYS = {"object", "product_id", "quantity", "low_stock_threshold", "updated_at"}


# --- helpers -------------------------------------------------------------------------------------


def data(res: httpx.Response) -> Any:
    """The JSON body with numbers as Decimal (never float), so money compares exactly."""
    return json.loads(res.text, parse_float=Decimal)


def error(res: httpx.Response) -> tuple[int, str, str, str | None]:
    """``(status, type, code, param)`` of an error answer, after checking the envelope's keys."""
    body = res.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "code", "message", "param"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    e = body["error"]
    return res.status_code, e["type"], e["code"], e["param"]


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 ``...Z`` timestamp, checked to be UTC."""
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


class FakeClock:
    """A settable clock for ``create_app(clock=...)``: aware UTC, moves only when told."""

    def __init__(self, start: datetime = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Receiver:
    """An in-process webhook receiver: records every request and answers the scripted statuses, then 200.

    ``clock`` + ``step``: the receiver moves the sandbox's clock on each call (so retries are signed
    at later times); ``delay``: seconds it takes to answer.
    """

    def __init__(
        self, statuses: list[int] | None = None, clock: FakeClock | None = None, step: float = 0, delay: float = 0
    ) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])

        async def hook(request: Request) -> Response:
            self.calls.append((dict(request.headers), await request.body()))
            if clock is not None and step:
                clock.advance(step)
            if delay:
                await asyncio.sleep(delay)
            return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

        self.transport = httpx.ASGITransport(app=Starlette(routes=[Route("/hook", hook, methods=["POST"])]))

    def events(self) -> list[dict[str, Any]]:
        """The bodies received, parsed."""
        return [json.loads(body, parse_float=Decimal) for _, body in self.calls]

    def types(self) -> list[str]:
        """The event types received, in order."""
        return [e["type"] for e in self.events()]


def verify(headers: dict[str, str], body: bytes, secret: str) -> int:
    """Check ``AIPOS-Signature`` the way API.md tells a receiver to; returns its ``t``."""
    parts = [p.split("=", 1) for p in headers["aipos-signature"].split(",")]
    assert parts[0][0] == "t" and all(k == "v1" for k, _ in parts[1:]) and len(parts) >= 2, parts
    stamp = int(parts[0][1])
    event_id = headers["aipos-event-id"]
    expected = hmac.new(secret.encode(), f"{stamp}.{event_id}.".encode() + body, hashlib.sha256).hexdigest()
    assert any(hmac.compare_digest(expected, v) for _, v in parts[1:]), "no v1 signature matches"
    assert json.loads(body)["id"] == event_id
    return stamp


def client_for(app: Any, key: str | None = KEY) -> httpx.AsyncClient:
    """An in-process client on the sandbox's base path, with ``key`` as the bearer token."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=f"http://aipos.test{BASE}", headers=headers
    )


def admin_for(app: Any) -> httpx.AsyncClient:
    """A client for the ``/_sandbox`` admin routes."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://aipos.test")


async def hooked(app: Any, receiver: Receiver) -> str:
    """Register ``receiver`` as a webhook URL through the admin API; returns its secret."""
    async with admin_for(app) as admin:
        res = await admin.post("/_sandbox/webhooks", json={"url": HOOK_URL})
    assert res.status_code == 201, res.text
    return res.json()["secret"]


async def walk(c: httpx.AsyncClient, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every record of a list, page by page with ``starting_after``; checks ``has_more`` on each page."""
    seen: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        query = {"limit": limit, **params, **({"starting_after": after} if after else {})}
        res = await c.get(path, params=query)
        assert res.status_code == 200, res.text
        body = data(res)
        assert set(body) == {"object", "data", "has_more"} and body["object"] == "list"
        assert len(body["data"]) <= limit
        seen += body["data"]
        if not body["has_more"]:
            return seen
        assert len(body["data"]) == limit
        last = body["data"][-1]
        after = last.get("id") or last["product_id"]


def order_key(record: dict[str, Any]) -> tuple[datetime, str]:
    return parse_rfc3339(record["updated_at"]), record.get("id") or record["product_id"]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[Any]:
    """A synthetic sandbox: 50 products, 20 customers, 20 sales; its webhook tasks are stopped after."""
    application = create_app()
    yield application
    await application.state.aipos.webhooks.aclose()


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client with the default key."""
    async with client_for(app) as c:
        yield c


# --- objects and envelopes -----------------------------------------------------------------------


async def test_product_matches_api_md_example(client: httpx.AsyncClient) -> None:
    res = await client.get("/products/prod_001")
    assert res.status_code == 200 and res.headers["content-type"] == "application/json"
    assert data(res) == DOC_PRODUCT
    assert '"price":45.00,' in res.text and '"tax_rate":5,' in res.text  # JSON numbers, two decimals, no strings
    page = await client.get("/products")
    body = data(page)
    assert set(body) == {"object", "data", "has_more"} and body["object"] == "list" and body["has_more"] is True
    assert len(body["data"]) == 20  # the default limit
    assert all(set(p) == PRODUCT_KEYS and p["object"] == "product" for p in body["data"])
    assert all(re.fullmatch(r"prod_\d{3}", p["id"]) for p in body["data"])


async def test_customer_matches_api_md_example_and_create(client: httpx.AsyncClient) -> None:
    body = data(await client.get("/customers/cust_abc123"))
    assert {k: body[k] for k in DOC_CUSTOMER} == DOC_CUSTOMER and set(body) == CUSTOMER_KEYS
    res = await client.post(
        "/customers", json={"name": "Ravi Kumar", "email": "ravi@example.in", "phone": "+919811111111"}
    )
    assert res.status_code == 201
    created = data(res)
    assert re.fullmatch(r"cust_[a-z0-9]{6}", created["id"]) and set(created) == CUSTOMER_KEYS
    assert created["created_at"] == created["updated_at"]
    assert data(await client.get(f"/customers/{created['id']}")) == created
    only_name = data(await client.post("/customers", json={"name": "Walk-in Regular"}))
    assert (only_name["email"], only_name["phone"]) == (None, None)
    everyone = await walk(client, "/customers", 100)
    assert len(everyone) == 22 and everyone[-2:] == [created, only_name]


async def test_sale_matches_api_md_example(client: httpx.AsyncClient) -> None:
    res = await client.get("/sales/sale_xyz789")
    assert res.status_code == 200
    assert data(res) == DOC_SALE
    sales = await walk(client, "/sales", 100)
    assert len(sales) == 20 and all(set(s) == SALE_KEYS and s["object"] == "sale" for s in sales)
    assert all(re.fullmatch(r"sale_[a-z0-9]{6}", s["id"]) for s in sales)
    for sale in sales:  # every seeded sale obeys the totals rule
        raw_tax = sum(i["total"] * i["tax_rate"] / 100 for i in sale["items"])
        assert sale["total"] == sum(i["qty"] * i["price"] for i in sale["items"])
        assert sale["tax"] == Decimal(raw_tax).quantize(Decimal("0.01"), ROUND_HALF_UP)
        assert sale["grand_total"] == sale["total"] + sale["tax"]
    assert {s["status"] for s in sales} == {"completed", "refunded"}
    assert all((s["refunded_at"] is None) == (s["status"] == "completed") for s in sales)


async def test_create_sale_answer_takes_stock_and_is_listed(app: Any, client: httpx.AsyncClient) -> None:
    res = await client.post(
        "/sales",
        json={
            "customer_id": "cust_abc123",
            "items": [{"product_id": "prod_001", "qty": 2, "price": 45.00}, {"product_id": "prod_002", "qty": 1}],
            "payment_method": "card",
        },
    )
    assert res.status_code == 201
    created = data(res)
    assert set(created) == set(DOC_SALE_CREATED)
    # 90.00 + 60.00 (catalog price when price is left out); tax 4.50 + 3.00
    assert (created["total"], created["tax"], created["grand_total"]) == (
        Decimal("150.00"),
        Decimal("7.50"),
        Decimal("157.50"),
    )
    sale = data(await client.get(f"/sales/{created['id']}"))
    assert sale["created_at"] == created["created_at"] == sale["updated_at"]
    assert [(i["product_id"], i["name"], i["qty"], i["price"], i["total"]) for i in sale["items"]] == [
        ("prod_001", "Masala Chai", 2, Decimal("45.00"), Decimal("90.00")),
        ("prod_002", "Filter Coffee", 1, Decimal("60.00"), Decimal("60.00")),
    ]
    assert (sale["status"], sale["payment_method"], sale["refunded_at"]) == ("completed", "card", None)
    assert data(await client.get("/products/prod_001"))["stock"] == 118
    assert app.state.aipos.products["prod_002"].stock == 34 - 1
    newest = data(await client.get("/sales", params={"updated_since": sale["updated_at"]}))["data"]
    assert [s["id"] for s in newest] == [created["id"]]


async def test_totals_round_tax_once_half_up() -> None:
    app = create_app(products=0, sales=0)
    async with client_for(app) as c:
        dime = data(await c.post("/products", json={"name": "Toffee", "price": 0.10, "stock": 100}))
        assert dime["tax_rate"] == 5  # the default rate
        cases = [
            # three lines of 0.10 at 5 %: 0.005 each. Rounded per line 0.03; rounded once 0.015 -> 0.02
            ([{"product_id": dime["id"], "qty": 1}] * 3, "0.30", "0.02", "0.32"),
            # 2.10 at 5 % = 0.105: half up gives 0.11 (half even would give 0.10)
            ([{"product_id": dime["id"], "qty": 1, "price": 2.10}], "2.10", "0.11", "2.21"),
        ]
        for items, total, tax, grand in cases:
            res = await c.post("/sales", json={"items": items, "payment_method": "cash"})
            assert res.status_code == 201, res.text
            body = data(res)
            assert (body["total"], body["tax"], body["grand_total"]) == (Decimal(total), Decimal(tax), Decimal(grand))
        per_line = sum((Decimal("0.10") * 5 / 100).quantize(Decimal("0.01"), ROUND_HALF_UP) for _ in range(3))
        assert per_line == Decimal("0.03")  # the rule the sandbox must not use
        mixed = data(await c.post("/products", json={"name": "Soap", "price": 33.33, "tax_rate": 18, "stock": 10}))
        body = data(
            await c.post(
                "/sales",
                json={
                    "items": [
                        {"product_id": mixed["id"], "qty": 3},
                        {"product_id": dime["id"], "qty": 7, "price": 1.05},
                    ],
                    "payment_method": "wallet",
                },
            )
        )
        # 99.99 * 18 % = 17.9982; 7.35 * 5 % = 0.3675; together 18.3657 -> 18.37
        assert (body["total"], body["tax"], body["grand_total"]) == (
            Decimal("107.34"),
            Decimal("18.37"),
            Decimal("125.71"),
        )
    sale = app.state.aipos.sales[body["id"]]
    assert sale_totals(sale.items) == (sale.total, sale.tax, sale.grand_total)
    assert all(isinstance(v, Decimal) for v in (sale.total, sale.tax, sale.items[0].price))


async def test_inventory_levels_and_adjustments(app: Any, client: httpx.AsyncClient) -> None:
    levels = await walk(client, "/inventory", 100)
    assert len(levels) == 50 and all(set(level) == LEVEL_KEYS for level in levels)
    chai = data(await client.get("/inventory", params={"product_id": "prod_001"}))
    assert chai == {
        "object": "list",
        "data": [
            {
                "object": "inventory_level",
                "product_id": "prod_001",
                "quantity": 120,
                "low_stock_threshold": 10,
                "updated_at": "2026-03-31T10:30:00Z",
            }
        ],
        "has_more": False,
    }
    assert data(await client.get("/inventory", params={"product_id": "prod_999"}))["data"] == []
    res = await client.post(
        "/inventory/adjustments", json={"product_id": "prod_001", "delta": -20, "reason": "damaged"}
    )
    assert res.status_code == 201
    adj = data(res)
    assert set(adj) == {"object", "id", "product_id", "delta", "quantity", "reason", "created_at"}
    assert (adj["object"], adj["product_id"], adj["delta"], adj["quantity"], adj["reason"]) == (
        "inventory_adjustment",
        "prod_001",
        -20,
        100,
        "damaged",
    )
    assert re.fullmatch(r"adj_[a-z0-9]{6}", adj["id"])
    res = await client.post("/inventory/adjustments", json={"product_id": "prod_001", "delta": 5})
    assert res.status_code == 201 and data(res)["quantity"] == 105 and data(res)["reason"] is None
    level = data(await client.get("/inventory", params={"product_id": "prod_001"}))["data"][0]
    assert level["quantity"] == 105 and level["updated_at"] == data(res)["created_at"]
    product = data(await client.get("/products/prod_001"))
    assert product["stock"] == 105 and product["updated_at"] == level["updated_at"]
    res = await client.post("/inventory/adjustments", json={"product_id": "prod_001", "delta": -106})
    assert error(res) == (409, "invalid_request_error", "insufficient_stock", "delta")
    res = await client.post("/inventory/adjustments", json={"product_id": "prod_404", "delta": 1})
    assert error(res) == (400, "invalid_request_error", "resource_missing", "product_id")
    assert app.state.aipos.products["prod_001"].stock == 105 and len(app.state.aipos.adjustments) == 2


async def test_health_needs_no_key_and_is_not_counted(app: Any) -> None:
    async with client_for(app, None) as anon:
        res = await anon.get("/health")
    assert res.status_code == 200
    body = res.json()
    assert set(body) == {"status", "store", "time"} and (body["status"], body["store"]) == ("ok", "AI POS Demo Store")
    assert abs(parse_rfc3339(body["time"]) - datetime.now(UTC)) < timedelta(seconds=5)
    assert "x-ratelimit-remaining" not in res.headers
    async with client_for(create_app(store="Chai Point Indiranagar"), None) as anon:
        assert (await anon.get("/health")).json()["store"] == "Chai Point Indiranagar"


# --- errors --------------------------------------------------------------------------------------


async def test_auth_failures(app: Any) -> None:
    cases = [
        {},
        {"Authorization": "Bearer aipos_wrong_key"},
        {"Authorization": "Bearer sk_live_123"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://aipos.test{BASE}") as c:
        for headers in cases:
            for method, path in (("GET", "/products"), ("GET", "/sales/sale_xyz789/receipt"), ("GET", "/nope")):
                res = await c.request(method, path, headers=headers)
                assert error(res) == (401, "authentication_error", "invalid_api_key", None), (headers, path)
                assert "x-ratelimit-limit" not in res.headers
            res = await c.post("/sales", headers=headers, json={"items": [{"product_id": "prod_001", "qty": 1}]})
            assert res.status_code == 401
        assert (await c.get("/products", headers={"authorization": f"bearer {KEY}"})).status_code == 200
    assert app.state.aipos.products["prod_001"].stock == 120 and len(app.state.aipos.sales) == 20


async def test_configured_keys() -> None:
    app = create_app(api_keys=["aipos_one", "aipos_two"])
    for key, status in (("aipos_one", 200), ("aipos_two", 200), (KEY, 401)):
        async with client_for(app, key) as c:
            assert (await c.get("/products")).status_code == status
    for bad in (["apx_sandbox_key"], [], ["aipos_ok", "live_x"]):
        with pytest.raises(ValueError):
            create_app(api_keys=bad)


async def test_not_found_and_method_not_allowed(client: httpx.AsyncClient) -> None:
    for method, path, kind in (
        ("GET", "/products/prod_999", "product"),
        ("POST", "/products/prod_999", "product"),
        ("GET", "/customers/cust_zzzzzz", "customer"),
        ("GET", "/sales/sale_zzzzzz", "sale"),
        ("GET", "/sales/sale_zzzzzz/receipt", "sale"),
        ("POST", "/sales/sale_zzzzzz/refund", "sale"),
    ):
        res = await client.request(method, path, json={} if method == "POST" else None)
        assert error(res) == (404, "invalid_request_error", "resource_missing", "id"), path
        assert kind in res.json()["error"]["message"]
    res = await client.get("/orders")
    assert error(res) == (404, "invalid_request_error", "resource_missing", None)
    assert res.headers["x-ratelimit-limit"] == "1000"  # a valid key's answers all carry the headers
    res = await client.delete("/products")
    assert error(res)[:3] == (405, "invalid_request_error", "method_not_allowed")
    assert {"GET", "POST"} <= set(res.headers["allow"].split(", "))


BAD_BODIES: list[tuple[str, Any, int, str, str | None]] = [
    # sales
    ("/sales", {}, 400, "parameter_missing", "payment_method"),
    ("/sales", {"payment_method": "upi"}, 400, "parameter_missing", "items"),
    ("/sales", {"payment_method": "upi", "items": []}, 400, "parameter_invalid", "items"),
    ("/sales", {"payment_method": "upi", "items": "prod_001"}, 400, "parameter_invalid", "items"),
    ("/sales", {"payment_method": "upi", "items": ["prod_001"]}, 400, "parameter_invalid", "items[0]"),
    (
        "/sales",
        {"payment_method": "bitcoin", "items": [{"product_id": "prod_001", "qty": 1}]},
        400,
        "parameter_invalid",
        "payment_method",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001"}]},
        400,
        "parameter_missing",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": "2"}]},
        400,
        "parameter_invalid",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": "two"}]},
        400,
        "parameter_invalid",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": -1}]},
        400,
        "parameter_invalid",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": 0}]},
        400,
        "parameter_invalid",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": 1.5}]},
        400,
        "parameter_invalid",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": 2.0}]},
        400,
        "parameter_invalid",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": True}]},
        400,
        "parameter_invalid",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": None}]},
        400,
        "parameter_missing",
        "items[0][qty]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": 1, "price": -1}]},
        400,
        "parameter_invalid",
        "items[0][price]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": 1, "price": "45.00"}]},
        400,
        "parameter_invalid",
        "items[0][price]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": 1, "price": 45.001}]},
        400,
        "parameter_invalid",
        "items[0][price]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "quantity": 1}]},
        400,
        "parameter_invalid",
        "items[0][quantity]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_404", "qty": 1}]},
        400,
        "resource_missing",
        "items[0][product_id]",
    ),
    (
        "/sales",
        {"payment_method": "upi", "customer_id": "cust_nobody", "items": [{"product_id": "prod_001", "qty": 1}]},
        400,
        "resource_missing",
        "customer_id",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": 1}] * 101},
        400,
        "parameter_invalid",
        "items",
    ),
    (
        "/sales",
        {"payment_method": "upi", "items": [{"product_id": "prod_001", "qty": 1}], "currency": "INR"},
        400,
        "parameter_invalid",
        "currency",
    ),
    # products
    ("/products", {}, 400, "parameter_missing", "name"),
    ("/products", {"name": "  ", "price": 1}, 400, "parameter_missing", "name"),
    ("/products", {"name": "Poha"}, 400, "parameter_missing", "price"),
    ("/products", {"name": "Poha", "price": -0.01}, 400, "parameter_invalid", "price"),
    ("/products", {"name": "Poha", "price": 1e300}, 400, "parameter_invalid", "price"),
    ("/products", {"name": "Poha", "price": 35, "tax_rate": 101}, 400, "parameter_invalid", "tax_rate"),
    ("/products", {"name": "Poha", "price": 35, "stock": -1}, 400, "parameter_invalid", "stock"),
    (
        "/products",
        {"name": "Poha", "price": 35, "low_stock_threshold": 1.5},
        400,
        "parameter_invalid",
        "low_stock_threshold",
    ),
    ("/products", {"name": "Poha", "price": 35, "active": "yes"}, 400, "parameter_invalid", "active"),
    ("/products", {"name": "Poha", "price": 35, "sku": "CHAI-001"}, 400, "parameter_invalid", "sku"),
    ("/products/prod_001", {"stock": 5}, 400, "parameter_invalid", "stock"),
    ("/products/prod_001", {"name": ""}, 400, "parameter_invalid", "name"),
    ("/products/prod_001", {"price": None}, 400, "parameter_invalid", "price"),
    ("/products/prod_002", {"sku": "CHAI-001"}, 400, "parameter_invalid", "sku"),
    # customers, adjustments, refunds
    ("/customers", {}, 400, "parameter_missing", "name"),
    ("/customers", {"name": "A", "email": "not-an-email"}, 400, "parameter_invalid", "email"),
    ("/inventory/adjustments", {"product_id": "prod_001"}, 400, "parameter_missing", "delta"),
    ("/inventory/adjustments", {"product_id": "prod_001", "delta": 0}, 400, "parameter_invalid", "delta"),
    ("/inventory/adjustments", {"product_id": "prod_001", "delta": 1.0}, 400, "parameter_invalid", "delta"),
    ("/inventory/adjustments", {"product_id": "prod_001", "delta": "-1"}, 400, "parameter_invalid", "delta"),
    ("/sales/sale_xyz789/refund", {"reason": "changed mind"}, 400, "parameter_invalid", "reason"),
]


async def test_bad_bodies_answer_400_and_change_nothing(app: Any, client: httpx.AsyncClient) -> None:
    store = app.state.aipos
    before = ({p.id: (p.stock, p.updated_at, p.name) for p in store.products.values()}, set(store.sales))
    for path, body, status, code, param in BAD_BODIES:
        res = await client.post(path, json=body)
        assert error(res) == (status, "invalid_request_error", code, param), (path, body, res.text)
    for raw in (b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"name": "x", "price": NaN}'):
        res = await client.post("/products", content=raw, headers={"Content-Type": "application/json"})
        assert error(res) == (400, "invalid_request_error", "parameter_invalid", None), raw
    after = ({p.id: (p.stock, p.updated_at, p.name) for p in store.products.values()}, set(store.sales))
    assert after == before and store.sales["sale_xyz789"].status == "completed" and not store.adjustments
    assert len(store.products) == 50 and len(store.customers) == 20


async def test_insufficient_stock_changes_nothing(app: Any, client: httpx.AsyncClient) -> None:
    store = app.state.aipos
    receiver = Receiver()
    store.webhooks.transport = receiver.transport
    await hooked(app, receiver)
    chai = store.products["prod_001"]
    stamp = chai.updated_at
    res = await client.post(
        "/sales",
        json={
            "items": [
                {"product_id": "prod_002", "qty": 1},
                {"product_id": "prod_001", "qty": 100},
                {"product_id": "prod_001", "qty": 21},  # 121 in all, 120 on hand
            ],
            "payment_method": "cash",
        },
    )
    assert error(res) == (409, "invalid_request_error", "insufficient_stock", "items[2][qty]")
    assert "120" in res.json()["error"]["message"]
    assert (chai.stock, chai.updated_at, store.products["prod_002"].stock, len(store.sales)) == (120, stamp, 34, 20)
    assert data(await client.get("/products/prod_001"))["stock"] == 120
    await store.drain()
    assert receiver.calls == [] and list(store.events) == []
    exact = await client.post(
        "/sales", json={"items": [{"product_id": "prod_001", "qty": 120}], "payment_method": "cash"}
    )
    assert exact.status_code == 201 and chai.stock == 0


async def test_product_create_and_update(app: Any, client: httpx.AsyncClient) -> None:
    res = await client.post("/products", json={"name": "Poha", "price": 35, "sku": "FOOD-051", "stock": 40})
    assert res.status_code == 201
    poha = data(res)
    assert poha == {
        "id": "prod_051",
        "object": "product",
        "name": "Poha",
        "sku": "FOOD-051",
        "barcode": None,
        "category": None,
        "price": Decimal("35.00"),
        "tax_rate": 5,
        "unit": "each",
        "active": True,
        "stock": 40,
        "low_stock_threshold": 0,
        "created_at": poha["created_at"],
        "updated_at": poha["created_at"],
    }
    assert '"price":35.00' in res.text
    res = await client.post(
        "/products/prod_051", json={"price": 38.5, "tax_rate": 12.5, "category": "Food", "sku": None, "active": False}
    )
    assert res.status_code == 200
    updated = data(res)
    assert (updated["price"], updated["tax_rate"], updated["category"], updated["sku"], updated["active"]) == (
        Decimal("38.50"),
        Decimal("12.5"),
        "Food",
        None,
        False,
    )
    assert updated["stock"] == 40 and updated["created_at"] == poha["created_at"]
    assert parse_rfc3339(updated["updated_at"]) > parse_rfc3339(poha["updated_at"])
    # The sku it gave up is free again; an update that changes nothing keeps updated_at.
    assert (await client.post("/products", json={"name": "Poha 2", "price": 1, "sku": "FOOD-051"})).status_code == 201
    same = data(await client.post("/products/prod_051", json={"price": 38.50, "name": "Poha"}))
    assert same == updated and data(await client.post("/products/prod_051", json={})) == updated


async def test_refund_puts_stock_back_once(app: Any, client: httpx.AsyncClient) -> None:
    sale = data(
        await client.post(
            "/sales",
            json={
                "items": [{"product_id": "prod_003", "qty": 4}, {"product_id": "prod_003", "qty": 1}],
                "payment_method": "upi",
            },
        )
    )
    stock = app.state.aipos.products["prod_003"].stock
    res = await client.post(f"/sales/{sale['id']}/refund")
    assert res.status_code == 200
    refunded = data(res)
    assert set(refunded) == SALE_KEYS and refunded["status"] == "refunded"
    assert refunded["refunded_at"] == refunded["updated_at"] and refunded["created_at"] == sale["created_at"]
    assert parse_rfc3339(refunded["updated_at"]) > parse_rfc3339(sale["created_at"])
    assert app.state.aipos.products["prod_003"].stock == stock + 5
    again = await client.post(f"/sales/{sale['id']}/refund", json={})
    assert error(again) == (409, "invalid_request_error", "sale_already_refunded", "id")
    assert app.state.aipos.products["prod_003"].stock == stock + 5
    assert (await walk(client, "/sales", 100))[-1] == refunded  # the newest change lists last


# --- idempotency ---------------------------------------------------------------------------------


async def test_idempotency_replays_and_rejects_reuse() -> None:
    clock = FakeClock()
    app = create_app(clock=clock, api_keys=[KEY, "aipos_other"])
    store = app.state.aipos
    body = {
        "customer_id": "cust_abc123",
        "items": [{"product_id": "prod_001", "qty": 2, "price": 45.00}],
        "payment_method": "upi",
    }
    async with client_for(app) as c, client_for(app, "aipos_other") as other:
        first = await c.post("/sales", json=body, headers={"Idempotency-Key": "order-1001"})
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        replay = await c.post("/sales", content=json.dumps(body, indent=2), headers={"Idempotency-Key": "order-1001"})
        assert (replay.status_code, replay.content) == (201, first.content)
        assert replay.headers["idempotent-replayed"] == "true" and replay.headers["content-type"] == "application/json"
        assert len(store.sales) == 21 and store.products["prod_001"].stock == 118  # acted once
        reused = await c.post(
            "/sales", json={**body, "payment_method": "cash"}, headers={"Idempotency-Key": "order-1001"}
        )
        assert error(reused) == (409, "invalid_request_error", "idempotency_key_reused", "Idempotency-Key")
        elsewhere = await c.post("/customers", json={"name": "X"}, headers={"Idempotency-Key": "order-1001"})
        assert error(elsewhere)[2] == "idempotency_key_reused"
        # Keys belong to one API key.
        theirs = await other.post("/sales", json=body, headers={"Idempotency-Key": "order-1001"})
        assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
        # A 400 is not kept: the corrected request may reuse the key.
        bad = await c.post("/customers", json={"name": ""}, headers={"Idempotency-Key": "cust-7"})
        assert bad.status_code == 400
        good = await c.post("/customers", json={"name": "Meera"}, headers={"Idempotency-Key": "cust-7"})
        assert good.status_code == 201
        # Business errors are kept and replayed.
        short = {"product_id": "prod_001", "delta": -1000}
        conflict = await c.post("/inventory/adjustments", json=short, headers={"Idempotency-Key": "adj-1"})
        assert conflict.status_code == 409
        store.products["prod_001"].stock = 5000
        assert (
            await c.post("/inventory/adjustments", json=short, headers={"Idempotency-Key": "adj-1"})
        ).content == conflict.content
        assert store.products["prod_001"].stock == 5000
        too_long = await c.post("/customers", json={"name": "Y"}, headers={"Idempotency-Key": "k" * 256})
        assert error(too_long) == (400, "invalid_request_error", "parameter_invalid", "Idempotency-Key")
        # After 24 h the key is forgotten and the request acts again.
        clock.advance(24 * 3600 + 1)
        later = await c.post("/sales", json=body, headers={"Idempotency-Key": "order-1001"})
        assert later.status_code == 201 and later.json()["id"] != first.json()["id"]
        assert len(store.sales) == 23
        # Without a key, nothing is replayed.
        a = await c.post("/customers", json={"name": "Same"})
        b = await c.post("/customers", json={"name": "Same"})
        assert a.json()["id"] != b.json()["id"]


# --- pagination ----------------------------------------------------------------------------------


async def test_pagination_walks_every_list_to_the_end() -> None:
    app = create_app(products=230, customers=45, sales=61)
    async with client_for(app) as c:
        for path, count, limit in (
            ("/products", 230, 100),
            ("/customers", 45, 7),
            ("/sales", 61, 20),
            ("/inventory", 230, 33),
        ):
            records = await walk(c, path, limit)
            ids = [r.get("id") or r["product_id"] for r in records]
            assert len(ids) == count == len(set(ids)), path
            assert [order_key(r) for r in records] == sorted(order_key(r) for r in records), path
        last = data(await c.get("/products", params={"limit": 30, "starting_after": ids[-1]}))
        assert last == {"object": "list", "data": [], "has_more": False}
        exact = data(await c.get("/customers", params={"limit": 45}))
        assert len(exact["data"]) == 45 and exact["has_more"] is False
        assert len(data(await c.get("/products", params={"limit": 100}))["data"]) == 100
        for params in ({"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"limit": "-1"}, {"starting_after": "prod_999"}):
            res = await c.get("/products", params=params)
            assert error(res) == (400, "invalid_request_error", "parameter_invalid", next(iter(params))), params


async def test_pagination_does_not_skip_records_that_change_between_pages(app: Any, client: httpx.AsyncClient) -> None:
    first = data(await client.get("/products", params={"limit": 10}))
    cursor = first["data"][-1]["id"]
    everything_after = [p["id"] for p in (await walk(client, "/products", 100))][10:]
    # The cursor's own record and one on the next page change before the next page is asked for.
    await client.post(f"/products/{cursor}", json={"name": "Renamed"})
    await client.post(f"/products/{everything_after[3]}", json={"price": 1})
    rest = await walk(client, "/products", 15, starting_after=cursor)
    ids = [p["id"] for p in rest]
    assert set(everything_after) <= set(ids)  # nothing skipped
    assert ids[-2:] == [cursor, everything_after[3]]  # the changed ones come again, at the end


async def test_updated_since_is_the_incremental_filter() -> None:
    clock = FakeClock()
    app = create_app(clock=clock)
    async with client_for(app) as c:
        assert len(await walk(c, "/products", 100, updated_since="2026-03-01T09:00:00Z")) == 50
        assert data(await c.get("/products", params={"updated_since": "2026-04-01T00:00:00Z"}))["data"] == []
        clock.advance(60)
        changed_at = clock.now
        await c.post("/products/prod_007", json={"price": 125})
        sale = data(
            await c.post("/sales", json={"items": [{"product_id": "prod_004", "qty": 1}], "payment_method": "cash"})
        )
        cust = data(await c.post("/customers", json={"name": "Kabir"}))
        since = changed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        products = data(await c.get("/products", params={"updated_since": since}))["data"]
        assert [p["id"] for p in products] == ["prod_007", "prod_004"]  # the sale moved prod_004's stock
        assert [s["id"] for s in data(await c.get("/sales", params={"updated_since": since}))["data"]] == [sale["id"]]
        assert [x["id"] for x in data(await c.get("/customers", params={"updated_since": since}))["data"]] == [
            cust["id"]
        ]
        levels = data(await c.get("/inventory", params={"updated_since": since}))["data"]
        assert [level["product_id"] for level in levels] == ["prod_004"]  # a price change is not an inventory change
        # At or after: the exact updated_at of a record includes it; the same moment with an offset too.
        at = products[1]["updated_at"]
        assert [p["id"] for p in data(await c.get("/products", params={"updated_since": at}))["data"]] == ["prod_004"]
        shifted = (parse_rfc3339(at) + timedelta(hours=5, minutes=30)).replace(tzinfo=None).isoformat() + "+05:30"
        assert [p["id"] for p in data(await c.get("/products", params={"updated_since": shifted}))["data"]] == [
            "prod_004"
        ]
        for bad in ("yesterday", "2026-04-01", "2026-04-01T12:00:00"):
            res = await c.get("/products", params={"updated_since": bad})
            assert error(res) == (400, "invalid_request_error", "parameter_invalid", "updated_since"), bad


async def test_updated_at_changes_on_every_change_even_with_a_stopped_clock() -> None:
    clock = FakeClock()  # never advanced: every change still gets a later updated_at
    app = create_app(clock=clock)
    async with client_for(app) as c:
        stamps = [data(await c.get("/products/prod_005"))["updated_at"]]
        for body in ({"price": 91}, {"price": 92}, {"name": "Mysore Masala Dosa"}):
            stamps.append(data(await c.post("/products/prod_005", json=body))["updated_at"])
        await c.post("/inventory/adjustments", json={"product_id": "prod_005", "delta": 1})
        stamps.append(data(await c.get("/products/prod_005"))["updated_at"])
        sale = data(
            await c.post("/sales", json={"items": [{"product_id": "prod_005", "qty": 1}], "payment_method": "card"})
        )
        stamps.append(data(await c.get("/products/prod_005"))["updated_at"])
        refunded = data(await c.post(f"/sales/{sale['id']}/refund"))
        stamps.append(data(await c.get("/products/prod_005"))["updated_at"])
    times = [parse_rfc3339(s) for s in stamps]
    assert all(a < b for a, b in itertools.pairwise(times)), stamps
    assert times[1] == clock.now and parse_rfc3339(refunded["updated_at"]) == times[-1]
    assert parse_rfc3339(refunded["updated_at"]) > parse_rfc3339(sale["created_at"])


# --- rate limit ----------------------------------------------------------------------------------


async def test_rate_limit_1000_per_minute_sliding_window() -> None:
    clock = FakeClock()
    app = create_app(clock=clock, api_keys=[KEY, "aipos_other"])
    async with client_for(app) as c, client_for(app, "aipos_other") as other:
        remaining = []
        for n in range(1000):
            if n == 500:
                clock.advance(30)  # half the requests at t=0, half at t=30
            res = await c.get("/customers", params={"limit": 1})
            assert res.status_code == 200
            remaining.append(int(res.headers["x-ratelimit-remaining"]))
            assert res.headers["x-ratelimit-limit"] == "1000"
        assert remaining == list(range(999, -1, -1))
        res = await c.get("/customers")
        assert error(res) == (429, "rate_limit_error", "rate_limit_exceeded", None)
        assert (res.headers["retry-after"], res.headers["x-ratelimit-remaining"]) == ("30", "0")
        assert (await c.post("/customers", json={"name": "Late"})).status_code == 429
        assert (await other.get("/customers")).status_code == 200  # per key
        assert (await c.get("/health")).status_code == 200  # not rate limited
        clock.advance(29.5)
        res = await c.get("/customers")
        assert res.status_code == 429 and res.headers["retry-after"] == "1"
        clock.advance(0.5)  # the first 500 leave the window
        res = await c.get("/customers")
        assert res.status_code == 200 and res.headers["x-ratelimit-remaining"] == "499"
    assert len(app.state.aipos.customers) == 20  # the limited POST did nothing


# --- receipts ------------------------------------------------------------------------------------


def pdf_text(pdf: bytes) -> str:
    """The text drawn by the PDF's (Flate-compressed) content streams, ``(...) Tj`` operands joined."""
    shown: list[str] = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            content = zlib.decompress(match.group(1))
        except zlib.error:
            content = match.group(1)
        for operand in re.findall(rb"\(((?:[^\\)]|\\.)*)\) ?Tj", content):
            shown.append(re.sub(rb"\\(.)", rb"\1", operand).decode("latin-1"))
    return "\n".join(shown)


async def test_receipt_is_a_one_page_pdf_made_by_fpdf2(app: Any, client: httpx.AsyncClient) -> None:
    res = await client.get("/sales/sale_xyz789/receipt")
    assert res.status_code == 200 and res.headers["content-type"] == "application/pdf"
    assert res.headers["content-disposition"] == 'attachment; filename="receipt_sale_xyz789.pdf"'
    pdf = res.content
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert b"/Count 1" in pdf and pdf.count(b"/Type /Page\n") == 1
    assert re.search(rb"/Producer \(fpdf2 2\.\d+", pdf)
    assert b"/CreationDate (D:20260331103000Z" in pdf
    text = pdf_text(pdf)
    for expected in (
        "AI POS Demo Store",
        "sale_xyz789",
        "31 Mar 2026 10:30 UTC",
        "Asha Rao",
        "Masala Chai",
        "2 x 45.00",
        "90.00",
        "4.50",
        "94.50",
        "Grand total (INR)",
        "UPI",
    ):
        assert expected in text, expected
    assert "REFUNDED" not in text
    assert (await client.get("/sales/sale_xyz789/receipt")).content == pdf  # the same sale, the same bytes
    await client.post("/sales/sale_xyz789/refund")
    refunded = pdf_text((await client.get("/sales/sale_xyz789/receipt")).content)
    assert "REFUNDED" in refunded
    big = data(
        await client.post(
            "/sales",
            json={
                "items": [{"product_id": f"prod_{n:03d}", "qty": 1} for n in range(1, 51) if n % 25] * 2,
                "payment_method": "cash",
            },
        )
    )
    long_pdf = (await client.get(f"/sales/{big['id']}/receipt")).content
    assert b"/Count 1" in long_pdf and big["id"] in pdf_text(long_pdf)  # 96 lines still fit one page


# --- the vendor doc's examples, unchanged but for host and key -----------------------------------

DOC_HOST = "https://sbstechnologies.in"
DOC_CURL_AUTH = """
curl -X GET https://sbstechnologies.in/aipos/api/v1/products \\
-H "Authorization: Bearer YOUR_API_KEY"
"""
DOC_CURL_CREATE_SALE = """
curl -X POST https://sbstechnologies.in/aipos/api/v1/sales \\
-H "Authorization: Bearer YOUR_API_KEY" \\
-H "Content-Type: application/json" \\
-d '{
"customer_id": "cust_abc123",
"items": [{ "product_id": "prod_001", "qty": 2, "price": 45.00 }],
"payment_method": "upi"
}'
"""


def run_curl(command: str, base_url: str) -> Any:
    """Replay a curl command (``-X``, ``-H``, ``-d``) with ``requests``, host and key swapped."""
    import requests

    command = command.replace(DOC_HOST, base_url).replace("YOUR_API_KEY", KEY)
    args = shlex.split(command.replace("\\\n", " "))
    assert args[0] == "curl"
    method, url, headers, body = "GET", None, {}, None
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-X":
            method = next(rest)
        elif arg == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            body = next(rest)
        else:
            url = arg
    assert url is not None
    return requests.request(method, url, headers=headers, data=body, timeout=10)


@pytest.fixture(scope="module")
def live_sandbox() -> Iterator[str]:
    """A sandbox served by uvicorn on 127.0.0.1 and a free port."""
    with ServerThread(create_app()) as server:
        yield server.base_url


def test_doc_curl_examples_run_against_the_sandbox(live_sandbox: str) -> None:
    res = run_curl(DOC_CURL_AUTH, live_sandbox)
    assert res.status_code == 200 and res.json()["object"] == "list" and res.json()["data"]
    res = run_curl(DOC_CURL_CREATE_SALE, live_sandbox)
    assert res.status_code == 201, res.text
    body = res.json()
    assert set(body) == set(DOC_SALE_CREATED)
    assert all(isinstance(body[k], float) for k in ("total", "tax", "grand_total"))  # JSON numbers, as the doc's
    assert (body["total"], body["tax"], body["grand_total"]) == (90.00, 4.50, 94.50)
    assert '"total":90.00,"tax":4.50,"grand_total":94.50' in res.text
    assert re.fullmatch(r"sale_[a-z0-9]{6}", body["id"]) and parse_rfc3339(body["created_at"])


def test_doc_python_example_translated_to_requests(live_sandbox: str) -> None:
    # The doc's Python example uses the vendor's SDK, which we do not have:
    #     import aipos
    #     client = aipos.Client(api_key='YOUR_API_KEY')
    #     client.sales.create(
    #         customer_id='cust_abc123',
    #         items=[{'product_id': 'prod_001', 'qty': 2, 'price': 45.00}],
    #         payment_method='upi'
    #     )
    # Translated to requests with the same body (base URL and bearer auth as the doc gives them):
    import requests

    res = requests.post(
        f"{live_sandbox}/aipos/api/v1/sales",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "customer_id": "cust_abc123",
            "items": [{"product_id": "prod_001", "qty": 2, "price": 45.00}],
            "payment_method": "upi",
        },
        timeout=10,
    )
    assert res.status_code == 201, res.text
    assert set(res.json()) == set(DOC_SALE_CREATED)
    sale = requests.get(
        f"{live_sandbox}/aipos/api/v1/sales/{res.json()['id']}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert sale.json()["customer_id"] == "cust_abc123" and sale.json()["grand_total"] == 94.50


# --- seeding -------------------------------------------------------------------------------------


def _csv_counts() -> dict[str, int]:
    with open(CSV_PATH, newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept = [r for r in rows if not r["InvoiceNo"].startswith("C") and int(r["Quantity"]) >= 1]
    return {
        "lines": len(rows),
        "products": len({r["StockCode"] for r in rows}),
        "customers": len({r["CustomerID"] for r in rows if r["CustomerID"]}),
        "sales": len({r["InvoiceNo"] for r in kept}),
        "sale_lines": len(kept),
        "credit_note_lines": sum(1 for r in rows if r["InvoiceNo"].startswith("C")),
    }


async def test_csv_seeding_counts() -> None:
    counts = _csv_counts()
    app = create_app(seed_csv=CSV_PATH)
    store = app.state.aipos
    assert (len(store.products), len(store.customers), len(store.sales)) == (
        counts["products"],
        counts["customers"],
        counts["sales"],
    )
    assert store.seed_report == {
        "lines": counts["lines"],
        "products": counts["products"],
        "customers": counts["customers"],
        "sales": counts["sales"],
        "skipped_lines": {
            "credit note": counts["credit_note_lines"],
            "quantity below 1": counts["lines"] - counts["sale_lines"] - counts["credit_note_lines"],
        },
    }
    assert sum(len(s.items) for s in store.sales.values()) == counts["sale_lines"]
    assert len({p.sku for p in store.products.values()}) == counts["products"]  # sku = StockCode
    async with client_for(app) as c:
        products = await walk(c, "/products", 100)
        assert len(products) == counts["products"] and all(p["name"] == p["name"].strip() != "" for p in products)
        sales = data(await c.get("/sales", params={"limit": 100}))["data"]
        assert all(s["created_at"].startswith(("2010-12", "2011-")) for s in sales)
        for sale in sales:
            assert sale["grand_total"] == sale["total"] + sale["tax"] and all(i["qty"] >= 1 for i in sale["items"])
        customer = data(await c.get("/customers", params={"limit": 1}))["data"][0]
        assert re.fullmatch(r"Customer \d+", customer["name"]) and customer["email"].endswith("@example.in")
    capped = create_app(seed_csv=CSV_PATH, products=100).state.aipos
    assert len(capped.products) == 100 and list(capped.products)[-1] == "prod_100"
    assert all(i.product_id in capped.products for s in capped.sales.values() for i in s.items)
    assert capped.seed_report["skipped_lines"]["product not loaded"] > 0


async def test_synthetic_seeding_counts_and_determinism() -> None:
    app = create_app(products=7, customers=3, sales=5, seed=11)
    store = app.state.aipos
    assert (len(store.products), len(store.customers), len(store.sales)) == (7, 3, 5)
    assert list(store.products) == [f"prod_{n:03d}" for n in range(1, 8)]
    assert "cust_abc123" in store.customers and list(store.sales)[-1] == "sale_xyz789"
    again = create_app(products=7, customers=3, sales=5, seed=11).state.aipos
    assert list(again.customers) == list(store.customers) and list(again.sales) == list(store.sales)
    assert [p.stock for p in again.products.values()] == [p.stock for p in store.products.values()]
    other = create_app(products=7, customers=3, sales=5, seed=12).state.aipos
    assert list(other.customers) != list(store.customers)
    empty = create_app(products=0, customers=0, sales=0).state.aipos
    assert not empty.products and not empty.customers and not empty.sales
    with pytest.raises(ValueError):
        create_app(products=-1)
    started = time.perf_counter()
    big = create_app(products=100_000, customers=0, sales=0)
    assert time.perf_counter() - started < 5
    assert (
        list(big.state.aipos.products)[-1] == "prod_100000"
        and len({p.barcode for p in big.state.aipos.products.values()}) == 100_000
    )
    async with client_for(big) as c:
        page = data(await c.get("/products", params={"limit": 100, "starting_after": "prod_99900"}))
        assert [p["id"] for p in page["data"]] == [f"prod_{n}" for n in range(99_901, 100_001)]
        # prod_001 (API.md's example, updated 2026-03-31) changed last of all, so it lists last.
        last = data(await c.get("/products", params={"limit": 100, "starting_after": "prod_100000"}))
        assert page["has_more"] and [p["id"] for p in last["data"]] == ["prod_001"] and not last["has_more"]


# --- faults --------------------------------------------------------------------------------------


async def test_fault_knobs_and_vendor_envelopes() -> None:
    app = create_app(faults={"error_rate": 1.0, "error_retry_after": 3})
    async with client_for(app) as c, admin_for(app) as admin:
        res = await c.get("/products")
        assert error(res) == (503, "api_error", "server_error", None) and res.headers["retry-after"] == "3"
        res = await admin.post(
            "/_sandbox/faults", json={"error_rate": 0, "rate_limit_every": 1, "rate_limit_retry_after": 4}
        )
        assert res.status_code == 200
        assert [(await c.get("/customers")).status_code for _ in range(4)] == [200, 429, 200, 429]
        res = await c.get("/customers")
        assert res.status_code == 200
        res = await c.get("/customers")
        assert (
            error(res) == (429, "rate_limit_error", "rate_limit_exceeded", None) and res.headers["retry-after"] == "4"
        )
        await admin.delete("/_sandbox/faults")  # back to the construction-time knobs: all 503
        assert (await c.get("/products")).status_code == 503
        await admin.post("/_sandbox/faults", json={"error_rate": 0, "repeat_page": True})
        first = data(await c.get("/products", params={"limit": 5}))
        later = data(await c.get("/products", params={"limit": 5, "starting_after": first["data"][-1]["id"]}))
        assert later == first and later["has_more"] is True


async def test_webhook_knobs_are_validated() -> None:
    app = create_app(faults={"webhook_duplicate_rate": 0.25, "latency_ms": 0})
    assert isinstance(app.state.sandbox.faults, AIPOSFaults) and app.state.sandbox.faults.webhook_duplicate_rate == 0.25
    async with admin_for(app) as admin:
        for bad in (
            {"webhook_drop_rate": 2},
            {"webhook_duplicate_rate": -0.1},
            {"webhook_duplicate_rate": "often"},
            {"webhook_reorder": 1},
            {"webhook_drop_rate": True},
            {"webhook_nope": 1},
        ):
            assert (await admin.post("/_sandbox/faults", json=bad)).status_code == 422, bad
        state = (await admin.post("/_sandbox/faults", json={"webhook_reorder": True, "webhook_drop_rate": 0.5})).json()
        assert state["faults"]["webhook_reorder"] is True and state["faults"]["webhook_drop_rate"] == 0.5
        assert state["faults"]["webhook_duplicate_rate"] == 0.25
        assert state["aipos"] == {
            "products": 50,
            "customers": 20,
            "sales": 20,
            "adjustments": 0,
            "webhooks": 0,
            "webhook_deliveries_pending": 0,
        }
        reset = (await admin.delete("/_sandbox/faults")).json()["faults"]
        assert (reset["webhook_reorder"], reset["webhook_drop_rate"], reset["webhook_duplicate_rate"]) == (
            False,
            0,
            0.25,
        )
    for bad_faults in ({"webhook_drop_rate": 1.5}, {"webhook_reorder": "yes"}, {"nope": 1}):
        with pytest.raises(ValueError):
            create_app(faults=bad_faults)
    assert create_app(faults=Faults(latency_ms=5)).state.sandbox.faults == AIPOSFaults(latency_ms=5)


# --- webhooks ------------------------------------------------------------------------------------


async def test_webhook_admin_routes() -> None:
    app = create_app()
    async with admin_for(app) as admin:
        res = await admin.post("/_sandbox/webhooks", json={"url": "https://example.in/hooks/aipos"})
        assert res.status_code == 201
        endpoint = res.json()
        assert set(endpoint) == {"id", "url", "secret"} and endpoint["url"] == "https://example.in/hooks/aipos"
        assert endpoint["id"].startswith("we_") and re.fullmatch(r"whsec_[0-9a-f]{32}", endpoint["secret"])
        second = (await admin.post("/_sandbox/webhooks", json={"url": "http://127.0.0.1:9/x"})).json()
        assert second["secret"] != endpoint["secret"]
        assert (await admin.get("/_sandbox/webhooks")).json() == {"data": [endpoint, second]}
        for bad in ({"url": "ftp://example.in"}, {"url": "not a url"}, {"url": 5}, {"href": "https://x.in"}):
            assert (await admin.post("/_sandbox/webhooks", json=bad)).status_code == 422, bad
        assert (await admin.post("/_sandbox/webhooks", content=b"[1]")).status_code == 400
        assert (await admin.delete(f"/_sandbox/webhooks/{endpoint['id']}")).status_code == 204
        assert (await admin.delete(f"/_sandbox/webhooks/{endpoint['id']}")).status_code == 404
        assert (await admin.get("/_sandbox/webhooks")).json() == {"data": [second]}
        rotated = (await admin.post(f"/_sandbox/webhooks/{second['id']}/rotate")).json()
        assert rotated["id"] == second["id"] and rotated["secret"] != second["secret"]
        assert (await admin.post("/_sandbox/webhooks/we_nope/rotate")).status_code == 404


async def test_webhooks_are_signed_and_carry_the_objects() -> None:
    clock = FakeClock()
    receiver = Receiver()
    app = create_app(clock=clock, webhook_transport=receiver.transport)
    store = app.state.aipos
    secret = await hooked(app, receiver)
    async with client_for(app) as c, admin_for(app) as admin:
        product = data(await c.post("/products", json={"name": "Kulfi", "price": 50, "stock": 30}))
        updated = data(await c.post(f"/products/{product['id']}", json={"price": 55}))
        sale = data(
            await c.post("/sales", json={"items": [{"product_id": product["id"], "qty": 2}], "payment_method": "upi"})
        )
        sale_then = data(await c.get(f"/sales/{sale['id']}"))
        refunded = data(await c.post(f"/sales/{sale['id']}/refund"))
        res = await admin.post("/_sandbox/sync-completed")
        assert res.status_code == 202 and res.json()["type"] == "sync.completed"
        await store.drain()
    assert receiver.types() == ["product.created", "product.updated", "sale.created", "sale.refunded", "sync.completed"]
    for headers, body in receiver.calls:
        assert verify(headers, body, secret) == int(clock.now.timestamp())
        assert headers["content-type"] == "application/json"
        assert headers["aipos-signature"].count("v1=") == 1
        wrong = hmac.new(b"whsec_wrong", body, hashlib.sha256).hexdigest()
        assert wrong not in headers["aipos-signature"]
    events = receiver.events()
    for event in events:
        assert set(event) == {"id", "object", "type", "created_at", "data"} and event["object"] == "event"
        assert re.fullmatch(r"evt_[a-z0-9]{16}", event["id"]) and set(event["data"]) == {"object"}
        assert parse_rfc3339(event["created_at"]) == clock.now
    assert [e["data"]["object"] for e in events[:4]] == [product, updated, sale_then, refunded]
    assert events[4]["data"]["object"] == {
        "store": "AI POS Demo Store",
        "finished_at": clock.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert len({e["id"] for e in events}) == 5 and [e.id for e in store.events] == [e["id"] for e in events]
    # The body is sent byte for byte as made: money as numbers with two decimals.
    assert b'"price":55.00' in receiver.calls[1][1]


async def test_webhook_retries_keep_event_and_body_and_resign() -> None:
    clock = FakeClock()
    receiver = Receiver(statuses=[500, 503], clock=clock, step=7)
    app = create_app(clock=clock, webhook_transport=receiver.transport, webhook_retry_schedule=[0.01, 0.02, 0.01])
    store = app.state.aipos
    secret = await hooked(app, receiver)
    async with client_for(app) as c, admin_for(app) as admin:
        await c.post("/customers", json={"name": "No event"})  # customers have no webhook
        await c.post("/products", json={"name": "Rusk", "price": 15})
        await store.drain()
        log = (await admin.get("/_sandbox/webhook-deliveries")).json()
    assert len(receiver.calls) == 3
    ids = {h["aipos-event-id"] for h, _ in receiver.calls}
    bodies = {b for _, b in receiver.calls}
    assert len(ids) == 1 and len(bodies) == 1  # the same event, byte for byte
    stamps = [verify(h, b, secret) for h, b in receiver.calls]
    assert stamps[1] - stamps[0] == 7 and stamps[2] - stamps[1] == 7  # signed anew at each attempt
    assert len({h["aipos-signature"] for h, _ in receiver.calls}) == 3
    assert log["pending"] == 0
    assert [(e["attempt"], e["status"], e["outcome"], e["error"]) for e in log["data"]] == [
        (1, 500, "retrying", None),
        (2, 503, "retrying", None),
        (3, 200, "delivered", None),
    ]
    entry = log["data"][0]
    assert (entry["type"], entry["url"], entry["event_id"], entry["duplicate"]) == (
        "product.created",
        HOOK_URL,
        ids.pop(),
        False,
    )


async def test_webhook_gives_up_after_the_schedule_and_on_timeouts() -> None:
    receiver = Receiver(statuses=[500] * 10)
    app = create_app(webhook_transport=receiver.transport, webhook_retry_schedule=[0.01, 0.01])
    await hooked(app, receiver)
    async with client_for(app) as c:
        await c.post("/products", json={"name": "Rusk", "price": 15})
    await app.state.aipos.drain()
    assert len(receiver.calls) == 3  # 1 + len(schedule)
    assert [a.outcome for a in app.state.aipos.webhooks.log] == ["retrying", "retrying", "failed"]

    slow = Receiver(delay=0.3)
    app = create_app(webhook_transport=slow.transport, webhook_retry_schedule=[0.01], webhook_timeout=0.05)
    await hooked(app, slow)
    async with client_for(app) as c:
        await c.post("/products", json={"name": "Rusk", "price": 15})
    await app.state.aipos.drain()
    attempts = list(app.state.aipos.webhooks.log)
    assert [(a.status, a.outcome) for a in attempts] == [(None, "retrying"), (None, "failed")]
    assert all("no answer within 0.05 s" in (a.error or "") for a in attempts)

    calls = 0

    async def unsubscribes(request: Request) -> Response:
        nonlocal calls
        calls += 1
        for endpoint_id in list(app.state.aipos.webhooks.endpoints):  # the receiver goes away mid-delivery
            app.state.aipos.webhooks.remove(endpoint_id)
        return Response(status_code=500)

    transport = httpx.ASGITransport(app=Starlette(routes=[Route("/hook", unsubscribes, methods=["POST"])]))
    app = create_app(webhook_transport=transport, webhook_retry_schedule=[0.01, 0.01])
    await hooked(app, Receiver())
    async with client_for(app) as c:
        await c.post("/products", json={"name": "Rusk", "price": 15})
    await app.state.aipos.drain()
    assert calls == 1  # no retry to a deleted endpoint
    assert [(a.attempt, a.status, a.outcome, a.error) for a in app.state.aipos.webhooks.log] == [
        (1, 500, "retrying", None),
        (2, None, "failed", "endpoint deleted"),
    ]


async def test_webhook_duplicate_knob() -> None:
    receiver = Receiver()
    app = create_app(webhook_transport=receiver.transport, faults={"webhook_duplicate_rate": 1.0})
    secret = await hooked(app, receiver)
    async with client_for(app) as c:
        for n in range(3):
            await c.post("/products", json={"name": f"Chikki {n}", "price": 10})
    await app.state.aipos.drain()
    assert len(receiver.calls) == 6
    ids = [h["aipos-event-id"] for h, _ in receiver.calls]
    assert ids[0::2] == ids[1::2] and len(set(ids)) == 3  # each event twice, in order
    assert [b for _, b in receiver.calls][0::2] == [b for _, b in receiver.calls][1::2]
    assert all(verify(h, b, secret) for h, b in receiver.calls)
    assert [a.duplicate for a in app.state.aipos.webhooks.log] == [False, True] * 3


async def test_webhook_drop_knob_is_seeded() -> None:
    receiver = Receiver()
    app = create_app(webhook_transport=receiver.transport, faults={"webhook_drop_rate": 1.0})
    await hooked(app, receiver)
    async with client_for(app) as c:
        sale = await c.post("/sales", json={"items": [{"product_id": "prod_002", "qty": 1}], "payment_method": "cash"})
        assert sale.status_code == 201  # the API is not affected, only the event
    await app.state.aipos.drain()
    assert receiver.calls == []
    assert [(a.type, a.attempt, a.outcome) for a in app.state.aipos.webhooks.log] == [("sale.created", 0, "dropped")]

    async def run(seed: int) -> tuple[list[str], int]:
        got = Receiver()
        half = create_app(webhook_transport=got.transport, faults={"webhook_drop_rate": 0.5}, seed=seed)
        await hooked(half, got)
        async with client_for(half) as c:
            for n in range(40):
                await c.post("/products", json={"name": f"Papad {n}", "price": 5})
        await half.state.aipos.drain()
        names = [e["data"]["object"]["name"] for e in got.events()]
        dropped = sum(1 for a in half.state.aipos.webhooks.log if a.outcome == "dropped")
        assert len(names) + dropped == 40
        return names, dropped

    names, dropped = await run(3)
    assert 5 < dropped < 35
    assert names == sorted(names, key=lambda n: int(n.split()[1]))  # what is sent keeps its order
    assert await run(3) == (names, dropped)  # the seed fixes which events are dropped
    assert (await run(4))[0] != names


async def test_webhook_reorder_knob_shuffles_batches() -> None:
    async def received(reorder: bool, seed: int) -> list[str]:
        receiver = Receiver()
        app = create_app(
            webhook_transport=receiver.transport,
            faults={"webhook_reorder": reorder},
            seed=seed,
            webhook_reorder_window=30,
        )
        await hooked(app, receiver)
        async with client_for(app) as c:
            for n in range(12):
                await c.post("/products", json={"name": f"Ladoo {n:02d}", "price": 12})
        await asyncio.sleep(0.05)
        if reorder:
            assert receiver.calls == []  # held for the batch window
            assert app.state.aipos.webhooks.pending == 12
        await app.state.aipos.drain()  # sends the batch at once
        return [e["data"]["object"]["name"] for e in receiver.events()]

    in_order = [f"Ladoo {n:02d}" for n in range(12)]
    assert await received(False, 1) == in_order
    shuffled = await received(True, 1)
    assert sorted(shuffled) == in_order and shuffled != in_order
    assert await received(True, 1) == shuffled  # seeded
    assert await received(True, 2) != shuffled


async def test_webhook_reorder_window_sends_without_drain() -> None:
    receiver = Receiver()
    app = create_app(
        webhook_transport=receiver.transport, faults={"webhook_reorder": True}, webhook_reorder_window=0.05
    )
    await hooked(app, receiver)
    async with client_for(app) as c:
        for n in range(5):
            await c.post("/products", json={"name": f"Barfi {n}", "price": 20})
    for _ in range(100):
        if len(receiver.calls) == 5:
            break
        await asyncio.sleep(0.01)
    assert sorted(receiver.types()) == ["product.created"] * 5 and app.state.aipos.webhooks.pending == 0


async def test_inventory_low_fires_when_stock_crosses_the_threshold() -> None:
    receiver = Receiver()
    app = create_app(webhook_transport=receiver.transport)
    await hooked(app, receiver)
    async with client_for(app) as c:
        pid = data(
            await c.post("/products", json={"name": "Bread", "price": 40, "stock": 12, "low_stock_threshold": 10})
        )["id"]
        steps: list[tuple[str, dict[str, Any]]] = [
            ("/sales", {"items": [{"product_id": pid, "qty": 1}], "payment_method": "cash"}),  # 11: above
            ("/sales", {"items": [{"product_id": pid, "qty": 1}], "payment_method": "cash"}),  # 10: crosses (to)
            ("/sales", {"items": [{"product_id": pid, "qty": 1}], "payment_method": "cash"}),  # 9: already low
            ("/inventory/adjustments", {"product_id": pid, "delta": 5}),  # 14: restocked
            ("/inventory/adjustments", {"product_id": pid, "delta": -6}),  # 8: crosses (below)
        ]
        for path, body in steps:
            assert (await c.post(path, json=body)).status_code == 201
        await app.state.aipos.drain()
    lows = [e["data"]["object"] for e in receiver.events() if e["type"] == "inventory.low"]
    assert lows == [
        {"product_id": pid, "quantity": 10, "low_stock_threshold": 10},
        {"product_id": pid, "quantity": 8, "low_stock_threshold": 10},
    ]
    types = receiver.types()
    assert types.index("inventory.low") == types.index("sale.created") + 2  # after its sale's event


async def test_webhook_secret_rotation_signs_with_both() -> None:
    receiver = Receiver()
    app = create_app(webhook_transport=receiver.transport)
    old = await hooked(app, receiver)
    async with admin_for(app) as admin, client_for(app) as c:
        endpoint = (await admin.get("/_sandbox/webhooks")).json()["data"][0]
        new = (await admin.post(f"/_sandbox/webhooks/{endpoint['id']}/rotate")).json()["secret"]
        await c.post("/products", json={"name": "Rusk", "price": 15})
        await app.state.aipos.drain()
    headers, body = receiver.calls[0]
    assert headers["aipos-signature"].count("v1=") == 2
    assert verify(headers, body, new) and verify(headers, body, old)


async def test_webhook_deliveries_over_the_network() -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    with ServerThread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as server:
        app = create_app(webhook_retry_schedule=[0.01])
        async with admin_for(app) as admin, client_for(app) as c:
            res = await admin.post("/_sandbox/webhooks", json={"url": f"{server.base_url}/hook"})
            await admin.post("/_sandbox/webhooks", json={"url": "http://127.0.0.1:9/refused"})
            secret = res.json()["secret"]
            sale = data(
                await c.post("/sales", json={"items": [{"product_id": "prod_001", "qty": 1}], "payment_method": "card"})
            )
            await app.state.aipos.drain(timeout=30)
            log = (await admin.get("/_sandbox/webhook-deliveries")).json()["data"]
            assert (await admin.delete("/_sandbox/webhook-deliveries")).status_code == 204
            assert (await admin.get("/_sandbox/webhook-deliveries")).json()["data"] == []
        await app.state.aipos.webhooks.aclose()  # served in process without a lifespan: close its client
    assert len(received) == 1
    headers, body = received[0]
    assert abs(verify(headers, body, secret) - time.time()) < 60  # the real clock signs
    assert json.loads(body)["data"]["object"]["id"] == sale["id"]
    assert headers["user-agent"].startswith("AIPOS-Webhooks/")
    signed = [a for a in log if a["url"].endswith("/hook")]
    assert [(a["status"], a["outcome"]) for a in signed] == [(204, "delivered")]
    refused = [a for a in log if a["url"].endswith("/refused")]
    assert [(a["attempt"], a["outcome"]) for a in refused] == [(1, "retrying"), (2, "failed")]
    assert all(a["status"] is None and a["error"] for a in refused)


async def test_drain_waits_for_a_sandbox_served_on_another_thread() -> None:
    import requests

    receiver = Receiver(statuses=[500], delay=0.1)  # runs on the server's loop, answers slowly
    app = create_app(webhook_transport=receiver.transport, webhook_retry_schedule=[0.05])
    with ServerThread(app) as server:
        secret = requests.post(f"{server.base_url}/_sandbox/webhooks", json={"url": HOOK_URL}, timeout=10).json()[
            "secret"
        ]
        res = requests.post(
            f"{server.base_url}{BASE}/products",
            json={"name": "Rusk", "price": 15},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        assert res.status_code == 201
        await app.state.aipos.drain(timeout=10)  # from this test's loop; the deliveries run on the server's
        assert [a.outcome for a in app.state.aipos.webhooks.log] == ["retrying", "delivered"]
        assert app.state.aipos.webhooks.pending == 0
    assert len(receiver.calls) == 2 and all(verify(h, b, secret) for h, b in receiver.calls)


async def test_webhooks_share_one_keep_alive_client_that_the_app_closes_on_shutdown() -> None:
    """Every attempt goes through one ``httpx.AsyncClient`` (one kept-alive connection to a
    receiver, not a client and a connection per attempt); the app's lifespan closes it."""
    import requests

    peers: list[tuple[str, int]] = []

    async def hook(request: Request) -> Response:
        assert request.client is not None
        peers.append((request.client.host, request.client.port))
        return Response(status_code=204)

    with ServerThread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver:
        app = create_app()
        with ServerThread(app) as server:
            registered = requests.post(f"{server.base_url}/_sandbox/webhooks", json={"url": f"{receiver.base_url}/hook"},
                                       timeout=10)
            assert registered.status_code == 201
            for n in range(3):
                made = requests.post(f"{server.base_url}{BASE}/products", json={"name": f"Rusk {n}", "price": 15},
                                     headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
                assert made.status_code == 201
            await app.state.aipos.drain(timeout=10)
            client = app.state.aipos.webhooks.client
            assert client is not None and not client.is_closed
        assert client.is_closed and app.state.aipos.webhooks.client is None  # closed by the lifespan shutdown
    assert len(peers) == 3 and len(set(peers)) == 1  # the same connection each time
    assert [a.outcome for a in app.state.aipos.webhooks.log] == ["delivered"] * 3
