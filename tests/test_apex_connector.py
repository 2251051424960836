"""The Apex connector against the in-process Apex sandbox (``httpx.ASGITransport``): credentials
check, full syncs compared field by field with the sandbox's memory, unchanged re-syncs, deletes,
faults, the pagination-loop guard, writes that round-trip and concurrent stock deltas."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import func, select

from connectors.apex import ApexConnector
from connectors.apex.sandbox import create_app
from gateway.crypto import CredentialCipher
from gateway.errors import Conflict, VendorCredentialsRejected
from gateway.model import (
    ENTITY_MODELS,
    AdjustmentCreate,
    ConnectionCreate,
    CountSet,
    CustomerCreate,
    OrderCreate,
    ProductCreate,
    ProductUpdate,
)
from gateway.sdk.http import BreakerPolicy, RetryPolicy
from gateway.sdk.pagination import PaginationLoop
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.connections import ConnectionService
from gateway.services.sync import SyncEngine, sync_states
from gateway.storage import tables as t
from gateway.testing.conformance import cached_records, sandbox_client_overrides

CSV = Path(__file__).resolve().parents[2] / "shared/data/online_retail_sample.csv"
KEY = "apx_sandbox_key"
BASE_URL = "http://apex.test/rest_api/v1"
CENT = Decimal("0.01")


def connector_for_app(app: Any) -> type[ApexConnector]:
    """An ApexConnector wired to ``app`` in process, with instant retries and no rate limit."""

    class SandboxApex(ApexConnector):
        client_overrides: ClassVar[dict[str, Any]] = sandbox_client_overrides(httpx.ASGITransport(app=app))

    return SandboxApex


class Env:
    def __init__(self, db: Any, tenant_id: str, app: Any) -> None:
        self.db, self.tenant_id, self.app = db, tenant_id, app
        self.store = app.state.apex
        self.service = ConnectionService(db, ConnectorRegistry([connector_for_app(app)], load_entry_points=False),
                                         CredentialCipher([os.urandom(32)]))
        self.connection_id = ""

    async def connect(self, key: str = KEY) -> dict[str, Any]:
        connection = await self.service.create(self.tenant_id, ConnectionCreate(
            connector="apex", name="Riyadh", credentials={"api_key": key}, settings={"base_url": BASE_URL}))
        self.connection_id = connection["id"]
        return connection

    async def connector(self) -> ApexConnector:
        return await self.service.connector_for(self.tenant_id, self.connection_id)

    async def sync_all(self) -> dict[str, Any]:
        engine = SyncEngine(self.db, await self.connector())
        return {entity: await engine.run(entity, mode="full") for entity in engine.entities()}

    async def cached(self, entity: str) -> dict[str, dict[str, Any]]:
        return await cached_records(self.db, self.connection_id, entity)

    async def events(self) -> int:
        async with self.db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(t.events).where(
                t.events.c.connection_id == self.connection_id))).scalar_one()

    async def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://apex.test") as http:
            return await http.request(method, path, json=json)


@pytest.fixture
def make_env(db, tenant):
    def make(**options: Any) -> Env:
        return Env(db, tenant[0], create_app(**options))
    return make


def money(value: Decimal) -> str:
    return format(Decimal(value).quantize(CENT), "f")


async def assert_mirrors_sandbox(env: Env) -> None:
    """Every sandbox record equals its cached unified record (exact decimal strings), and every
    cached record is a valid unified object."""
    store = env.store
    cache = {entity: await env.cached(entity) for entity in ("locations", "categories", "products", "customers",
                                                               "inventory", "orders")}
    for entity, items in cache.items():
        for record in items.values():
            ENTITY_MODELS[entity].model_validate(record)
    locations = cache["locations"]
    assert {rid: loc["name"] for rid, loc in locations.items()} == {str(w.id): w.name for w in store.warehouses.values()}
    assert all(loc["kind"] == "warehouse" for loc in locations.values())
    categories = cache["categories"]
    assert set(categories) == {str(p.category_id) for p in store.products.values() if p.category_id is not None}
    products = cache["products"]
    assert set(products) == {str(pid) for pid in store.products}
    for p in store.products.values():
        got = products[str(p.id)]
        assert (got["name"], got["barcode"], got["sku"], got["currency"]) == (p.name, p.barcode, None, "SAR")
        assert got["price"] == money(p.price) and got["cost"] == money(p.cost)
        assert Decimal(got["tax_rate"]) == p.tax_rate
        assert got["translations"] == ({"ar": {"name": p.name_ar}} if p.name_ar else {})
        assert got["category_ids"] == ([categories[str(p.category_id)]["id"]] if p.category_id else [])
    customers = cache["customers"]
    assert set(customers) == {str(cid) for cid in store.customers}
    for c in store.customers.values():
        got = customers[str(c.id)]
        assert (got["name"], got["phone"], got["email"]) == (c.name, c.phone, c.email)
        assert got["balance"] == money(c.balance) and got["loyalty_points"] == 0
    inventory = cache["inventory"]
    assert len(inventory) == len(store.products) * len(store.warehouses)
    for p in store.products.values():
        for w in store.warehouses.values():
            got = inventory[f"{p.id}:{w.id}"]
            assert got["on_hand"] == got["available"] == str(p.stock[w.id - 1])
            assert got["product_id"] == products[str(p.id)]["id"] and got["location_id"] == locations[str(w.id)]["id"]
    orders = cache["orders"]
    assert set(orders) == {str(iid) for iid in store.invoices}
    for inv in store.invoices.values():
        got = orders[str(inv.id)]
        assert (got["number"], got["payment_status"], got["status"]) == (inv.invoice_number, inv.status, "completed")
        assert got["total"] == money(inv.total) and got["tax_total"] == money(inv.tax)
        assert got["customer_id"] == (customers[str(inv.customer_id)]["id"] if inv.customer_id else None)
        assert got["location_id"] == locations[str(inv.warehouse_id)]["id"]
        assert [(ln["product_id"], ln["quantity"], ln["unit_price"], ln["total"]) for ln in got["lines"]] == [
            (products[str(i.product_id)]["id"], str(i.quantity), money(i.price), money(i.total)) for i in inv.items
        ]


async def test_check_accepts_the_key_and_refuses_a_bad_one(make_env) -> None:
    env = make_env(products=3, customers=2, invoices=1)
    connection = await env.connect()
    assert connection["connector"] == "apex"
    health = await (await env.connector()).health()
    assert health["status"] == "ok" and health["business"] == "My Store"
    with pytest.raises(VendorCredentialsRejected) as info:
        await env.connect(key="apx_wrong")
    assert info.value.status == 424


async def test_full_sync_mirrors_the_sandbox_and_a_resync_writes_nothing(make_env) -> None:
    env = make_env(products=120, customers=30, invoices=25, warehouses=2)
    await env.connect()
    results = await env.sync_all()
    assert list(results) == ["locations", "categories", "products", "customers", "inventory", "orders"]
    assert all(r.status == "succeeded" for r in results.values())
    assert results["products"].pages == 2 and results["products"].created == 120
    await assert_mirrors_sandbox(env)
    events = await env.events()
    again = await env.sync_all()
    assert all((r.created, r.updated, r.deleted) == (0, 0, 0) for r in again.values())
    # only the two runs' sync_completed events per entity are new
    assert await env.events() == events + len(again)
    states = await sync_states(env.db, env.connection_id)
    assert states["products"]["records"] == 120 and states["inventory"]["records"] == 240


async def test_a_product_deleted_at_the_pos_is_soft_deleted_and_changes_are_picked_up(make_env) -> None:
    env = make_env(products=10, customers=3, invoices=0)
    await env.connect()
    await env.sync_all()
    del env.store.products[7]
    env.store.products[3].price = Decimal("9.99")
    result = (await env.sync_all())["products"]
    assert (result.deleted, result.updated) == (1, 1)
    async with env.db.read() as conn:
        gone = (await conn.execute(select(t.records.c.deleted_at).where(
            t.records.c.connection_id == env.connection_id, t.records.c.entity == "products",
            t.records.c.remote_id == "7"))).scalar_one()
    assert gone is not None
    assert (await env.cached("products"))["3"]["price"] == "9.99"


async def test_a_poll_skips_the_pages_it_stored_and_any_other_write_to_the_cache_stops_the_skipping(
        make_env, monkeypatch) -> None:
    """Page skipping (gateway.services.sync): an unchanged page is neither mapped nor written; a
    changed page is; a write to the cache by anyone but the scan (here a soft delete, as a vendor
    webhook would make) makes the next poll diff every record, which puts the record back."""
    from gateway.services import records

    env = make_env(products=250, customers=0, invoices=0, warehouses=1)  # 3 pages of 100
    await env.connect()
    await env.sync_all()
    mapped: list[str] = []
    original = ApexConnector._record

    def counting(self: ApexConnector, entity: str, raw: dict[str, Any], ctx: Any) -> Any:
        if entity == "products":
            mapped.append(str(raw["id"]))
        return original(self, entity, raw, ctx)

    monkeypatch.setattr(ApexConnector, "_record", counting)
    engine = SyncEngine(env.db, await env.connector())

    async def poll() -> Any:
        mapped.clear()
        result = await engine.run("products")
        assert result.status == "succeeded" and result.mode == "incremental"
        return result

    result = await poll()  # nothing changed
    assert (result.pages, result.seen, result.unchanged, result.created, result.updated, result.deleted) == (
        3, 250, 250, 0, 0, 0)
    assert mapped == []

    env.store.products[150].price = Decimal("1.23")  # one product on page 2 changes at the POS
    result = await poll()
    assert (result.updated, result.unchanged) == (1, 249)
    assert sorted(mapped, key=int) == [str(n) for n in range(101, 201)]
    assert (await env.cached("products"))["150"]["price"] == "1.23"
    assert mapped and not (await poll()).updated and mapped == []

    cached = await env.cached("products")
    async with env.db.transaction(env.tenant_id) as uow:  # another writer deletes a product in the cache
        await records.soft_delete(uow, connection_id=env.connection_id, entity="products", record_id=cached["5"]["id"])
    assert "5" not in await env.cached("products")
    result = await poll()
    assert len(mapped) == 250 and result.updated == 1  # every page diffed: the record is back
    assert (await env.cached("products"))["5"]["id"] == cached["5"]["id"]
    assert (await poll()).unchanged == 250 and mapped == []  # and skipping resumes

    del env.store.products[10]  # a deletion at the POS shifts every page after it
    result = await poll()
    assert result.deleted == 1 and "10" not in await env.cached("products")
    assert len(mapped) == 249
    assert (await poll()).unchanged == 249 and mapped == []

    env.store.products[42].category_id = 999  # a new category: products map against a new id map
    categories = await engine.run("categories")
    assert categories.created == 1
    await poll()
    assert len(mapped) == 249  # the reference map is part of every page's fingerprint
    category_id = (await env.cached("categories"))["999"]["id"]
    assert (await env.cached("products"))["42"]["category_ids"] == [category_id]


async def test_sync_of_a_sandbox_seeded_from_the_retail_csv(make_env) -> None:
    env = make_env(seed_csv=CSV, products=150)
    await env.connect()
    results = await env.sync_all()
    assert results["orders"].created == len(env.store.invoices) > 0
    await assert_mirrors_sandbox(env)


async def test_sync_completes_through_503s_and_429_bursts(make_env) -> None:
    env = make_env(products=250, customers=120, invoices=40, seed=7,
                   faults={"error_rate": 0.3, "error_retry_after": 1, "rate_limit_every": 4,
                           "rate_limit_burst": 2, "rate_limit_retry_after": 1})
    await env.connect()
    results = await env.sync_all()
    assert all(r.status == "succeeded" for r in results.values())
    faulted = (await env.admin("GET", "/_sandbox/state")).json()["faulted"]
    assert faulted.get("503", 0) > 0 and faulted.get("429", 0) > 0, faulted
    await assert_mirrors_sandbox(env)


async def test_a_repeating_page_fails_the_sync_instead_of_looping(make_env) -> None:
    env = make_env(products=250, customers=3, invoices=0)
    await env.connect()
    assert (await env.admin("POST", "/_sandbox/faults", {"repeat_page": True})).status_code == 200
    engine = SyncEngine(env.db, await env.connector())
    with pytest.raises(PaginationLoop):
        await engine.run("products", mode="full")
    state = (await sync_states(env.db, env.connection_id))["products"]
    assert state["status"] == "failed" and "PaginationLoop" in state["last_error"]


async def test_writes_round_trip(make_env) -> None:
    env = make_env(products=5, customers=5, invoices=0)
    await env.connect()
    await env.sync_all()
    connector = await env.connector()
    category = next(iter((await env.cached("categories")).values()))
    product = await connector.create_product(ProductCreate.model_validate({
        "name": "Latte", "translations": {"ar": {"name": "لاتيه"}}, "price": "4.50", "cost": "1.80",
        "category_ids": [category["id"]], "tax_rate": "15", "barcode": "LATTE-1"}))
    remote = env.store.products[int(product["remote_id"])]
    assert (remote.name, remote.name_ar, remote.price, remote.cost, remote.barcode) == (
        "Latte", "لاتيه", Decimal("4.50"), Decimal("1.80"), "LATTE-1")
    assert str(remote.category_id) == category["remote_id"]
    assert product["price"] == "4.50" and product["category_ids"] == [category["id"]]
    assert (await env.cached("products"))[product["remote_id"]] == product
    ENTITY_MODELS["products"].model_validate(product)

    updated = await connector.update_product(product["id"], ProductUpdate(price="5.25"))
    assert updated["id"] == product["id"] and updated["price"] == "5.25" and remote.price == Decimal("5.25")

    customer = await connector.create_customer(CustomerCreate(name="Sara Ali", phone="+966509876543",
                                                              email="sara@example.com"))
    assert env.store.customers[int(customer["remote_id"])].email == "sara@example.com"
    assert customer["name"] == "Sara Ali" and customer["balance"] == "0.00"

    location = next(loc for loc in (await env.cached("locations")).values() if loc["remote_id"] == "1")
    env.store.products[int(product["remote_id"])].stock[0] = 10
    order = await connector.create_order(OrderCreate.model_validate({
        "customer_id": customer["id"], "location_id": location["id"],
        "payments": [{"method": "card", "amount": "10.50"}],
        "lines": [{"product_id": product["id"], "quantity": "2"}]}))
    invoice = env.store.invoices[int(order["remote_id"])]
    assert invoice.total == Decimal("10.50") and invoice.status == "paid"
    assert order["total"] == "10.50" and order["payment_status"] == "paid" and order["customer_id"] == customer["id"]
    assert order["lines"][0]["product_id"] == product["id"] and order["location_id"] == location["id"]
    ENTITY_MODELS["orders"].model_validate(order)
    # the next full sync agrees with what the writes cached
    again = await env.sync_all()
    assert (again["products"].created, again["customers"].created, again["orders"].created) == (0, 0, 0)
    assert (again["products"].updated, again["customers"].updated, again["orders"].updated) == (0, 0, 0)


async def test_concurrent_deltas_on_one_stock_row_both_land(make_env) -> None:
    env = make_env(products=3, customers=1, invoices=0)
    await env.connect()
    await env.sync_all()
    products = await env.cached("products")
    locations = await env.cached("locations")
    product, location = products["2"], locations["1"]
    start = env.store.products[2].stock[0]

    async def adjust(delta: str, ref: str) -> dict[str, Any]:
        connector = await env.connector()  # one instance per request, as the API does
        return await connector.create_adjustment(AdjustmentCreate(
            product_id=product["id"], location_id=location["id"], delta=delta, reason="restock", reference=ref))

    async def push(adjustment: dict[str, Any]) -> dict[str, Any]:
        connector = await env.connector()  # one instance per job, as the worker does
        return await connector.push_adjustment(adjustment["id"])

    accepted = await asyncio.gather(adjust("5", "po-1"), adjust("-2", "po-2"))
    assert [a["status"] for a in accepted] == ["pending", "pending"]
    assert env.store.products[2].stock[0] == start  # accepted, not yet pushed
    first, second = await asyncio.gather(*(push(a) for a in accepted))  # the two pushes race for the row
    assert (first["status"], second["status"]) == ("applied", "applied")
    assert env.store.products[2].stock[0] == start + 3
    assert (await env.cached("inventory"))["2:1"]["on_hand"] == str(start + 3)
    async with env.db.read() as conn:
        rows = (await conn.execute(select(t.adjustments.c.status, t.adjustments.c.delta_milli).where(
            t.adjustments.c.connection_id == env.connection_id))).all()
    assert sorted(rows, key=lambda r: r.delta_milli) == [("applied", -2000), ("applied", 5000)]

    connector = await env.connector()
    with pytest.raises(Conflict) as info:
        await connector.set_inventory_count(product["id"], location["id"], CountSet(on_hand="7", expected_on_hand="999"))
    assert info.value.code == "stale_count" and info.value.extra["on_hand"] == str(start + 3)
    level = await connector.set_inventory_count(product["id"], location["id"],
                                                CountSet(on_hand="7", expected_on_hand=str(start + 3)))
    assert level["on_hand"] == "7" and env.store.products[2].stock[0] == 7
    short = await connector.create_adjustment(AdjustmentCreate(product_id=product["id"], location_id=location["id"],
                                                               delta="-8", reason="sale"))
    failed = await (await env.connector()).push_adjustment(short["id"])
    assert failed["status"] == "failed" and failed["last_error"].startswith("insufficient_stock:")
    assert env.store.products[2].stock[0] == 7


async def test_breaker_opens_and_closes_and_the_connection_says_so(db, tenant):
    """A vendor answering 503 opens the connection's breaker: `connection.unhealthy` once and the
    connection's status; after the reset timeout a good call closes it: `connection.recovered`."""
    from gateway.errors import VendorError

    app = create_app(products=3, customers=1, invoices=0, seed=7)

    class Flaky(connector_for_app(app)):  # type: ignore[misc,valid-type]
        client_overrides: ClassVar[dict[str, Any]] = {
            **connector_for_app(app).client_overrides,
            "retry": RetryPolicy(attempts=1, max_total=1, backoff=0.001, backoff_max=0.001, jitter=0),
            "breaker": BreakerPolicy(threshold=2, reset_timeout=0.2),
        }

    env = Env(db, tenant[0], app)
    env.service = ConnectionService(db, ConnectorRegistry([Flaky], load_entry_points=False),
                                    CredentialCipher([os.urandom(32)]))
    await env.connect()
    assert (await env.admin("POST", "/_sandbox/faults", json={"error_rate": 1.0})).status_code == 200
    for _ in range(4):  # two failures open the circuit; the next calls fail fast
        with pytest.raises(VendorError):
            await (await env.connector()).check()
    await asyncio.sleep(0.05)  # let the background recording commit

    async def seen(kind: str) -> list[Any]:
        async with db.read() as conn:
            return (await conn.execute(select(t.events.c.type).where(
                t.events.c.connection_id == env.connection_id, t.events.c.type == kind))).all()

    async def status() -> str:
        async with db.read() as conn:
            return (await conn.execute(select(t.connections.c.status).where(
                t.connections.c.id == env.connection_id))).scalar_one()

    assert len(await seen("connection.unhealthy")) == 1 and await status() == "unhealthy"
    assert (await env.admin("DELETE", "/_sandbox/faults")).status_code == 200
    await asyncio.sleep(0.25)  # past the reset timeout: the next call is the trial
    await (await env.connector()).check()
    await asyncio.sleep(0.05)
    assert len(await seen("connection.recovered")) == 1 and await status() == "active"
