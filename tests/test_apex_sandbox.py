"""The Apex POS sandbox against its contract, vendor-docs/apex-pos-api.txt, and the shared fault knobs.

The doc's example responses are copied below and compared by shape (keys and JSON types); the doc's
Python ``requests`` examples are run unchanged but for the host and the key against a live sandbox.
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.apex.sandbox import create_app
from gateway.testing.sandbox import RetailRow, ServerThread, read_retail_csv

CSV_PATH = Path(__file__).resolve().parents[2] / "shared/data/online_retail_sample.csv"
KEY = "apx_sandbox_key"
BASE = "/rest_api/v1"

# --- the doc's example responses, verbatim (JSON) ------------------------------------------------

DOC_PRODUCTS_LIST = {
    "success": True,
    "data": [
        {
            "id": 1,
            "name": "Espresso",
            "name_ar": "إسبريسو",
            "price": 3.50,
            "cost": 1.20,
            "barcode": "8901234567890",
            "category_id": 2,
            "tax_rate": 15,
            "stock": 100,
        }
    ],
    "total": 84,
    "page": 1,
    "limit": 50,
}
DOC_PRODUCT_CREATED = {"success": True, "product_id": 42, "message": "Product created"}
DOC_PRODUCT_UPDATED = {"success": True, "message": "Product updated"}
DOC_INVENTORY_LIST = {
    "success": True,
    "data": [
        {"product_id": 1, "product_name": "Espresso", "warehouse_id": 1, "warehouse_name": "Main", "quantity": 84}
    ],
}
DOC_STOCK_UPDATED = {"success": True, "message": "Stock updated", "new_quantity": 150}
DOC_INVOICE_CREATED = {"success": True, "invoice_id": 1084, "total": 19.00, "status": "paid"}
DOC_CUSTOMERS_LIST = {
    "success": True,
    "data": [{"id": 5, "name": "Ahmed Al-Amin", "phone": "+966501234567", "email": "[email protected]", "balance": 0}],
}
DOC_CUSTOMER_CREATED = {"success": True, "customer_id": 31, "message": "Customer created"}
DOC_HEALTH = {"status": "ok", "business": "My Store", "timestamp": "2026-04-24T10:32:00Z"}
# The doc shows no invoice list response; the sandbox's shape (SANDBOX.md) is pinned here.
SANDBOX_INVOICE = {
    "id": 1,
    "invoice_number": "INV-000001",
    "customer_id": 5,
    "warehouse_id": 1,
    "date": "2026-01-01T05:27:00Z",
    "items": [{"product_id": 1, "product_name": "Espresso", "quantity": 2, "price": 3.5, "total": 7}],
    "subtotal": 6.09,
    "tax": 0.91,
    "total": 7,
    "paid": 7,
    "status": "paid",
    "payment_method": "card",
    "account_id": None,
    "notes": None,
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def assert_shape(actual: Any, example: Any, where: str = "$", nullable: frozenset[str] = frozenset()) -> None:
    """``actual`` has exactly the example's keys, recursively, with the same JSON types (lists: every element)."""
    if isinstance(example, dict):
        assert isinstance(actual, dict), where
        assert set(actual) == set(example), f"{where}: keys {sorted(actual)} != {sorted(example)}"
        for key, value in example.items():
            assert_shape(actual[key], value, f"{where}.{key}", nullable)
    elif isinstance(example, list):
        assert isinstance(actual, list), where
        if example:
            for n, item in enumerate(actual):
                assert_shape(item, example[0], f"{where}[{n}]", nullable)
    elif actual is None and (where.rsplit(".", 1)[-1] in nullable or example is None):
        return
    else:
        assert _kind(actual) == _kind(example), f"{where}: {actual!r} is not like {example!r}"


# --- fixtures ------------------------------------------------------------------------------------


def client_for(app: Any, key: str | None = KEY) -> httpx.AsyncClient:
    """An in-process client on the sandbox's base path."""
    headers = {"X-API-Key": key} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=f"http://apex.test{BASE}", headers=headers)


@pytest.fixture
def app() -> Any:
    """A synthetic sandbox: 84 products, 30 customers, 20 invoices, 2 warehouses."""
    return create_app()


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a valid key."""
    async with client_for(app) as c:
        yield c


@pytest.fixture
async def admin(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the ``/_sandbox`` admin routes (no key)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://apex.test") as c:
        yield c


# --- envelopes -----------------------------------------------------------------------------------


async def test_products_list_envelope_matches_doc(client: httpx.AsyncClient) -> None:
    res = await client.get("/products", params={"page": 1, "limit": 50})
    assert res.status_code == 200
    body = res.json()
    assert_shape(body, DOC_PRODUCTS_LIST, nullable=frozenset({"name_ar", "barcode", "category_id"}))
    assert (body["total"], body["page"], body["limit"], len(body["data"])) == (84, 1, 50, 50)
    assert body["data"][0] == DOC_PRODUCTS_LIST["data"][0]  # the seeded Espresso is the doc's
    assert '"price":3.5,' in res.text and '"tax_rate":15,' in res.text  # JSON numbers, not strings


async def test_product_create_and_update_envelopes(client: httpx.AsyncClient) -> None:
    res = await client.post("/products", json={"name": "Latte", "name_ar": "لاتيه", "price": 4.50, "stock": 200})
    assert res.status_code == 201
    assert_shape(res.json(), DOC_PRODUCT_CREATED)
    pid = res.json()["product_id"]
    assert pid == 85
    res = await client.put(f"/products/{pid}", json={"price": 5.00, "tax_rate": 10})
    assert res.status_code == 200
    assert res.json() == DOC_PRODUCT_UPDATED
    body = (await client.get("/products", params={"page": 2, "limit": 84})).json()
    assert body["data"] == [
        {
            "id": 85,
            "name": "Latte",
            "name_ar": "لاتيه",
            "price": 5,
            "cost": 0,
            "barcode": None,
            "category_id": None,
            "tax_rate": 10,
            "stock": 200,
        }
    ]


async def test_inventory_envelopes(client: httpx.AsyncClient) -> None:
    res = await client.get("/inventory", params={"warehouse_id": 1})
    assert res.status_code == 200
    body = res.json()
    assert_shape(body, DOC_INVENTORY_LIST)
    assert body["data"][0] == DOC_INVENTORY_LIST["data"][0]
    assert len(body["data"]) == 84 and {r["warehouse_id"] for r in body["data"]} == {1}
    everything = (await client.get("/inventory")).json()["data"]
    assert len(everything) == 84 * 2
    res = await client.patch(
        "/inventory/1", json={"product_id": 1, "warehouse_id": 1, "quantity": 150, "notes": "Restock"}
    )
    assert res.status_code == 200
    assert res.json() == DOC_STOCK_UPDATED


async def test_invoice_create_envelope_and_total(client: httpx.AsyncClient) -> None:
    res = await client.post(
        "/invoices",
        json={
            "customer_id": 5,
            "payment_method": "card",
            "account_id": 2,
            "items": [
                {"product_id": 1, "quantity": 2, "price": 3.50},
                {"product_id": 3, "quantity": 1, "price": 12.00},
            ],
        },
    )
    assert res.status_code == 201
    body = res.json()
    assert_shape(body, DOC_INVOICE_CREATED)
    assert body["total"] == 19.00 and body["status"] == "paid" and body["invoice_id"] == 21


async def test_customers_envelopes(client: httpx.AsyncClient) -> None:
    res = await client.get("/customers", params={"search": "ahmed"})
    assert res.status_code == 200
    body = res.json()
    # The doc's example shows {success, data}; the list is paginated, so total/page/limit are added (SANDBOX.md).
    assert set(body) - set(DOC_CUSTOMERS_LIST) == {"total", "page", "limit"}
    assert_shape({k: body[k] for k in DOC_CUSTOMERS_LIST}, DOC_CUSTOMERS_LIST)
    assert body["data"] == [{**DOC_CUSTOMERS_LIST["data"][0], "email": "ahmed@example.com"}]
    res = await client.post(
        "/customers", json={"name": "Sara Ali", "phone": "+966509876543", "email": "sara@example.com"}
    )
    assert res.status_code == 201
    assert res.json() == DOC_CUSTOMER_CREATED  # 30 seeded customers, so the doc's id 31


async def test_health_envelope(client: httpx.AsyncClient) -> None:
    res = await client.get("/health")
    assert res.status_code == 200
    body = res.json()
    assert_shape(body, DOC_HEALTH)
    assert body["status"] == "ok" and body["business"] == "My Store"
    assert datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%SZ")


async def test_invoice_list_shape(client: httpx.AsyncClient) -> None:
    res = await client.get("/invoices")
    assert res.status_code == 200
    body = res.json()
    assert set(body) == {"success", "data", "total", "page", "limit"}
    assert body["total"] == 20
    for invoice in body["data"]:
        assert_shape(
            invoice, SANDBOX_INVOICE, nullable=frozenset({"customer_id", "payment_method", "account_id", "notes"})
        )
        total = sum(Decimal(str(i["total"])) for i in invoice["items"])
        assert Decimal(str(invoice["total"])) == total
        assert Decimal(str(invoice["subtotal"])) + Decimal(str(invoice["tax"])) == total


# --- pagination ----------------------------------------------------------------------------------


async def test_pagination_walks_every_page() -> None:
    async with client_for(create_app(products=230)) as c:
        seen: list[int] = []
        page = 1
        while True:
            body = (await c.get("/products", params={"page": page, "limit": 100})).json()
            assert (body["total"], body["page"], body["limit"]) == (230, page, 100)
            if not body["data"]:
                break
            seen += [p["id"] for p in body["data"]]
            page += 1
        assert page == 4 and seen == list(range(1, 231))


async def test_limit_defaults_and_clamps(client: httpx.AsyncClient) -> None:
    async with client_for(create_app(products=230)) as c:
        body = (await c.get("/products", params={"limit": 500})).json()
        assert body["limit"] == 100 and len(body["data"]) == 100
        body = (await c.get("/products")).json()
        assert (body["page"], body["limit"], len(body["data"])) == (1, 50, 50)
        for junk in ("0", "-3", "abc"):
            body = (await c.get("/products", params={"page": junk, "limit": junk})).json()
            assert (body["page"], body["limit"]) == (1, 50)
    body = (await client.get("/customers", params={"page": 2, "limit": 20})).json()
    assert (body["total"], body["page"], body["limit"], [c["id"] for c in body["data"]]) == (
        30,
        2,
        20,
        list(range(21, 31)),
    )


# --- auth ----------------------------------------------------------------------------------------


async def test_auth_failures(app: Any) -> None:
    for key, message in (
        (None, "API key is required"),
        ("apx_wrong", "Invalid API key"),
        ("not_apex", "Invalid API key"),
    ):
        async with client_for(app, key) as c:
            for path in ("/products", "/health", "/nope"):
                res = await c.get(path)
                assert res.status_code == 401
                assert res.json() == {"success": False, "message": message}
            res = await c.post("/invoices", json={"items": [{"product_id": 1, "quantity": 1}]})
            assert res.status_code == 401
    assert app.state.apex.products[1].stock[0] == 84


async def test_configured_keys() -> None:
    app = create_app(api_keys=["apx_one", "apx_two"])
    for key, status in (("apx_one", 200), ("apx_two", 200), (KEY, 401)):
        async with client_for(app, key) as c:
            assert (await c.get("/health")).status_code == status
    with pytest.raises(ValueError):
        create_app(api_keys=["sk_live_123"])


# --- filters -------------------------------------------------------------------------------------


async def test_product_category_filter(app: Any, client: httpx.AsyncClient) -> None:
    expected = [p.id for p in app.state.apex.products.values() if p.category_id == 2]
    body = (await client.get("/products", params={"category_id": 2, "limit": 100})).json()
    assert body["total"] == len(expected) and [p["id"] for p in body["data"]] == expected
    assert all(p["category_id"] == 2 for p in body["data"])
    assert (await client.get("/products", params={"category_id": 999})).json()["total"] == 0
    res = await client.get("/products", params={"category_id": "two"})
    assert res.status_code == 422 and res.json()["success"] is False


async def test_inventory_warehouse_filter(client: httpx.AsyncClient) -> None:
    rows = (await client.get("/inventory", params={"warehouse_id": 2})).json()["data"]
    assert len(rows) == 84 and {(r["warehouse_id"], r["warehouse_name"]) for r in rows} == {(2, "Warehouse 2")}
    assert (await client.get("/inventory", params={"warehouse_id": 9})).json()["data"] == []
    assert (await client.get("/inventory", params={"warehouse_id": "x"})).status_code == 422


async def test_customer_search(client: httpx.AsyncClient) -> None:
    for term in ("AHMED", "501234567", "ahmed@example", "al-amin"):
        ids = [c["id"] for c in (await client.get("/customers", params={"search": term})).json()["data"]]
        assert ids == [5], term
    assert (await client.get("/customers", params={"search": "zzzz"})).json()["data"] == []
    assert (await client.get("/customers", params={"search": ""})).json()["total"] == 30


async def test_invoice_filters(app: Any, client: httpx.AsyncClient) -> None:
    invoices = list(app.state.apex.invoices.values())
    for status in ("paid", "partial", "unpaid"):
        body = (await client.get("/invoices", params={"status": status})).json()
        assert body["total"] == sum(1 for i in invoices if i.status == status)
        assert all(i["status"] == status for i in body["data"])
    body = (await client.get("/invoices", params={"date_from": "2026-01-02", "date_to": "2026-01-03"})).json()
    expected = [i.id for i in invoices if "2026-01-02" <= i.date.strftime("%Y-%m-%d") <= "2026-01-03"]
    assert expected and [i["id"] for i in body["data"]] == expected
    assert all(i["date"][:10] in ("2026-01-02", "2026-01-03") for i in body["data"])
    assert (await client.get("/invoices", params={"status": "void"})).status_code == 422
    assert (await client.get("/invoices", params={"date_from": "01/02/2026"})).status_code == 422


# --- errors --------------------------------------------------------------------------------------


async def test_not_found(client: httpx.AsyncClient) -> None:
    for method, path, body in (
        ("PUT", "/products/9999", {"price": 1}),
        ("PATCH", "/inventory/9999", {"product_id": 9999, "warehouse_id": 1, "quantity": 1}),
        ("GET", "/orders", None),
        ("PUT", "/products/abc", {"price": 1}),
    ):
        res = await client.request(method, path, json=body)
        assert res.status_code == 404, path
        assert set(res.json()) == {"success", "message"} and res.json()["success"] is False
    res = await client.delete("/products")
    assert res.status_code == 405 and set(res.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_bad_bodies(app: Any, client: httpx.AsyncClient) -> None:
    cases = [
        ("POST", "/products", {}, {"name", "price"}),
        ("POST", "/products", {"name": "X", "price": "3.50"}, {"price"}),
        (
            "POST",
            "/products",
            {"name": " ", "price": 1, "stock": -1, "category_id": 1.5},
            {"name", "stock", "category_id"},
        ),
        ("POST", "/products", {"name": "X", "price": 1, "barcode": "8901234567890"}, {"barcode"}),
        ("POST", "/products", {"name": "X", "price": 1e300}, {"price"}),
        ("PUT", "/products/1", {"stock": 5}, {"stock"}),
        ("PUT", "/products/1", {"price": None, "name": " "}, {"price", "name"}),
        (
            "PATCH",
            "/inventory/1",
            {"product_id": 2, "warehouse_id": 7, "quantity": -1},
            {"product_id", "warehouse_id", "quantity"},
        ),
        ("PATCH", "/inventory/1", {}, {"product_id", "warehouse_id", "quantity"}),
        ("POST", "/invoices", {}, {"items"}),
        ("POST", "/invoices", {"items": []}, {"items"}),
        (
            "POST",
            "/invoices",
            {"items": [{"product_id": 9999, "quantity": 0}], "payment_method": "gold"},
            {"items.0.product_id", "items.0.quantity", "payment_method"},
        ),
        ("POST", "/invoices", {"items": ["x"], "customer_id": 999}, {"items.0", "customer_id"}),
        ("POST", "/invoices", {"items": [{"product_id": 1, "quantity": 10**12}]}, {"items.0.quantity"}),
        ("POST", "/customers", {"email": "nope"}, {"name", "email"}),
        ("POST", "/customers", {"name": "A", "credit_limit": -5}, {"credit_limit"}),
    ]
    for method, path, body, fields in cases:
        res = await client.request(method, path, json=body)
        assert res.status_code == 422, (path, body, res.text)
        data = res.json()
        assert data["success"] is False and isinstance(data["message"], str)
        assert set(data["errors"]) == fields, (path, body, data)
    res = await client.put("/products/1", json={})
    assert res.status_code == 422 and res.json() == {"success": False, "message": "No fields to update"}
    for raw in (b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"):
        res = await client.post("/products", content=raw, headers={"Content-Type": "application/json"})
        assert res.status_code == 400 and res.json()["success"] is False
    assert len(app.state.apex.products) == 84 and len(app.state.apex.invoices) == 20


# --- writes and stock ----------------------------------------------------------------------------


async def test_invoice_create_takes_stock_from_its_warehouse(app: Any, client: httpx.AsyncClient) -> None:
    store = app.state.apex
    before = [list(store.products[pid].stock) for pid in (1, 3)]
    res = await client.post(
        "/invoices",
        json={"items": [{"product_id": 1, "quantity": 2}, {"product_id": 3, "quantity": 1}], "payment_method": "cash"},
    )
    assert res.status_code == 201 and res.json()["total"] == 3.5 * 2 + 12  # catalog prices when price is omitted
    assert store.products[1].stock == [before[0][0] - 2, before[0][1]]
    assert store.products[3].stock == [before[1][0] - 1, before[1][1]]
    res = await client.post(
        "/invoices", json={"warehouse_id": 2, "items": [{"product_id": 1, "quantity": 16}], "payment_method": "bank"}
    )
    assert res.status_code == 201 and store.products[1].stock[1] == 0
    inventory = (await client.get("/inventory", params={"warehouse_id": 2})).json()["data"]
    assert inventory[0]["quantity"] == 0
    product = (await client.get("/products", params={"limit": 1})).json()["data"][0]
    assert product["stock"] == sum(store.products[1].stock) == 100 - 2 - 16


async def test_invoice_rejects_oversell_atomically(app: Any, client: httpx.AsyncClient) -> None:
    store = app.state.apex
    res = await client.post(
        "/invoices",
        json={
            "items": [
                {"product_id": 2, "quantity": 1},
                {"product_id": 1, "quantity": 50},
                {"product_id": 1, "quantity": 50},
            ]
        },
    )
    assert res.status_code == 422 and set(res.json()["errors"]) == {"items.1.quantity", "items.2.quantity"}
    assert store.products[1].stock[0] == 84 and len(store.invoices) == 20
    lenient = create_app(allow_negative_stock=True)
    async with client_for(lenient) as c:
        res = await c.post("/invoices", json={"items": [{"product_id": 1, "quantity": 90}]})
        assert res.status_code == 201 and lenient.state.apex.products[1].stock[0] == -6


async def test_unpaid_invoice_adds_to_customer_balance_and_is_listed(client: httpx.AsyncClient) -> None:
    res = await client.post(
        "/invoices", json={"customer_id": 5, "items": [{"product_id": 2, "quantity": 3, "price": 1.1}], "notes": "tab"}
    )
    assert res.status_code == 201 and res.json()["status"] == "unpaid" and res.json()["total"] == 3.3
    customer = (await client.get("/customers", params={"search": "ahmed"})).json()["data"][0]
    assert customer["balance"] == 3.3
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    body = (await client.get("/invoices", params={"status": "unpaid", "date_from": today, "date_to": today})).json()
    assert [i["id"] for i in body["data"]] == [res.json()["invoice_id"]]
    invoice = body["data"][0]
    assert invoice["items"] == [
        {"product_id": 2, "product_name": "Americano", "quantity": 3, "price": 1.1, "total": 3.3}
    ]
    assert (invoice["tax"], invoice["subtotal"], invoice["paid"], invoice["notes"]) == (0.43, 2.87, 0, "tab")


async def test_inventory_patch_sets_absolute_quantity(app: Any, client: httpx.AsyncClient) -> None:
    for quantity in (150, 0, 7):
        res = await client.patch("/inventory/4", json={"product_id": 4, "warehouse_id": 2, "quantity": quantity})
        assert res.json() == {"success": True, "message": "Stock updated", "new_quantity": quantity}
        assert app.state.apex.products[4].stock[1] == quantity
    rows = (await client.get("/inventory", params={"warehouse_id": 2})).json()["data"]
    assert rows[3]["quantity"] == 7


async def test_product_update_changes_only_sent_fields(client: httpx.AsyncClient) -> None:
    res = await client.put("/products/2", json={"name": "Long Black", "name_ar": None, "cost": 0.75, "barcode": "123"})
    assert res.status_code == 200
    product = (await client.get("/products", params={"limit": 2})).json()["data"][1]
    assert (product["name"], product["name_ar"], product["cost"], product["barcode"], product["price"]) == (
        "Long Black",
        None,
        0.75,
        "123",
        4,
    )
    res = await client.post("/products", json={"name": "X", "price": 1, "barcode": "123"})
    assert res.status_code == 422


# --- faults --------------------------------------------------------------------------------------


async def test_error_rate_is_deterministic_with_a_seed() -> None:
    app = create_app(seed=42, faults={"error_rate": 0.3, "error_retry_after": 2})
    rng = random.Random(42)
    expected = [rng.random() < 0.3 for _ in range(200)]
    async with client_for(app) as c:
        statuses = [(await c.get("/products", params={"limit": 1})).status_code for _ in range(200)]
        res = await c.get("/health")
    assert [s == 503 for s in statuses] == expected
    assert statuses.count(503) == sum(expected) and 40 <= sum(expected) <= 80
    assert set(statuses) == {200, 503}
    app.state.sandbox.set_faults(error_rate=1.0, error_status=500)
    async with client_for(app, None) as c:  # faults come before auth
        res = await c.get("/products")
    assert res.status_code == 500 and "retry-after" not in res.headers
    assert res.json() == {"success": False, "message": "Server error"}


async def test_503_has_retry_after_and_vendor_envelope() -> None:
    app = create_app(faults={"error_rate": 1.0, "error_retry_after": 5})
    async with client_for(app) as c:
        for path in ("/products", "/health", "/nope"):
            res = await c.get(path)
            assert res.status_code == 503 and res.headers["retry-after"] == "5"
            assert res.json() == {"success": False, "message": "Service unavailable"}


async def test_429_bursts(admin: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    res = await admin.post(
        "/_sandbox/faults", json={"rate_limit_every": 3, "rate_limit_burst": 2, "rate_limit_retry_after": 7}
    )
    assert res.status_code == 200 and res.json()["faults"]["rate_limit_every"] == 3
    responses = [await client.get("/customers") for _ in range(10)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429, 200, 200, 200, 429, 429]
    limited = responses[3]
    assert limited.headers["retry-after"] == "7" and limited.json() == {
        "success": False,
        "message": "Too many requests",
    }
    # The doc: health "has no rate limit"; the admin routes are never faulted.
    assert [(await client.get("/health")).status_code for _ in range(6)] == [200] * 6
    assert (await admin.get("/_sandbox/state")).json()["faulted"] == {"429": 4}
    await admin.delete("/_sandbox/faults")
    assert [(await client.get("/customers")).status_code for _ in range(6)] == [200] * 6


async def test_repeat_page_knob(admin: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    assert (await admin.post("/_sandbox/faults", json={"repeat_page": True})).status_code == 200
    first = (await client.get("/products", params={"limit": 10})).json()
    for page in (2, 3, 50):
        body = (await client.get("/products", params={"page": page, "limit": 10})).json()
        assert body["data"] == first["data"] and body["page"] == page
        assert body["total"] >= (page + 1) * 10  # always one more page
    body = (await client.get("/invoices", params={"page": 9, "limit": 5})).json()
    assert [i["id"] for i in body["data"]] == [1, 2, 3, 4, 5]
    await admin.post("/_sandbox/faults", json={"repeat_page": False})
    assert (await client.get("/products", params={"page": 50, "limit": 10})).json()["data"] == []


async def test_latency_and_request_log(app: Any, admin: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    await admin.post("/_sandbox/faults", json={"latency_ms": 60, "jitter_ms": 20})
    started = time.perf_counter()
    res = await client.get("/health")
    assert res.status_code == 200 and time.perf_counter() - started >= 0.06
    started = time.perf_counter()
    assert (await admin.get("/_sandbox/state")).status_code == 200
    assert time.perf_counter() - started < 0.06  # admin routes are never delayed
    await admin.post("/_sandbox/faults", json={"latency_ms": 0, "jitter_ms": 0})
    async with client_for(app, None) as anon:
        await anon.get("/products")
    log = (await admin.get("/_sandbox/requests")).json()["data"]
    assert [(e["method"], e["path"], e["status"], e["fault"]) for e in log] == [
        ("GET", f"{BASE}/health", 200, None),
        ("GET", f"{BASE}/products", 401, None),
    ]
    assert log[0]["duration_ms"] >= 60 and log[0]["duration_ms"] <= 60 + 20 + 50
    assert (await admin.delete("/_sandbox/requests")).status_code == 204
    assert (await admin.get("/_sandbox/requests")).json()["data"] == []


async def test_admin_validates_knobs(admin: httpx.AsyncClient) -> None:
    for bad in (
        {"nope": 1},
        {"error_rate": 2},
        {"error_rate": "x"},
        {"repeat_page": 1},
        {"error_status": 404},
        {"rate_limit_every": 1.5},
        {"seed": "x"},
    ):
        res = await admin.post("/_sandbox/faults", json=bad)
        assert res.status_code == 422, bad
    assert (await admin.post("/_sandbox/faults", content=b"[]")).status_code == 400
    state = (await admin.post("/_sandbox/faults", json={"seed": 7, "error_rate": 0.5})).json()
    assert state["seed"] == 7 and state["faults"]["error_rate"] == 0.5
    assert state["apex"] == {"products": 84, "customers": 30, "invoices": 20, "warehouses": 2, "stock_updates": 0}
    assert (await admin.delete("/_sandbox/faults")).json()["faults"]["error_rate"] == 0
    with pytest.raises(ValueError):
        create_app(faults={"error_rate": -1})


# --- seeding -------------------------------------------------------------------------------------


def _csv_counts() -> dict[str, int]:
    with open(CSV_PATH, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "lines": len(rows),
        "products": len({r["StockCode"] for r in rows}),
        "customers": len({r["CustomerID"] for r in rows if r["CustomerID"]}),
        "invoices": len({r["InvoiceNo"] for r in rows}),
        "credit_notes": len({r["InvoiceNo"] for r in rows if r["InvoiceNo"].startswith("C")}),
    }


def test_read_retail_csv_types_every_line() -> None:
    skipped: list[tuple[int, str]] = []
    rows = list(read_retail_csv(CSV_PATH, skipped=skipped))
    counts = _csv_counts()
    assert len(rows) == counts["lines"] and skipped == []
    assert all(isinstance(r, RetailRow) and isinstance(r.unit_price, Decimal) for r in rows)
    assert sum(1 for r in rows if r.quantity < 0) == 778
    assert sum(1 for r in rows if not r.description) == 105
    assert all(r.invoice_date.tzinfo is UTC for r in rows)
    assert len({r.invoice_no for r in rows if r.is_credit_note}) == counts["credit_notes"] == 569


def test_read_retail_csv_skips_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,WHITE HANGING HEART ,6,12/1/2010 8:26,2.55,17850.0,United Kingdom\n"
        "536366,22633,HAND WARMER,x,2010-12-01 08:28:00,1.85,17850,United Kingdom\n"
        "536367,22634,HAND WARMER,1,yesterday,1.85,,United Kingdom\n"
        ",22635,HAND WARMER,1,2010-12-01 08:28,abc,,United Kingdom\n"
    )
    skipped: list[tuple[int, str]] = []
    rows = list(read_retail_csv(path, skipped=skipped))
    assert rows == [
        RetailRow(
            2,
            "536365",
            "85123A",
            "WHITE HANGING HEART",
            6,
            datetime(2010, 12, 1, 8, 26, tzinfo=UTC),
            Decimal("2.55"),
            17850,
            "United Kingdom",
        )
    ]
    assert [n for n, _ in skipped] == [3, 4, 5]
    (tmp_path / "nohead.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError):
        list(read_retail_csv(tmp_path / "nohead.csv"))


async def test_csv_seeding_counts() -> None:
    counts = _csv_counts()
    app = create_app(seed_csv=CSV_PATH)
    store = app.state.apex
    assert (len(store.products), len(store.customers), len(store.invoices)) == (
        counts["products"],
        counts["customers"],
        counts["invoices"],
    )
    async with client_for(app) as c:
        assert (await c.get("/products")).json()["total"] == counts["products"]
        assert (await c.get("/customers")).json()["total"] == counts["customers"]
        assert (await c.get("/invoices")).json()["total"] == counts["invoices"]
        rows = (await c.get("/inventory")).json()["data"]
        assert len(rows) == counts["products"] * 2 and len({r["warehouse_id"] for r in rows}) == 2
        products = (await c.get("/products", params={"limit": 100})).json()["data"]
        assert_shape(
            {"success": True, "data": products, "total": 1, "page": 1, "limit": 1},
            DOC_PRODUCTS_LIST,
            nullable=frozenset({"name_ar"}),
        )
        assert any(p["name_ar"] for p in products) and any(p["name_ar"] is None for p in products)
        assert all(p["name"] == p["name"].strip() and p["name"] for p in products)
        found = (await c.get("/customers", params={"search": "customer12346@"})).json()["data"]
        assert [x["id"] for x in found] == ([12346] if 12346 in store.customers else [])
        paid_2011 = (
            await c.get("/invoices", params={"date_from": "2011-12-01", "date_to": "2011-12-31", "limit": 100})
        ).json()
        assert paid_2011["total"] > 0 and all(i["date"].startswith("2011-12") for i in paid_2011["data"])
    lines = sum(len(i.items) for i in store.invoices.values())
    assert lines == counts["lines"]
    credit = [i for i in store.invoices.values() if i.invoice_number.startswith("C")]
    assert len(credit) == counts["credit_notes"] and all(i.total <= 0 for i in credit)
    capped = create_app(seed_csv=CSV_PATH, products=100).state.apex
    assert len(capped.products) == 100 and all(it.product_id <= 100 for i in capped.invoices.values() for it in i.items)


async def test_synthetic_100k_products_is_fast() -> None:
    started = time.perf_counter()
    app = create_app(products=100_000)
    elapsed = time.perf_counter() - started
    assert elapsed < 5, elapsed
    async with client_for(app) as c:
        body = (await c.get("/products", params={"page": 1000, "limit": 100})).json()
    assert body["total"] == 100_000 and [p["id"] for p in body["data"]] == list(range(99_901, 100_001))
    assert len({p.barcode for p in app.state.apex.products.values()}) == 100_000


# --- the doc's Python examples, run unchanged but for host and key -------------------------------

DOC_HOST = "https://api.apex-pos.com"
DOC_PYTHON_EXAMPLES: dict[str, tuple[str, Any]] = {
    "auth": (
        """
import requests
HEADERS = {
    'X-API-Key': 'apx_your_key_here',
    'Content-Type': 'application/json'
}
BASE = 'https://api.apex-pos.com/rest_api/v1'
res = requests.get(f'{BASE}/products', headers=HEADERS)
data = res.json()
""",
        DOC_PRODUCTS_LIST,
    ),
    "list_products": (
        """
res = requests.get(
    'https://api.apex-pos.com/rest_api/v1/products',
    params={'page': 1, 'limit': 50},
    headers={'X-API-Key': 'apx_your_key'}
)
data = res.json()
""",
        DOC_PRODUCTS_LIST,
    ),
    "create_product": (
        """
res = requests.post(
    'https://api.apex-pos.com/rest_api/v1/products',
    json={'name': 'Latte', 'name_ar': 'لاتيه', 'price': 4.50, 'stock': 200},
    headers={'X-API-Key': 'apx_your_key'}
)
print(res.json())
""",
        DOC_PRODUCT_CREATED,
    ),
    "update_product": (
        """
res = requests.put(
    'https://api.apex-pos.com/rest_api/v1/products/42',
    json={'price': 5.00, 'tax_rate': 10},
    headers={'X-API-Key': 'apx_your_key'}
)
print(res.json())
""",
        DOC_PRODUCT_UPDATED,
    ),
    "list_inventory": (
        """
res = requests.get(
    'https://api.apex-pos.com/rest_api/v1/inventory',
    params={'warehouse_id': 1},
    headers={'X-API-Key': 'apx_your_key'}
)
""",
        DOC_INVENTORY_LIST,
    ),
    "update_stock": (
        """
res = requests.patch(
    'https://api.apex-pos.com/rest_api/v1/inventory/1',
    json={'product_id':1, 'warehouse_id':1, 'quantity':150, 'notes':'Restock'},
    headers={'X-API-Key': 'apx_your_key'}
)
""",
        DOC_STOCK_UPDATED,
    ),
    "create_invoice": (
        """
res = requests.post(
    'https://api.apex-pos.com/rest_api/v1/invoices',
    json={
        'customer_id': 5,
        'payment_method': 'card',
        'items': [
            {'product_id':1, 'quantity':2, 'price':3.50},
            {'product_id':3, 'quantity':1, 'price':12.00}
        ]
    },
    headers={'X-API-Key': 'apx_your_key'}
)
""",
        DOC_INVOICE_CREATED,
    ),
    "list_invoices": (
        """
res = requests.get(
    'https://api.apex-pos.com/rest_api/v1/invoices',
    params={'status':'paid','date_from':'2026-01-01','date_to':'2026-01-31'},
    headers={'X-API-Key': 'apx_your_key'}
)
""",
        {"success": True, "data": [SANDBOX_INVOICE], "total": 1, "page": 1, "limit": 50},
    ),
    "list_customers": (
        """
res = requests.get(
    'https://api.apex-pos.com/rest_api/v1/customers',
    params={'search': 'ahmed'},
    headers={'X-API-Key': 'apx_your_key'}
)
""",
        {**DOC_CUSTOMERS_LIST, "total": 1, "page": 1, "limit": 50},
    ),
    "create_customer": (
        """
res = requests.post(
    'https://api.apex-pos.com/rest_api/v1/customers',
    json={'name':'Sara Ali','phone':'+966509876543','email':'sara@example.com'},
    headers={'X-API-Key':'apx_your_key'}
)
""",
        DOC_CUSTOMER_CREATED,
    ),
    "health": (
        """
res = requests.get(
    'https://api.apex-pos.com/rest_api/v1/health',
    headers={'X-API-Key': 'apx_your_key'}
)
print(res.json()) # {'status': 'ok', 'business': 'My Store'}
""",
        DOC_HEALTH,
    ),
}


@pytest.fixture(scope="module")
def live_sandbox() -> Iterator[str]:
    """A sandbox served by uvicorn on 127.0.0.1 and a free port, for the blocking ``requests`` examples."""
    with ServerThread(create_app()) as server:
        yield server.base_url


@pytest.mark.parametrize("name", list(DOC_PYTHON_EXAMPLES))
def test_doc_python_example_runs_against_the_sandbox(
    name: str, live_sandbox: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import requests

    source, documented = DOC_PYTHON_EXAMPLES[name]
    source = source.replace(DOC_HOST, live_sandbox).replace("apx_your_key_here", KEY).replace("apx_your_key", KEY)
    namespace: dict[str, Any] = {"requests": requests}
    exec(compile(source, f"<apex doc example {name}>", "exec"), namespace)
    res = namespace["res"]
    assert 200 <= res.status_code < 300, res.text
    assert_shape(
        res.json(),
        documented,
        nullable=frozenset(
            {"name_ar", "barcode", "category_id", "customer_id", "payment_method", "account_id", "notes"}
        ),
    )
    if "print(" in source:
        assert capsys.readouterr().out.strip()
