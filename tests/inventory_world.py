"""The inventory test world shared by the adjustment-push and reconciliation tests: one gateway
(API + embedded dispatcher, through ``httpx.ASGITransport``) in front of an AI POS or Apex sandbox
in process, reached through a :class:`Wire` that can script lost answers, timeouts and crashes,
and a :class:`World` of helpers to drive and inspect it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
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
    saw it, the client cannot tell), ``crash`` (forward, then :class:`WorkerCrashed`), ``hold``
    (forward, await ``hook``, then answer), ``pass`` (forward and answer: only ``on_fire``
    matters, e.g. to arm another rule). ``on_fire`` runs when the rule fires."""

    method: str
    path: str
    mode: str
    times: int = 1
    query: str = ""
    hook: Callable[[], Awaitable[None]] | None = None
    on_fire: Callable[[], None] | None = None


class Wire(httpx.AsyncBaseTransport):
    """The sandbox behind ``httpx.ASGITransport``, with scripted failures (:class:`Rule`)."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.rules: list[Rule] = []

    def fail(self, method: str, path: str, mode: str, **options: Any) -> Rule:
        rule = Rule(method, path, mode, **options)
        self.rules.append(rule)
        return rule

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        rule = next((r for r in self.rules if r.times > 0 and r.method == request.method
                     and request.url.path.endswith(r.path) and r.query in request.url.query.decode()), None)
        if rule is None:
            return await self.inner.handle_async_request(request)
        rule.times -= 1
        if rule.on_fire is not None:
            rule.on_fire()
        if rule.mode == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if rule.mode == "pass":
            return response
        if rule.mode == "hold":
            assert rule.hook is not None
            await rule.hook()
            return response
        if rule.mode == "crash":
            raise WorkerCrashed("the worker died after the call")
        raise httpx.ReadTimeout("the answer was lost", request=request)


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

    def __init__(self, kind: str, http: httpx.AsyncClient, services: Services, vendor: Any, wire: Wire) -> None:
        self.kind, self.http, self.services, self.vendor, self.wire = kind, http, services, vendor, wire
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

    if kind == "aipos":
        vendor = aipos_app(products=5, customers=1, sales=0, seed=11, rate_limit=None,
                           webhook_transport=httpx.ASGITransport(app=to_gateway), webhook_retry_schedule=[0.01, 0.01])
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
        here = World(kind, http, services, vendor, wire)
        created = await http.post("/v1/connections", json={
            "connector": cls.manifest["name"], "name": f"{kind} shop", "credentials": credentials,
            "settings": {"base_url": base, "safety_stock": "0", **settings}})
        assert created.status_code == 201, created.text
        here.connection_id = created.json()["id"]
        await here.sync()
        products = {p["remote_id"]: p for p in (await http.get(f"{here.base}/products?limit=200")).json()["data"]}
        locations = {loc["remote_id"]: loc for loc in (await http.get(f"{here.base}/locations")).json()["data"]}
        here.product = products["prod_003" if kind == "aipos" else "3"]
        here.location = locations["store" if kind == "aipos" else "1"]
        yield here


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]
