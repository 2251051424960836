"""Inbound vendor webhooks: ``POST /hooks/{connection_id}``, the inbox and the ``webhook`` job.

A small connector (``hooked``) signs with HMAC-SHA256 over ``"<t>.<body>"`` and applies product
events with the vendor's ``updated_at`` as the version; the AI POS connector's own scheme is
tested in ``tests/test_aipos_connector.py``. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from datetime import datetime
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select

from gateway import jsonutil
from gateway.errors import WebhookMalformed, WebhookSignatureInvalid
from gateway.sdk.connector import Connector, InboundEvent
from gateway.sdk.registry import ConnectorRegistry
from gateway.services import records
from gateway.storage import tables as t

SECRET = "whsec_test_secret"


def _product(name: str, price: str) -> dict[str, Any]:
    return {"sku": None, "barcode": None, "name": name, "description": None, "translations": {},
            "category_ids": [], "price": price, "cost": None, "currency": "GBP", "tax_rate": "0",
            "tax_inclusive": False, "taxes": [], "unit": "each", "track_inventory": True, "active": True,
            "variants": []}


class HookedConnector(Connector):
    """Receives ``product.updated`` deliveries: ``{"id", "type", "product": {"id", "name", "price",
    "updated_at"}}`` signed ``X-Sig: t=<unix>,v1=<hex>``; fails ``apply`` while ``failing`` is set."""

    manifest: ClassVar[dict[str, Any]] = {
        "name": "hooked", "version": "0.1.0", "title": "Hooked vendor",
        "credentials_schema": {"type": "object", "properties": {"webhook_secret": {"type": "string"}}},
        "settings_schema": {"type": "object"},
        "capabilities": {"products": {"read": False, "webhooks": True}},
        "webhooks": {"events": ["product.updated"], "tolerance_seconds": 300},
    }
    failing: ClassVar[int] = 0  # apply_webhook raises this many more times
    applied: ClassVar[list[str]] = []

    def verify_webhook(self, headers: Any, body: bytes, now: float) -> InboundEvent:
        header = headers.get("x-sig")
        if not header:
            raise WebhookSignatureInvalid("no X-Sig header")
        try:
            parts = dict(item.split("=", 1) for item in header.split(","))
            stamp = int(parts["t"])
            given_sig = parts["v1"]
        except (ValueError, KeyError) as exc:
            raise WebhookMalformed("X-Sig must be t=<unix>,v1=<hex>") from exc
        secret = self.context.credentials.get("webhook_secret", "")
        expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        if not secret or not hmac.compare_digest(expected.encode(), given_sig.encode("utf-8", "surrogateescape")):
            raise WebhookSignatureInvalid("the signature does not verify")
        if abs(now - stamp) > 300:
            raise WebhookSignatureInvalid("the signature is too old")
        try:
            doc = jsonutil.loads(body)
            return InboundEvent(id=str(doc["id"]), type=str(doc["type"]), occurred_at=None, payload=doc)
        except (jsonutil.MalformedJSON, KeyError, TypeError) as exc:
            raise WebhookMalformed("the body is not an event") from exc

    async def apply_webhook(self, event: InboundEvent) -> None:
        if HookedConnector.failing:
            HookedConnector.failing -= 1
            raise RuntimeError("the cache is unavailable")
        product = event.payload["product"]
        async with self.db.transaction(self.context.tenant_id) as uow:
            await records.upsert(uow, connection_id=self.context.id, entity="products", remote_id=product["id"],
                                 body=_product(product["name"], product["price"]), raw=product,
                                 remote_updated_at=datetime.fromisoformat(product["updated_at"]))
        HookedConnector.applied.append(event.id)


def sign(body: bytes, stamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Sig": f"t={stamp},v1={digest}", "Content-Type": "application/json"}


def event(event_id: str, price: str, updated_at: str, remote_id: str = "p1") -> bytes:
    return json.dumps({"id": event_id, "type": "product.updated", "product": {
        "id": remote_id, "name": "Mug", "price": price, "updated_at": updated_at}}).encode()


@pytest.fixture
async def gateway(db, tenant):
    """(http client on the app with an embedded dispatcher, connection id, services)."""
    from connectors.local import LocalConnector
    from gateway.api.app import create_app
    from gateway.api.deps import Services
    from gateway.settings import Settings

    HookedConnector.failing, HookedConnector.applied = 0, []
    settings = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()])
    services = Services.build(settings, db=db, registry=ConnectorRegistry([HookedConnector, LocalConnector],
                                                                         load_entry_points=False))
    app = create_app(settings, services=services)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t",
        headers={"Authorization": f"Bearer {tenant[1]}"},
    ) as http:
        created = await http.post("/v1/connections", json={"connector": "hooked", "name": "v",
                                                           "credentials": {"webhook_secret": SECRET}})
        assert created.status_code == 201, created.text
        yield http, created.json()["id"], services


async def cached(http: httpx.AsyncClient, con: str) -> list[dict[str, Any]]:
    return (await http.get(f"/v1/connections/{con}/products?include_deleted=true")).json()["data"]


async def test_a_delivery_is_stored_acknowledged_and_applied_once(gateway, db):
    http, con, services = gateway
    body = event("evt_1", "4.50", "2026-03-01T10:00:00+00:00")
    answer = await http.post(f"/hooks/{con}", content=body, headers={**sign(body), "Authorization": ""})
    assert answer.status_code == 200, answer.text
    assert answer.json()["received"] is True and answer.json()["duplicate"] is False
    again = await http.post(f"/hooks/{con}", content=body, headers=sign(body))  # the vendor's retry
    assert again.status_code == 200 and again.json() == {**answer.json(), "duplicate": True}
    await services.dispatcher.drain()
    products = await cached(http, con)
    assert [(p["remote_id"], p["price"]) for p in products] == [("p1", "4.50")]
    assert HookedConnector.applied == ["evt_1"]
    async with db.read() as conn:
        rows = (await conn.execute(select(t.webhook_inbox).where(t.webhook_inbox.c.connection_id == con))).all()
        events = (await conn.execute(select(func.count()).select_from(t.events).where(
            t.events.c.connection_id == con, t.events.c.type == "product.created"))).scalar_one()
    assert [(r.vendor_event_id, r.status, r.attempts) for r in rows] == [("evt_1", "processed", 1)]
    assert events == 1


async def test_an_older_delivery_after_a_newer_one_changes_nothing(gateway):
    http, con, services = gateway
    newer = event("evt_2", "6.00", "2026-03-01T12:00:00+00:00")
    older = event("evt_1", "5.00", "2026-03-01T11:00:00+00:00")
    for body in (newer, older):  # delivered out of order
        assert (await http.post(f"/hooks/{con}", content=body, headers=sign(body))).status_code == 200
        await services.dispatcher.drain()
    assert [p["price"] for p in await cached(http, con)] == ["6.00"]
    assert HookedConnector.applied == ["evt_2", "evt_1"]  # both processed; the older one was stale
    events = (await http.get("/v1/events?after=0&type=product.*")).json()["data"]
    assert [e["type"] for e in events if e["data"]["connection_id"] == con] == ["product.created"]


async def test_bad_deliveries_get_clear_4xx_and_store_nothing(gateway, db):
    http, con, _ = gateway
    body = event("evt_9", "1.00", "2026-03-01T10:00:00+00:00")
    cases = [
        (body, {"Content-Type": "application/json"}, 401, "webhook_signature_invalid"),
        (body, sign(body, secret="whsec_wrong"), 401, "webhook_signature_invalid"),
        (body, sign(body, stamp=int(time.time()) - 3600), 401, "webhook_signature_invalid"),
        (body + b" ", sign(body), 401, "webhook_signature_invalid"),  # tampered after signing
        (body, {"X-Sig": "garbage"}, 400, "webhook_malformed"),
        (b"{not json", sign(b"{not json"), 400, "webhook_malformed"),
        (b"\xff\xfe", sign(b"\xff\xfe"), 400, "webhook_malformed"),
    ]
    for content, headers, status, code in cases:
        answer = await http.post(f"/hooks/{con}", content=content, headers=headers)
        assert answer.status_code == status, (content, headers, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"] == code
    assert (await http.post("/hooks/con_unknown", content=body, headers=sign(body))).json()["code"] == "not_found"
    local = (await http.post("/v1/connections", json={"connector": "local", "name": "shop"})).json()["id"]
    refused = await http.post(f"/hooks/{local}", content=body, headers=sign(body))
    assert refused.status_code == 422 and refused.json()["code"] == "operation_not_supported"
    too_big = b"x" * (1024 * 1024 + 1)
    assert (await http.post(f"/hooks/{con}", content=too_big, headers=sign(too_big))).status_code == 413
    async with db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(t.webhook_inbox).where(
            t.webhook_inbox.c.connection_id == con))).scalar_one() == 0


async def test_a_failing_delivery_is_retried_until_it_applies(gateway, db):
    from gateway.workers import jobs

    http, con, services = gateway
    HookedConnector.failing = 1
    body = event("evt_3", "7.00", "2026-03-01T10:00:00+00:00")
    assert (await http.post(f"/hooks/{con}", content=body, headers=sign(body))).status_code == 200
    await services.dispatcher.drain()
    async with db.read() as conn:
        row = (await conn.execute(select(t.webhook_inbox).where(t.webhook_inbox.c.connection_id == con))).one()
    assert (row.status, row.attempts) == ("received", 1) and "cache is unavailable" in row.last_error
    job = await jobs.get(db, row.job_id)
    assert job["status"] == "queued" and job["attempts"] == 1  # backing off
    async with db.transaction() as uow:  # time passes: the retry is due
        await uow.conn.execute(t.jobs.update().where(t.jobs.c.id == row.job_id).values(run_after=jsonutil.utcnow()))
    await services.dispatcher.sweep()
    await services.dispatcher.drain()
    async with db.read() as conn:
        row = (await conn.execute(select(t.webhook_inbox).where(t.webhook_inbox.c.connection_id == con))).one()
    assert (row.status, row.attempts, row.last_error) == ("processed", 2, None)
    assert [p["price"] for p in await cached(http, con)] == ["7.00"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.one_of(st.none(), st.text(max_size=80),
                     st.builds(lambda t_, v: f"t={t_},v1={v}", st.integers(-2**40, 2**40), st.text(max_size=70))),
    body=st.binary(max_size=300),
)
async def test_fuzzed_signatures_and_bodies_never_answer_5xx(gateway, header, body):
    http, con, _ = gateway
    headers: dict[str, Any] = {"Content-Type": "application/json"}
    if header is not None:  # any bytes a header can carry (not CR, LF or NUL)
        headers["X-Sig"] = bytes(b for b in header.encode("utf-8", "surrogatepass") if b not in b"\r\n\0")
    answer = await http.post(f"/hooks/{con}", content=body, headers=headers)
    assert answer.status_code in (400, 401), answer.text
    assert answer.json()["code"] in ("webhook_malformed", "webhook_signature_invalid")


async def test_an_aipos_sale_reaches_the_cache_through_its_webhook_once(db, tenant):
    """End to end: the AI POS sandbox delivers signed webhooks to ``POST /hooks/{id}`` of the
    gateway (in process). Every delivery is sent twice and batches are shuffled; a sale becomes
    one order with one ``order.created``; its refund wins over a late replay of ``sale.created``."""
    from typing import ClassVar as _ClassVar

    from connectors.aipos import AIPOSConnector
    from connectors.aipos.sandbox import create_app as aipos_app
    from gateway.api.app import create_app
    from gateway.api.deps import Services
    from gateway.sdk.http import BreakerPolicy, RetryPolicy
    from gateway.settings import Settings

    gateway_app: dict[str, Any] = {}

    async def to_gateway(scope: Any, receive: Any, send: Any) -> None:
        await gateway_app["app"](scope, receive, send)

    vendor = aipos_app(products=4, customers=2, sales=0, seed=3, webhook_transport=httpx.ASGITransport(app=to_gateway),
                       webhook_retry_schedule=[0.01, 0.01], faults={"webhook_duplicate_rate": 1.0, "webhook_reorder": True})

    async def instant(seconds: float) -> None:
        return None

    class SandboxAIPOS(AIPOSConnector):
        client_overrides: _ClassVar[dict[str, Any]] = {
            "transport": httpx.ASGITransport(app=vendor), "sleep": instant, "rate_limit": None,
            "retry": RetryPolicy(attempts=5, max_total=60, backoff=0.001, backoff_max=0.01, jitter=0),
            "breaker": BreakerPolicy(threshold=1000)}

    settings_ = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()])
    services = Services.build(settings_, db=db, registry=ConnectorRegistry([SandboxAIPOS], load_entry_points=False))
    gateway_app["app"] = app = create_app(settings_, services=services)
    base = "http://aipos.test/aipos/api/v1"
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test",
        headers={"Authorization": f"Bearer {tenant[1]}"},
    ) as http, httpx.AsyncClient(transport=httpx.ASGITransport(app=vendor), base_url=base,
                                 headers={"Authorization": "Bearer aipos_test_sandbox_key"}) as pos:
        created = await http.post("/v1/connections", json={
            "connector": "aipos", "name": "Pune", "credentials": {"api_key": "aipos_test_sandbox_key"},
            "settings": {"base_url": base}})
        assert created.status_code == 201, created.text
        con = created.json()["id"]
        endpoint = vendor.state.aipos.webhooks.register(f"http://gateway.test/hooks/{con}")
        patched = await http.patch(f"/v1/connections/{con}", json={"credentials": {
            "api_key": "aipos_test_sandbox_key", "webhook_secret": endpoint.secret}})
        assert patched.status_code == 200, patched.text
        assert (await http.post(f"/v1/connections/{con}/sync", json={"mode": "full"})).status_code == 202
        await services.dispatcher.drain()
        seq = max([0] + [e["seq"] for e in (await http.get("/v1/events?after=0&limit=1000")).json()["data"]])

        product = (await pos.get("/products?limit=1")).json()["data"][0]
        sale = await pos.post("/sales", json={"items": [{"product_id": product["id"], "qty": 2,
                                                         "price": product["price"]}], "payment_method": "upi"})
        assert sale.status_code == 201, sale.text
        sale_id = sale.json()["id"]
        await vendor.state.aipos.drain()
        await services.dispatcher.drain()
        orders = (await http.get(f"/v1/connections/{con}/orders?limit=200")).json()["data"]
        mine = [o for o in orders if o["remote_id"] == sale_id]
        assert len(mine) == 1, orders
        new = (await http.get(f"/v1/events?after={seq}&type=order.*&limit=1000")).json()["data"]
        assert [e["type"] for e in new] == ["order.created"]

        sent = [d for d in vendor.state.aipos.webhooks.log if d.type == "sale.created"]
        assert len(sent) == 2 and all(d.status == 200 for d in sent)  # the duplicate knob: twice on the wire
        first_delivery = next(e for e in vendor.state.aipos.events if e.type == "sale.created" and e.id == sent[0].event_id)
        refunded = await pos.post(f"/sales/{sale_id}/refund")
        assert refunded.status_code == 200, refunded.text
        await vendor.state.aipos.drain()
        await services.dispatcher.drain()
        replay_body = first_delivery.body
        stamp = str(int(time.time()))
        digest = hmac.new(endpoint.secret.encode(), f"{stamp}.{first_delivery.id}.".encode() + replay_body,
                          hashlib.sha256).hexdigest()
        late = await http.post(f"/hooks/{con}", content=replay_body, headers={
            "AIPOS-Event-Id": first_delivery.id, "AIPOS-Signature": f"t={stamp},v1={digest}",
            "Content-Type": "application/json"})
        assert late.status_code == 200 and late.json()["duplicate"] is True
        await services.dispatcher.drain()
        order = next(o for o in (await http.get(f"/v1/connections/{con}/orders?limit=200")).json()["data"]
                     if o["remote_id"] == sale_id)
        assert order["status"] == "refunded"
        new = (await http.get(f"/v1/events?after={seq}&type=order.*&limit=1000")).json()["data"]
        assert [e["type"] for e in new] == ["order.created", "order.refunded"]

        # A second sale refunded before either delivery leaves: the two are held and shuffled (and
        # each sent twice); whichever comes first, the newer version (refunded) is what stays.
        second = (await pos.post("/sales", json={"items": [{"product_id": product["id"], "qty": 1}],
                                                "payment_method": "cash"})).json()["id"]
        assert (await pos.post(f"/sales/{second}/refund")).status_code == 200
        await vendor.state.aipos.drain()
        await services.dispatcher.drain()
        order = next(o for o in (await http.get(f"/v1/connections/{con}/orders?limit=200")).json()["data"]
                     if o["remote_id"] == second)
        assert order["status"] == "refunded"
        mine = [e["type"] for e in (await http.get(f"/v1/events?after={seq}&type=order.*&limit=1000")).json()["data"]
                if e["data"]["remote_id"] == second]
        assert mine in (["order.created", "order.refunded"], ["order.created"])  # never created twice


async def test_concurrent_deliveries_share_transactions_and_each_is_stored_once(gateway, db):
    """60 distinct deliveries at once, each also sent a second time in the same burst: every one
    is acknowledged after the commit that holds it, stored once with its job, and the burst took
    fewer transactions than deliveries (group commit)."""
    http, con, services = gateway
    bodies = [event(f"evt_c{i:02d}", f"{i}.00", f"2026-03-02T10:{i:02d}:00+00:00", remote_id=f"p{i}") for i in range(60)]
    batches_before = services.inbox.writer.batches
    answers = await asyncio.gather(*(http.post(f"/hooks/{con}", content=body, headers=sign(body))
                                     for body in bodies + bodies))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    first, second = answers[:60], answers[60:]
    assert len({a.json()["id"] for a in first}) == 60
    assert [a.json()["id"] for a in second] == [a.json()["id"] for a in first]  # the same row, whichever came first
    assert sum(a.json()["duplicate"] for a in answers) == 60
    assert services.inbox.writer.batches - batches_before < 60
    async with db.read() as conn:
        stored = (await conn.execute(select(func.count()).select_from(t.webhook_inbox).join(
            t.jobs, t.jobs.c.id == t.webhook_inbox.c.job_id).where(t.webhook_inbox.c.connection_id == con))).scalar_one()
    assert stored == 60
    await services.dispatcher.drain()
    listed = (await http.get(f"/v1/connections/{con}/products?limit=100")).json()["data"]
    assert sorted(p["price"] for p in listed) == sorted(f"{i}.00" for i in range(60))


async def test_a_delivery_that_cannot_be_stored_fails_alone(db):
    """A group commit whose transaction fails writes its items one by one: the bad one's caller
    gets the error, every other caller its result, and the good items are durable."""
    from gateway.storage.group_commit import GroupCommit

    async def write(uow, items: list[str]) -> list[str]:
        for item in items:
            if item == "bad":
                raise ValueError("cannot store this one")
            await uow.conn.execute(insert(t.tenants).values(id=item, name=item, created_at=jsonutil.utcnow()))
        return [f"stored {item}" for item in items]

    writer = GroupCommit(db, write)
    names = [f"ten_gc{i}_{uuid.uuid4().hex[:6]}" for i in range(5)]
    results = await asyncio.gather(*(writer.submit(n) for n in [*names[:2], "bad", *names[2:]]),
                                   return_exceptions=True)
    assert isinstance(results[2], ValueError)
    assert [r for i, r in enumerate(results) if i != 2] == [f"stored {n}" for n in names]
    async with db.read() as conn:
        stored = (await conn.execute(select(func.count()).select_from(t.tenants).where(t.tenants.c.id.in_(names)))).scalar_one()
    assert stored == 5


@pytest.fixture
async def hooked_services(db, tenant):
    """(services without a running dispatcher, a ``hooked`` connector, tenant id): jobs are run by
    the test itself with ``execute``."""
    from gateway.api.deps import Services
    from gateway.model import ConnectionCreate
    from gateway.settings import Settings

    HookedConnector.failing, HookedConnector.applied = 0, []
    settings = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()])
    services = Services.build(settings, db=db, registry=ConnectorRegistry([HookedConnector], load_entry_points=False))
    created = await services.connections.create(tenant[0], ConnectionCreate(
        connector="hooked", name="v", credentials={"webhook_secret": SECRET}))
    connector = await services.connections.connector_for(tenant[0], created["id"])
    return services, connector, tenant[0]


async def _receive(services, connector, event_id: str, price: str):
    body = event(event_id, price, "2026-03-05T10:00:00+00:00", remote_id=f"r_{event_id}")
    received = await services.inbox.receive(connector, connector.verify_webhook(httpx.Headers(sign(body)), body, time.time()), body)
    assert not received.duplicate and received.job_id is not None
    return received


def _count_commits(db) -> list[int]:
    from sqlalchemy import event as sa_event

    commits = [0]

    @sa_event.listens_for(db.engine.sync_engine, "commit")
    def _count(_conn: Any) -> None:
        commits[0] += 1

    return commits


async def _state(db, received, connection_id: str, event_id: str) -> tuple[str, str, int]:
    async with db.read() as conn:
        inbox = (await conn.execute(select(t.webhook_inbox.c.status).where(t.webhook_inbox.c.id == received.id))).scalar_one()
        job = (await conn.execute(select(t.jobs.c.status).where(t.jobs.c.id == received.job_id))).scalar_one()
        cached = (await conn.execute(select(func.count()).select_from(t.records).where(
            t.records.c.connection_id == connection_id, t.records.c.remote_id == f"r_{event_id}"))).scalar_one()
    return inbox, job, cached


async def test_the_cache_write_processed_and_done_commit_in_one_transaction(hooked_services, db):
    """The ``webhook`` job holds the connector's last transaction: the record (and its event),
    the inbox row ``processed`` and the job ``done`` are one commit after the claim."""
    import gateway.workers.tasks  # noqa: F401 - registers the job kinds
    from gateway.workers.dispatch import WorkerContext, execute

    services, connector, _tenant_id = hooked_services
    received = await _receive(services, connector, "evt_one", "3.00")
    commits = _count_commits(db)
    assert await execute(WorkerContext(db=db, services=services), received.job_id) == "done"
    assert commits == [2]  # the claim; then cache write + processed + done
    assert await _state(db, received, connector.context.id, "evt_one") == ("processed", "done", 1)
    assert HookedConnector.applied == ["evt_one"]


async def test_a_delivery_is_never_processed_without_its_cache_write(hooked_services, db, monkeypatch):
    """When the final write of the held transaction fails, the cache write, ``processed`` and
    ``done`` all roll back: the job is retried and applies the delivery exactly once."""
    import gateway.workers.tasks  # noqa: F401 - registers the job kinds
    from gateway.workers import jobs
    from gateway.workers.dispatch import WorkerContext, execute

    services, connector, _tenant_id = hooked_services
    received = await _receive(services, connector, "evt_two", "4.00")
    ctx = WorkerContext(db=db, services=services)

    async def broken(uow, job) -> bool:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(jobs, "complete_running_in", broken)
    assert await execute(ctx, received.job_id) == "queued"
    assert await _state(db, received, connector.context.id, "evt_two") == ("received", "queued", 0)
    monkeypatch.undo()
    async with db.transaction() as uow:  # the retry is due
        await uow.conn.execute(t.jobs.update().where(t.jobs.c.id == received.job_id).values(run_after=jsonutil.utcnow()))
    assert await execute(ctx, received.job_id) == "done"
    assert await _state(db, received, connector.context.id, "evt_two") == ("processed", "done", 1)
    async with db.read() as conn:
        created = (await conn.execute(select(func.count()).select_from(t.events).where(
            t.events.c.connection_id == connector.context.id, t.events.c.type == "product.created"))).scalar_one()
    assert created == 1
