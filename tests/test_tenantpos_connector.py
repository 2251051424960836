"""The TenantPOS connector against the in-process TenantPOS sandbox (``httpx.ASGITransport``):
the token life cycle (refresh before expiry in the middle of a long sync, one refresh and a retry
on a 401, logout), full and incremental syncs compared with the sandbox's memory, every error
code of the doc's status table mapped to the gateway's errors, variants, orders (checkout, void,
return), customers, and stock writes (a delta adjust applied once, an absolute set)."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from connectors.tenantpos import TenantPOSConnector
from connectors.tenantpos.connector import VendorPermissionDenied, line_gid, variant_gid
from connectors.tenantpos.sandbox import create_app
from gateway import jsonutil
from gateway.crypto import CredentialCipher
from gateway.errors import (
    Conflict,
    NotFound,
    TillgateError,
    ValidationFailed,
    VendorCredentialsRejected,
    VendorError,
    VendorUnavailable,
)
from gateway.model import (
    ENTITY_MODELS,
    AdjustmentCreate,
    ConnectionCreate,
    CountSet,
    CustomerCreate,
    CustomerUpdate,
    OrderCreate,
    ProductCreate,
    ProductUpdate,
    RefundCreate,
    VoidCreate,
)
from gateway.sdk.http import RetryPolicy, VendorNotFound
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.adjustments import PushDeferred
from gateway.services.connections import ConnectionService
from gateway.services.sync import SyncEngine
from gateway.storage import tables as t
from gateway.testing.conformance import cached_records, sandbox_client_overrides

BASE_URL = "http://tenantpos.test/api"
CREDENTIALS = {"email": "admin@demo.test", "password": "sandbox-password", "tenant": "demo"}
CENT = Decimal("0.01")


class FakeClock:
    """Seconds since the epoch shared by the sandbox's tokens and the connector's auth."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Ticking(httpx.AsyncBaseTransport):
    """Forwards to the sandbox; moves ``clock`` by ``step`` seconds before every request (a slow
    sync), and can lose the answer of the first request matching ``lose`` (``(method, path)``)
    after the sandbox acted on it."""

    def __init__(self, app: Any, clock: FakeClock | None = None, step: float = 0.0) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.clock, self.step = clock, step
        self.lose: tuple[str, str] | None = None
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.clock is not None:
            self.clock.now += self.step
        response = await self.inner.handle_async_request(request)
        if self.lose == (request.method, request.url.path):
            self.lose = None
            self.lost += 1
            await response.aread()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def connector_for(transport: httpx.AsyncBaseTransport, clock: Any = None, retry: RetryPolicy | None = None
                  ) -> type[TenantPOSConnector]:
    """A TenantPOSConnector wired to ``transport``, instant retries, no rate limit, an optional auth clock."""
    attrs: dict[str, Any] = {"client_overrides": sandbox_client_overrides(transport, retry=retry)}
    if clock is not None:
        attrs["auth_clock"] = staticmethod(clock)
    return type("SandboxTenantPOS", (TenantPOSConnector,), attrs)


class Env:
    def __init__(self, db: Any, tenant_id: str, app: Any, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Any = None, retry: RetryPolicy | None = None) -> None:
        self.db, self.tenant_id, self.app = db, tenant_id, app
        self.vendor = app.state.tenantpos
        self.demo = self.vendor.tenants["demo"]
        self.transport = transport or httpx.ASGITransport(app=app)
        self.cls = connector_for(self.transport, clock, retry)
        self.service = ConnectionService(db, ConnectorRegistry([self.cls], load_entry_points=False),
                                         CredentialCipher([os.urandom(32)]))
        self.connection_id = ""

    async def connect(self, credentials: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
        connection = await self.service.create(self.tenant_id, ConnectionCreate(
            connector="tenantpos", name="Demo", credentials=credentials or CREDENTIALS,
            settings={"base_url": BASE_URL, **settings}))
        self.connection_id = connection["id"]
        return connection

    async def connector(self) -> TenantPOSConnector:
        return await self.service.connector_for(self.tenant_id, self.connection_id)

    async def sync(self, mode: str = "full", entities: tuple[str, ...] | None = None) -> dict[str, Any]:
        engine = SyncEngine(self.db, await self.connector())
        results = {e: await engine.run(e, mode=mode) for e in (entities or engine.entities())}
        assert all(r.status == "succeeded" for r in results.values()), results
        return results

    async def cached(self, entity: str) -> dict[str, dict[str, Any]]:
        return await cached_records(self.db, self.connection_id, entity)

    async def events(self) -> list[tuple[str, str | None]]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.events.c.type, t.events.c.data).where(
                t.events.c.connection_id == self.connection_id).order_by(t.events.c.seq))).all()
        return [(row.type, jsonutil.loads(row.data).get("remote_id")) for row in rows]

    async def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t") as http:
            return await http.request(method, path, json=json)

    def requests(self) -> list[tuple[str, str, int]]:
        return [(r.method, r.path, r.status) for r in self.app.state.sandbox.requests]


@pytest.fixture
def make_env(db, tenant):
    def make(app: Any = None, **kwargs: Any) -> Env:
        return Env(db, tenant[0], app or create_app(products=12, customers=7, sales=6, seed=2), **kwargs)
    return make


def money(value: Decimal) -> str:
    return format(value.quantize(CENT), "f")


# --- connecting and syncing -------------------------------------------------------------------------------
async def test_full_sync_mirrors_the_sandbox(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    demo = env.demo
    cache = {e: await env.cached(e) for e in ("locations", "categories", "products", "customers", "inventory", "orders")}
    for entity, items in cache.items():
        for record in items.values():
            ENTITY_MODELS[entity].model_validate(record)
    assert set(cache["locations"]) == set(demo.stores)
    assert {r["timezone"] for r in cache["locations"].values()} == {"America/New_York"}
    categories = cache["categories"]
    for category in demo.categories.values():
        parent = categories[category.parent_id]["id"] if category.parent_id else None
        assert (categories[category.id]["name"], categories[category.id]["parent_id"]) == (category.name, parent)
    products = cache["products"]
    assert set(products) == set(demo.products)
    for p in demo.products.values():
        got = products[p.id]
        assert (got["sku"], got["barcode"], got["price"], got["cost"]) == (p.sku, p.barcode, money(p.selling_price),
                                                                           money(p.cost_price))
        assert Decimal(got["tax_rate"]) == p.tax_rate and got["currency"] == "USD"
        assert got["category_ids"] == [categories[p.category_id]["id"]]
        assert [(v["id"], v["remote_id"], v["sku"], v["options"], v["price"]) for v in got["variants"]] == [
            (variant_gid(v.id), v.id, v.sku, v.attributes, None if v.selling_price is None else money(v.selling_price))
            for v in p.variants]
    assert any(got["variants"] for got in products.values())
    levels = cache["inventory"]
    assert set(levels) == {r.id for r in demo.stock.values()}
    for row in demo.stock.values():
        got = levels[row.id]
        assert Decimal(got["on_hand"]) == row.quantity and got["product_id"] == products[row.product_id]["id"]
        assert got["variant_id"] == (variant_gid(row.variant_id) if row.variant_id else None)
        assert got["variant_id"] is None or got["variant_id"] in {v["id"] for v in products[row.product_id]["variants"]}
        assert got["location_id"] == cache["locations"][row.store_id]["id"]
        assert (None if got["low_stock_threshold"] is None else Decimal(got["low_stock_threshold"])) == row.low_stock_threshold
    customers = cache["customers"]
    for c in demo.customers.values():
        got = customers[c.id]
        assert (got["name"], got["email"], got["loyalty_points"]) == (c.name, c.email, c.loyalty_points)
        assert got["balance"] == money(c.balance)
        assert got["credit_limit"] == (None if c.credit_limit is None else money(c.credit_limit))
    orders = cache["orders"]
    statuses = {"COMPLETED": "completed", "VOIDED": "voided", "RETURNED": "refunded", "PARTIALLY_RETURNED": "partially_refunded"}
    assert {o["status"] for o in orders.values()} >= {"completed", "voided", "partially_refunded"}
    for sale in demo.sales.values():
        got = orders[sale.id]
        assert (got["number"], got["status"], got["total"]) == (sale.invoice_number, statuses[sale.status], money(sale.total))
        assert sum(Decimal(line["total"]) for line in got["lines"]) == Decimal(got["total"])
        assert [line["id"] for line in got["lines"]] == [line_gid(i.id) for i in sale.items]
        assert Decimal(got["refunded_total"]) == sum((r["amount"] for r in sale.returns), Decimal(0))


async def test_a_resync_writes_nothing(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    before = len(await env.events())
    again = await env.sync("full")
    assert all((r.created, r.updated, r.deleted) == (0, 0, 0) for r in again.values()), again
    assert [e for e, _ in (await env.events())[before:]] == ["connection.sync_completed"] * len(again)


async def test_bad_credentials_and_a_currency_mismatch_are_refused(make_env) -> None:
    env = make_env()
    with pytest.raises(VendorCredentialsRejected) as caught:
        await env.connect({**CREDENTIALS, "password": "wrong"})
    assert caught.value.status == 424
    with pytest.raises(ValidationFailed) as mismatch:
        await env.connect(currency="EUR")
    assert mismatch.value.code == "currency_mismatch"


# --- the token life cycle ----------------------------------------------------------------------------------
async def test_token_expiry_in_the_middle_of_a_long_sync_is_refreshed_without_failing_it(make_env) -> None:
    clock = FakeClock()
    app = create_app(products=60, customers=25, sales=20, seed=2, token_clock=clock, access_ttl=120)
    transport = Ticking(app, clock, step=0)
    env = make_env(app, transport=transport, clock=clock)
    await env.connect(page_size=5)
    # every request takes 10 s of the tokens' clock: a 2-minute token (the TTL knob) lasts about a
    # dozen requests, and the sync makes more than sixty
    transport.step = 10.0
    results = await env.sync()
    assert sum(r.pages for r in results.values()) > 20
    assert set(await env.cached("products")) == set(env.demo.products)
    assert env.vendor.logins == 1, "one login; every renewal was a refresh"
    assert env.vendor.refreshes >= 5
    assert not [r for r in env.requests() if r[2] == 401], "refreshed before expiry: no request was refused"


async def test_a_token_killed_early_is_refreshed_on_the_401_and_the_request_retried(make_env) -> None:
    clock = FakeClock()
    app = create_app(products=30, customers=7, sales=4, seed=2, token_clock=clock)
    transport = Ticking(app, clock, step=0)
    env = make_env(app, transport=transport, clock=clock)
    await env.connect(page_size=5)
    await env.admin("POST", "/_sandbox/tokens", {"access_ttl": 250, "advertised_ttl": 900})
    transport.step = 100.0  # the client believes 900 s; tokens die after 250 s
    await env.sync()
    assert set(await env.cached("inventory")) == {r.id for r in env.demo.stock.values()}
    log = env.requests()
    refused = [n for n, r in enumerate(log) if r[2] == 401]
    assert refused, "tokens died before the client expected"
    for n in refused:  # each 401: one refresh, then the same request again, answered
        assert log[n + 1][:2] == ("POST", "/api/auth/refresh") and log[n + 1][2] == 200
        assert log[n + 2][:2] == log[n][:2] and log[n + 2][2] == 200
    assert env.vendor.logins == 1


async def test_401_triggers_one_refresh_and_one_retry(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.admin("POST", "/_sandbox/tokens", {"expire_now": True})
    env.app.state.sandbox.requests.clear()
    connector = await env.connector()
    customer = next(iter(env.demo.customers))
    async with connector._session() as client:
        body = await client.json("GET", f"/v1/customers/{customer}")
    assert body["data"]["id"] == customer
    assert env.requests() == [("GET", f"/api/v1/customers/{customer}", 401), ("POST", "/api/auth/refresh", 200),
                              ("GET", f"/api/v1/customers/{customer}", 200)]
    assert (env.vendor.logins, env.vendor.refreshes) == (1, 1)


async def test_a_second_401_after_the_refresh_is_424_and_a_revoked_session_logs_in_again(make_env) -> None:
    clock = FakeClock()
    app = create_app(products=4, customers=2, sales=0, seed=2, token_clock=clock)
    transport = Ticking(app, clock, step=0)
    env = make_env(app, transport=transport, clock=clock)
    await env.connect()
    await env.admin("POST", "/_sandbox/tokens", {"access_ttl": 5, "advertised_ttl": 900, "expire_now": True})
    transport.step = 10.0  # every token is dead by the time it is used
    env.app.state.sandbox.requests.clear()
    with pytest.raises(VendorCredentialsRejected) as caught:
        await _read_products(env)
    assert caught.value.status == 424
    assert env.requests() == [("GET", "/api/v1/products", 401), ("POST", "/api/auth/refresh", 200),
                              ("GET", "/api/v1/products", 401)], "one refresh, one retry, then the error"
    transport.step = 0.0
    await env.admin("POST", "/_sandbox/tokens", {"access_ttl": 900})
    env.vendor.revoke_user(next(u.id for u in env.demo.users.values() if u.role == "ADMIN"))  # logout-all elsewhere
    logins = env.vendor.logins
    await _read_products(env)  # 401, the refresh token is refused too: a new login
    assert env.vendor.logins == logins + 1


async def _read_products(env: Env) -> Any:
    connector = await env.connector()
    async with connector._session() as client:
        return await connector._json(client, "GET", "/v1/products", params={"limit": 1})


async def test_logout_revokes_the_session_and_the_next_call_logs_in(make_env) -> None:
    env = make_env()
    await env.connect()
    connector = await env.connector()
    assert sum(not s.revoked for s in env.vendor.sessions.values()) == 1
    await connector.logout()
    assert sum(not s.revoked for s in env.vendor.sessions.values()) == 0
    logins = env.vendor.logins
    health = await (await env.connector()).health()
    assert health["status"] == "ok" and health["tenant"] == "demo"
    assert env.vendor.logins == logins + 1


# --- incremental inventory through the movement history ---------------------------------------------------
async def test_incremental_inventory_reads_only_the_rows_that_moved(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    demo = env.demo
    row = next(r for r in sorted(demo.stock.values(), key=lambda r: r.id) if r.variant_id is None)
    admin = next(u for u in demo.users.values() if u.role == "ADMIN")
    demo.move(row, "ADJUSTMENT", Decimal(-2), reason="DAMAGE", user_id=admin.id)  # a change at the till
    env.app.state.sandbox.requests.clear()
    result = (await env.sync("incremental", ("inventory",)))["inventory"]
    # the rows moved since the high-water mark minus the lookback: this one and the last seeded sale's
    assert result.updated == 1 and result.seen < 6 and result.unchanged == result.seen - 1, result
    paths = [p for _, p, _ in env.requests()]
    assert "/api/v1/inventory/movements" in paths and paths.count("/api/v1/inventory/stock") == result.seen
    assert Decimal((await env.cached("inventory"))[row.id]["on_hand"]) == row.quantity
    assert ("inventory.updated", row.id) in await env.events()


# --- the doc's error codes ---------------------------------------------------------------------------------
async def test_400_zod_details_become_field_errors(make_env) -> None:
    env = make_env()
    await env.connect()
    connector = await env.connector()
    with pytest.raises(ValidationFailed) as caught:
        await connector.create_product(ProductCreate(name="x" * 300, sku="LONG-1", price="99999999999.50"))
    error = caught.value
    assert error.status == 422 and error.code == "validation_error"
    assert {tuple(e["loc"]) for e in error.errors} == {("body", "name"), ("body", "price")}
    assert error.extra["vendor_status"] == 400


async def test_409_duplicate_sku_is_a_conflict_with_its_own_code(make_env) -> None:
    env = make_env()
    await env.connect()
    taken = next(iter(env.demo.products.values())).sku
    with pytest.raises(Conflict) as caught:
        await (await env.connector()).create_product(ProductCreate(name="Copy", sku=taken, price="1.00"))
    assert (caught.value.status, caught.value.code) == (409, "duplicate_sku")


async def test_422_insufficient_stock_and_credit_limit_are_conflicts(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    products = await env.cached("products")
    locations = await env.cached("locations")
    row = next(r for r in sorted(env.demo.stock.values(), key=lambda r: r.id) if r.variant_id is None)
    line = {"product_id": products[row.product_id]["id"], "quantity": str(row.quantity + 1)}
    order = {"location_id": locations[row.store_id]["id"], "lines": [line], "payments": [{"method": "cash", "amount": "1000"}]}
    with pytest.raises(Conflict) as short:
        await (await env.connector()).create_order(OrderCreate.model_validate(order))
    assert (short.value.status, short.value.code) == (409, "insufficient_stock")
    limited = next(c for c in env.demo.customers.values() if c.credit_limit is not None)
    limited.balance = limited.credit_limit
    customer = (await env.cached("customers"))[limited.id]["id"]
    with pytest.raises(Conflict) as credit:
        await (await env.connector()).create_order(OrderCreate.model_validate(
            {**order, "customer_id": customer, "lines": [{**line, "quantity": "1"}], "payments": []}))
    assert credit.value.code == "credit_limit_exceeded"


async def test_429_is_retried_after_retry_after_and_when_it_persists_is_503_retryable(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.admin("POST", "/_sandbox/faults", {"rate_limit_every": 2, "rate_limit_burst": 1, "rate_limit_retry_after": 3})
    await env.sync(entities=("locations", "categories", "products"))
    assert env.app.state.sandbox.fault_counts.get("429", 0) > 0
    assert set(await env.cached("products")) == set(env.demo.products)
    impatient = make_env(env.app, retry=RetryPolicy(attempts=1))
    impatient.connection_id = env.connection_id
    impatient.service = env.service.__class__(env.db, ConnectorRegistry([impatient.cls], load_entry_points=False),
                                              env.service.cipher)
    await env.admin("POST", "/_sandbox/faults", {"rate_limit_every": 1, "rate_limit_burst": 1000})
    await env.admin("GET", "/api/v1/stores")  # the one request served; every one after is limited
    with pytest.raises(VendorUnavailable) as caught:
        await _read_products(impatient)
    error = caught.value
    assert (error.status, error.retryable, error.extra["retry_after"], error.extra["vendor_status"]) == (503, True, 3.0, 429)


async def test_403_404_and_5xx_map_to_vendor_errors_never_500(make_env) -> None:
    env = make_env()
    await env.connect({"email": "cashier@demo.test", "password": "sandbox-password", "tenant": "demo"})
    seen: list[TillgateError] = []
    with pytest.raises(VendorPermissionDenied) as denied:
        await (await env.connector()).create_product(ProductCreate(name="No", sku="NO-1", price="1.00"))
    seen.append(denied.value)
    assert (denied.value.status, denied.value.code) == (424, "vendor_permission_denied")
    owner = make_env(env.app)
    await owner.connect()
    await owner.sync()
    order = next(iter((await owner.cached("orders")).values()))
    del owner.demo.sales[order["remote_id"]]  # gone at the POS
    with pytest.raises(VendorNotFound) as missing:
        await (await owner.connector()).void_order(order["id"], VoidCreate())
    seen.append(missing.value)
    assert missing.value.status == 502
    with pytest.raises(NotFound):
        await (await owner.connector()).void_order("ord_unknown", VoidCreate())
    await env.admin("POST", "/_sandbox/faults", {"error_rate": 1.0, "error_status": 500})
    broken = make_env(env.app, retry=RetryPolicy(attempts=2, backoff=0.001, backoff_max=0.001, jitter=0))
    broken.connection_id, broken.service = owner.connection_id, ConnectionService(
        owner.db, ConnectorRegistry([broken.cls], load_entry_points=False), owner.service.cipher)
    with pytest.raises(VendorError) as failed:
        await _read_products(broken)
    seen.append(failed.value)
    assert (failed.value.status, failed.value.retryable) == (502, True)
    assert all(e.status != 500 for e in seen)


# --- catalog and customers ---------------------------------------------------------------------------------
async def test_variants_round_trip_and_are_replaced_by_an_update(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    connector = await env.connector()
    created = await connector.create_product(ProductCreate.model_validate({
        "name": "Tee", "sku": "TEE", "price": "19.99", "tax_rate": "8.25", "low_stock_threshold": "2",
        "variants": [{"name": "Small", "sku": "TEE-S", "options": {"size": "S"}},
                     {"name": "Large", "sku": "TEE-L", "options": {"size": "L"}, "price": "21.50"}]}))
    assert [(v["sku"], v["options"], v["price"]) for v in created["variants"]] == [
        ("TEE-S", {"size": "S"}, None), ("TEE-L", {"size": "L"}, "21.50")]
    assert created["tax_rate"] == "8.25" and created["price"] == "19.99"
    vendor = env.demo.products[created["remote_id"]]
    assert all(r.low_stock_threshold == 2 for r in env.demo.stock.values() if r.product_id == vendor.id)
    small, large = created["variants"]
    updated = await (await env.connector()).update_product(created["id"], ProductUpdate.model_validate({
        "price": "18.00", "variants": [{"id": large["id"], "name": "Large", "sku": "TEE-L", "options": {"size": "L"},
                                        "price": "20.00"},
                                       {"name": "Medium", "sku": "TEE-M", "options": {"size": "M"}}]}))
    assert updated["price"] == "18.00"
    assert [(v["sku"], v["price"]) for v in updated["variants"]] == [("TEE-L", "20.00"), ("TEE-M", None)]
    assert updated["variants"][0]["id"] == large["id"] and small["id"] not in {v["id"] for v in updated["variants"]}
    assert (await env.cached("products"))[created["remote_id"]] == updated
    found = await (await env.connector()).lookup_barcode(next(iter(env.demo.products.values())).barcode)
    assert found["variant"] is None and found["product"]["remote_id"] in env.demo.products
    gone = await (await env.connector()).delete_product(created["id"])
    assert gone["deleted_at"] is not None and env.demo.products[created["remote_id"]].deleted_at is not None


async def test_customers_create_update_loyalty_and_groups(make_env) -> None:
    env = make_env()
    await env.connect()
    connector = await env.connector()
    created = await connector.create_customer(CustomerCreate.model_validate({
        "name": "Rosa Diaz", "email": "rosa@example.com", "phone": "+15550199", "credit_limit": "300.00",
        "address": {"line1": "1 Main St", "city": "Springfield"}}))
    assert created["credit_limit"] == "300.00" and created["address"]["line1"] == "1 Main St, Springfield"
    assert created["balance"] == "0.00" and created["loyalty_points"] == 0
    updated = await (await env.connector()).update_customer(created["id"], CustomerUpdate(phone="+15550200"))
    assert updated["phone"] == "+15550200" and updated["email"] == "rosa@example.com"
    loyal = await (await env.connector()).adjust_loyalty(created["id"], 25, "welcome bonus")
    assert loyal["loyalty_points"] == 25
    with pytest.raises(Conflict) as short:
        await (await env.connector()).adjust_loyalty(created["id"], -26, "redeem")
    assert short.value.code == "insufficient_loyalty_points"
    groups = await (await env.connector()).customer_groups()
    assert [(g["name"], g["discount_percent"]) for g in groups] == [("Regular", 0), ("VIP", 10), ("Staff", 25)]
    with pytest.raises(Conflict) as dup:
        await (await env.connector()).create_customer(CustomerCreate(name="Other", email="rosa@example.com"))
    assert dup.value.code == "duplicate_customer"


# --- orders -----------------------------------------------------------------------------------------------
async def test_checkout_with_a_variant_by_sku_then_partial_return_and_void(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    products = await env.cached("products")
    locations = await env.cached("locations")
    customers = await env.cached("customers")
    vendor = next(p for p in env.demo.products.values() if p.variants)
    variant = vendor.variants[1]
    store = next(iter(env.demo.stores))
    row = env.demo.stock[(store, vendor.id, variant.id)]
    row.quantity = Decimal(10)
    plain = next(p for p in env.demo.products.values() if not p.variants)
    env.demo.stock[(store, plain.id, None)].quantity = Decimal(10)
    customer = next(c for c in env.demo.customers.values() if c.credit_limit is None)
    connector = await env.connector()
    order = await connector.create_order(OrderCreate.model_validate({
        "location_id": locations[store]["id"], "customer_id": customers[customer.id]["id"], "number": "WEB-1001",
        "lines": [{"sku": variant.sku, "quantity": "2", "discount": "1.00"},
                  {"product_id": products[plain.id]["id"], "quantity": "1.5", "unit_price": "3.00"}],
        "payments": [{"method": "card", "amount": "5.00"}]}))
    sale = env.demo.sales[order["remote_id"]]
    assert order["status"] == "completed" and order["payment_status"] == "partial"
    assert order["lines"][0]["variant_id"] == variant_gid(variant.id) and order["lines"][0]["discount"] == "1.00"
    assert Decimal(order["total"]) == sale.total and Decimal(order["amount_paid"]) == Decimal("5.00")
    assert sale.note == "WEB-1001" and row.quantity == 8
    level = (await env.cached("inventory"))[row.id]
    assert Decimal(level["on_hand"]) == 8
    refunded = await (await env.connector()).refund_order(order["id"], RefundCreate.model_validate({
        "lines": [{"line_id": order["lines"][0]["id"], "quantity": "1"}], "reason": "too small"}))
    assert refunded["status"] == "partially_refunded" and row.quantity == 9
    assert refunded["refunds"][0]["lines"][0]["line_id"] == order["lines"][0]["id"]
    assert refunded["refunds"][0]["reason"] == "too small"
    with pytest.raises(Conflict) as not_voidable:
        await (await env.connector()).void_order(order["id"], VoidCreate(reason="late"))
    assert not_voidable.value.code == "order_not_voidable"
    paid = await (await env.connector()).collect_due(order["id"], "cash", sale.due)
    assert paid["payment_status"] == "paid"
    second = await (await env.connector()).create_order(OrderCreate.model_validate({
        "location_id": locations[store]["id"], "lines": [{"product_id": products[plain.id]["id"], "quantity": "1"}],
        "payments": [{"method": "cash", "amount": "50"}]}))
    assert Decimal(second["change_due"]) == 50 - Decimal(second["total"])
    voided = await (await env.connector()).void_order(second["id"], VoidCreate(reason="mistake"))
    assert voided["status"] == "voided"
    events = [e for e, _ in await env.events()]
    assert {"order.created", "order.refunded", "order.voided"} <= set(events)


async def test_order_lines_must_name_a_variant_of_a_product_with_variants(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    vendor = next(p for p in env.demo.products.values() if p.variants)
    product = (await env.cached("products"))[vendor.id]
    location = next(iter((await env.cached("locations")).values()))
    with pytest.raises(ValidationFailed) as caught:
        await (await env.connector()).create_order(OrderCreate.model_validate({
            "location_id": location["id"], "lines": [{"product_id": product["id"], "quantity": "1"}]}))
    assert caught.value.errors[0]["loc"] == ["body", "lines", "0", "variant_id"]
    with pytest.raises(ValidationFailed):
        await (await env.connector()).create_order(OrderCreate.model_validate({
            "location_id": location["id"], "lines": [{"product_id": product["id"], "variant_id": variant_gid(vendor.variants[0].id),
                                                      "quantity": "1"}], "payments": [{"method": "upi", "amount": "1"}]}))


# --- stock writes -----------------------------------------------------------------------------------------
async def _level(env: Env, *, variant: bool) -> tuple[Any, dict[str, Any]]:
    row = next(r for r in sorted(env.demo.stock.values(), key=lambda r: r.id) if (r.variant_id is not None) == variant)
    return row, (await env.cached("inventory"))[row.id]


async def test_a_delta_adjust_is_applied_once_and_its_echo_is_suppressed(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    row, level = await _level(env, variant=True)
    start = row.quantity
    connector = await env.connector()
    with pytest.raises(ValidationFailed) as no_variant:
        await connector.create_adjustment(AdjustmentCreate(product_id=level["product_id"], location_id=level["location_id"],
                                                           delta="1", reason="restock"))
    assert no_variant.value.errors[0]["loc"] == ["body", "variant_id"]
    pending = await connector.create_adjustment(AdjustmentCreate(
        product_id=level["product_id"], variant_id=level["variant_id"], location_id=level["location_id"],
        delta="2.5", reason="restock", reference="PO-17"))
    assert pending["status"] == "pending" and Decimal(pending["delta"]) == Decimal("2.5")
    done = await (await env.connector()).push_adjustment(pending["id"])
    assert done["status"] == "applied" and row.quantity == start + Decimal("2.5")
    move = env.demo.movements[-1]
    assert (move.type, move.reason, move.reference, move.note) == ("ADJUSTMENT", "RESTOCK", f"tillgate-{pending['id']}",
                                                                   "restock: PO-17")
    assert Decimal((await env.cached("inventory"))[row.id]["on_hand"]) == row.quantity
    before = await env.events()
    again = await (await env.connector()).push_adjustment(pending["id"])
    assert again["status"] == "applied" and row.quantity == start + Decimal("2.5")
    await env.sync("full")
    assert not [e for e in (await env.events())[len(before):] if e == ("inventory.updated", row.id)]


async def test_an_adjust_whose_answer_was_lost_is_not_applied_twice(make_env) -> None:
    app = create_app(products=12, customers=7, sales=6, seed=2)
    transport = Ticking(app)
    env = make_env(app, transport=transport)
    await env.connect()
    await env.sync()
    row, level = await _level(env, variant=False)
    start = row.quantity
    pending = await (await env.connector()).create_adjustment(AdjustmentCreate(
        product_id=level["product_id"], location_id=level["location_id"], delta="-1", reason="sale", reference="web-9"))
    transport.lose = ("POST", "/api/v1/inventory/stock/adjust")
    with pytest.raises(PushDeferred):
        await (await env.connector()).push_adjustment(pending["id"])
    assert transport.lost == 1 and row.quantity == start - 1  # the POS applied it; the answer never came
    adjusts = len([r for r in env.requests() if r[1] == "/api/v1/inventory/stock/adjust"])
    done = await (await env.connector()).push_adjustment(pending["id"])
    assert done["status"] == "applied" and done["attempts"] == 2
    assert row.quantity == start - 1, "applied once"
    assert len([r for r in env.requests() if r[1] == "/api/v1/inventory/stock/adjust"]) == adjusts
    assert Decimal((await env.cached("inventory"))[row.id]["on_hand"]) == start - 1


async def test_an_adjust_below_zero_fails_with_insufficient_stock(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    row, level = await _level(env, variant=False)
    pending = await (await env.connector()).create_adjustment(AdjustmentCreate(
        product_id=level["product_id"], location_id=level["location_id"], delta=str(-(row.quantity + 1)), reason="sale"))
    failed = await (await env.connector()).push_adjustment(pending["id"])
    assert failed["status"] == "failed" and failed["last_error"].startswith("insufficient_stock")


async def test_an_absolute_set_with_compare_and_set(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    row, level = await _level(env, variant=True)
    current = Decimal(level["on_hand"])
    connector = await env.connector()
    with pytest.raises(Conflict) as stale:
        await connector.set_inventory_count(level["product_id"], level["location_id"], CountSet(
            on_hand="7", expected_on_hand=str(current + 1), variant_id=level["variant_id"]))
    assert stale.value.code == "stale_count" and stale.value.extra["on_hand"] == str(current)
    result = await (await env.connector()).set_inventory_count(level["product_id"], level["location_id"], CountSet(
        on_hand="7.25", expected_on_hand=str(current), variant_id=level["variant_id"]))
    assert Decimal(result["on_hand"]) == Decimal("7.25") and row.quantity == Decimal("7.25")
    assert env.demo.movements[-1].type == "SET"
    assert ("inventory.updated", row.id) in await env.events()
    with pytest.raises(ValidationFailed):
        await (await env.connector()).set_inventory_count(level["product_id"], level["location_id"], CountSet(on_hand="1"))


async def test_low_stock_thresholds_are_written_and_read(make_env) -> None:
    env = make_env()
    await env.connect()
    await env.sync()
    row, level = await _level(env, variant=False)
    updated = await (await env.connector()).set_low_stock_threshold(level["product_id"], level["location_id"],
                                                                     row.quantity + 1)
    assert Decimal(updated["low_stock_threshold"]) == row.quantity + 1
    assert ("inventory.low", row.id) in await env.events()
    low = await (await env.connector()).low_stock()
    assert row.id in {lvl["remote_id"] for lvl in low}
