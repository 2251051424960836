"""Oversell guard and reconciliation: ``safety_stock``, ``inventory.low`` and ``inventory.drift``.

Through the gateway API (``httpx.ASGITransport``) with the embedded dispatcher (the app's
lifespan runs it), against the AI POS and Apex sandboxes in process, on SQLite and PostgreSQL:

- ``POST .../inventory/reconcile`` (202, the job) counts the POS's stock: a change made in the
  sandbox's store behind the gateway's back (no webhook, no ``updated_at``) is found as exactly one
  ``inventory.drift`` (``previous_on_hand``, ``difference``) and the cache is corrected; a count
  that finds nothing emits nothing; a gateway adjustment whose echo has not come back yet is not
  drift; the scheduler queues a count every ``reconcile_interval_seconds``.
- ``inventory.low`` once per crossing of ``available`` to at or below the threshold, for
  ``local``, ``aipos`` and ``apex``: not again while low, again after a restock.
- Changing ``safety_stock`` re-derives the cached ``available`` at once (and the next poll agrees).

The test connectors carry their own manifest names (``aipos_reconcile_test``, ...) so this
module's dispatcher never runs jobs of other modules' connections against these sandboxes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from connectors.aipos import AIPOSConnector
from connectors.aipos.sandbox import create_app as aipos_app
from connectors.apex import ApexConnector
from connectors.apex.sandbox import create_app as apex_app
from gateway import jsonutil
from gateway.api.app import create_app
from gateway.api.deps import Services
from gateway.model import Event, InventoryLevel
from gateway.sdk.http import BreakerPolicy, RetryPolicy
from gateway.sdk.registry import ConnectorRegistry
from gateway.services import journal, records
from gateway.settings import Settings
from gateway.storage import tables as t
from gateway.workers.scheduler import schedule_polls

AIPOS_BASE = "http://aipos.test/aipos/api/v1"
APEX_BASE = "http://apex.test/rest_api/v1"
VENDORS = ["aipos", "apex"]


@dataclass
class Timeout:
    """Answer ``times`` matching requests with a read timeout (the vendor never sees them);
    ``on_fire`` runs first (a pass-through rule, ``times`` 0 after firing, arms another)."""

    method: str
    path: str
    query: str = ""
    times: int = 1
    passthrough: bool = False
    on_fire: Callable[[], None] | None = None


class Wire(httpx.AsyncBaseTransport):
    """The sandbox behind ``httpx.ASGITransport``, with scripted timeouts."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.rules: list[Timeout] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        rule = next((r for r in self.rules if r.times > 0 and r.method == request.method
                     and request.url.path.endswith(r.path) and r.query in request.url.query.decode()), None)
        if rule is None:
            return await self.inner.handle_async_request(request)
        rule.times -= 1
        if rule.on_fire is not None:
            rule.on_fire()
        if rule.passthrough:
            return await self.inner.handle_async_request(request)
        raise httpx.ReadTimeout("no answer", request=request)


async def _instant(seconds: float) -> None:
    await asyncio.sleep(0)


def wired(base: type, wire: Wire) -> type:
    return type(f"Reconcile{base.__name__}", (base,), {
        "manifest": {**base.manifest, "name": f"{base.manifest['name']}_reconcile_test"},
        "client_overrides": {
            "transport": wire, "sleep": _instant, "rate_limit": None,
            "retry": RetryPolicy(attempts=2, max_total=5, backoff=0.001, backoff_max=0.001, jitter=0),
            "breaker": BreakerPolicy(threshold=1000),
        },
    })


class World:
    """One gateway (API + embedded dispatcher), one sandbox, one connection synced in full."""

    def __init__(self, kind: str, http: httpx.AsyncClient, services: Services, vendor: Any, wire: Wire) -> None:
        self.kind, self.http, self.services, self.vendor, self.wire = kind, http, services, vendor, wire
        self.db = services.db
        self.connection_id = ""
        self.product: dict[str, Any] = {}
        self.location: dict[str, Any] = {}

    @property
    def base(self) -> str:
        return f"/v1/connections/{self.connection_id}"

    @property
    def level_id(self) -> str:
        return self.product["remote_id"] if self.kind == "aipos" else f"{self.product['remote_id']}:{self.location['remote_id']}"

    def set_stock(self, quantity: int) -> None:
        """A change in the POS's own store: no webhook, no ``updated_at``, nothing a poll filter sees."""
        if self.kind == "aipos":
            self.vendor.state.aipos.products[self.product["remote_id"]].stock = quantity
        else:
            self.vendor.state.apex.products[int(self.product["remote_id"])].stock[int(self.location["remote_id"]) - 1] = quantity

    def stock(self) -> int:
        if self.kind == "aipos":
            return self.vendor.state.aipos.products[self.product["remote_id"]].stock
        return self.vendor.state.apex.products[int(self.product["remote_id"])].stock[int(self.location["remote_id"]) - 1]

    async def drain(self) -> None:
        await self.services.dispatcher.drain()

    async def reconcile(self) -> dict[str, Any]:
        answer = await self.http.post(f"{self.base}/inventory/reconcile")
        assert answer.status_code == 202, answer.text
        await self.drain()
        return answer.json()

    async def sync(self, mode: str = "full", entities: list[str] | None = None) -> None:
        answer = await self.http.post(f"{self.base}/sync", json={"mode": mode, **({"entities": entities} if entities else {})})
        assert answer.status_code == 202, answer.text
        await self.drain()

    async def adjust(self, delta: str) -> dict[str, Any]:
        answer = await self.http.post(f"{self.base}/inventory/adjustments", headers={"Idempotency-Key": uuid.uuid4().hex},
                                      json={"product_id": self.product["id"], "location_id": self.location["id"],
                                            "delta": delta, "reason": "sale"})
        assert answer.status_code == 202, answer.text
        await self.drain()
        adjustment = (await self.http.get(f"{self.base}/inventory/adjustments/{answer.json()['id']}")).json()
        assert adjustment["status"] == "applied", adjustment
        return adjustment

    async def last_seq(self) -> int:
        async with self.db.read() as conn:
            return (await conn.execute(select(func.coalesce(func.max(t.events.c.seq), 0)).where(
                t.events.c.connection_id == self.connection_id))).scalar_one()

    async def events(self, after: int) -> list[dict[str, Any]]:
        answer = await self.http.get("/v1/events", params={"after": after, "connection_id": self.connection_id,
                                                           "limit": 1000})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    async def level(self) -> dict[str, Any]:
        async with self.db.read() as conn:
            found = await records.load_by_remote_id(conn, connection_id=self.connection_id, entity="inventory",
                                                    remote_id=self.level_id)
        assert found is not None
        return found

    async def runs(self) -> list[dict[str, Any]]:
        answer = await self.http.get(f"{self.base}/sync", params={"runs": 100})
        assert answer.status_code == 200, answer.text
        return answer.json()["runs"]


@contextlib.asynccontextmanager
async def world(db: Any, tenant: tuple[str, str], kind: str, *, stock: int = 30, threshold: int = 10,
                **settings: Any) -> AsyncIterator[World]:
    """A gateway with its embedded dispatcher and a ``kind`` sandbox; the watched product starts
    with ``stock`` on hand (AI POS: and ``threshold``); ``settings`` go to the connection."""
    if kind == "aipos":
        vendor = aipos_app(products=5, customers=1, sales=0, seed=11, rate_limit=None)
        product = vendor.state.aipos.products["prod_003"]
        product.stock, product.low_stock_threshold = stock, threshold
        base, credentials, connector = AIPOS_BASE, {"api_key": "aipos_test_sandbox_key"}, AIPOSConnector
    else:
        vendor = apex_app(products=5, customers=1, invoices=0, seed=11)
        vendor.state.apex.products[3].stock[0] = stock
        base, credentials, connector = APEX_BASE, {"api_key": "apx_sandbox_key"}, ApexConnector
    wire = Wire(vendor)
    cls = wired(connector, wire)
    config = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                      api_rate_limit="100000/minute", scheduler_interval_seconds=3600)
    services = Services.build(config, db=db, registry=ConnectorRegistry([cls], load_entry_points=False))
    app = create_app(config, services=services)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test",
        headers={"Authorization": f"Bearer {tenant[1]}"},
    ) as http:
        here = World(kind, http, services, vendor, wire)
        created = await http.post("/v1/connections", json={
            "connector": cls.manifest["name"], "name": f"{kind} shop", "credentials": credentials,
            "settings": {"base_url": base, **settings}})
        assert created.status_code == 201, created.text
        here.connection_id = created.json()["id"]
        await here.sync()
        products = {p["remote_id"]: p for p in (await http.get(f"{here.base}/products?limit=200")).json()["data"]}
        locations = {loc["remote_id"]: loc for loc in (await http.get(f"{here.base}/locations")).json()["data"]}
        here.product = products["prod_003" if kind == "aipos" else "3"]
        here.location = locations["store" if kind == "aipos" else "1"]
        yield here


@pytest.fixture
def make_world(db, tenant):
    def make(kind: str, **options: Any):
        return world(db, tenant, kind, **options)
    return make


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# -- reconciliation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", VENDORS)
async def test_a_change_behind_the_gateways_back_is_one_drift_and_the_cache_is_corrected(make_world, kind):
    async with make_world(kind, safety_stock="2") as w:
        seq = await w.last_seq()
        answer = await w.reconcile()  # nothing changed: the count emits nothing at all
        job = answer["jobs"][0]
        assert (answer["connection_id"], answer["mode"]) == (w.connection_id, "reconcile")
        assert job["job_id"].startswith("job_") and job["entities"] == ["inventory"] and job["already_queued"] is False
        assert await w.events(seq) == []

        w.set_stock(26)  # four sold at the till, and the gateway never heard
        assert (await w.level())["on_hand"] == "30"
        await w.reconcile()
        new = await w.events(seq)
        assert types(new) == ["inventory.drift"], types(new)
        Event.model_validate(new[0])
        data = new[0]["data"]
        assert (data["on_hand"], data["available"], data["previous_on_hand"], data["difference"]) == ("26", "24", "30", "-4")
        assert data["id"] == (await w.level())["id"] and data["product_id"] == w.product["id"]
        assert set(new[0]["changed"]) == {"on_hand", "available"}
        InventoryLevel.model_validate({k: v for k, v in data.items() if k not in ("previous_on_hand", "difference")})
        level = await w.level()
        assert (level["on_hand"], level["available"]) == ("26", "24") and "difference" not in level

        # found once: neither the next count nor a poll reports it again
        seq = await w.last_seq()
        await w.reconcile()
        await w.sync("full", ["inventory"])
        assert types(await w.events(seq)) == ["connection.sync_completed"]
        counts = [r for r in await w.runs() if r["mode"] == "reconcile"]
        assert len(counts) == 3 and {r["status"] for r in counts} == {"succeeded"}
        assert [r["updated"] for r in counts] == [0, 1, 0]  # newest first


@pytest.mark.parametrize("till_sale", [False, True])
@pytest.mark.parametrize("kind", VENDORS)
async def test_a_gateway_adjustment_whose_echo_has_not_come_back_is_not_drift(make_world, kind, till_sale):
    """The count sees the gateway's +6 before its read-back did: an echo (no event). With a till
    sale folded in, the level is news, but the gateway's write is in flight: ``inventory.updated``
    as a poll would say, not drift."""
    async with make_world(kind) as w:
        seq = await w.last_seq()
        # the read-back after the write times out: the cache still shows 30, the POS 36
        read_back = Timeout("GET", "/inventory", query="product_id=prod_003" if kind == "aipos" else "warehouse_id=1",
                            times=2)
        if kind == "aipos":
            w.wire.rules.append(read_back)
        else:  # Apex reads the count before its set: arm the timeouts once the set went through
            w.wire.rules.append(Timeout("PATCH", "/inventory/3", passthrough=True,
                                        on_fire=lambda: w.wire.rules.append(read_back)))
        adjustment = await w.adjust("6")
        assert read_back.times == 0 and w.stock() == 36
        assert (await w.level())["on_hand"] == "30"
        async with w.db.read() as conn:
            assert [e["status"] for e in await journal.entries_of(conn, adjustment["id"])] == ["open"]

        if till_sale:
            w.set_stock(34)
        await w.reconcile()
        new = await w.events(seq)
        if till_sale:
            assert types(new) == ["adjustment.applied", "inventory.updated"], types(new)
            assert new[1]["data"]["on_hand"] == "34" and "previous_on_hand" not in new[1]["data"]
        else:
            assert types(new) == ["adjustment.applied"]  # no drift, no inventory.updated
        assert (await w.level())["on_hand"] == ("34" if till_sale else "36")
        async with w.db.read() as conn:
            assert [e["status"] for e in await journal.entries_of(conn, adjustment["id"])] == \
                [("open" if till_sale else "matched")]


async def test_the_scheduler_queues_a_count_every_reconcile_interval(make_world):
    async with make_world("apex", reconcile_interval_seconds=600) as w:
        async def counts() -> list[str]:
            """Status of this connection's reconcile jobs, oldest first."""
            async with w.db.read() as conn:
                return list((await conn.execute(select(t.jobs.c.status).where(
                    t.jobs.c.kind == "reconcile", t.jobs.c.dedupe_key == f"reconcile:{w.connection_id}")
                    .order_by(t.jobs.c.created_at))).scalars())

        await schedule_polls(w.services)
        assert await counts() == []  # the connection is new: not due yet
        async with w.db.transaction() as uow:  # as if it had been created two hours ago
            await uow.conn.execute(update(t.connections).where(t.connections.c.id == w.connection_id)
                                   .values(created_at=jsonutil.utcnow() - timedelta(hours=2)))
        await schedule_polls(w.services)
        assert len(await counts()) == 1
        await w.drain()
        assert await counts() == ["done"]
        assert (await w.runs())[0]["mode"] == "reconcile"
        await schedule_polls(w.services)
        assert await counts() == ["done"]  # counted just now: not due again


async def test_reconcile_refusals_are_problem_documents(client, local_connection):
    answer = await client.post(f"/v1/connections/{local_connection['id']}/inventory/reconcile")
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == "operation_not_supported"
    missing = await client.post("/v1/connections/con_nope/inventory/reconcile")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


# -- inventory.low ------------------------------------------------------------------------------------
def lows(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["on_hand"], e["data"]["available"]) for e in events if e["type"] == "inventory.low"]


async def test_inventory_low_once_per_crossing_local(client, local_connection):
    base = f"/v1/connections/{local_connection['id']}"
    location = (await client.get(f"{base}/locations")).json()["data"][0]["id"]
    product = (await client.post(f"{base}/products", json={"sku": "LOW-1", "name": "Mug", "price": "2.00",
                                                           "low_stock_threshold": "3"})).json()
    after = (await client.get("/v1/events", params={"after": 0, "limit": 1000})).json()["next_after"]

    async def adjust(delta: str) -> None:
        answer = await client.post(f"{base}/inventory/adjustments", headers={"Idempotency-Key": uuid.uuid4().hex},
                                   json={"product_id": product["id"], "location_id": location, "delta": delta,
                                         "reason": "correction"})
        assert answer.status_code == 202 and answer.json()["status"] == "applied", answer.text

    for delta in ("5", "-1", "-1", "-1", "6", "-5"):  # 5 4 3(low) 2 8 3(low again)
        await adjust(delta)
    events = (await client.get("/v1/events", params={"after": after, "limit": 1000})).json()["data"]
    assert lows(events) == [("3", "3"), ("3", "3")]
    first = next(e for e in events if e["type"] == "inventory.low")
    assert first["data"]["low_stock_threshold"] == "3" and first["data"]["product_id"] == product["id"]


@pytest.mark.parametrize("kind", VENDORS)
async def test_inventory_low_once_per_crossing_external(make_world, kind):
    # AI POS levels carry the vendor's threshold (10); Apex levels the connection's setting
    async with make_world(kind, **({"low_stock_threshold": "10"} if kind == "apex" else {})) as w:
        assert (await w.level())["low_stock_threshold"] == "10"
        seq = await w.last_seq()
        await w.adjust("-15")  # 15: above
        await w.adjust("-6")   # 9: crosses (the push's own read-back: an echo, yet low)
        await w.adjust("-1")   # 8: still low
        w.set_stock(7)         # a poll (apex) / a count brings a till sale: still low
        await w.reconcile()
        await w.adjust("10")   # 17: back above
        w.set_stock(10)        # the POS's own change, found by the count: crosses again
        await w.reconcile()
        new = await w.events(seq)
        assert lows(new) == [("9", "9"), ("10", "10")], types(new)
        assert types(new).count("inventory.drift") == 2 and "inventory.updated" not in types(new)
        crossing = types(new).index("inventory.low")
        assert new[crossing]["data"]["id"] == (await w.level())["id"]


async def test_a_level_without_a_threshold_never_emits_low(make_world):
    async with make_world("apex") as w:  # no low_stock_threshold setting
        assert (await w.level())["low_stock_threshold"] is None
        seq = await w.last_seq()
        await w.adjust("-30")
        assert lows(await w.events(seq)) == []


# -- safety stock -------------------------------------------------------------------------------------
async def test_changing_safety_stock_recomputes_available_local(client, local_connection):
    base = f"/v1/connections/{local_connection['id']}"
    location = (await client.get(f"{base}/locations")).json()["data"][0]["id"]
    product = (await client.post(f"{base}/products", json={"sku": "SAFE-1", "name": "Jug", "price": "4.00",
                                                           "low_stock_threshold": "3"})).json()
    answer = await client.post(f"{base}/inventory/adjustments", headers={"Idempotency-Key": uuid.uuid4().hex},
                               json={"product_id": product["id"], "location_id": location, "delta": "10",
                                     "reason": "restock"})
    assert answer.status_code == 202, answer.text
    after = (await client.get("/v1/events", params={"after": 0, "limit": 1000})).json()["next_after"]

    patched = await client.patch(base, json={"settings": {"safety_stock": "7.5"}})
    assert patched.status_code == 200 and patched.json()["settings"]["safety_stock"] == "7.5", patched.text
    level = (await client.get(f"{base}/inventory", params={"product_id": product["id"]})).json()["data"][0]
    assert (level["on_hand"], level["available"]) == ("10", "2.5")
    events = (await client.get("/v1/events", params={"after": after, "limit": 1000})).json()["data"]
    assert types(events) == ["inventory.updated", "inventory.low"]
    assert events[0]["changed"] == ["available"] and events[0]["data"]["available"] == "2.5"

    # the engine's next write agrees with the recompute; the same value again changes nothing
    after = events[-1]["seq"]
    assert (await client.patch(base, json={"settings": {"safety_stock": "7.500"}})).status_code == 200
    answer = await client.post(f"{base}/inventory/adjustments", headers={"Idempotency-Key": uuid.uuid4().hex},
                               json={"product_id": product["id"], "location_id": location, "delta": "1",
                                     "reason": "restock"})
    assert answer.status_code == 202, answer.text
    events = (await client.get("/v1/events", params={"after": after, "limit": 1000})).json()["data"]
    assert types(events) == ["inventory.updated", "adjustment.applied"]
    assert (events[0]["data"]["on_hand"], events[0]["data"]["available"]) == ("11", "3.5")


@pytest.mark.parametrize("kind", VENDORS)
async def test_changing_safety_stock_recomputes_available_external(make_world, kind):
    async with make_world(kind) as w:
        seq = await w.last_seq()
        patched = await w.http.patch(w.base, json={"settings": {"safety_stock": "25"}})
        assert patched.status_code == 200, patched.text
        level = await w.level()
        assert (level["on_hand"], level["available"]) == ("30", "5")
        new = await w.events(seq)
        assert new and {e["type"] for e in new} <= {"inventory.updated", "inventory.low"}
        assert all(e["changed"] == ["available"] for e in new)
        # the next full poll maps with the new setting and finds every level as recomputed
        seq = await w.last_seq()
        await w.sync("full", ["inventory"])
        assert types(await w.events(seq)) == ["connection.sync_completed"]
