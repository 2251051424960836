"""The sync engine against an in-memory vendor: full runs with mark-and-sweep, unchanged re-runs
that write nothing, incremental reads with a lookback, and a crashed backfill that resumes."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select

from gateway.crypto import CredentialCipher
from gateway.model import ConnectionCreate
from gateway.sdk.connector import Connector, Page, RemoteRecord
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.connections import ConnectionService
from gateway.services.sync import SyncEngine, sync_states
from gateway.storage import tables as t

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class FakeVendor:
    """The vendor's catalog: remote id → (name, price, updated_at)."""

    def __init__(self, count: int) -> None:
        self.items = {str(n): {"name": f"Item {n}", "price": f"{n}.50", "updated_at": T0} for n in range(count)}
        self.fail_after_pages: int | None = None
        self.calls: list[dict[str, Any]] = []


class FakeConnector(Connector):
    manifest: ClassVar[dict[str, Any]] = {
        "name": "fake", "version": "0.1.0", "title": "Fake vendor",
        "credentials_schema": {"type": "object"}, "settings_schema": {"type": "object"},
        "capabilities": {"products": {"read": True, "incremental": True}},
    }
    vendor: ClassVar[FakeVendor]
    page_size = 4

    async def fetch(self, entity, *, since=None, checkpoint=None):
        self.vendor.calls.append({"since": since, "checkpoint": checkpoint})
        rows = sorted((rid, item) for rid, item in self.vendor.items.items()
                      if since is None or item["updated_at"] >= since)
        start = (checkpoint or {}).get("offset", 0)
        pages = 0
        for offset in range(start, len(rows), self.page_size):
            if self.vendor.fail_after_pages is not None and pages == self.vendor.fail_after_pages:
                raise ConnectionError("vendor went away")
            chunk = rows[offset:offset + self.page_size]
            end = offset + len(chunk)
            yield Page(
                records=[RemoteRecord(remote_id=rid, remote_updated_at=item["updated_at"], raw={"id": rid},
                                      body=_product(item)) for rid, item in chunk],
                checkpoint={"offset": end} if end < len(rows) else None,
            )
            pages += 1


def _product(item: dict[str, Any]) -> dict[str, Any]:
    return {"sku": None, "barcode": None, "name": item["name"], "description": None, "translations": {},
            "category_ids": [], "price": item["price"], "cost": None, "currency": "GBP", "tax_rate": "0",
            "tax_inclusive": False, "taxes": [], "unit": "each", "track_inventory": True, "active": True,
            "variants": []}


@pytest.fixture
async def engine(db, tenant):
    FakeConnector.vendor = FakeVendor(10)
    service = ConnectionService(db, ConnectorRegistry([FakeConnector], load_entry_points=False),
                                CredentialCipher([os.urandom(32)]))
    connection = await service.create(tenant[0], ConnectionCreate(connector="fake", name="vendor"))
    return SyncEngine(db, await service.connector_for(tenant[0], connection["id"]))


async def count(db, table, **where) -> int:
    query = select(func.count()).select_from(table)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    async with db.read() as conn:
        return (await conn.execute(query)).scalar_one()


async def test_full_sync_then_an_unchanged_rerun_writes_nothing(engine, db):
    cid = engine.connection_id
    first = await engine.run("products")
    assert (first.status, first.mode, first.pages, first.created, first.deleted) == ("succeeded", "full", 3, 10, 0)
    assert await count(db, t.events, connection_id=cid, type="product.created") == 10
    async with db.read() as conn:
        stamps = (await conn.execute(select(t.records.c.updated_at).where(t.records.c.connection_id == cid))).all()
    again = await engine.run("products")  # auto → incremental (high water - lookback includes all)
    assert (again.mode, again.unchanged, again.created, again.updated) == ("incremental", 10, 0, 0)
    async with db.read() as conn:
        assert (await conn.execute(select(t.records.c.updated_at).where(t.records.c.connection_id == cid))).all() == stamps
    assert await count(db, t.events, connection_id=cid, type="product.updated") == 0
    assert await count(db, t.events, connection_id=cid, type="connection.sync_completed") == 2
    state = (await sync_states(db, cid))["products"]
    assert state["status"] == "idle" and state["records"] == 10 and state["last_error"] is None
    assert FakeConnector.vendor.calls[-1]["since"] == T0 - timedelta(minutes=5)


async def test_full_sync_updates_changed_and_sweeps_deleted(engine, db):
    cid = engine.connection_id
    await engine.run("products")
    vendor = FakeConnector.vendor
    vendor.items["3"] = {**vendor.items["3"], "price": "99.00", "updated_at": T0 + timedelta(hours=1)}
    del vendor.items["7"]
    result = await engine.run("products", mode="full")
    assert (result.updated, result.unchanged, result.deleted) == (1, 8, 1)
    assert await count(db, t.events, connection_id=cid, type="product.updated") == 1
    assert await count(db, t.events, connection_id=cid, type="product.deleted") == 1
    async with db.read() as conn:
        gone = (await conn.execute(select(t.records.c.deleted_at).where(
            t.records.c.connection_id == cid, t.records.c.remote_id == "7"))).scalar_one()
    assert gone is not None and (await sync_states(db, cid))["products"]["records"] == 9


async def test_a_crashed_backfill_resumes_after_its_last_page(engine, db):
    cid = engine.connection_id
    FakeConnector.vendor.fail_after_pages = 2
    with pytest.raises(ConnectionError):
        await engine.run("products")
    state = (await sync_states(db, cid))["products"]
    assert state["status"] == "failed" and "vendor went away" in state["last_error"] and state["records"] == 8
    assert await count(db, t.events, connection_id=cid, type="connection.sync_failed") == 1
    FakeConnector.vendor.fail_after_pages = None
    resumed = await engine.run("products")
    assert resumed.resumed and resumed.status == "succeeded" and resumed.created == 10 and resumed.pages == 3
    assert FakeConnector.vendor.calls[-1]["checkpoint"] == {"offset": 8}
    assert await count(db, t.records, connection_id=cid, entity="products") == 10
    assert await count(db, t.events, connection_id=cid, type="product.created") == 10
    assert await count(db, t.sync_runs, connection_id=cid) == 1  # the same run, continued


async def test_sync_api_queues_jobs_that_the_embedded_worker_runs(db, tenant):
    """POST /sync answers 202 with one job per entity; the in-process dispatcher runs them; GET /sync
    shows the result. The local connector has nothing to sync (422)."""
    import base64

    import httpx

    from gateway.api.app import create_app
    from gateway.api.deps import Services
    from gateway.settings import Settings

    FakeConnector.vendor = FakeVendor(6)
    settings = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()])
    services = Services.build(settings, db=db, registry=ConnectorRegistry([FakeConnector]))
    app = create_app(settings, services=services)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers={"Authorization": f"Bearer {tenant[1]}"}
    ) as http:
        con = (await http.post("/v1/connections", json={"connector": "fake", "name": "v"})).json()["id"]
        queued = await http.post(f"/v1/connections/{con}/sync", json={"mode": "full"})
        assert queued.status_code == 202, queued.text
        assert [job["entities"] for job in queued.json()["jobs"]] == [["products"]]
        await services.dispatcher.drain()
        state = (await http.get(f"/v1/connections/{con}/sync")).json()
        products = state["entities"]["products"]
        assert products["status"] == "idle" and products["records"] == 6 and products["last_success_at"]
        assert products["lag_s"] >= 0 and state["syncs_from_vendor"] is True
        # The history, newest first. The embedded scheduler's first pass runs alongside this test
        # and may queue an incremental poll of the new connection once the full run is done.
        runs = state["runs"]
        assert runs and runs[0]["started_at"] >= runs[-1]["started_at"]
        run = next(r for r in runs if r["mode"] == "full")
        assert (run["entity"], run["status"], run["seen"], run["created"]) == ("products", "succeeded", 6, 6)
        assert all(r["created"] == 0 for r in runs if r is not run)
        assert run["finished_at"] >= run["started_at"] and run["error"] is None
        assert (await http.get(f"/v1/connections/{con}/sync?runs=0")).json()["runs"] == []
        bad_runs = await http.get(f"/v1/connections/{con}/sync?runs=101")
        assert bad_runs.status_code == 400 and bad_runs.json()["code"] == "invalid_parameter"
        listed = (await http.get(f"/v1/connections/{con}/products?limit=200")).json()["data"]
        assert sorted(p["remote_id"] for p in listed) == [str(n) for n in range(6)]
        bad = await http.post(f"/v1/connections/{con}/sync", json={"entities": ["orders"]})
        assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "entities"]

        local = (await http.post("/v1/connections", json={"connector": "local", "name": "shop"})).json()["id"]
        refused = await http.post(f"/v1/connections/{local}/sync")
        assert refused.status_code == 422 and refused.json()["code"] == "operation_not_supported"
        local_state = (await http.get(f"/v1/connections/{local}/sync")).json()
        assert local_state["syncs_from_vendor"] is False and set(local_state["entities"]) == {
            "locations", "categories", "products", "customers", "inventory", "orders"}


async def test_scheduler_queues_due_polls_once_and_skips_local_connections(db, tenant):
    from datetime import timedelta

    from sqlalchemy import update

    from connectors.local import LocalConnector
    from gateway.api.deps import Services
    from gateway.jsonutil import utcnow
    from gateway.settings import Settings
    from gateway.workers.dispatch import InProcessDispatcher, WorkerContext
    from gateway.workers.scheduler import schedule_polls
    from gateway.workers.tasks import sync_dedupe_key

    FakeConnector.vendor = FakeVendor(3)
    settings = Settings(database_url=db.url, secret_keys=["A" * 43])
    # Only these two plugins: other tests' connections (same database) are skipped as uninstalled.
    services = Services.build(settings, db=db, registry=ConnectorRegistry([FakeConnector, LocalConnector],
                                                                          load_entry_points=False))
    fake = await services.connections.create(tenant[0], ConnectionCreate(
        connector="fake", name="v", settings={"poll_interval_seconds": 60}))
    local = await services.connections.create(tenant[0], ConnectionCreate(connector="local", name="shop"))
    services.dispatcher = InProcessDispatcher(db, WorkerContext(db=db, services=services), sweep_every=3600)
    async def fake_jobs() -> int:  # other tests' connections share this database: count this one's
        async with db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(t.jobs).where(
                t.jobs.c.dedupe_key == sync_dedupe_key(fake["id"])))).scalar_one()

    async with services.dispatcher:
        assert await schedule_polls(services) >= 1
        assert await fake_jobs() == 1
        await schedule_polls(services)
        assert await fake_jobs() == 1  # still queued: the dedupe key refuses a second one
        await services.dispatcher.drain()
        states = await sync_states(db, fake["id"])
        assert states["products"]["status"] == "idle" and states["products"]["records"] == 3
        assert await sync_states(db, local["id"]) == {}  # local keeps its cache itself: never polled
        await schedule_polls(services)
        await services.dispatcher.drain()
        async with db.read() as conn:
            runs = (await conn.execute(select(func.count()).select_from(t.sync_runs)
                                       .where(t.sync_runs.c.connection_id == fake["id"]))).scalar_one()
        assert runs == 1  # started a moment ago: not due before 60 s
        async with db.transaction() as uow:  # a minute later
            await uow.conn.execute(update(t.sync_states).where(t.sync_states.c.connection_id == fake["id"])
                                   .values(last_started_at=utcnow() - timedelta(seconds=61)))
        assert await schedule_polls(services) >= 1
        assert await fake_jobs() == 2
        await services.dispatcher.drain()


async def test_a_serving_app_polls_due_connections_by_itself(db, tenant):
    """Embedded mode end to end: nothing calls the scheduler; the app's own worker polls the
    connection, syncs it, and records the run."""
    import base64

    from gateway.api.app import create_app
    from gateway.api.deps import Services
    from gateway.settings import Settings

    FakeConnector.vendor = FakeVendor(5)
    settings = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                        scheduler_interval_seconds=0.05)
    services = Services.build(settings, db=db, registry=ConnectorRegistry([FakeConnector]))
    connection = await services.connections.create(tenant[0], ConnectionCreate(connector="fake", name="polled"))
    app = create_app(settings, services=services)
    async with app.router.lifespan_context(app):
        for _ in range(200):
            state = (await sync_states(db, connection["id"])).get("products")
            if state and state["status"] == "idle" and state["records"] == 5:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the embedded scheduler never synced the connection: {state}")
