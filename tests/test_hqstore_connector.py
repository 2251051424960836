"""The HQ/Store connector against the in-process HQ/Store sandbox (``httpx.ASGITransport``):
credentials, full and incremental syncs compared with the sandbox's memory, exact unit
conversion both ways (thousandths, minor units, basis points, compound taxes), token refresh
before expiry, in the middle of a long sync and on a 401, sales created and voided, stock
adjustments pushed once, barcode lookup, transfers as movements, vendor errors as gateway errors."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from connectors.hqstore import HQStoreConnector
from connectors.hqstore.connector import effective_rate, line_taxes
from connectors.hqstore.sandbox import Product, create_app
from gateway.crypto import CredentialCipher
from gateway.errors import Conflict, ValidationFailed, VendorCredentialsRejected, VendorError
from gateway.model import (
    ENTITY_MODELS,
    AdjustmentCreate,
    ConnectionCreate,
    CustomerCreate,
    OrderCreate,
    ProductCreate,
    ProductUpdate,
    VoidCreate,
)
from gateway.sdk.http import VendorRequestRejected
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.adjustments import PushDeferred
from gateway.services.connections import ConnectionService
from gateway.services.sync import SyncEngine
from gateway.storage import tables as t
from gateway.testing.conformance import cached_records, sandbox_client_overrides

BASE_URL = "http://hqstore.test"
CREDENTIALS = {"username": "admin", "pin": "1234", "sync_token": "hqs_sync_sandbox"}


class Clock:
    """A settable epoch-seconds clock shared by the sandbox and the connector's auth."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def wired(app: Any, *, clock: Any = None, transport: httpx.AsyncBaseTransport | None = None) -> type[HQStoreConnector]:
    """An HQStoreConnector on ``app`` in process, instant retries, no rate limit, ``clock`` for its tokens."""
    attrs: dict[str, Any] = {"client_overrides": sandbox_client_overrides(transport or httpx.ASGITransport(app=app))}
    if clock is not None:
        attrs["auth_clock"] = staticmethod(clock)
    return type("SandboxHQStore", (HQStoreConnector,), attrs)


class Env:
    def __init__(self, db: Any, tenant_id: str, app: Any, connector: type[HQStoreConnector]) -> None:
        self.db, self.tenant_id, self.app = db, tenant_id, app
        self.store = app.state.hqstore
        self.service = ConnectionService(db, ConnectorRegistry([connector], load_entry_points=False),
                                         CredentialCipher([os.urandom(32)]))
        self.connection_id = ""

    async def connect(self, credentials: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
        connection = await self.service.create(self.tenant_id, ConnectionCreate(
            connector="hqstore", name="HQ", credentials=credentials or CREDENTIALS,
            settings={"base_url": BASE_URL, "page_size": 5, **settings}))
        self.connection_id = connection["id"]
        return connection

    async def connector(self) -> HQStoreConnector:
        return await self.service.connector_for(self.tenant_id, self.connection_id)

    async def sync_all(self, mode: str = "full") -> dict[str, Any]:
        engine = SyncEngine(self.db, await self.connector())
        results = {entity: await engine.run(entity, mode=mode) for entity in engine.entities()}
        assert all(r.status == "succeeded" for r in results.values()), results
        return results

    async def cached(self, entity: str) -> dict[str, dict[str, Any]]:
        return await cached_records(self.db, self.connection_id, entity)

    async def event_types(self) -> list[str]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.events.c.type).where(
                t.events.c.connection_id == self.connection_id).order_by(t.events.c.seq))).all()
        return [row.type for row in rows]

    async def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL) as http:
            return await http.request(method, path, json=json)

    async def vendor_log(self) -> list[dict[str, Any]]:
        return (await self.admin("GET", "/_sandbox/requests")).json()["data"]


@pytest.fixture
def make_env(db, tenant):
    def make(*, clock: Any = None, auth_clock: Any = None, transport_for: Any = None, **options: Any) -> Env:
        app = create_app(clock=clock, **{"products": 12, "customers": 7, "sales": 6, **options})
        transport = transport_for(app) if transport_for is not None else None
        return Env(db, tenant[0], app, wired(app, clock=auth_clock or clock, transport=transport))
    return make


def minor(value: int) -> str:
    return format(Decimal(value).scaleb(-2), "f")


def units(thousandths: int) -> Decimal:
    return Decimal(thousandths) / 1000


# -- pure helpers ------------------------------------------------------------------------------------
def test_effective_rate_combines_simple_and_compound_rates() -> None:
    assert effective_rate([{"rate": 825}]) == Decimal("8.25")
    assert effective_rate([{"rate": 825}, {"rate": 100}]) == Decimal("9.25")
    # compound 5 % on top of 9.25 %: 1.0925 x 1.05 = 1.147125
    assert effective_rate([{"rate": 825}, {"rate": 100}, {"rate": 500, "isCompound": True}]) == Decimal("14.7125")
    assert effective_rate([]) == Decimal(0)


def test_line_taxes_round_each_tax_half_up_and_compound_on_earlier_taxes() -> None:
    taxes = [{"rate": Decimal("8.25"), "compound": False}, {"rate": Decimal("5"), "compound": True}]
    # 19.98 x 8.25 % = 1.64835 -> 1.65; (19.98 + 1.65) x 5 % = 1.0815 -> 1.08
    assert line_taxes(Decimal("19.98"), taxes, 2) == [Decimal("1.65"), Decimal("1.08")]


# -- credentials -------------------------------------------------------------------------------------
async def test_bad_pin_is_rejected_and_nothing_is_stored(make_env) -> None:
    env = make_env()
    with pytest.raises(VendorCredentialsRejected) as caught:
        await env.connect({"username": "admin", "pin": "9999"})
    assert caught.value.status == 424
    assert "9999" not in caught.value.detail
    async with env.db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(t.connections).where(
            t.connections.c.tenant_id == env.tenant_id))).scalar_one() == 0
    await env.connect()
    assert env.store.tokens.issued == 1  # the refused login issued nothing; the good one did


# -- reads -------------------------------------------------------------------------------------------
async def test_full_sync_mirrors_the_sandbox_exactly(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    store = env.store
    cache = {e: await env.cached(e) for e in ("locations", "categories", "products", "customers", "inventory", "orders")}
    for entity, items in cache.items():
        for record in items.values():
            ENTITY_MODELS[entity].model_validate(record)
    assert {rid: loc["name"] for rid, loc in cache["locations"].items()} == {s.id: s.name for s in store.stores.values()}
    assert all(loc["kind"] == "store" and loc["timezone"] == "America/Chicago" for loc in cache["locations"].values())
    categories = cache["categories"]
    assert set(categories) == set(store.departments)
    for dept in store.departments.values():  # the nested department resolves to its parent in one sync
        parent = categories[dept.parent_id]["id"] if dept.parent_id else None
        assert categories[dept.id]["parent_id"] == parent
    products = cache["products"]
    assert set(products) == set(store.products)
    for p in store.products.values():
        got = products[p.id]
        assert (got["sku"], got["barcode"], got["name"], got["currency"]) == (p.sku, p.barcode, p.name, "USD")
        assert got["price"] == minor(p.sell_price) and got["cost"] == minor(p.cost_price)
        assert got["category_ids"] == [categories[p.department_id]["id"]]
        rates = store.group_rates(p)
        assert got["taxes"] == [{"name": r.name, "rate": format(Decimal(r.rate).scaleb(-2).normalize(), "f"),
                                 "compound": r.is_compound} for r in rates]
        assert Decimal(got["tax_rate"]) == effective_rate([r.as_json() for r in rates])
        assert got["tax_inclusive"] is False and got["active"] is True
    assert set(cache["customers"]) == set(store.customers)
    levels = cache["inventory"]
    assert set(levels) == {f"{p}:{s}" for p, s in store.levels}
    for (pid, sid), level in store.levels.items():
        got = levels[f"{pid}:{sid}"]
        assert Decimal(got["on_hand"]) == units(level.quantity) and Decimal(got["low_stock_threshold"]) == units(5000)
        assert got["product_id"] == products[pid]["id"] and got["location_id"] == cache["locations"][sid]["id"]
    orders = cache["orders"]
    assert set(orders) == set(store.sales)
    for sale in store.sales.values():
        got = orders[sale.id]
        assert got["status"] == ("voided" if sale.status == "VOIDED" else "completed")
        assert (got["subtotal"], got["tax_total"], got["total"]) == (minor(sale.subtotal), minor(sale.tax_total),
                                                                      minor(sale.grand_total))
        assert got["location_id"] == cache["locations"][sale.store_id]["id"]
        for line, item in zip(got["lines"], sale.items, strict=True):
            assert Decimal(line["quantity"]) == units(item["quantity"])
            assert line["unit_price"] == minor(item["unitPrice"]) and line["total"] == minor(item["lineTotal"])
            assert [tax["amount"] for tax in line["taxes"]] == [minor(x["taxAmount"]) for x in item["taxes"]]
    fractional = [line for o in orders.values() for line in o["lines"] if line["quantity"] == "1.5"]
    assert fractional, "seeded sales sell 1.500 units (1500 thousandths) as quantity 1.5"


async def test_resync_writes_nothing_and_incremental_uses_sync_pull(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    events = await env.event_types()
    await env.admin("DELETE", "/_sandbox/requests")
    again = await env.sync_all("auto")
    assert all((r.created, r.updated, r.deleted) == (0, 0, 0) for r in again.values()), again
    assert (await env.event_types())[len(events):] == ["connection.sync_completed"] * len(again)
    pulls = [r for r in await env.vendor_log() if r["path"] == "/api/v1/sync/pull"]
    assert {q.split("entity=")[1].split("&")[0] for q in (r["query"] for r in pulls)} == {"products", "customers", "sales"}

    product = next(iter(env.store.products.values()))  # a change at HQ is picked up by the next poll
    product.sell_price, product.updated_at = 1234, datetime(2026, 2, 1, tzinfo=UTC)
    changed = await env.sync_all("incremental")
    assert changed["products"].updated == 1
    assert (await env.cached("products"))[product.id]["price"] == "12.34"


async def test_vendor_deleted_customer_is_swept_and_deactivated_product_reads_inactive(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    gone = next(iter(env.store.customers))
    del env.store.customers[gone]
    product = next(iter(env.store.products.values()))
    product.is_active = False
    results = await env.sync_all()
    assert results["customers"].deleted == 1
    assert gone not in await env.cached("customers")
    assert (await env.cached("products"))[product.id]["active"] is False


# -- unit conversion both ways -------------------------------------------------------------------------
async def test_sale_of_two_units_at_999_with_825_bp_converts_exactly_both_ways(make_env) -> None:
    """2.000 units (2000 thousandths) at 999 minor units with 8.25 % (825 bp): unified quantity
    "2", unit_price "9.99", tax rate "8.25"; the create sends 2000 / 999 / 825 back."""
    env = make_env()
    store = env.store
    standard = next(g for g in store.tax_groups.values() if g.name == "Standard")
    at = datetime(2026, 1, 5, tzinfo=UTC)
    coffee = Product(store.new_id(), "COFFEE", "0012345678905", "Coffee", None, None, 500, 999, standard.id,
                     True, True, at, at)
    store.products[coffee.id] = coffee
    store_id = next(iter(store.stores))
    store._stock_everywhere(coffee, at)
    await env.connect()
    await env.sync_all()
    cached = (await env.cached("products"))[coffee.id]
    assert (cached["price"], cached["cost"], cached["tax_rate"]) == ("9.99", "5.00", "8.25")
    assert cached["taxes"] == [{"name": "State Tax", "rate": "8.25", "compound": False}]
    location = (await env.cached("locations"))[store_id]["id"]

    before = store.levels[(coffee.id, store_id)].quantity
    order = await (await env.connector()).create_order(OrderCreate.model_validate({
        "location_id": location, "number": "R-0001", "lines": [{"product_id": cached["id"], "quantity": "2"}],
        "payments": [{"method": "cash", "amount": "22.00"}]}))
    sale = store.sales[order["remote_id"]]
    (item,) = sale.items
    assert (item["quantity"], item["unitPrice"], item["taxRate"]) == (2000, 999, 825)
    assert (item["taxAmount"], item["lineTotal"]) == (165, 2163)
    assert item["taxes"] == [{"taxRateName": "State Tax", "rate": 825, "taxAmount": 165, "isCompound": False,
                              "sortOrder": 0}]
    assert (sale.subtotal, sale.tax_total, sale.grand_total, sale.change_due) == (1998, 165, 2163, 37)
    assert sale.payments[0]["method"] == "CASH" and sale.payments[0]["amount"] == 2200
    (line,) = order["lines"]
    assert (line["quantity"], line["unit_price"], line["total"]) == ("2", "9.99", "21.63")
    assert line["taxes"] == [{"name": "State Tax", "rate": "8.25", "amount": "1.65", "compound": False}]
    assert (order["number"], order["subtotal"], order["tax_total"], order["total"]) == ("R-0001", "19.98", "1.65", "21.63")
    assert (order["amount_paid"], order["change_due"], order["source"]) == ("21.63", "0.37", "api")
    assert store.levels[(coffee.id, store_id)].quantity == before - 2000
    level = (await env.cached("inventory"))[f"{coffee.id}:{store_id}"]
    assert Decimal(level["on_hand"]) == units(before - 2000)
    assert "order.created" in await env.event_types()


async def test_compound_tax_group_and_fractional_quantity_are_priced_like_the_till(make_env) -> None:
    env = make_env()
    store = env.store
    luxury = next(g for g in store.tax_groups.values() if g.name == "Luxury")
    product = next(p for p in store.products.values() if p.tax_group_id == luxury.id)
    await env.connect()
    await env.sync_all()
    cached = (await env.cached("products"))[product.id]
    assert [tax["compound"] for tax in cached["taxes"]] == [False, False, True]
    order = await (await env.connector()).create_order(OrderCreate.model_validate({
        "location_id": next(iter((await env.cached("locations")).values()))["id"],
        "lines": [{"product_id": cached["id"], "quantity": "1.25", "unit_price": "3.99", "discount": "0.50"}],
        "payments": [{"method": "card", "amount": "10.00"}]}))
    (item,) = store.sales[order["remote_id"]].items
    net = (1250 * 399 * 2 + 1000) // 2000  # 4.9875 -> 4.99
    taxable = net - 50
    state, city = (taxable * 825 * 2 + 10000) // 20000, (taxable * 100 * 2 + 10000) // 20000
    compound = ((taxable + state + city) * 500 * 2 + 10000) // 20000
    assert (item["quantity"], item["unitPrice"], item["discountAmount"]) == (1250, 399, 50)
    assert [x["taxAmount"] for x in item["taxes"]] == [state, city, compound]
    assert item["lineTotal"] == taxable + state + city + compound
    (line,) = order["lines"]
    assert (line["quantity"], line["unit_price"], line["discount"]) == ("1.25", "3.99", "0.50")
    assert [tax["rate"] for tax in line["taxes"]] == ["8.25", "1", "5"]


async def test_create_order_validation_answers_4xx_before_calling_the_vendor(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    connector = await env.connector()
    product = next(iter((await env.cached("products")).values()))
    location = next(iter((await env.cached("locations")).values()))["id"]
    cases = [
        ({"lines": [{"product_id": product["id"], "quantity": "1"}], "payments": [{"method": "cash", "amount": "100"}]},
         "location_required"),
        ({"location_id": location, "lines": [{"product_id": product["id"], "quantity": "1"}]}, "payment_required"),
        ({"location_id": location, "lines": [{"product_id": product["id"], "quantity": "1"}],
          "payments": [{"method": "cash", "amount": "0.01"}]}, "payment_short"),
        ({"location_id": location, "lines": [{"product_id": product["id"], "quantity": "1", "unit_price": "1.001"}],
          "payments": [{"method": "cash", "amount": "100"}]}, "validation_error"),
        ({"location_id": location, "lines": [{"sku": "NO-SUCH-SKU", "quantity": "1"}],
          "payments": [{"method": "cash", "amount": "100"}]}, "validation_error"),
    ]
    sales = len(env.store.sales)
    for body, code in cases:
        with pytest.raises(ValidationFailed) as caught:
            await connector.create_order(OrderCreate.model_validate(body))
        assert caught.value.code == code, (body, caught.value.code, caught.value.detail)
        assert caught.value.status == 422
    assert len(env.store.sales) == sales


async def test_duplicate_receipt_number_is_a_conflict_and_void_round_trips(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    connector = await env.connector()
    product = next(iter((await env.cached("products")).values()))
    store_id = next(iter(env.store.stores))
    location = (await env.cached("locations"))[store_id]["id"]
    body = OrderCreate.model_validate({"location_id": location, "number": "R-DUP", "lines": [
        {"product_id": product["id"], "quantity": "3"}], "payments": [{"method": "card", "amount": "500"}]})
    order = await connector.create_order(body)
    with pytest.raises(Conflict) as caught:
        await connector.create_order(body)
    assert caught.value.code == "duplicate_receipt_number"
    before = env.store.levels[(product["remote_id"], store_id)].quantity
    voided = await (await env.connector()).void_order(order["id"], VoidCreate(reason="wrong item"))
    assert voided["status"] == "voided"
    sale = env.store.sales[order["remote_id"]]
    assert (sale.status, sale.void_reason) == ("VOIDED", "wrong item")
    assert env.store.levels[(product["remote_id"], store_id)].quantity == before + 3000
    assert "order.voided" in await env.event_types()
    with pytest.raises(Conflict) as again:
        await (await env.connector()).void_order(order["id"])
    assert again.value.code == "order_not_voidable"


# -- tokens --------------------------------------------------------------------------------------------
async def test_token_expiry_in_the_middle_of_a_long_sync_is_refreshed_without_failing_it(make_env) -> None:
    """Access tokens live 60 s; every vendor request moves the shared clock 25 s on, so the token
    expires every few pages of a 200-product, 5-per-page sync. The connector refreshes before
    expiry (same clock) and the sync reads everything."""
    clock = Clock()

    def ticking(app: Any) -> httpx.AsyncBaseTransport:
        inner = httpx.ASGITransport(app=app)

        class Ticking(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                clock.now += 25
                return await inner.handle_async_request(request)

        return Ticking()

    env = make_env(clock=clock, transport_for=ticking, products=200, token_ttl=60)
    await env.connect()
    results = await env.sync_all()
    assert results["products"].pages == 40 and results["products"].seen == 200
    assert set(await env.cached("products")) == set(env.store.products)
    log = await env.vendor_log()
    assert not [r for r in log if r["status"] == 401], "refreshed before expiry: the vendor never said 401"
    assert env.store.tokens.refreshed >= 20
    logins = [r for r in log if r["path"] == "/api/v1/auth/login"]
    assert len(logins) == 1 + len(results)  # one per client session (the check, each entity); refreshes within


async def test_token_expiring_at_the_vendor_mid_sync_is_renewed_on_401(make_env) -> None:
    """The vendor's clock runs ahead of the connector's: each token dies at the vendor while the
    connector still thinks it fresh. Each 401 is answered by one refresh and one retry."""
    vendor_clock = Clock()

    def ticking(app: Any) -> httpx.AsyncBaseTransport:
        inner = httpx.ASGITransport(app=app)

        class Ticking(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                vendor_clock.now += 25
                return await inner.handle_async_request(request)

        return Ticking()

    connector_clock = Clock()  # stays at the start: the connector never sees expiry coming
    env = make_env(clock=vendor_clock, auth_clock=connector_clock, transport_for=ticking, products=60, token_ttl=100)
    await env.connect()
    results = await env.sync_all()
    assert results["products"].seen == 60
    log = await env.vendor_log()
    unauthorized = [r for r in log if r["status"] == 401]
    assert unauthorized, "the vendor's clock should have expired tokens"
    refreshes = [r for r in log if r["path"] == "/api/v1/auth/refresh"]
    assert len(refreshes) == len(unauthorized)  # one refresh per 401, then the retry passed


async def test_401_triggers_one_refresh_and_one_retry(make_env) -> None:
    env = make_env()
    await env.connect()
    connector = await env.connector()
    async with connector._session() as client:
        await client.json("GET", "/api/v1/auth/me")  # logged in
        await env.admin("POST", "/_sandbox/tokens/revoke")
        await env.admin("DELETE", "/_sandbox/requests")
        body = await client.json("GET", "/api/v1/stores")
    assert body["success"] is True
    calls = [(r["method"], r["path"], r["status"]) for r in await env.vendor_log()]
    assert calls == [("GET", "/api/v1/stores", 401), ("POST", "/api/v1/auth/refresh", 200),
                     ("GET", "/api/v1/stores", 200)]


async def test_refused_refresh_token_logs_in_again(make_env) -> None:
    env = make_env()
    await env.connect()
    connector = await env.connector()
    async with connector._session() as client:
        await client.json("GET", "/api/v1/auth/me")
        env.store.tokens.refresh.clear()  # HQ forgot every refresh token (a restart)
        await env.admin("POST", "/_sandbox/tokens/revoke")
        await env.admin("DELETE", "/_sandbox/requests")
        await client.json("GET", "/api/v1/stores")
    calls = [(r["path"], r["status"]) for r in await env.vendor_log()]
    assert calls == [("/api/v1/stores", 401), ("/api/v1/auth/refresh", 401), ("/api/v1/auth/login", 200),
                     ("/api/v1/stores", 200)]


# -- catalog and customers -------------------------------------------------------------------------------
async def test_product_create_update_delete_and_barcode_lookup(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    connector = await env.connector()
    category = next(c for c in (await env.cached("categories")).values() if c["name"] == "Coffee")
    created = await connector.create_product(ProductCreate.model_validate({
        "sku": "LATTE-12", "barcode": "0099887766554", "name": "Latte 12oz", "price": "4.75", "cost": "1.20",
        "category_ids": [category["id"]], "tax_rate": "8.25"}))
    raw = env.store.products[created["remote_id"]]
    assert (raw.sell_price, raw.cost_price, raw.department_id) == (475, 120, category["remote_id"])
    assert env.store.tax_groups[raw.tax_group_id].name == "Standard"
    assert (created["price"], created["tax_rate"], created["category_ids"]) == ("4.75", "8.25", [category["id"]])
    updated = await (await env.connector()).update_product(created["id"], ProductUpdate(price=Decimal("5.10")))
    assert updated["price"] == "5.10" and env.store.products[created["remote_id"]].sell_price == 510
    found = await (await env.connector()).product_by_barcode("0099887766554")
    assert found is not None and found["id"] == created["id"]
    assert await (await env.connector()).product_by_barcode("0000000000000") is None
    deleted = await (await env.connector()).delete_product(created["id"])
    assert deleted["active"] is False and env.store.products[created["remote_id"]].is_active is False

    with pytest.raises(ValidationFailed) as caught:
        await (await env.connector()).create_product(ProductCreate.model_validate(
            {"sku": "X-1", "name": "Odd tax", "price": "1.00", "tax_rate": "7"}))
    assert caught.value.code == "unknown_tax_group"
    with pytest.raises(ValidationFailed):
        await (await env.connector()).create_product(ProductCreate.model_validate(
            {"sku": "X-2", "name": "Too precise", "price": "1.005"}))
    with pytest.raises(VendorRequestRejected) as refused:  # HQ/Store's 409 on a SKU it has: a 502, never a 500
        await (await env.connector()).create_product(ProductCreate.model_validate(
            {"sku": "LATTE-12", "name": "Again", "price": "1.00"}))
    assert refused.value.status == 502 and "SKU already exists" in refused.value.detail


async def test_customer_create_and_update(make_env) -> None:
    env = make_env()
    await env.connect()
    connector = await env.connector()
    created = await connector.create_customer(CustomerCreate.model_validate({
        "name": "Dana Reyes", "email": "dana@example.com", "phone": "+15550123", "address": {"line1": "7 Oak Road"},
        "credit_limit": "250.00"}))
    raw = env.store.customers[created["remote_id"]]
    assert (raw.address, raw.credit_limit) == ("7 Oak Road", 25000)
    assert created["address"]["line1"] == "7 Oak Road" and created["credit_limit"] == "250.00"
    with pytest.raises(ValidationFailed):
        await connector.create_customer(CustomerCreate.model_validate({"name": "X", "address": {"city": "Austin"}}))


# -- stock ---------------------------------------------------------------------------------------------
async def _adjust(env: Env, level: dict[str, Any], delta: str, reason: str = "restock") -> dict[str, Any]:
    return await (await env.connector()).create_adjustment(AdjustmentCreate.model_validate({
        "product_id": level["product_id"], "location_id": level["location_id"], "delta": delta, "reason": reason,
        "reference": "PO-17"}))


async def test_fractional_adjustment_is_pushed_once_in_thousandths_and_journaled(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    remote_id, level = next(iter((await env.cached("inventory")).items()))
    pid, sid = remote_id.split(":")
    start = env.store.levels[(pid, sid)].quantity
    pending = await _adjust(env, level, "2.5")
    assert pending["status"] == "pending" and pending["delta"] == "2.5"
    events = await env.event_types()
    applied = await (await env.connector()).push_adjustment(pending["id"])
    assert applied["status"] == "applied"
    assert env.store.levels[(pid, sid)].quantity == start + 2500
    assert env.store.adjustments[-1]["quantity"] == 2500 and env.store.adjustments[-1]["reason"] == "RECEIVED"
    assert env.store.adjustments[-1]["notes"] == "restock: PO-17"
    assert Decimal((await env.cached("inventory"))[remote_id]["on_hand"]) == units(start + 2500)
    assert (await env.event_types())[len(events):] == ["adjustment.applied"]  # the read-back is its echo
    again = await (await env.connector()).push_adjustment(pending["id"])  # a duplicate job delivery
    assert again["status"] == "applied" and env.store.levels[(pid, sid)].quantity == start + 2500
    await env.sync_all()  # the poll after it is the echo too
    assert "inventory.updated" not in (await env.event_types())[len(events):]


async def test_adjustment_whose_answer_was_lost_is_not_applied_twice(make_env) -> None:
    """The POST lands at HQ/Store but its answer is lost (a 502 from a proxy); the next attempt
    reads the level, sees the target, and settles applied without sending the delta again."""
    lose_next = {"on": False}

    def lossy(app: Any) -> httpx.AsyncBaseTransport:
        inner = httpx.ASGITransport(app=app)

        class Lossy(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                response = await inner.handle_async_request(request)
                if lose_next["on"] and request.url.path == "/api/v1/inventory/adjustments":
                    lose_next["on"] = False
                    await response.aread()
                    return httpx.Response(502, json={"success": False, "error": "Bad gateway"})
                return response

        return Lossy()

    env = make_env(transport_for=lossy)
    await env.connect()
    await env.sync_all()
    remote_id, level = next(iter((await env.cached("inventory")).items()))
    pid, sid = remote_id.split(":")
    start = env.store.levels[(pid, sid)].quantity
    pending = await _adjust(env, level, "-1", "correction")
    lose_next["on"] = True
    settled = await (await env.connector()).push_adjustment(pending["id"])
    assert settled["status"] == "applied"  # read at once after the lost answer: the target is there
    assert env.store.levels[(pid, sid)].quantity == start - 1000
    assert len(env.store.adjustments) == 1


async def test_adjustment_below_zero_fails_and_5xx_defers(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    remote_id, level = next(iter((await env.cached("inventory")).items()))
    pid, sid = remote_id.split(":")
    start = env.store.levels[(pid, sid)].quantity
    too_much = await _adjust(env, level, str(units(-start - 1000)), "correction")
    failed = await (await env.connector()).push_adjustment(too_much["id"])
    assert failed["status"] == "failed" and failed["last_error"].startswith("insufficient_stock")
    assert env.store.levels[(pid, sid)].quantity == start

    pending = await _adjust(env, level, "1")
    await env.admin("POST", "/_sandbox/faults", {"error_rate": 1.0, "error_status": 503})
    with pytest.raises(PushDeferred):
        await (await env.connector()).push_adjustment(pending["id"])
    await env.admin("DELETE", "/_sandbox/faults")
    applied = await (await env.connector()).push_adjustment(pending["id"])
    assert applied["status"] == "applied" and applied["attempts"] == 2
    assert env.store.levels[(pid, sid)].quantity == start + 1000


async def test_adjustment_validation(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    level = next(iter((await env.cached("inventory")).values()))
    for body, type_ in (({"variant_id": "var_x"}, "unsupported_by_vendor"), ({"location_id": "loc_nope"}, "unknown_location"),
                        ({"product_id": "prod_nope"}, "unknown_product")):
        with pytest.raises(ValidationFailed) as caught:
            await (await env.connector()).create_adjustment(AdjustmentCreate.model_validate({
                "product_id": level["product_id"], "location_id": level["location_id"], "delta": "1",
                "reason": "count", **body}))
        assert caught.value.errors[0]["type"] == type_


# -- transfers -----------------------------------------------------------------------------------------
async def test_transfers_read_as_inventory_movements(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync_all()
    movements = await (await env.connector()).transfer_movements()
    products = await env.cached("products")
    locations = await env.cached("locations")
    expected = []
    for transfer in env.store.transfers.values():
        for item in transfer.items:
            expected.append((transfer.number, transfer.status.lower(), products[item["productId"]]["id"],
                             locations[transfer.from_store_id]["id"], locations[transfer.to_store_id]["id"],
                             units(item["quantity"]), units(item["receivedQuantity"])))
    assert [(m["number"], m["status"], m["product_id"], m["from_location_id"], m["to_location_id"], m["quantity"],
             m["received_quantity"]) for m in movements] == expected
    received = await (await env.connector()).transfer_movements(status="received")
    assert {m["status"] for m in received} == {"received"}
    with pytest.raises(ValidationFailed):
        await (await env.connector()).transfer_movements(status="lost")


# -- vendor errors -----------------------------------------------------------------------------------------
async def test_vendor_failures_are_gateway_errors_never_500(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.admin("POST", "/_sandbox/faults", {"error_rate": 1.0, "error_status": 500})
    engine = SyncEngine(env.db, await env.connector())
    with pytest.raises(VendorError) as caught:
        await engine.run("locations", mode="full")
    assert caught.value.status == 502 and caught.value.retryable
    await env.admin("DELETE", "/_sandbox/faults")
    env.store.users.clear()  # the user was removed at HQ: the refresh and the login are refused
    env.store.tokens.revoke_all()
    with pytest.raises(VendorCredentialsRejected):
        await (await env.connector()).check()


# -- through the gateway API ---------------------------------------------------------------------------
async def test_api_answers_problem_json_for_bad_input_and_vendor_failures(make_env, tenant) -> None:
    """Bad input and vendor failures reach a client as problem+json with a stable code, never a 500."""
    import base64

    from gateway.api.app import create_app as create_api
    from gateway.api.deps import Services
    from gateway.errors import PROBLEM_CONTENT_TYPE
    from gateway.settings import Settings

    env = make_env()
    await env.connect()
    await env.sync_all()
    settings = Settings(database_url=env.db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                        api_rate_limit="100000/minute")
    services = Services.build(settings, db=env.db, registry=env.service.registry)
    services.cipher, services.connections = env.service.cipher, env.service
    api = create_api(settings, services=services)
    product = next(iter((await env.cached("products")).values()))
    location = next(iter((await env.cached("locations")).values()))["id"]
    url = f"/v1/connections/{env.connection_id}/orders"
    line = {"product_id": product["id"], "quantity": "1"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://tillgate.test",
                                 headers={"Authorization": f"Bearer {tenant[1]}"}) as http:
        cases = [
            ({"location_id": location, "lines": [{**line, "unit_price": "1.001"}],
              "payments": [{"method": "cash", "amount": "9"}]}, 422, "validation_error"),
            ({"location_id": location, "lines": [line], "payments": [{"method": "cash", "amount": "0.01"}]},
             422, "payment_short"),
            ({"location_id": location, "lines": [{**line, "quantity": 2}]}, 422, "validation_error"),
        ]
        for body, status, code in cases:
            answer = await http.post(url, json=body)
            assert answer.status_code == status, answer.text
            assert answer.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
            assert answer.json()["code"] == code
        await env.admin("POST", "/_sandbox/faults", {"error_rate": 1.0, "error_status": 500})
        failed = await http.post(url, json={"location_id": location, "lines": [line],
                                            "payments": [{"method": "card", "amount": "500"}]})
        assert failed.status_code == 502 and failed.json()["code"] == "vendor_error"
        assert failed.json()["vendor"] == "hqstore" and failed.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)


def test_thousandths_strip_zeros_argument() -> None:
    from gateway.mapping import MappingContext
    from gateway.mapping.transforms import TRANSFORMS, TransformError

    thousandths = TRANSFORMS["thousandths"]
    ctx = MappingContext(settings={})
    assert format(thousandths.fn(2000, {}, ctx), "f") == "2.000"  # unchanged without the argument
    assert format(thousandths.fn(2000, {"strip_zeros": True}, ctx), "f") == "2"
    assert format(thousandths.fn(1250, {"strip_zeros": True}, ctx), "f") == "1.25"
    assert format(thousandths.fn(0, {"strip_zeros": True}, ctx), "f") == "0"
    with pytest.raises(TransformError):
        thousandths.check({"strip_zeros": "yes"})


async def test_list_sales_by_date_and_store(make_env) -> None:
    from datetime import date

    env = make_env()
    await env.connect()
    await env.sync_all()
    store_id = next(iter(env.store.stores))
    location = (await env.cached("locations"))[store_id]["id"]
    connector = await env.connector()
    day = date(2026, 1, 2)  # seeded sales run hourly from 2026-01-02 00:00
    found = await connector.list_sales(date_from=day, date_to=day, location_id=location)
    expected = {s.id for s in env.store.sales.values()
                if s.store_id == store_id and s.created_at.date() == day}
    assert {o["remote_id"] for o in found} == expected and expected
    assert all(o["location_id"] == location for o in found)
    voided = await connector.list_sales(status="voided")
    assert {o["remote_id"] for o in voided} == {s.id for s in env.store.sales.values() if s.status == "VOIDED"}
    assert await connector.list_sales(date_to=date(2025, 12, 31)) == []
    with pytest.raises(ValidationFailed):
        await connector.list_sales(date_from=date(2026, 2, 1), date_to=date(2026, 1, 1))
    with pytest.raises(ValidationFailed):
        await connector.list_sales(location_id="loc_nope")
