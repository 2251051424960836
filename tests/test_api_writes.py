"""The write API end to end over HTTP, on SQLite and PostgreSQL (the ``client`` fixture).

Catalog and customer writes, sales with their totals worked out by hand, tenders, refunds,
voids, inventory adjustments (idempotent, 202), compare-and-set counts, the events each write
produces, tenancy, field-level validation errors, and the oversell guard under 50 concurrent sales.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from gateway import jsonutil
from gateway.services.tenants import create_tenant

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["title"] and body["detail"] and body["type"].endswith(code)
    return body


def assert_invalid(response: httpx.Response, *loc: str) -> dict:
    """A 422 problem whose ``errors`` has an entry at ``loc`` (``("body", ...)``)."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == 422 and body["errors"], body
    assert list(loc) in [error["loc"] for error in body["errors"]], body["errors"]
    return body


def ok(response: httpx.Response, status: int = 201) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


async def last_seq(client: httpx.AsyncClient) -> int:
    seq = 0
    while True:
        page = (await client.get("/v1/events", params={"after": seq, "limit": 1000})).json()
        if not page["data"]:
            return seq
        seq = page["next_after"]


async def events_after(client: httpx.AsyncClient, after: int, **params) -> list[dict]:
    """Every event with seq > ``after`` (all pages), checking the feed is gap-free and ordered."""
    out: list[dict] = []
    cursor = after
    while True:
        page = (await client.get("/v1/events", params={"after": cursor, "limit": 1000, **params})).json()
        if not page["data"]:
            break
        out += page["data"]
        cursor = page["next_after"]
        assert cursor == page["data"][-1]["seq"]
    if not params:
        assert [e["seq"] for e in out] == list(range(after + 1, after + 1 + len(out)))
    return out


class Shop:
    """A local connection and URL helpers."""

    def __init__(self, client: httpx.AsyncClient, connection: dict) -> None:
        self.client = client
        self.id = connection["id"]
        self.base = f"/v1/connections/{self.id}"

    async def location(self) -> str:
        return (await self.client.get(f"{self.base}/locations")).json()["data"][0]["id"]

    async def product(self, **body) -> dict:
        return ok(await self.client.post(f"{self.base}/products", json=body))

    async def adjust(self, product_id: str, delta: str, *, key: str | None = None, **extra) -> httpx.Response:
        body = {"product_id": product_id, "location_id": await self.location(), "delta": delta,
                "reason": "restock", **extra}
        return await self.client.post(f"{self.base}/inventory/adjustments", json=body,
                                      headers={"Idempotency-Key": key or uuid.uuid4().hex})

    async def on_hand(self, product_id: str) -> str:
        levels = (await self.client.get(f"{self.base}/inventory", params={"product_id": product_id})).json()["data"]
        assert len(levels) == 1, levels
        return levels[0]["on_hand"]


@pytest.fixture
async def shop(client, local_connection) -> Shop:
    return Shop(client, local_connection)


# -- catalog ------------------------------------------------------------------------------------
async def test_product_create_get_patch_filter_delete(client, shop):
    start = await last_seq(client)
    created = await shop.product(
        sku="TEE-1", name="Tee", price="15.00", barcode="5012345678900",
        taxes=[{"name": "GST", "rate": "5"}, {"name": "QST", "rate": "9.975", "compound": True}],
        variants=[{"sku": "TEE-1-S", "name": "Small", "options": {"size": "S"}},
                  {"sku": "TEE-1-M", "name": "Medium", "options": {"size": "M"}, "price": "16.00"}],
    )
    assert created["id"].startswith("prod_") and created["remote_id"] and created["connection_id"] == shop.id
    assert created["price"] == "15.00" and created["currency"] == "GBP" and created["tax_inclusive"] is False
    assert created["tax_rate"] == "15.4738"  # 5 % then 9.975 % on (net + 5 %): 5 + 10.47375, half up
    assert created["taxes"] == [{"name": "GST", "rate": "5", "compound": False},
                                {"name": "QST", "rate": "9.975", "compound": True}]
    small, medium = created["variants"]
    assert small["id"].startswith("var_") and small["sku"] == "TEE-1-S" and small["options"] == {"size": "S"}
    assert small["price"] is None and medium["price"] == "16.00" and created.get("deleted_at") is None
    url = f"{shop.base}/products/{created['id']}"
    assert ok(await client.get(url), 200) == created

    patched = ok(await client.patch(url, json={"name": "Tee shirt", "price": "17.50", "tax_rate": "20"}), 200)
    assert patched["name"] == "Tee shirt" and patched["price"] == "17.50"
    assert patched["tax_rate"] == "20" and patched["taxes"] == [{"name": "Tax", "rate": "20", "compound": False}]
    assert [v["id"] for v in patched["variants"]] == [small["id"], medium["id"]]
    assert patched["updated_at"] >= created["updated_at"] and patched["created_at"] == created["created_at"]
    assert ok(await client.get(url), 200) == patched

    await shop.product(sku="MUG-1", name="Mug", price="4.00")
    page = ok(await client.get(f"{shop.base}/products", params={"sku": "TEE-1"}), 200)
    assert [p["id"] for p in page["data"]] == [created["id"]] and page["next_cursor"] is None

    deleted = ok(await client.delete(url), 200)
    assert deleted["id"] == created["id"] and deleted["deleted_at"]
    listed = ok(await client.get(f"{shop.base}/products"), 200)["data"]
    assert [p["sku"] for p in listed] == ["MUG-1"]
    assert ok(await client.get(f"{shop.base}/products", params={"sku": "TEE-1"}), 200)["data"] == []
    with_deleted = ok(await client.get(f"{shop.base}/products", params={"include_deleted": "true"}), 200)["data"]
    gone = {p["id"]: p for p in with_deleted}[created["id"]]
    assert gone["deleted_at"] == deleted["deleted_at"] and gone["name"] == "Tee shirt"
    assert ok(await client.get(url), 200)["deleted_at"] == deleted["deleted_at"]
    assert_problem(await client.patch(url, json={"name": "again"}), 404, "not_found")

    events = await events_after(client, start)
    assert [e["type"] for e in events] == [
        "product.created", "inventory.updated", "inventory.updated",  # one level per variant at "Main"
        "product.updated",
        "product.created", "inventory.updated",
        "product.deleted",
    ]
    assert events[0]["data"]["id"] == created["id"] and events[0]["connection_id"] == shop.id
    assert events[3]["data"] == patched and {"name", "price", "tax_rate", "taxes"} <= set(events[3]["changed"])
    assert events[6]["data"]["deleted_at"] == deleted["deleted_at"]


async def test_customer_create_patch_and_email_filter(client, shop):
    start = await last_seq(client)
    ada = ok(await client.post(f"{shop.base}/customers",
                               json={"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000"}))
    assert ada["id"].startswith("cus_") and ada["balance"] == "0.00" and ada["loyalty_points"] == 0
    assert ada["currency"] == "GBP" and ada["credit_limit"] is None and ada["email"] == "ada@example.com"
    bob = ok(await client.post(f"{shop.base}/customers", json={"name": "Bob", "email": "bob@example.com"}))
    patched = ok(await client.patch(f"{shop.base}/customers/{ada['id']}",
                                    json={"phone": "+44 20 7946 0001", "credit_limit": "250.00"}), 200)
    assert patched["phone"] == "+44 20 7946 0001" and patched["credit_limit"] == "250.00"
    assert patched["name"] == "Ada Lovelace" and patched["email"] == "ada@example.com"
    assert ok(await client.get(f"{shop.base}/customers/{ada['id']}"), 200) == patched
    page = ok(await client.get(f"{shop.base}/customers", params={"email": "ada@example.com"}), 200)
    assert [c["id"] for c in page["data"]] == [ada["id"]]
    page = ok(await client.get(f"{shop.base}/customers", params={"email": "bob@example.com"}), 200)
    assert [c["id"] for c in page["data"]] == [bob["id"]]
    assert ok(await client.get(f"{shop.base}/customers", params={"email": "nobody@example.com"}), 200)["data"] == []
    assert_invalid(await client.patch(f"{shop.base}/customers/{ada['id']}", json={"email": "not-an-email"}),
                   "body", "email")
    events = await events_after(client, start)
    assert [e["type"] for e in events] == ["customer.created", "customer.created", "customer.updated"]
    assert events[2]["data"] == patched and {"phone", "credit_limit"} <= set(events[2]["changed"])


# -- sales, refunds, voids ----------------------------------------------------------------------
async def _stocked(shop: Shop, **product) -> dict:
    created = await shop.product(**product)
    assert ok(await shop.adjust(created["id"], "10"), 202)["status"] == "applied"
    return created


async def test_sale_totals_payments_refunds_and_inventory(client, shop):
    mug = await _stocked(shop, sku="MUG", name="Mug", price="9.99", tax_rate="20", tax_inclusive=True)
    pen = await _stocked(shop, sku="PEN", name="Pen", price="2.55", tax_rate="20")
    location = await shop.location()
    start = await last_seq(client)
    order = ok(await client.post(f"{shop.base}/orders", json={
        "location_id": location, "number": "536365",
        "lines": [{"sku": "MUG", "quantity": "3"}, {"product_id": pen["id"], "quantity": "6"}],
        "payments": [{"method": "card", "amount": "20.00"}, {"method": "cash", "amount": "30.00"}],
    }))
    # Mug, 20 % included: 3 × 9.99 = 29.97; net = 29.97 / 1.2 = 24.975 -> 24.98; tax = 29.97 - 24.98 = 4.99.
    # Pen, 20 % added: 6 × 2.55 = 15.30; tax = 3.06; line total 18.36.
    mug_line, pen_line = order["lines"]
    assert mug_line["sku"] == "MUG" and mug_line["product_id"] == mug["id"] and mug_line["variant_id"] is None
    assert (mug_line["quantity"], mug_line["unit_price"], mug_line["discount"], mug_line["total"]) == ("3", "9.99", "0.00", "29.97")
    assert mug_line["taxes"] == [{"name": "Tax", "rate": "20", "amount": "4.99", "compound": False}]
    assert (pen_line["quantity"], pen_line["unit_price"], pen_line["total"]) == ("6", "2.55", "18.36")
    assert pen_line["taxes"] == [{"name": "Tax", "rate": "20", "amount": "3.06", "compound": False}]
    assert (order["subtotal"], order["discount_total"], order["tax_total"], order["total"]) == ("45.27", "0.00", "8.05", "48.33")
    # Tendered 50.00; only cash is overpaid: change 1.67.
    assert order["payments"] == [{"method": "card", "amount": "20.00", "reference": None},
                                 {"method": "cash", "amount": "30.00", "reference": None}]
    assert (order["amount_paid"], order["change_due"]) == ("48.33", "1.67")
    assert (order["status"], order["payment_status"], order["source"]) == ("completed", "paid", "api")
    assert order["number"] == "536365" and order["location_id"] == location and order["currency"] == "GBP"
    assert order["refunds"] == [] and order["refunded_total"] == "0.00"
    assert await shop.on_hand(mug["id"]) == "7" and await shop.on_hand(pen["id"]) == "4"
    assert ok(await client.get(f"{shop.base}/orders/{order['id']}"), 200) == order

    url = f"{shop.base}/orders/{order['id']}"
    partial = ok(await client.post(f"{url}/refund", json={"lines": [{"line_id": mug_line["id"], "quantity": "1"}],
                                                          "reason": "chipped"}), 200)
    assert partial["status"] == "partially_refunded" and partial["refunded_total"] == "9.99"
    (refund,) = partial["refunds"]
    assert refund["id"].startswith("ref_") and refund["amount"] == "9.99" and refund["reason"] == "chipped"
    assert refund["lines"] == [{"line_id": mug_line["id"], "quantity": "1", "amount": "9.99"}] and refund["restock"] is True
    assert await shop.on_hand(mug["id"]) == "8" and await shop.on_hand(pen["id"]) == "4"
    assert_invalid(await client.post(f"{url}/refund", json={"lines": [{"line_id": mug_line["id"], "quantity": "3"}]}),
                   "body", "lines", "0", "quantity")

    full = ok(await client.post(f"{url}/refund"), 200)  # no body: everything not yet refunded
    assert full["status"] == "refunded" and full["refunded_total"] == "48.33"
    assert [r["amount"] for r in full["refunds"]] == ["9.99", "38.34"]
    assert sorted((line["line_id"], line["quantity"], line["amount"]) for line in full["refunds"][1]["lines"]) == sorted(
        [(mug_line["id"], "2", "19.98"), (pen_line["id"], "6", "18.36")])
    assert await shop.on_hand(mug["id"]) == "10" and await shop.on_hand(pen["id"]) == "10"
    levels = ok(await client.get(f"{shop.base}/inventory", params={"location_id": location}), 200)["data"]
    assert {(level["product_id"], level["on_hand"], level["available"]) for level in levels} == {
        (mug["id"], "10", "10"), (pen["id"], "10", "10")}
    assert_problem(await client.post(f"{url}/refund"), 409, "order_not_refundable")
    assert_problem(await client.post(f"{url}/void"), 409, "order_not_voidable")

    events = await events_after(client, start)
    assert [e["type"] for e in events] == [
        "order.created", "inventory.updated", "inventory.updated",
        "order.refunded", "inventory.updated",
        "order.refunded", "inventory.updated", "inventory.updated",
    ], [e["type"] for e in events]
    assert events[0]["data"] == order and events[3]["data"] == partial and events[5]["data"] == full
    assert {e["data"]["product_id"] for e in events[1:3]} == {mug["id"], pen["id"]}


async def test_discount_exclusive_tax_and_partial_payment(client, shop):
    pen = await _stocked(shop, sku="PEN", name="Pen", price="2.55", tax_rate="20")
    order = ok(await client.post(f"{shop.base}/orders", json={
        "lines": [{"product_id": pen["id"], "quantity": "3", "discount": "0.15"},
                  {"sku": "PEN", "quantity": "1", "unit_price": "2.05"}],
        "payments": [{"method": "card", "amount": "5.00"}],
    }))
    # 3 × 2.55 = 7.65 - 0.15 = 7.50; tax 1.50; 9.00.  1 × 2.05; tax 0.41; 2.46.
    assert [line["total"] for line in order["lines"]] == ["9.00", "2.46"]
    assert [line["taxes"][0]["amount"] for line in order["lines"]] == ["1.50", "0.41"]
    assert (order["subtotal"], order["discount_total"], order["tax_total"], order["total"]) == ("9.70", "0.15", "1.91", "11.46")
    assert (order["amount_paid"], order["change_due"], order["payment_status"], order["status"]) == ("5.00", "0.00", "partial", "open")
    assert order["number"] == "R000001" and await shop.on_hand(pen["id"]) == "6"
    assert_invalid(await client.post(f"{shop.base}/orders", json={
        "lines": [{"sku": "PEN", "quantity": "1"}], "payments": [{"method": "card", "amount": "5.00"}]}),
        "body", "payments")  # only cash may be overpaid


async def test_void_restores_stock_and_blocks_refunds(client, shop):
    pen = await _stocked(shop, sku="PEN", name="Pen", price="2.55", tax_rate="20")
    order = ok(await client.post(f"{shop.base}/orders", json={"lines": [{"sku": "PEN", "quantity": "2"}],
                                                               "payments": [{"method": "cash", "amount": "10"}]}))
    assert order["total"] == "6.12" and order["change_due"] == "3.88" and await shop.on_hand(pen["id"]) == "8"
    start = await last_seq(client)
    voided = ok(await client.post(f"{shop.base}/orders/{order['id']}/void", json={"reason": "rang up twice"}), 200)
    assert voided["status"] == "voided" and voided["id"] == order["id"]
    assert await shop.on_hand(pen["id"]) == "10"
    assert_problem(await client.post(f"{shop.base}/orders/{order['id']}/void"), 409, "order_not_voidable")
    assert_problem(await client.post(f"{shop.base}/orders/{order['id']}/refund"), 409, "order_not_refundable")
    assert ok(await client.get(f"{shop.base}/orders", params={"status": "voided"}), 200)["data"] == [voided]
    assert [e["type"] for e in await events_after(client, start)] == ["order.voided", "inventory.updated"]


# -- inventory ----------------------------------------------------------------------------------
async def test_adjustments_are_idempotent_and_readable(client, shop):
    product = await shop.product(sku="BOX", name="Box", price="1.00")
    location = await shop.location()
    url = f"{shop.base}/inventory/adjustments"
    body = {"product_id": product["id"], "location_id": location, "delta": "5", "reason": "restock",
            "reference": "po-77"}
    start = await last_seq(client)
    assert_problem(await client.post(url, json=body), 400, "idempotency_key_required")
    first = await client.post(url, json=body, headers={"Idempotency-Key": "adj-1"})
    adjustment = ok(first, 202)
    assert adjustment["id"].startswith("adj_") and adjustment["status"] == "applied"
    assert (adjustment["delta"], adjustment["reason"], adjustment["reference"]) == ("5", "restock", "po-77")
    assert adjustment["attempts"] == 1 and adjustment["applied_at"] and adjustment["last_error"] is None
    assert adjustment["product_id"] == product["id"] and adjustment["location_id"] == location
    replay = await client.post(url, json=body, headers={"Idempotency-Key": "adj-1"})
    assert replay.status_code == 202 and replay.json() == adjustment
    assert replay.headers["idempotent-replayed"] == "true"
    assert_problem(await client.post(url, json={**body, "delta": "6"}, headers={"Idempotency-Key": "adj-1"}), 422,
                   "idempotency_key_reused")
    assert ok(await client.get(f"{url}/{adjustment['id']}"), 200) == adjustment
    assert_problem(await client.get(f"{url}/adj_doesnotexist"), 404, "not_found")
    assert await shop.on_hand(product["id"]) == "5"  # applied once

    by_sku = ok(await client.post(url, json={"sku": "BOX", "location_id": location, "delta": "-2", "reason": "sale"},
                                  headers={"Idempotency-Key": "adj-2"}), 202)
    assert by_sku["product_id"] == product["id"] and by_sku["delta"] == "-2"
    assert_problem(await client.post(url, json={**body, "delta": "-4"}, headers={"Idempotency-Key": "adj-3"}), 409,
                   "insufficient_stock")
    assert await shop.on_hand(product["id"]) == "3"
    events = await events_after(client, start)
    assert [e["type"] for e in events] == ["adjustment.applied", "inventory.updated",
                                           "adjustment.applied", "inventory.updated"], [e["type"] for e in events]
    assert events[0]["data"] == adjustment


async def test_a_repeat_while_the_first_answer_is_being_stored_is_in_flight_not_lost(client, services, shop):
    """Between the write's commit and the stored answer, a repeat of the request is told to retry
    (409 idempotency_request_in_progress), and gets the first 202 once stored; only a claim left
    committed past IN_FLIGHT_TIMEOUT (the process died in between) is idempotency_outcome_unknown."""
    from sqlalchemy import update

    from gateway.services.idempotency import IN_FLIGHT_TIMEOUT
    from gateway.storage import tables as t

    product = await shop.product(sku="JAR", name="Jar", price="1.00")
    url = f"{shop.base}/inventory/adjustments"
    body = {"product_id": product["id"], "location_id": await shop.location(), "delta": "2", "reason": "restock"}
    first = ok(await client.post(url, json=body, headers={"Idempotency-Key": "gap-1"}), 202)

    async def claim_state(state: str, age: Any = None) -> None:
        async with services.db.transaction() as uow:
            values: dict[str, Any] = {"state": state}
            if age is not None:
                values["created_at"] = jsonutil.utcnow() - age
            await uow.conn.execute(update(t.idempotency_keys).where(t.idempotency_keys.c.key == "gap-1").values(**values))

    await claim_state("committed")  # as between the commit and the stored answer
    assert_problem(await client.post(url, json=body, headers={"Idempotency-Key": "gap-1"}), 409,
                   "idempotency_request_in_progress")
    await claim_state("committed", IN_FLIGHT_TIMEOUT * 2)  # the answer was never stored
    assert_problem(await client.post(url, json=body, headers={"Idempotency-Key": "gap-1"}), 409,
                   "idempotency_outcome_unknown")
    assert await shop.on_hand(product["id"]) == "2"  # never applied twice
    assert ok(await client.get(f"{url}/{first['id']}"), 200)["status"] == "applied"


async def test_count_compare_and_set(client, shop):
    product = await shop.product(sku="BOX", name="Box", price="1.00")
    location = await shop.location()
    assert ok(await shop.adjust(product["id"], "27"), 202)["status"] == "applied"
    url = f"{shop.base}/inventory/{product['id']}/{location}"
    level = ok(await client.put(url, json={"on_hand": "25", "expected_on_hand": "27"}), 200)
    assert level["on_hand"] == "25" and level["product_id"] == product["id"] and level["location_id"] == location
    stale = assert_problem(await client.put(url, json={"on_hand": "30", "expected_on_hand": "27"}), 409, "stale_count")
    assert stale["on_hand"] == "25"
    assert await shop.on_hand(product["id"]) == "25"
    assert_problem(await client.put(f"{shop.base}/inventory/prod_nope/{location}", json={"on_hand": "1"}), 404, "not_found")


# -- tenancy and validation ---------------------------------------------------------------------
async def test_foreign_tenant_ids_answer_404(client, services, shop):
    product = await _stocked(shop, sku="PEN", name="Pen", price="2.55")
    order = ok(await client.post(f"{shop.base}/orders", json={"lines": [{"sku": "PEN", "quantity": "1"}]}))
    _, other = await create_tenant(services.db, f"other-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {other.secret}"}
    theirs = ok(await client.post("/v1/connections", json={"connector": "local", "name": "Theirs"}, headers=headers))
    for base in (shop.base, f"/v1/connections/{theirs['id']}"):
        assert_problem(await client.get(f"{base}/products/{product['id']}", headers=headers), 404, "not_found")
        assert_problem(await client.get(f"{base}/orders/{order['id']}", headers=headers), 404, "not_found")
        assert_problem(await client.patch(f"{base}/products/{product['id']}", json={"name": "x"}, headers=headers),
                       404, "not_found")
        assert_problem(await client.delete(f"{base}/products/{product['id']}", headers=headers), 404, "not_found")
        assert_problem(await client.post(f"{base}/orders/{order['id']}/refund", headers=headers), 404, "not_found")
        assert_problem(await client.post(f"{base}/orders/{order['id']}/void", headers=headers), 404, "not_found")
    assert_invalid(await client.post(f"/v1/connections/{theirs['id']}/orders", headers=headers,
                                     json={"lines": [{"product_id": product["id"], "quantity": "1"}]}),
                   "body", "lines", "0", "product_id")
    assert ok(await client.get(f"{shop.base}/products/{product['id']}"), 200)["name"] == "Pen"
    assert ok(await client.get(f"{shop.base}/orders/{order['id']}"), 200)["status"] == "open"


async def test_wrong_types_answer_422_with_located_errors(client, shop):
    product = await _stocked(shop, sku="PEN", name="Pen", price="2.55")
    location = await shop.location()
    products, orders = f"{shop.base}/products", f"{shop.base}/orders"
    assert_invalid(await client.post(products, json={"name": "Pen", "price": 2.55}), "body", "price")
    assert_invalid(await client.post(products, json={"name": "Pen", "price": "2.55", "colour": "red"}), "body", "colour")
    assert_invalid(await client.post(products, json={"name": "Pen", "price": "-1.00"}), "body", "price")
    assert_invalid(await client.post(products, json={"name": "Pen", "price": "1", "variants": [{"name": "S", "price": 1}]}),
                   "body", "variants", "0", "price")
    assert_invalid(await client.patch(f"{products}/{product['id']}", json={"tax_rate": 20}), "body", "tax_rate")
    assert_invalid(await client.post(orders, json={"lines": [{"sku": "PEN", "quantity": "-1"}]}),
                   "body", "lines", "0", "quantity")
    assert_invalid(await client.post(orders, json={"lines": [{"sku": "PEN", "quantity": 1}]}),
                   "body", "lines", "0", "quantity")
    assert_invalid(await client.post(orders, json={"lines": [{"product_id": "prod_nope", "quantity": "1"}]}),
                   "body", "lines", "0", "product_id")
    assert_invalid(await client.post(orders, json={"lines": [{"sku": "PEN", "quantity": "1"},
                                                            {"sku": "NOPE", "quantity": "1"}]}),
                   "body", "lines", "1", "sku")
    assert_invalid(await client.post(orders, json={"lines": [{"sku": "PEN", "quantity": "1"}],
                                                   "payments": [{"method": "cheque", "amount": "1.00"}]}),
                   "body", "payments", "0", "method")
    assert_invalid(await client.post(f"{shop.base}/customers", json={"name": "Ada", "credit_limit": 10}),
                   "body", "credit_limit")
    adjust = f"{shop.base}/inventory/adjustments"
    assert_invalid(await client.post(adjust, headers={"Idempotency-Key": "bad-1"}, json={
        "product_id": product["id"], "location_id": location, "delta": 1, "reason": "restock"}), "body", "delta")
    assert_invalid(await client.post(adjust, headers={"Idempotency-Key": "bad-2"}, json={
        "product_id": "prod_nope", "location_id": location, "delta": "1", "reason": "restock"}), "body", "product_id")
    assert_invalid(await client.put(f"{shop.base}/inventory/{product['id']}/{location}", json={"on_hand": "-1"}),
                   "body", "on_hand")
    # Nothing above was written.
    assert await shop.on_hand(product["id"]) == "10"
    assert [p["sku"] for p in ok(await client.get(products), 200)["data"]] == ["PEN"]
    assert ok(await client.get(orders), 200)["data"] == []


# -- the oversell guard ---------------------------------------------------------------------------
async def test_fifty_concurrent_sales_of_ten_in_stock(client, shop):
    product = await shop.product(sku="LAST", name="Last ten", price="5.00", tax_rate="20")
    assert ok(await shop.adjust(product["id"], "10"), 202)["status"] == "applied"
    start = await last_seq(client)
    body = {"lines": [{"product_id": product["id"], "quantity": "1"}], "payments": [{"method": "card", "amount": "6.00"}]}
    responses = await asyncio.gather(*(client.post(f"{shop.base}/orders", json=body) for _ in range(50)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 10 + [409] * 40, statuses
    accepted = {r.json()["id"] for r in responses if r.status_code == 201}
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "insufficient_stock")
    assert len(accepted) == 10
    assert await shop.on_hand(product["id"]) == "0"
    created = await events_after(client, start, type="order.created", connection_id=shop.id)
    assert len(created) == 10
    assert {e["data"]["id"] for e in created} == accepted
    assert all(e["data"]["lines"][0]["product_id"] == product["id"] for e in created)
    seqs = [e["seq"] for e in created]
    assert seqs == sorted(seqs)
    numbers = sorted(e["data"]["number"] for e in created)
    assert numbers == [f"R{n:06d}" for n in range(1, 11)]
    # Every accepted sale wrote exactly one stock change; the refused ones wrote nothing.
    everything = await events_after(client, start)
    assert [e["type"] for e in everything] == ["order.created", "inventory.updated"] * 10
    assert [e["data"]["on_hand"] for e in everything[1::2]] == [str(n) for n in range(9, -1, -1)]


async def test_amounts_beyond_fifteen_digits_are_refused_not_500(client, shop):
    """Each input fits the model, but what it computes would not: 422/409, never a 500 or a broken document."""
    huge = "999999999999999"
    assert_invalid(await client.post(f"{shop.base}/products", json={
        "name": "Taxed", "price": "1.00", "taxes": [{"name": f"T{n}", "rate": huge, "compound": True} for n in range(3)]}),
        "body", "taxes")
    product = await shop.product(sku="BIG", name="Big", price=huge, track_inventory=False)
    assert_invalid(await client.post(f"{shop.base}/orders", json={"lines": [{"sku": "BIG", "quantity": "1000"}]}),
                   "body", "lines", "0")
    assert_invalid(await client.post(f"{shop.base}/orders", json={"lines": [{"sku": "BIG", "quantity": "0.6"}] * 2}),
                   "body", "lines")
    assert_invalid(await client.post(f"{shop.base}/orders", json={
        "lines": [{"product_id": product["id"], "quantity": "0.001"}],
        "payments": [{"method": "cash", "amount": f"{huge}.9999"}] * 2}), "body", "payments")
    stocked = await shop.product(sku="LOTS", name="Lots", price="1.00")
    assert ok(await shop.adjust(stocked["id"], f"{huge}.999"), 202)["status"] == "applied"
    assert_problem(await shop.adjust(stocked["id"], "1"), 409, "stock_out_of_range")
    assert await shop.on_hand(stocked["id"]) == f"{huge}.999"
    assert ok(await client.get(f"{shop.base}/orders"), 200)["data"] == []
