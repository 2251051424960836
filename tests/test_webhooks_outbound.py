"""Outbound webhooks: ``/v1/webhook-endpoints``, fan-out in the event's transaction, the delivery
worker (Standard Webhooks signatures, retry schedule, Retry-After, 410, no redirects, timeout,
SSRF guard, per-endpoint order) against a real HTTP receiver on loopback.

Every delivery a receiver gets is verified with the ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import jsonutil

FAST = [0.05, 0.1, 0.15]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Receiver:
    """A consumer's webhook receiver on a real loopback port. ``behave(n, request)`` decides the
    answer to the n-th request (0-based): a status code, ``(status, headers)``, or a coroutine
    result; default 200. ``received`` holds every request, verified or not."""

    port: int = field(default_factory=free_port)
    received: list[dict[str, Any]] = field(default_factory=list)
    behave: Callable[[int, dict[str, Any]], Any] | None = None
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            entry = {"headers": dict(request.headers), "body": await request.body(), "at": time.monotonic(),
                     "path": request.url.path}
            n = len(self.received)
            self.received.append(entry)
            if self.delay:
                await asyncio.sleep(self.delay)
            answer = self.behave(n, entry) if self.behave else 200
            if asyncio.iscoroutine(answer):
                answer = await answer
            status, headers = answer if isinstance(answer, tuple) else (answer, {})
            return JSONResponse({"ok": status < 300}, status_code=status, headers=headers)

        async def elsewhere(request: Request) -> Response:
            self.received.append({"headers": dict(request.headers), "body": await request.body(),
                                  "at": time.monotonic(), "path": request.url.path})
            return Response(status_code=200)

        return Starlette(routes=[Route("/hooks", hook, methods=["POST"]), Route("/elsewhere", elsewhere, methods=["POST"])])

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """The events received at ``/hooks``, each verified with ``standardwebhooks``."""
        verifier = Webhook(secret)
        out = []
        for entry in self.received:
            if entry["path"] != "/hooks":
                continue
            payload = verifier.verify(entry["body"], entry["headers"])
            assert payload["id"] == entry["headers"]["webhook-id"]
            out.append(payload)
        return out


@contextlib.asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    server = uvicorn.Server(uvicorn.Config(receiver.app(), host="127.0.0.1", port=receiver.port, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def gateway(db, tenant, **overrides) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app in embedded mode (dispatcher and delivery worker running) with fast webhook settings."""
    from gateway.api.app import create_app
    from gateway.api.deps import Services
    from gateway.settings import Settings

    options = {"webhook_allow_private": True, "webhook_retry_schedule": FAST, "webhook_poll_seconds": 0.05,
               "webhook_timeout_seconds": 2.0, "api_rate_limit": "100000/minute", **overrides}
    settings = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()], **options)
    services = Services.build(settings, db=db)
    app = create_app(settings, services=services)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://tillgate.test",
            headers={"Authorization": f"Bearer {tenant[1]}"},
        ) as http:
            yield services, http
    finally:  # the database is shared by the tests: leave no endpoint for the next test's worker
        rows, _ = await services.webhooks.list(tenant[0], limit=200, cursor=None)
        for endpoint in rows:
            await services.webhooks.delete(tenant[0], endpoint["id"])


def ok(response: httpx.Response, status: int = 201) -> dict:
    assert response.status_code == status, response.text
    return response.json()


async def shop(http: httpx.AsyncClient) -> str:
    return ok(await http.post("/v1/connections", json={"connector": "local", "name": f"Shop {uuid.uuid4().hex[:6]}"}))["id"]


async def products(http: httpx.AsyncClient, connection_id: str, n: int, prefix: str = "P") -> list[dict]:
    return [ok(await http.post(f"/v1/connections/{connection_id}/products",
                               json={"name": f"{prefix} {i}", "sku": f"{prefix}-{uuid.uuid4().hex[:8]}", "price": "1.50"}))
            for i in range(n)]


async def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


async def all_events(http: httpx.AsyncClient, types: str | None = None, after: int = 0) -> list[dict]:
    out = []
    while True:
        params: dict[str, Any] = {"after": after, "limit": 1000}
        if types:
            params["type"] = types
        page = ok(await http.get("/v1/events", params=params), 200)
        if not page["data"]:
            return out
        out += page["data"]
        after = page["next_after"]


async def deliveries(http: httpx.AsyncClient, endpoint_id: str, **params: Any) -> list[dict]:
    out, cursor = [], None
    while True:
        page = ok(await http.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries",
                                 params={"limit": 200, **params, **({"cursor": cursor} if cursor else {})}), 200)
        out += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


# -- the endpoints API -------------------------------------------------------------------------
async def test_endpoint_lifecycle_secret_shown_once_and_validation(db, tenant):
    async with gateway(db, tenant, webhook_allow_private=False) as (_, http):
        con = await shop(http)
        created = ok(await http.post("/v1/webhook-endpoints", json={
            "url": "https://hooks.example.com/tillgate", "events": ["order.*", "inventory.updated", "order.*"],
            "connection_ids": [con], "description": "orders to the ERP"}))
        assert created["secret"].startswith("whsec_") and len(base64.b64decode(created["secret"][6:])) == 24
        assert created["events"] == ["order.*", "inventory.updated"] and created["connection_ids"] == [con]
        assert created["status"] == "enabled" and created["disabled_reason"] is None
        endpoint_id = created["id"]
        assert endpoint_id.startswith("whe_")
        shown = ok(await http.get(f"/v1/webhook-endpoints/{endpoint_id}"), 200)
        assert "secret" not in shown and shown["url"] == "https://hooks.example.com/tillgate"
        listed = ok(await http.get("/v1/webhook-endpoints"), 200)
        assert [e["id"] for e in listed["data"]] == [endpoint_id] and "secret" not in listed["data"][0]

        disabled = ok(await http.patch(f"/v1/webhook-endpoints/{endpoint_id}", json={"status": "disabled"}), 200)
        assert (disabled["status"], disabled["disabled_reason"]) == ("disabled", "manual")
        widened = ok(await http.patch(f"/v1/webhook-endpoints/{endpoint_id}",
                                      json={"status": "enabled", "connection_ids": None, "events": ["*"]}), 200)
        assert (widened["status"], widened["disabled_reason"], widened["connection_ids"], widened["events"]) == (
            "enabled", None, None, ["*"])

        async def refused(body: dict, code: str, loc: list | None = None, method: str = "post", path: str = "") -> None:
            response = await getattr(http, method)(f"/v1/webhook-endpoints{path}", json=body)
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == code, response.text
            if loc is not None:
                assert response.json()["errors"][0]["loc"] == loc

        for url, reason in [("http://127.0.0.1:9000/x", "private_address"), ("http://localhost/x", "private_address"),
                            ("http://169.254.169.254/latest/meta-data", "private_address"),
                            ("http://[::1]/x", "private_address"), ("http://10.1.2.3/x", "private_address"),
                            ("http://[::ffff:192.168.0.1]/x", "private_address"),
                            ("http://metadata.google.internal/x", "private_address"),
                            ("http://100.64.0.1/x", "private_address"), ("ftp://example.com/x", "unsupported_scheme"),
                            ("https://user:pw@example.com/x", "credentials_in_url"), ("https:///nohost", "invalid_url")]:
            response = await http.post("/v1/webhook-endpoints", json={"url": url, "events": ["*"]})
            assert response.status_code == 422 and response.json()["code"] == "webhook_url_refused", (url, response.text)
            assert response.json()["reason"] == reason, url
        await refused({"url": "https://example.com", "events": ["order.shipped"]}, "validation_error", ["body", "events"])
        await refused({"url": "https://example.com", "events": ["orders.*"]}, "validation_error", ["body", "events"])
        await refused({"url": "https://example.com", "events": []}, "validation_error", ["body", "events"])
        await refused({"url": "https://example.com", "events": ["*"], "connection_ids": ["con_nope"]},
                      "unknown_connection", ["body", "connection_ids", 0])
        await refused({"url": "https://example.com", "events": ["*"], "secret": "mine"}, "validation_error")
        await refused({"url": None}, "validation_error", method="patch", path=f"/{endpoint_id}")
        await refused({"url": "http://127.0.0.1/"}, "webhook_url_refused", method="patch", path=f"/{endpoint_id}")
        assert (await http.get("/v1/webhook-endpoints/whe_nope")).status_code == 404
        bad_status = await http.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", params={"status": "lost"})
        assert bad_status.status_code == 400 and bad_status.json()["code"] == "invalid_parameter"

        deleted = ok(await http.delete(f"/v1/webhook-endpoints/{endpoint_id}"), 200)
        assert deleted["deleted"] is True
        gone = await http.get(f"/v1/webhook-endpoints/{endpoint_id}")
        assert gone.status_code == 404 and gone.json()["code"] == "not_found"
        assert ok(await http.get("/v1/webhook-endpoints"), 200)["data"] == []


# -- fan-out and signatures --------------------------------------------------------------------
async def test_matching_events_are_delivered_signed_with_the_event_as_body(db, tenant):
    async with serving(Receiver()) as receiver, gateway(db, tenant) as (services, http):
        con, other = await shop(http), await shop(http)
        before = (await all_events(http))[-1]["seq"]  # creating local connections made events already
        everything = ok(await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["*"]}))
        only_con = ok(await http.post("/v1/webhook-endpoints", json={
            "url": receiver.url.replace("/hooks", "/elsewhere"), "events": ["product.created"], "connection_ids": [con]}))
        off = ok(await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["*"]}))
        ok(await http.patch(f"/v1/webhook-endpoints/{off['id']}", json={"status": "disabled"}), 200)
        await products(http, con, 3)
        await products(http, other, 2)
        events = await all_events(http, after=before)
        await wait_until(lambda: len([r for r in receiver.received if r["path"] == "/hooks"]) >= len(events),
                         what="every event at the receiver")
        await services.deliveries.drain()
        got = receiver.verified(everything["secret"])
        assert got == events  # the exact objects of GET /v1/events, in seq order, signed
        for entry in receiver.received:
            assert entry["headers"]["content-type"] == "application/json"
            assert entry["headers"]["user-agent"].startswith("Tillgate-Webhooks/")
            assert abs(int(entry["headers"]["webhook-timestamp"]) - time.time()) < 30
        # the connection-filtered endpoint got product.created of `con` only (its own secret)
        elsewhere = [jsonutil.loads(e["body"]) for e in receiver.received if e["path"] == "/elsewhere"]
        assert [e["id"] for e in elsewhere] == [e["id"] for e in events if e["type"] == "product.created"
                                                and e["connection_id"] == con]
        for entry in (e for e in receiver.received if e["path"] == "/elsewhere"):
            Webhook(only_con["secret"]).verify(entry["body"], entry["headers"])
            with pytest.raises(WebhookVerificationError):
                Webhook(everything["secret"]).verify(entry["body"], entry["headers"])
        assert await deliveries(http, off["id"]) == []  # disabled: no deliveries made for it
        log = await deliveries(http, everything["id"])
        assert sorted(d["seq"] for d in log) == [e["seq"] for e in events]
        assert {(d["status"], d["attempts"], d["last_status_code"]) for d in log} == {("delivered", 1, 200)}
        one = ok(await http.get(f"/v1/webhook-endpoints/{everything['id']}/deliveries/{log[0]['id']}"), 200)
        assert [(a["attempt"], a["status_code"], a["error"]) for a in one["attempt_log"]] == [(1, 200, None)]
        assert one["attempt_log"][0]["response_body"] == '{"ok":true}'

        # tampered bodies and stale or future timestamps do not verify
        entry = next(e for e in receiver.received if e["path"] == "/hooks")
        verifier = Webhook(everything["secret"])
        with pytest.raises(WebhookVerificationError):
            verifier.verify(entry["body"].replace(b'"seq":', b'"seq": '), entry["headers"])
        from gateway.services.deliveries import signed_headers

        for skew in (-600, 600):
            stale = signed_headers(everything["secret"], "evt_x", entry["body"], timestamp=time.time() + skew)
            with pytest.raises(WebhookVerificationError):
                verifier.verify(entry["body"], stale)
        fresh = signed_headers(everything["secret"], "evt_x", entry["body"])
        assert verifier.verify(entry["body"], fresh)["id"] == jsonutil.loads(entry["body"])["id"]


async def test_an_event_and_its_deliveries_commit_together(db, tenant):
    """A transaction that rolls back leaves neither the event nor its delivery."""
    from sqlalchemy import func, select

    from gateway.storage import tables as t

    async with gateway(db, tenant) as (services, http):
        ok(await http.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/x", "events": ["*"]}))
        await services.stop_dispatcher()  # nothing sends; the rows stay as written

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with db.transaction(tenant[0]) as uow:
                uow.emit("product.updated", None, {"id": "prod_x"}, ["name"])
                await uow.flush_events()
                raise Boom
        async with db.transaction(tenant[0]) as uow:
            uow.emit("product.updated", None, {"id": "prod_y"}, ["name"])
        async with db.read() as conn:
            events = (await conn.execute(select(t.events.c.id).where(t.events.c.tenant_id == tenant[0]))).all()
            count = (await conn.execute(select(func.count()).select_from(t.webhook_deliveries)
                                        .where(t.webhook_deliveries.c.tenant_id == tenant[0]))).scalar()
        assert len(events) == 1 and count == 1


# -- the retry rules ---------------------------------------------------------------------------
async def test_failures_follow_the_schedule_then_the_queue_moves_on_and_manual_retry_resends(db, tenant):
    schedule = [0.3, 0.6]
    failing = {"on": True}

    def behave(n: int, entry: dict) -> int:
        return 500 if failing["on"] else 200

    async with serving(Receiver(behave=behave)) as receiver, gateway(db, tenant, webhook_retry_schedule=schedule) as (
            services, http):
        con = await shop(http)
        endpoint = ok(await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["product.created"]}))
        first = (await products(http, con, 1))[0]
        await wait_until(lambda: len(receiver.received) >= 3, what="three attempts")
        await services.deliveries.drain()
        times = [r["at"] for r in receiver.received]
        assert len(receiver.received) == 3  # 1 + len(schedule), then failed
        assert times[1] - times[0] >= schedule[0] * 0.95 and times[2] - times[1] >= schedule[1] * 0.95
        (failed,) = await deliveries(http, endpoint["id"])
        assert (failed["status"], failed["attempts"], failed["last_status_code"]) == ("failed", 3, 500)
        assert failed["last_error"] == "HTTP 500" and failed["next_attempt_at"] is None
        detail = ok(await http.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{failed['id']}"), 200)
        assert [a["status_code"] for a in detail["attempt_log"]] == [500, 500, 500]

        failing["on"] = False  # the receiver is fixed; the next event is not held behind the failed one
        await products(http, con, 1)
        await wait_until(lambda: len(receiver.received) >= 4, what="the next event")
        retried = ok(await http.post(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{failed['id']}/retry"), 202)
        assert retried["status"] == "pending"
        await wait_until(lambda: len(receiver.received) >= 5, what="the manual retry")
        await services.deliveries.drain()
        got = receiver.verified(endpoint["secret"])
        assert got[-1]["data"]["id"] == first["id"]  # the resent one, same webhook-id as before
        assert receiver.received[-1]["headers"]["webhook-id"] == receiver.received[0]["headers"]["webhook-id"]
        assert {d["status"] for d in await deliveries(http, endpoint["id"])} == {"delivered"}
        missing = await http.post(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/dlv_nope/retry")
        assert missing.status_code == 404


async def test_retry_after_on_429_and_503_replaces_the_schedule_step(db, tenant):
    answers = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"}), 200]

    async with serving(Receiver(behave=lambda n, e: answers[min(n, 2)])) as receiver, gateway(
            db, tenant, webhook_retry_schedule=[0.01, 0.01, 0.01]) as (services, http):
        con = await shop(http)
        endpoint = ok(await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["product.created"]}))
        await products(http, con, 1)
        await wait_until(lambda: len(receiver.received) >= 3, what="three attempts")
        times = [r["at"] for r in receiver.received]
        assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95
        await services.deliveries.drain()
        (delivery,) = await deliveries(http, endpoint["id"])
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 3)


async def test_410_disables_the_endpoint_and_enabling_resumes_in_order(db, tenant):
    gone = {"on": True}
    created = asyncio.Event()  # the first answer waits until all three events exist

    async def behave(n: int, entry: dict) -> int:
        await created.wait()
        return 410 if gone["on"] else 200

    async with serving(Receiver(behave=behave)) as receiver, gateway(db, tenant) as (services, http):
        con = await shop(http)
        endpoint = ok(await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["product.*"]}))
        await products(http, con, 3)
        created.set()
        await wait_until(lambda: len(receiver.received) >= 1, what="the first attempt")
        await services.deliveries.drain()
        await asyncio.sleep(0.3)
        assert len(receiver.received) == 1  # nothing more after the 410
        state = ok(await http.get(f"/v1/webhook-endpoints/{endpoint['id']}"), 200)
        assert (state["status"], state["disabled_reason"]) == ("disabled", "gone")
        await products(http, con, 1)  # a disabled endpoint gets no new deliveries
        assert len(await deliveries(http, endpoint["id"])) == 3
        assert {d["status"] for d in await deliveries(http, endpoint["id"])} == {"pending"}

        gone["on"] = False
        ok(await http.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"status": "enabled"}), 200)
        await wait_until(lambda: len(receiver.received) >= 4, what="the held deliveries")
        await services.deliveries.drain()
        got = receiver.verified(endpoint["secret"])
        assert [e["seq"] for e in got[1:]] == sorted(e["seq"] for e in got[1:])
        assert got[0]["id"] == got[1]["id"]  # the 410'd one was sent again first
        assert {d["status"] for d in await deliveries(http, endpoint["id"])} == {"delivered"}


async def test_redirects_are_not_followed_and_slow_receivers_time_out(db, tenant):
    def behave(n: int, entry: dict) -> Any:
        if n == 0:
            return 302, {"Location": "/elsewhere"}
        if n == 1:
            return asyncio.sleep(3, result=200)
        return 200

    async with serving(Receiver(behave=behave)) as receiver, gateway(
            db, tenant, webhook_timeout_seconds=0.5, webhook_retry_schedule=[0.05, 0.05]) as (services, http):
        con = await shop(http)
        endpoint = ok(await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["product.created"]}))
        await products(http, con, 1)
        await wait_until(lambda: len([r for r in receiver.received if r["path"] == "/hooks"]) >= 3, what="three attempts")
        await services.deliveries.drain()
        assert [r["path"] for r in receiver.received] == ["/hooks", "/hooks", "/hooks"]  # /elsewhere never called
        (delivery,) = await deliveries(http, endpoint["id"])
        detail = ok(await http.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{delivery['id']}"), 200)
        log = detail["attempt_log"]
        assert log[0]["status_code"] == 302 and "not followed" in log[0]["error"]
        assert log[1]["status_code"] is None and log[1]["error"].startswith("timed out") and log[1]["duration_ms"] < 2000
        assert log[2]["status_code"] == 200 and detail["status"] == "delivered"


# -- order, isolation, recovery ---------------------------------------------------------------
async def test_a_slow_endpoint_does_not_hold_back_others_and_each_keeps_seq_order(db, tenant):
    slow, fast = Receiver(delay=0.5), Receiver()
    async with serving(slow), serving(fast), gateway(db, tenant) as (services, http):
        con = await shop(http)
        slow_ep = ok(await http.post("/v1/webhook-endpoints", json={"url": slow.url, "events": ["product.created"]}))
        fast_ep = ok(await http.post("/v1/webhook-endpoints", json={"url": fast.url, "events": ["product.created"]}))
        started = time.monotonic()
        await products(http, con, 10)
        await wait_until(lambda: len(fast.received) >= 10, timeout=4, what="the fast endpoint's deliveries")
        assert time.monotonic() - started < 4 and len(slow.received) < 10  # the slow one is still going
        await wait_until(lambda: len(slow.received) >= 10, timeout=15, what="the slow endpoint's deliveries")
        await services.deliveries.drain()
        for receiver, endpoint in ((slow, slow_ep), (fast, fast_ep)):
            seqs = [e["seq"] for e in receiver.verified(endpoint["secret"])]
            assert seqs == sorted(seqs) and len(set(seqs)) == 10


async def test_a_receiver_down_then_flaky_gets_every_event_once_by_id_in_order(db, tenant):
    """Down (connection refused) for a while, then answering 500 at random, then healthy: every
    event arrives, first arrivals in seq order, and /v1/events has no gaps."""
    import random

    rng = random.Random(5)
    receiver = Receiver(behave=lambda n, e: 500 if n < 40 and rng.random() < 0.5 else 200)
    async with gateway(db, tenant, webhook_retry_schedule=[0.05] * 30) as (services, http):
        con = await shop(http)
        endpoint = ok(await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["*"]}))
        before = (await all_events(http))[-1]["seq"]
        await products(http, con, 15)
        await asyncio.sleep(0.5)  # attempts fail: nothing listens on the port
        pending = await deliveries(http, endpoint["id"], status="pending")
        assert pending and max(d["attempts"] for d in pending) >= 1
        async with serving(receiver):
            await products(http, con, 15)
            events = await all_events(http, after=before)
            assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
            await wait_until(lambda: {r["headers"]["webhook-id"] for r in receiver.received} >= {e["id"] for e in events},
                             timeout=30, what="every event at the receiver")
            await services.deliveries.drain()
        got = receiver.verified(endpoint["secret"])
        first_seen: list[str] = []
        for event in got:
            if event["id"] not in first_seen:
                first_seen.append(event["id"])
        assert first_seen == [e["id"] for e in events]
        assert {d["status"] for d in await deliveries(http, endpoint["id"])} == {"delivered"}


async def test_replay_from_a_seq_sends_matching_events_again_with_their_ids(db, tenant):
    async with serving(Receiver()) as receiver, gateway(db, tenant) as (services, http):
        con = await shop(http)
        endpoint = ok(await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["product.created"]}))
        await products(http, con, 4)
        await wait_until(lambda: len(receiver.received) >= 4, what="four deliveries")
        await services.deliveries.drain()
        created = [e for e in await all_events(http) if e["type"] == "product.created"]
        replay = ok(await http.post(f"/v1/webhook-endpoints/{endpoint['id']}/replay",
                                    json={"from_seq": created[2]["seq"]}), 202)
        assert replay["queued"] == 2 and replay["next_seq"] is None
        await wait_until(lambda: len(receiver.received) >= 6, what="the replayed deliveries")
        await services.deliveries.drain()
        ids = [e["id"] for e in receiver.verified(endpoint["secret"])]
        assert ids == [e["id"] for e in created] + [e["id"] for e in created[2:]]
        empty = ok(await http.post(f"/v1/webhook-endpoints/{endpoint['id']}/replay",
                                   json={"from_seq": 1, "to_seq": created[0]["seq"] - 1}), 202)
        assert empty["queued"] == 0
        bad = await http.post(f"/v1/webhook-endpoints/{endpoint['id']}/replay", json={"from_seq": 5, "to_seq": 2})
        assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "to_seq"]
        bad = await http.post(f"/v1/webhook-endpoints/{endpoint['id']}/replay", json={"from_seq": 0})
        assert bad.status_code == 422


# -- the SSRF guard at delivery time -----------------------------------------------------------
async def test_the_guard_refuses_private_targets_at_delivery_time(db, tenant):
    """An endpoint whose name resolves to a private address (DNS changed after it was saved) is
    never called; the attempt is recorded as refused."""
    from sqlalchemy import update

    from gateway.storage import tables as t

    async with serving(Receiver()) as receiver, gateway(db, tenant, webhook_allow_private=False,
                                                        webhook_retry_schedule=[0.05]) as (_, http):
        con = await shop(http)
        endpoint = ok(await http.post("/v1/webhook-endpoints", json={"url": "https://hooks.example.com/x",
                                                                      "events": ["product.created"]}))
        async with db.transaction() as uow:  # as if DNS for the saved name now pointed here
            await uow.conn.execute(update(t.webhook_endpoints).where(t.webhook_endpoints.c.id == endpoint["id"])
                                   .values(url=receiver.url))
        await products(http, con, 1)
        await wait_until(lambda: _failed(http, endpoint["id"]), what="the refused delivery to fail")
        assert receiver.received == []
        (delivery,) = await deliveries(http, endpoint["id"])
        assert delivery["last_error"].startswith("refused:") and "not a public address" in delivery["last_error"]


async def _failed(http: httpx.AsyncClient, endpoint_id: str) -> bool:
    return [d["status"] for d in await deliveries(http, endpoint_id)] == ["failed"]


async def test_resolver_checks_every_address_and_pins_the_checked_one(monkeypatch):
    from gateway.netguard import Resolver, UrlRefused, check_url

    answers = {"rebind.example": ["93.184.216.34", "10.0.0.5"], "public.example": ["93.184.216.34"],
               "meta.example": ["169.254.169.254"], "v6.example": ["2606:2800:220:1:248:1893:25c8:1946"]}

    async def fake_getaddrinfo(host, port, **kw):
        if host not in answers:
            raise socket.gaierror("Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    guard = Resolver(allow_private=False)
    assert await guard.resolve("public.example", 443) == "93.184.216.34"
    assert await guard.resolve("v6.example", 443) == "2606:2800:220:1:248:1893:25c8:1946"
    for host, reason in (("rebind.example", "private_address"), ("meta.example", "private_address"),
                         ("nowhere.example", "unresolvable_host"), ("127.0.0.1", "private_address")):
        with pytest.raises(UrlRefused) as refused:
            await guard.resolve(host, 443)
        assert refused.value.reason == reason
    assert await Resolver(allow_private=True).resolve("rebind.example", 443) == "93.184.216.34"
    assert check_url("http://127.0.0.1:8080/x", allow_private=True) == "http://127.0.0.1:8080/x"

    from gateway.services.deliveries import DeliverySender

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with DeliverySender(allow_private=False, transport=httpx.MockTransport(handler)) as sender:
        result = await sender.send("https://public.example:8443/in?x=1", {"webhook-id": "evt_1"}, b"{}")
        refused = await sender.send("https://rebind.example/in", {"webhook-id": "evt_1"}, b"{}")
    assert result.delivered and result.status_code == 204
    assert str(seen[0].url) == "https://93.184.216.34:8443/in?x=1" and seen[0].headers["host"] == "public.example:8443"
    assert seen[0].extensions["sni_hostname"] == "public.example"
    assert not refused.delivered and refused.error.startswith("refused:") and len(seen) == 1
