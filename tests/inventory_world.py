"""The inventory test world shared by the adjustment-push and reconciliation tests: one gateway
(API + embedded dispatcher, through ``httpx.ASGITransport``) in front of an AI POS or Apex sandbox
in process, reached through a :class:`Wire` that can script lost answers, timeouts and crashes,
and a :class:`World` of helpers to drive and inspect it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select, update

from connectors.aipos import AIPOSConnector
from connectors.aipos.sandbox import create_app as aipos_app
from connectors.apex import ApexConnector
from connectors.apex.sandbox import create_app as apex_app
from gateway import jsonutil
from gateway.api.app import create_app
from gateway.api.deps import Services
from gateway.sdk.http import BreakerPolicy, RetryPolicy
from gateway.sdk.registry import ConnectorRegistry
from gateway.services import journal, records
from gateway.settings import Settings
from gateway.storage import tables as t

AIPOS_BASE = "http://aipos.test/aipos/api/v1"
APEX_BASE = "http://apex.test/rest_api/v1"
VENDORS = ["aipos", "apex"]


class WorkerCrashed(Exception):
    """Stands for the worker process dying right after a vendor call (not an HTTP error)."""


@dataclass
class Rule:
    """Fail matching requests ``times`` times: ``lose`` (forward, then a read timeout: the vendor
    acted, the answer is lost), ``timeout`` (a read timeout without forwarding: the vendor never
    saw it, the client cannot tell), ``down`` (a 503 without forwarding: the POS is unreachable),
    ``crash`` (forward, then :class:`WorkerCrashed`), ``hold`` (forward, await ``hook``, then
    answer), ``pass`` (forward and answer: only ``on_fire`` matters, e.g. to arm another rule).
    ``on_fire`` runs when the rule fires."""

    method: str
    path: str
    mode: str
    times: int = 1
    query: str = ""
    hook: Callable[[], Awaitable[None]] | None = None
    on_fire: Callable[[], None] | None = None


@dataclass(frozen=True)
class Reached:
    """A request that reached the vendor, and the status the vendor answered it with (whether
    or not the answer then got back to the gateway)."""

    method: str
    path: str
    query: str
    body: bytes
    status: int


class Wire(httpx.AsyncBaseTransport):
    """The sandbox behind ``httpx.ASGITransport``, with scripted failures (:class:`Rule`).

    ``chaos`` (optional) is asked for the mode of every request no rule matches (``None``: pass
    it on), e.g. a seeded fault plan. ``reached`` lists every request the vendor answered, in
    order: what the POS actually saw, lost answers included."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.rules: list[Rule] = []
        self.chaos: Callable[[httpx.Request], str | None] | None = None
        self.reached: list[Reached] = []

    def fail(self, method: str, path: str, mode: str, **options: Any) -> Rule:
        rule = Rule(method, path, mode, **options)
        self.rules.append(rule)
        return rule

    async def _forward(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        response = await self.inner.handle_async_request(request)
        self.reached.append(Reached(request.method, request.url.path, request.url.query.decode(), body,
                                    response.status_code))
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        rule = next((r for r in self.rules if r.times > 0 and r.method == request.method
                     and request.url.path.endswith(r.path) and r.query in request.url.query.decode()), None)
        hook = None
        if rule is not None:
            rule.times -= 1
            if rule.on_fire is not None:
                rule.on_fire()
            mode, hook = rule.mode, rule.hook
        else:
            mode = self.chaos(request) if self.chaos is not None else None
            if mode is None:
                return await self._forward(request)
        if mode == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        if mode == "down":
            return httpx.Response(503, json={"success": False, "message": "Service unavailable (the wire is down)"},
                                  request=request)
        response = await self._forward(request)
        await response.aread()
        if mode == "pass":
            return response
        if mode == "hold":
            assert hook is not None
            await hook()
            return response
        if mode == "crash":
            raise WorkerCrashed("the worker died after the call")
        raise httpx.ReadTimeout("the answer was lost", request=request)


class Mailbox(httpx.AsyncBaseTransport):
    """The vendor's webhook deliveries to the gateway: passed on at once, or, when ``hold`` says so
    for a delivery, kept in ``held`` (answered 200, so the vendor counts it delivered) for
    :meth:`World.release_webhooks` to deliver later, in any order and as often as it likes."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.hold: Callable[[httpx.Request], bool] | None = None
        self.held: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.hold is not None and self.hold(request):
            await request.aread()
            self.held.append(request)
            return httpx.Response(200, json={"held": True}, request=request)
        return await self.inner.handle_async_request(request)


async def _instant(seconds: float) -> None:
    await asyncio.sleep(0)


def wired(base: type, wire: Wire, suffix: str) -> type:
    """``base`` talking to the sandbox through ``wire`` (two quick client attempts), under a
    manifest name of its own (``<name>_<suffix>``), so a test module's dispatcher never runs
    jobs of another module's connections against its sandboxes."""
    return type(f"Wired{base.__name__}", (base,), {
        "manifest": {**base.manifest, "name": f"{base.manifest['name']}_{suffix}"},
        "client_overrides": {
            "transport": wire, "sleep": _instant, "rate_limit": None,
            "retry": RetryPolicy(attempts=2, max_total=5, backoff=0.001, backoff_max=0.001, jitter=0),
            "breaker": BreakerPolicy(threshold=1000),
        },
    })


class World:
    """One gateway (API + embedded dispatcher), one sandbox and one connection to it."""

    def __init__(self, kind: str, http: httpx.AsyncClient, services: Services, vendor: Any, wire: Wire,
                 mailbox: Mailbox | None = None, tenant_id: str = "") -> None:
        self.kind, self.http, self.services, self.vendor, self.wire = kind, http, services, vendor, wire
        #: the AI POS sandbox's webhook deliveries to the gateway (``None`` for Apex: no webhooks)
        self.mailbox = mailbox
        self.tenant_id = tenant_id
        self.db = services.db
        self.connection_id = ""
        #: the product and location the tests adjust: gateway records
        self.product: dict[str, Any] = {}
        self.location: dict[str, Any] = {}

    @property
    def base(self) -> str:
        return f"/v1/connections/{self.connection_id}"

    @property
    def level_id(self) -> str:
        """The remote id of the adjusted stock level."""
        return self.product["remote_id"] if self.kind == "aipos" else f"{self.product['remote_id']}:{self.location['remote_id']}"

    async def connect(self, cls: type, settings: dict[str, Any], credentials: dict[str, Any]) -> None:
        """Create the connection (connector ``cls``) to this world's sandbox, sync it in full and
        pick the adjusted product (AI POS ``prod_003``, Apex product 3) and location."""
        created = await self.http.post("/v1/connections", json={
            "connector": cls.manifest["name"], "name": f"{self.kind} shop", "credentials": credentials,
            "settings": settings})
        assert created.status_code == 201, created.text
        self.connection_id = created.json()["id"]
        await self.sync()
        products = {p["remote_id"]: p for p in (await self.http.get(f"{self.base}/products?limit=200")).json()["data"]}
        locations = {loc["remote_id"]: loc for loc in (await self.http.get(f"{self.base}/locations")).json()["data"]}
        self.product = products["prod_003" if self.kind == "aipos" else "3"]
        self.location = locations["store" if self.kind == "aipos" else "1"]

    # -- the vendor ------------------------------------------------------------------------------
    def stock(self) -> int:
        """On hand of the adjusted product at the POS."""
        if self.kind == "aipos":
            return self.vendor.state.aipos.products[self.product["remote_id"]].stock
        return self.vendor.state.apex.products[int(self.product["remote_id"])].stock[int(self.location["remote_id"]) - 1]

    def set_stock(self, quantity: int) -> None:
        """A change made at the POS itself (a count, a sale), not through the gateway."""
        if self.kind == "aipos":
            self.vendor.state.aipos.products[self.product["remote_id"]].stock = quantity
        else:
            self.vendor.state.apex.products[int(self.product["remote_id"])].stock[int(self.location["remote_id"]) - 1] = quantity

    def applications(self) -> int:
        """How many stock writes the POS carried out (AI POS adjustments; Apex absolute sets)."""
        if self.kind == "aipos":
            return len(self.vendor.state.aipos.adjustments)
        return self.vendor.state.apex.stock_updates

    async def faults(self, **knobs: Any) -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.vendor), base_url="http://vendor.test") as admin:
            answer = await (admin.post("/_sandbox/faults", json=knobs) if knobs else admin.delete("/_sandbox/faults"))
        assert answer.status_code == 200, answer.text

    async def pos(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """Call the sandbox's own API, as the POS's till would change data."""
        base, headers = (AIPOS_BASE, {"Authorization": "Bearer aipos_test_sandbox_key"}) if self.kind == "aipos" \
            else (APEX_BASE, {"X-API-Key": "apx_sandbox_key"})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.vendor), headers=headers) as http:
            return await http.request(method, base + path, json=json)

    # -- the gateway -----------------------------------------------------------------------------
    async def adjust(self, delta: str, key: str | None = None, **extra: Any) -> httpx.Response:
        body = {"product_id": self.product["id"], "location_id": self.location["id"], "delta": delta,
                "reason": "sale", "reference": "web-1001", **extra}
        return await self.http.post(f"{self.base}/inventory/adjustments", json=body,
                                    headers={"Idempotency-Key": key or uuid.uuid4().hex})

    async def adjust_applied(self, delta: str) -> dict[str, Any]:
        """Adjust by ``delta`` through the API, let the worker push it, and return it ``applied``."""
        answer = await self.adjust(delta)
        assert answer.status_code == 202, answer.text
        await self.drain()
        adjustment = await self.adjustment(answer.json()["id"])
        assert adjustment["status"] == "applied", adjustment
        return adjustment

    async def reconcile(self) -> dict[str, Any]:
        """``POST .../inventory/reconcile`` (202), then let the count run."""
        answer = await self.http.post(f"{self.base}/inventory/reconcile")
        assert answer.status_code == 202, answer.text
        await self.drain()
        return answer.json()

    async def runs(self) -> list[dict[str, Any]]:
        """The connection's sync history (reconcile counts included), newest first."""
        answer = await self.http.get(f"{self.base}/sync", params={"runs": 100})
        assert answer.status_code == 200, answer.text
        return answer.json()["runs"]

    async def adjustment(self, adjustment_id: str) -> dict[str, Any]:
        answer = await self.http.get(f"{self.base}/inventory/adjustments/{adjustment_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def drain(self) -> None:
        await self.services.dispatcher.drain()

    async def retry(self) -> None:
        """Make this connection's waiting push jobs due now, ring them and let them run."""
        async with self.db.transaction() as uow:
            ids = (await uow.conn.execute(select(t.adjustments.c.job_id).where(
                t.adjustments.c.connection_id == self.connection_id, t.adjustments.c.status == "pending"))).scalars().all()
            await uow.conn.execute(update(t.jobs).where(t.jobs.c.id.in_(ids), t.jobs.c.status == "queued")
                                   .values(run_after=jsonutil.utcnow()))
        for job_id in ids:
            await self.services.dispatcher.notify(job_id)
        await self.drain()

    async def job(self, adjustment_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            row = (await conn.execute(select(t.jobs).join(t.adjustments, t.adjustments.c.job_id == t.jobs.c.id)
                                      .where(t.adjustments.c.id == adjustment_id))).mappings().one()
        return dict(row)

    async def sync(self, mode: str = "full", entities: list[str] | None = None) -> None:
        answer = await self.http.post(f"{self.base}/sync", json={"mode": mode, **({"entities": entities} if entities else {})})
        assert answer.status_code == 202, answer.text
        await self.drain()

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
        """The cached stock level of the adjusted product."""
        async with self.db.read() as conn:
            found = await records.load_by_remote_id(conn, connection_id=self.connection_id, entity="inventory",
                                                    remote_id=self.level_id)
        assert found is not None
        return found

    async def journal(self, adjustment_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            return await journal.entries_of(conn, adjustment_id)

    async def subscribe(self) -> None:
        """Register the gateway's hook URL at the AI POS sandbox and store the signing secret."""
        endpoint = self.vendor.state.aipos.webhooks.register(f"http://gateway.test/hooks/{self.connection_id}")
        answer = await self.http.patch(self.base, json={"credentials": {
            "api_key": "aipos_test_sandbox_key", "webhook_secret": endpoint.secret}})
        assert answer.status_code == 200, answer.text

    async def deliver_webhooks(self) -> None:
        """Let the AI POS sandbox send what it queued, and the gateway apply it."""
        await self.vendor.state.aipos.drain()
        await self.drain()

    async def release_webhooks(self, rng: random.Random | None = None, *, twice: float = 0.0) -> int:
        """Deliver the webhooks the :class:`Mailbox` held to the gateway now: shuffled by ``rng``
        (when given), each sent a second time with probability ``twice`` (the same event id and
        body, later in the batch). Every delivery must be acknowledged 2xx. Returns how many
        were sent (duplicates included)."""
        assert self.mailbox is not None, "only the AI POS sandbox sends webhooks"
        batch, self.mailbox.held = self.mailbox.held, []
        if rng is not None:
            batch += [request for request in batch if rng.random() < twice]
            rng.shuffle(batch)
        for request in batch:
            copy = httpx.Request(request.method, request.url, headers=request.headers, content=request.content)
            answer = await self.mailbox.inner.handle_async_request(copy)
            await answer.aread()
            assert 200 <= answer.status_code < 300, (answer.status_code, answer.content)
        return len(batch)

    async def kick(self) -> int:
        """Make every queued job of this world's tenant due now (retries of pushes, webhooks, polls
        waiting out their backoff) and ring them, without waiting for them. Returns how many."""
        async with self.db.transaction() as uow:
            ids = (await uow.conn.execute(select(t.jobs.c.id).where(
                t.jobs.c.tenant_id == self.tenant_id, t.jobs.c.status == "queued"))).scalars().all()
            if ids:
                await uow.conn.execute(update(t.jobs).where(t.jobs.c.id.in_(ids), t.jobs.c.status == "queued")
                                       .values(run_after=jsonutil.utcnow()))
        for job_id in ids:
            await self.services.dispatcher.notify(job_id)
        return len(ids)

    async def pending_count(self) -> int:
        """How many of the connection's adjustments are ``pending``."""
        async with self.db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(t.adjustments).where(
                t.adjustments.c.connection_id == self.connection_id, t.adjustments.c.status == "pending"))).scalar_one()

    async def unfinished_jobs(self) -> int:
        """Jobs of this world's tenant still queued or running."""
        async with self.db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(t.jobs).where(
                t.jobs.c.tenant_id == self.tenant_id, t.jobs.c.status.in_(("queued", "running"))))).scalar_one()

    async def job_statuses(self) -> dict[tuple[str, str], int]:
        """How many jobs of this world's tenant there are per (kind, status)."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.jobs.c.kind, t.jobs.c.status, func.count()).where(
                t.jobs.c.tenant_id == self.tenant_id).group_by(t.jobs.c.kind, t.jobs.c.status))).all()
        return {(kind, status): count for kind, status, count in rows}

    async def inbox_statuses(self) -> dict[str, int]:
        """How many inbound webhook deliveries of the connection there are per status."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.webhook_inbox.c.status, func.count()).where(
                t.webhook_inbox.c.connection_id == self.connection_id).group_by(t.webhook_inbox.c.status))).all()
        return {status: count for status, count in rows}

    async def all_adjustments(self) -> list[dict[str, Any]]:
        """Every adjustment row of the connection (as stored), oldest first."""
        async with self.db.read() as conn:
            return [dict(row) for row in (await conn.execute(select(t.adjustments).where(
                t.adjustments.c.connection_id == self.connection_id).order_by(t.adjustments.c.created_at))).mappings()]

    async def all_events(self, after: int) -> list[dict[str, Any]]:
        """Every event of the connection after ``after``, page by page."""
        out: list[dict[str, Any]] = []
        while True:
            answer = await self.http.get("/v1/events", params={"after": after, "connection_id": self.connection_id,
                                                               "limit": 1000})
            assert answer.status_code == 200, answer.text
            page = answer.json()
            out += page["data"]
            if not page["data"]:
                return out
            after = page["next_after"]


@contextlib.asynccontextmanager
async def world(db: Any, tenant: tuple[str, str], kind: str, *, suffix: str, stock: int = 30, threshold: int = 10,
                **settings: Any) -> AsyncIterator[World]:
    """A gateway with its embedded dispatcher, a ``kind`` sandbox, a connection synced in full;
    the adjusted product starts with ``stock`` on hand (AI POS: and ``threshold``); ``settings``
    go to the connection (``safety_stock`` defaults to ``"0"``); ``suffix`` names the test
    connector (:func:`wired`)."""
    gateway_app: dict[str, Any] = {}

    async def to_gateway(scope: Any, receive: Any, send: Any) -> None:
        await gateway_app["app"](scope, receive, send)

    mailbox = None
    if kind == "aipos":
        mailbox = Mailbox(to_gateway)
        vendor = aipos_app(products=5, customers=1, sales=0, seed=11, rate_limit=None,
                           webhook_transport=mailbox, webhook_retry_schedule=[0.01, 0.01])
        product = vendor.state.aipos.products["prod_003"]
        product.stock, product.low_stock_threshold = stock, threshold
        base, credentials, connector = AIPOS_BASE, {"api_key": "aipos_test_sandbox_key"}, AIPOSConnector
    else:
        vendor = apex_app(products=5, customers=1, invoices=0, seed=11)
        vendor.state.apex.products[3].stock[0] = stock
        base, credentials, connector = APEX_BASE, {"api_key": "apx_sandbox_key"}, ApexConnector
    wire = Wire(vendor)
    cls = wired(connector, wire, suffix)
    config = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                      api_rate_limit="100000/minute", scheduler_interval_seconds=3600)
    services = Services.build(config, db=db, registry=ConnectorRegistry([cls], load_entry_points=False))
    gateway_app["app"] = app = create_app(config, services=services)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test",
        headers={"Authorization": f"Bearer {tenant[1]}"},
    ) as http:
        here = World(kind, http, services, vendor, wire, mailbox, tenant[0])
        await here.connect(cls, {"base_url": base, "safety_stock": "0", **settings}, credentials)
        yield here


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]
