"""Inventory adjustments pushed to external POS connections by the worker, and echo suppression.

Through the gateway API (``httpx.ASGITransport``) with the embedded dispatcher (the app's
lifespan runs it), against the AI POS and Apex sandboxes in process, on SQLite and PostgreSQL:

- ``POST .../inventory/adjustments`` answers 202 ``pending`` (the row and its push job stored
  in one transaction), the worker applies it (``adjustment.applied``), ``GET`` shows status,
  attempts and the last error; Idempotency-Key replays answer the same 202 body; validation
  errors answer 4xx before anything is stored.
- The POS down (sandbox 503s): the adjustment stays ``pending`` with ``attempts`` and
  ``last_error``, and is applied exactly once when the POS is back; the last attempt gives up
  (``adjustment.failed``).
- A lost answer (the vendor applied it, the gateway never heard): retried, applied once (AI POS:
  the vendor's idempotency key; Apex: the intent recorded before the set, compared with the
  count on retry), also after the worker "dies" right after the set; a set that never reached
  Apex is made on retry; one whose outcome cannot be told (the stock also moved) fails with
  ``outcome_unknown`` instead of being applied twice.
- Insufficient stock: ``failed`` with ``adjustment.failed``.
- Echo suppression: the POS reporting the gateway's own write back (AI POS ``inventory.low``
  webhook, a poll, also a webhook processed before the push recorded its outcome) emits no
  ``inventory.updated`` (only ``inventory.low`` when the write crossed the threshold); a sale at
  the POS still does, with the new ``on_hand`` and ``available``.

Plus the write journal's matching rules and the write locks, directly.

The test connectors carry their own manifest name (``aipos_push_test``, ``apex_push_test``) so
the dispatcher of these tests never runs jobs of other tests' connections against these sandboxes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from inventory_world import VENDORS, types, world
from sqlalchemy import func, insert, select, update

from gateway import jsonutil
from gateway.crypto import CredentialCipher
from gateway.model import ConnectionCreate
from gateway.sdk.registry import ConnectorRegistry
from gateway.services import journal, locks, records
from gateway.services.adjustments import MAX_PUSH_ATTEMPTS
from gateway.services.connections import ConnectionService
from gateway.storage import tables as t


@pytest.fixture
def make_world(db, tenant):
    def make(kind: str, **options: Any):
        return world(db, tenant, kind, suffix="push_test", **options)
    return make


# -- accepted, then pushed ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", VENDORS)
async def test_accepted_pending_then_applied_once_by_the_worker(make_world, kind):
    async with make_world(kind) as w:
        seq = await w.last_seq()
        first = await w.adjust("-4", key="order-1001-line-1")
        assert first.status_code == 202, first.text
        pending = first.json()
        assert pending["id"].startswith("adj_") and (pending["status"], pending["attempts"]) == ("pending", 0)
        assert (pending["delta"], pending["reason"], pending["reference"]) == ("-4", "sale", "web-1001")
        assert (pending["last_error"], pending["applied_at"]) == (None, None)
        assert (pending["product_id"], pending["location_id"]) == (w.product["id"], w.location["id"])

        await w.drain()
        applied = await w.adjustment(pending["id"])
        assert (applied["status"], applied["attempts"], applied["last_error"]) == ("applied", 1, None)
        assert applied["applied_at"] and applied["created_at"] == pending["created_at"]
        assert w.stock() == 26 and w.applications() == 1
        level = await w.level()
        assert (level["on_hand"], level["available"]) == ("26", "26")
        assert (await w.job(pending["id"]))["status"] == "done"

        # the same key and body again: the stored 202 is replayed, nothing is pushed again
        again = await w.adjust("-4", key="order-1001-line-1")
        assert again.status_code == 202 and again.json() == pending
        assert again.headers["idempotent-replayed"] == "true"
        await w.drain()
        assert w.stock() == 26 and w.applications() == 1

        # one event for the change: the POS's read-back of the gateway's own write is no news
        new = await w.events(seq)
        assert types(new) == ["adjustment.applied"], types(new)
        assert new[0]["data"] == applied and new[0]["changed"] == ["status", "applied_at"]
        assert [e["status"] for e in await w.journal(pending["id"])] == ["matched"]


@pytest.mark.parametrize("kind", VENDORS)
async def test_invalid_adjustments_are_refused_before_anything_is_stored(make_world, kind):
    async with make_world(kind) as w:
        async def refused(answer: httpx.Response, status: int, code: str) -> None:
            assert answer.status_code == status, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["code"] == code

        await refused(await w.adjust("1.5"), 422, "validation_error")
        await refused(await w.adjust("2", product_id="prod_nope"), 422, "validation_error")
        await refused(await w.adjust("2", location_id="loc_nope"), 422, "validation_error")
        await refused(await w.adjust("2", variant_id="var_x"), 422, "validation_error")
        url = f"{w.base}/inventory/adjustments"
        body = {"product_id": w.product["id"], "location_id": w.location["id"], "delta": "2", "reason": "restock"}
        await refused(await w.http.post(url, json=body), 400, "idempotency_key_required")
        async with w.db.read() as conn:
            stored = (await conn.execute(select(func.count()).select_from(t.adjustments).where(
                t.adjustments.c.connection_id == w.connection_id))).scalar_one()
            queued = (await conn.execute(select(func.count()).select_from(t.jobs).where(
                t.jobs.c.kind == "adjustment", t.jobs.c.payload.contains(w.connection_id)))).scalar_one()
        assert (stored, queued) == (0, 0)
        missing = await w.http.get(f"{url}/adj_unknown")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        assert w.applications() == 0


# -- the POS down, answers lost ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", VENDORS)
async def test_while_the_pos_is_down_it_stays_pending_then_applies_once(make_world, kind):
    async with make_world(kind) as w:
        seq = await w.last_seq()
        await w.faults(error_rate=1.0, error_status=503)
        accepted = (await w.adjust("5")).json()
        await w.drain()
        waiting = await w.adjustment(accepted["id"])
        assert (waiting["status"], waiting["attempts"]) == ("pending", 1)
        assert waiting["last_error"].startswith("vendor_unavailable:"), waiting
        job = await w.job(accepted["id"])
        assert job["status"] == "queued" and job["run_after"] > jsonutil.utcnow() + timedelta(seconds=4)  # backoff
        await w.retry()
        assert (await w.adjustment(accepted["id"]))["attempts"] == 2 and w.applications() == 0

        await w.faults()  # the POS is back
        await w.retry()
        applied = await w.adjustment(accepted["id"])
        assert (applied["status"], applied["attempts"], applied["last_error"]) == ("applied", 3, None)
        assert w.stock() == 35 and w.applications() == 1
        assert (await w.level())["on_hand"] == "35"
        assert types(await w.events(seq)) == ["adjustment.applied"]
        await w.retry()  # nothing pending is left to push
        assert w.applications() == 1


async def test_the_last_attempt_gives_up_with_adjustment_failed(make_world):
    async with make_world("aipos") as w:
        seq = await w.last_seq()
        await w.faults(error_rate=1.0, error_status=503)
        accepted = (await w.adjust("5")).json()
        await w.drain()
        job = await w.job(accepted["id"])
        assert job["max_attempts"] == MAX_PUSH_ATTEMPTS
        async with w.db.transaction() as uow:  # as if the POS had been down for all but one attempt
            await uow.conn.execute(update(t.jobs).where(t.jobs.c.id == job["id"]).values(attempts=MAX_PUSH_ATTEMPTS - 1))
        await w.retry()
        failed = await w.adjustment(accepted["id"])
        assert (failed["status"], failed["attempts"]) == ("failed", 2)
        assert failed["last_error"].startswith("vendor_unavailable:")
        assert (await w.job(accepted["id"]))["status"] == "done"
        new = await w.events(seq)
        assert types(new) == ["adjustment.failed"] and new[0]["data"] == failed
        assert [e["status"] for e in await w.journal(accepted["id"])] == ["void"]
        await w.faults()
        await w.retry()
        assert w.applications() == 0 and (await w.adjustment(accepted["id"]))["status"] == "failed"


async def test_aipos_a_lost_answer_is_retried_with_the_same_key_and_applied_once(make_world):
    async with make_world("aipos") as w:
        # both of the client's attempts reach the vendor and lose their answers: the job retries
        w.wire.fail("POST", "/inventory/adjustments", "lose", times=2)
        accepted = (await w.adjust("-3")).json()
        await w.drain()
        waiting = await w.adjustment(accepted["id"])
        assert (waiting["status"], waiting["attempts"]) == ("pending", 1)
        assert waiting["last_error"].startswith("vendor_timeout:")
        assert w.stock() == 27 and w.applications() == 1  # it did land, once
        await w.retry()
        applied = await w.adjustment(accepted["id"])
        assert (applied["status"], applied["attempts"], applied["last_error"]) == ("applied", 2, None)
        assert w.stock() == 27 and w.applications() == 1
        assert (await w.level())["on_hand"] == "27"


async def test_apex_a_lost_answer_is_settled_from_the_count_without_a_second_set(make_world):
    async with make_world("apex") as w:
        w.wire.fail("PATCH", "/inventory/3", "lose")
        accepted = (await w.adjust("-3")).json()
        await w.drain()
        applied = await w.adjustment(accepted["id"])
        assert (applied["status"], applied["attempts"]) == ("applied", 1)
        assert w.stock() == 27 and w.applications() == 1


async def test_apex_a_worker_dying_after_the_set_leaves_an_intent_the_retry_settles(make_world):
    async with make_world("apex") as w:
        seq = await w.last_seq()
        w.wire.fail("PATCH", "/inventory/3", "crash")
        accepted = (await w.adjust("-3")).json()
        await w.drain()
        waiting = await w.adjustment(accepted["id"])
        assert waiting["status"] == "pending" and "WorkerCrashed" in waiting["last_error"]
        async with w.db.read() as conn:
            row = (await conn.execute(select(t.adjustments).where(t.adjustments.c.id == accepted["id"]))).mappings().one()
        assert (row["intent_before_milli"], row["intent_target_milli"]) == (30_000, 27_000)
        assert w.stock() == 27 and w.applications() == 1
        await w.retry()
        applied = await w.adjustment(accepted["id"])
        assert (applied["status"], applied["attempts"], applied["last_error"]) == ("applied", 2, None)
        assert w.stock() == 27 and w.applications() == 1  # settled from the count: no second set
        assert types(await w.events(seq)) == ["adjustment.applied"]


async def test_apex_a_set_that_never_reached_the_pos_is_made_on_retry(make_world):
    async with make_world("apex") as w:
        rule = w.wire.fail("PATCH", "/inventory/3", "timeout")
        rule.on_fire = lambda: w.wire.fail("GET", "/inventory", "timeout", times=2, query="warehouse_id=1")
        accepted = (await w.adjust("4")).json()
        await w.drain()
        waiting = await w.adjustment(accepted["id"])
        assert (waiting["status"], waiting["attempts"]) == ("pending", 1) and w.applications() == 0
        await w.retry()
        applied = await w.adjustment(accepted["id"])
        assert (applied["status"], applied["attempts"]) == ("applied", 2)
        assert w.stock() == 34 and w.applications() == 1


async def test_apex_an_outcome_that_cannot_be_told_fails_instead_of_applying_twice(make_world):
    async with make_world("apex") as w:
        seq = await w.last_seq()
        rule = w.wire.fail("PATCH", "/inventory/3", "lose")
        rule.on_fire = lambda: w.wire.fail("GET", "/inventory", "timeout", times=2, query="warehouse_id=1")
        accepted = (await w.adjust("-3")).json()
        await w.drain()
        assert (await w.adjustment(accepted["id"]))["status"] == "pending" and w.stock() == 27
        w.set_stock(26)  # a sale at the till before the retry: neither 30 (before) nor 27 (target)
        await w.retry()
        failed = await w.adjustment(accepted["id"])
        assert failed["status"] == "failed" and failed["last_error"].startswith("outcome_unknown:"), failed
        assert w.stock() == 26 and w.applications() == 1
        assert (await w.level())["on_hand"] == "26"
        new = await w.events(seq)
        assert types(new) == ["adjustment.failed", "inventory.updated"], types(new)  # the till's sale is news


@pytest.mark.parametrize("kind", VENDORS)
async def test_insufficient_stock_fails_with_adjustment_failed(make_world, kind):
    async with make_world(kind) as w:
        seq = await w.last_seq()
        accepted = await w.adjust("-31")
        assert accepted.status_code == 202 and accepted.json()["status"] == "pending"
        await w.drain()
        failed = await w.adjustment(accepted.json()["id"])
        assert (failed["status"], failed["attempts"], failed["applied_at"]) == ("failed", 1, None)
        assert failed["last_error"].startswith("insufficient_stock:"), failed
        assert w.stock() == 30 and w.applications() == 0
        assert (await w.job(failed["id"]))["status"] == "done"  # a verdict: no retry
        new = await w.events(seq)
        assert types(new) == ["adjustment.failed"]
        assert new[0]["data"] == failed and new[0]["changed"] == ["status", "last_error"]


# -- echo suppression -------------------------------------------------------------------------------
async def test_aipos_webhook_echo_of_the_gateways_write_is_silent_and_a_pos_sale_is_not(make_world):
    async with make_world("aipos", safety_stock="2") as w:
        await w.subscribe()
        seq = await w.last_seq()
        # the read-back after the push fails: the cache learns the level from the webhook
        read_back = w.wire.fail("GET", "/inventory", "timeout", times=2, query="product_id=prod_003")
        accepted = (await w.adjust("-25")).json()  # 30 -> 5: crosses the threshold of 10
        await w.drain()
        assert (await w.adjustment(accepted["id"]))["status"] == "applied" and read_back.times == 0
        await w.deliver_webhooks()  # inventory.low -> the connector fetches the level: 5
        level = await w.level()
        assert (level["on_hand"], level["available"]) == ("5", "3")
        assert [e["status"] for e in await w.journal(accepted["id"])] == ["matched"]
        # no inventory.updated for the echo; the crossing of the threshold is inventory.low all the same
        new = await w.events(seq)
        assert types(new) == ["adjustment.applied", "inventory.low"]
        assert (new[1]["data"]["on_hand"], new[1]["data"]["available"]) == ("5", "3")
        await w.sync("incremental", ["inventory"])  # a poll agrees: nothing new
        assert types(await w.events(seq)) == ["adjustment.applied", "inventory.low", "connection.sync_completed"]

        # a sale at the till is a genuine change: inventory.updated with on hand and available
        seq = await w.last_seq()
        sale = await w.pos("POST", "/sales", {"items": [{"product_id": "prod_003", "qty": 2}], "payment_method": "cash"})
        assert sale.status_code == 201, sale.text
        await w.deliver_webhooks()
        await w.sync("incremental", ["inventory"])
        updates = [e for e in await w.events(seq) if e["type"] == "inventory.updated"]
        assert len(updates) == 1, await w.events(seq)
        assert (updates[0]["data"]["on_hand"], updates[0]["data"]["available"]) == ("3", "1")
        assert {"on_hand", "available"} <= set(updates[0]["changed"])


async def test_aipos_a_failed_read_back_caches_the_level_the_answer_tells_and_the_poll_is_silent(make_world):
    """The read-back after the write times out: the vendor's answer (``quantity`` after,
    ``created_at``) is the level the write landed in, cached silently with that version; the
    poll that brings the same level later changes nothing."""
    async with make_world("aipos", safety_stock="2") as w:  # no webhooks: the poll brings the level
        seq = await w.last_seq()
        read_back = w.wire.fail("GET", "/inventory", "timeout", times=2, query="product_id=prod_003")
        accepted = (await w.adjust("6")).json()
        await w.drain()
        assert (await w.adjustment(accepted["id"]))["status"] == "applied" and read_back.times == 0
        assert (await w.level())["on_hand"] == "36"
        await w.sync("incremental", ["inventory"])
        level = await w.level()
        assert (level["on_hand"], level["available"]) == ("36", "34")
        assert [e["status"] for e in await w.journal(accepted["id"])] == ["matched"]
        assert types(await w.events(seq)) == ["adjustment.applied", "connection.sync_completed"]


async def test_aipos_an_echo_processed_before_the_push_records_its_outcome_is_silent(make_world):
    """The vendor's webhook for the gateway's write is applied while the push is still waiting
    for the vendor's answer: the guess journaled when the adjustment was accepted recognises it."""
    async with make_world("aipos") as w:
        await w.subscribe()
        seq = await w.last_seq()

        async def webhook_first() -> None:  # runs after the vendor applied the adjustment
            await w.vendor.state.aipos.drain()
            for _ in range(500):
                async with w.db.read() as conn:
                    done = (await conn.execute(select(func.count()).select_from(t.webhook_inbox).where(
                        t.webhook_inbox.c.connection_id == w.connection_id,
                        t.webhook_inbox.c.status == "processed"))).scalar_one()
                if done:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the inventory.low delivery was not processed")

        w.wire.fail("POST", "/inventory/adjustments", "hold", hook=webhook_first)
        accepted = (await w.adjust("-25")).json()
        await w.drain()
        assert (await w.adjustment(accepted["id"]))["status"] == "applied"
        assert (await w.level())["on_hand"] == "5"
        assert [e["status"] for e in await w.journal(accepted["id"])] == ["matched"]
        assert types(await w.events(seq)) == ["inventory.low", "adjustment.applied"]  # 30 -> 5 crosses 10


async def test_apex_poll_echo_of_the_gateways_write_is_silent_and_a_pos_change_is_not(make_world):
    """The read-back after the set fails: the answered set is the level (Apex sets absolutely),
    cached silently with the time it was sent as its version; the poll that brings the same level
    changes nothing, and a count at the POS afterwards is news."""
    async with make_world("apex", safety_stock="1") as w:
        seq = await w.last_seq()
        rule = w.wire.fail("PATCH", "/inventory/3", "hold")

        async def fail_the_read_back() -> None:
            w.wire.fail("GET", "/inventory", "timeout", times=2, query="warehouse_id=1")

        rule.hook = fail_the_read_back
        accepted = (await w.adjust("4")).json()
        await w.drain()
        assert (await w.adjustment(accepted["id"]))["status"] == "applied" and w.stock() == 34
        assert (await w.level())["on_hand"] == "34"
        await w.sync("full", ["inventory"])
        level = await w.level()
        assert (level["on_hand"], level["available"]) == ("34", "33")
        assert [e["status"] for e in await w.journal(accepted["id"])] == ["matched"]
        assert types(await w.events(seq)) == ["adjustment.applied", "connection.sync_completed"]

        seq = await w.last_seq()
        counted = await w.pos("PATCH", "/inventory/3", {"product_id": 3, "warehouse_id": 1, "quantity": 31})
        assert counted.status_code == 200, counted.text
        await w.sync("full", ["inventory"])
        updates = [e for e in await w.events(seq) if e["type"] == "inventory.updated"]
        assert len(updates) == 1
        assert (updates[0]["data"]["on_hand"], updates[0]["data"]["available"]) == ("31", "30")


@pytest.mark.parametrize("kind", VENDORS)
async def test_a_till_sale_the_cache_had_not_seen_is_not_swallowed_by_the_echo(make_world, kind):
    """The POS sold 2 at the till (not polled yet) before the gateway's -3 landed: the level read
    back (25) is more than the gateway's write explains (30 - 3), so it is news."""
    async with make_world(kind) as w:
        seq = await w.last_seq()
        w.set_stock(28)
        accepted = (await w.adjust("-3")).json()
        await w.drain()
        assert (await w.adjustment(accepted["id"]))["status"] == "applied" and w.stock() == 25
        new = await w.events(seq)
        assert types(new) == ["adjustment.applied", "inventory.updated"], types(new)
        assert (new[1]["data"]["on_hand"], new[1]["data"]["available"]) == ("25", "25")
        assert [e["status"] for e in await w.journal(accepted["id"])] == ["void"]


async def test_an_attempt_that_never_landed_does_not_hide_a_later_echo(make_world):
    """AI POS down (503) for a push of -2: the attempt was refused unsent, so its journal entry is
    withdrawn (``void``); a later +3 lands and is read back: that read-back is +3's echo, not an
    external change. When the POS is back, -2's next attempt journals it again."""
    async with make_world("aipos") as w:
        w.wire.fail("POST", "/inventory/adjustments", "down", times=2)
        waiting = await w.adjust("-2")
        assert waiting.status_code == 202, waiting.text
        await w.drain()
        assert (await w.adjustment(waiting.json()["id"]))["status"] == "pending"
        assert [e["status"] for e in await w.journal(waiting.json()["id"])] == ["void"]
        seq = await w.last_seq()
        later = await w.adjust_applied("3")
        assert types(await w.events(seq)) == ["adjustment.applied"]
        assert [e["status"] for e in await w.journal(later["id"])] == ["matched"]
        await w.retry()  # the POS is back: -2 lands, and its read-back is an echo too
        assert (await w.adjustment(waiting.json()["id"]))["status"] == "applied"
        assert types(await w.events(seq)) == ["adjustment.applied", "adjustment.applied"]
        assert w.stock() == 31 and (await w.level())["on_hand"] == "31"



async def test_a_refused_attempt_after_a_lost_answer_keeps_the_entry_for_its_echo(make_world):
    """A push of -2 lands but its answer is lost (outcome unknown); the next attempt meets a 503
    (refused unsent). The entry stays open (``uncertain``: the first attempt may report), so the
    poll that brings -2 is its echo; the retry with the same key replays and announces it once."""
    async with make_world("aipos") as w:
        w.wire.fail("POST", "/inventory/adjustments", "lose", times=2)  # both client tries of attempt 1
        w.wire.fail("POST", "/inventory/adjustments", "down", times=2)  # both of attempt 2
        accepted = (await w.adjust("-2")).json()
        await w.drain()
        await w.retry()
        waiting = await w.adjustment(accepted["id"])
        assert (waiting["status"], waiting["attempts"]) == ("pending", 2)
        assert waiting["last_error"].startswith("vendor_unavailable:")
        assert w.stock() == 28 and w.applications() == 1
        assert [(e["status"], e["uncertain"]) for e in await w.journal(accepted["id"])] == [("open", True)]
        seq = await w.last_seq()
        await w.sync("full", ["inventory"])
        assert "inventory.updated" not in types(await w.events(seq))
        assert [e["status"] for e in await w.journal(accepted["id"])] == ["matched"]
        await w.retry()
        assert (await w.adjustment(accepted["id"]))["status"] == "applied"
        assert [t for t in types(await w.events(seq)) if t.startswith(("inventory.", "adjustment."))] == [
            "adjustment.applied"]
        assert w.stock() == 28 and w.applications() == 1 and (await w.level())["on_hand"] == "28"

# -- the journal and the locks, directly -------------------------------------------------------------
def test_an_echo_is_explained_by_the_journaled_deltas_alone() -> None:
    cached = {"product_id": "prod_1", "on_hand": "10", "available": "8", "low_stock_threshold": "2"}
    assert journal.explained(cached, {**cached, "on_hand": "7", "available": "5"}, [-3000]) == 1
    assert journal.explained(cached, {**cached, "on_hand": "7.000", "available": "5"}, [-3000]) == 1
    assert journal.explained(cached, {**cached, "on_hand": "6", "available": "4"}, [-3000, -1000]) == 2  # both landed
    assert journal.explained(cached, {**cached, "on_hand": "7", "available": "5"}, [-3000, -1000]) == 1  # the first
    # an entry left open by an attempt that never landed (the POS was down) is skipped
    assert journal.explaining(cached, {**cached, "on_hand": "13", "available": "11"}, [-2000, 3000]) == (1,)
    assert journal.explaining(cached, {**cached, "on_hand": "9", "available": "7"}, [-2000, 3000, -1000, 5000]) == (2,)
    assert journal.explaining(cached, {**cached, "on_hand": "12", "available": "10"}, [-2000, 3000]) == ()
    assert journal.explained(cached, {**cached, "on_hand": "5", "available": "3"}, [-3000]) == 0  # plus a till sale
    assert journal.explained(cached, {**cached, "on_hand": "7", "available": "5", "low_stock_threshold": "5"},
                             [-3000]) == 0  # the threshold changed too
    assert journal.window({}) == timedelta(minutes=15)
    assert journal.window({"poll_interval_seconds": 3600}) == timedelta(hours=2)


async def test_the_journal_matches_once_in_order_and_ignores_expired_entries(db, tenant):
    tenant_id = tenant[0]
    service = ConnectionService(db, ConnectorRegistry(), CredentialCipher([os.urandom(32)]))
    connection_id = (await service.create(tenant_id, ConnectionCreate(connector="local", name="journal")))["id"]
    body = {"product_id": "prod_x", "variant_id": None, "location_id": "loc_x", "low_stock_threshold": None}

    async def write(on_hand: int) -> tuple[records.UpsertResult, int]:
        async with db.transaction(tenant_id) as uow:
            result = await records.upsert(uow, connection_id=connection_id, entity="inventory", remote_id="lvl-1",
                                          body={**body, "on_hand": Decimal(on_hand), "available": Decimal(on_hand)})
            return result, len(uow.events)

    async def expect(adjustment_id: str, delta: int, ttl: timedelta = timedelta(minutes=15)) -> None:
        async with db.transaction(tenant_id) as uow:
            await journal.expect(uow, connection_id=connection_id, remote_id="lvl-1", delta_milli=delta * 1000,
                                 adjustment_id=adjustment_id, ttl=ttl)

    async def status(adjustment_id: str) -> str:
        async with db.read() as conn:
            return (await journal.entries_of(conn, adjustment_id))[0]["status"]

    assert (await write(10))[1] == 1  # new to the cache: an event
    await expect("adj_a", -3)
    await expect("adj_b", -1)
    result, emitted = await write(7)  # the first write came back
    assert result.echo and emitted == 0
    assert (await status("adj_a"), await status("adj_b")) == ("matched", "open")
    result, emitted = await write(6)  # and the second
    assert result.echo and emitted == 0 and await status("adj_b") == "matched"
    result, emitted = await write(4)  # nothing journaled explains it: a genuine change
    assert not result.echo and emitted == 1
    await expect("adj_c", 5)
    await expect("adj_d", 2)
    result, emitted = await write(11)  # both at once, in one report
    assert result.echo and emitted == 0 and (await status("adj_c"), await status("adj_d")) == ("matched", "matched")
    await expect("adj_c", 5)  # a retry of a write already seen does not open it again
    assert await status("adj_c") == "matched"
    await expect("adj_e", 3, ttl=timedelta(seconds=-1))  # expired
    result, emitted = await write(14)
    assert not result.echo and emitted == 1 and await status("adj_e") == "open"
    await expect("adj_f", 1)
    async with db.transaction(tenant_id) as uow:
        await journal.close(uow, "adj_f")
    assert await status("adj_f") == "void"
    assert (await write(15))[1] == 1


async def test_write_locks_serialise_and_a_lapsed_lease_is_taken_over(db):
    key = f"test:{uuid.uuid4().hex}"
    order: list[str] = []

    async def holder(name: str) -> None:
        async with locks.hold(db, key):
            order.append(f"{name}+")
            await asyncio.sleep(0.02)
            order.append(f"{name}-")

    await asyncio.gather(holder("a"), holder("b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])

    now = jsonutil.utcnow()
    async with db.transaction() as uow:  # another process holds it
        await uow.conn.execute(insert(t.write_locks).values(key=key, owner="other", acquired_at=now,
                                                            lease_until=now + timedelta(seconds=60)))
    with pytest.raises(locks.LockBusy) as busy:
        async with locks.hold(db, key, wait=0.2):
            pass
    assert busy.value.status == 409 and busy.value.code == "write_in_progress"
    async with db.transaction() as uow:  # ... and dies: its lease lapses
        await uow.conn.execute(update(t.write_locks).where(t.write_locks.c.key == key)
                               .values(lease_until=now - timedelta(seconds=1)))
    async with locks.hold(db, key, wait=0.2) as held:
        async with db.transaction() as uow:  # taken over in turn while we hold it: fencing refuses
            await uow.conn.execute(update(t.write_locks).where(t.write_locks.c.key == key).values(owner="thief"))
        with pytest.raises(locks.LockBusy):
            async with db.transaction() as uow:
                await held.verify(uow)
    async with db.read() as conn:
        left = (await conn.execute(select(t.write_locks.c.owner).where(t.write_locks.c.key == key))).scalars().all()
    assert left == ["thief"]  # ours was released; the thief's is not ours to delete
