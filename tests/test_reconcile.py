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

import uuid
from datetime import timedelta
from typing import Any

import pytest
from inventory_world import VENDORS, Rule, types, world
from sqlalchemy import select, update

from gateway import jsonutil
from gateway.model import Event, InventoryLevel
from gateway.storage import tables as t
from gateway.workers.scheduler import schedule_polls


@pytest.fixture
def make_world(db, tenant):
    def make(kind: str, **options: Any):
        return world(db, tenant, kind, suffix="reconcile_test", **options)
    return make


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
    """The write landed but its answer was lost (and, on Apex, the look after it timed out): the
    adjustment is pending, its journal entry open, the POS at 36, the cache at 30. The count sees
    the gateway's +6 first: an echo (no event). With a till sale folded in, the level is news, but
    the gateway's write is in flight: ``inventory.updated`` as a poll would say, not drift."""
    async with make_world(kind) as w:
        seq = await w.last_seq()
        if kind == "aipos":  # the write lands, its answer is lost, and the client's retries time out
            w.wire.rules.append(Rule("POST", "/inventory/adjustments", "lose", on_fire=lambda: w.wire.rules.append(
                Rule("POST", "/inventory/adjustments", "timeout", times=100))))
        else:  # the set lands, its answer is lost, and the looks that would tell time out
            w.wire.rules.append(Rule("PATCH", "/inventory/3", "lose", on_fire=lambda: w.wire.rules.append(
                Rule("GET", "/inventory", "timeout", query="warehouse_id=1", times=100))))
        adjustment = (await w.adjust("6")).json()
        await w.drain()
        assert (await w.adjustment(adjustment["id"]))["status"] == "pending" and w.stock() == 36
        assert (await w.level())["on_hand"] == "30"
        assert [e["status"] for e in await w.journal(adjustment["id"])] == ["open"]

        if till_sale:
            w.set_stock(34)
        await w.reconcile()
        new = await w.events(seq)
        if till_sale:
            assert types(new) == ["inventory.updated"], types(new)
            assert new[0]["data"]["on_hand"] == "34" and "previous_on_hand" not in new[0]["data"]
        else:
            assert types(new) == []  # no drift, no inventory.updated
        assert (await w.level())["on_hand"] == ("34" if till_sale else "36")
        assert [e["status"] for e in await w.journal(adjustment["id"])] == [("open" if till_sale else "matched")]

        w.wire.rules.clear()
        await w.retry()  # the retry finds out: AI POS replays the answer; Apex counts
        status = (await w.adjustment(adjustment["id"]))["status"]
        # Apex cannot tell a landed set once the till also moved the stock (connectors/apex/README.md)
        assert status == ("failed" if kind == "apex" and till_sale else "applied")
        assert types(await w.events(seq))[-1] == f"adjustment.{status}"
        assert (await w.level())["on_hand"] == ("34" if till_sale else "36") and w.stock() == (34 if till_sale else 36)


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
        await w.adjust_applied("-15")  # 15: above
        await w.adjust_applied("-6")   # 9: crosses (the push's own read-back: an echo, yet low)
        await w.adjust_applied("-1")   # 8: still low
        w.set_stock(7)         # a poll (apex) / a count brings a till sale: still low
        await w.reconcile()
        await w.adjust_applied("10")   # 17: back above
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
        await w.adjust_applied("-30")
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
    assert types(events) == ["adjustment.applied", "inventory.updated"]
    assert (events[1]["data"]["on_hand"], events[1]["data"]["available"]) == ("11", "3.5")


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
