"""DESIGN.md's fault tests with real processes and the real Redis: a worker killed mid-sync.

A `tillgate worker` process is killed (SIGKILL) halfway through a sync of an Apex sandbox; a
fresh worker takes the job over once its lease lapses and finishes it from the checkpoint:
every product arrives once, every `product.created` event is emitted once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from gateway.api.deps import Services
from gateway.model import ConnectionCreate
from gateway.services.tenants import create_tenant
from gateway.settings import Settings
from gateway.storage import tables as t
from gateway.storage.migrate import upgrade
from gateway.workers import jobs
from gateway.workers.tasks import sync_dedupe_key

BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("TILLGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PRODUCTS = 1500
KEY = "apx_sandbox_key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def sandbox_process(tmp_path: Path, vendor: str, products: int, seed: int, health: str, headers: dict[str, str]):
    """`tillgate sandbox VENDOR` on a free port with ``products`` synthetic products, once its
    ``health`` URL (relative to the server root) answers 200; yields the server root URL."""
    port = free_port()
    log = (tmp_path / f"{vendor}-sandbox.log").open("w")
    process = subprocess.Popen([str(BIN / "tillgate"), "sandbox", vendor, "--port", str(port),
                                "--products", str(products), "--seed", str(seed)], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(base + health, headers=headers, timeout=1), f"the {vendor} sandbox")
        yield base
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def wait_for(probe, what: str, tries: int = 150, log: Path | None = None) -> None:
    """Call ``probe`` (an HTTP GET) until it answers 200."""
    for _ in range(tries):
        try:
            if probe().status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} did not start" + (f":\n{log.read_text()[-3000:]}" if log else ""), pytrace=False)


@pytest.fixture
def slow_sandbox(tmp_path):
    """An Apex sandbox process with PRODUCTS products, each request delayed 120 ms."""
    with sandbox_process(tmp_path, "apex", PRODUCTS, 3, "/rest_api/v1/health", {"X-API-Key": KEY}) as base:
        httpx.post(f"{base}/_sandbox/faults", json={"latency_ms": 120}).raise_for_status()
        yield f"{base}/rest_api/v1"


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([str(BIN / "tillgate"), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)


async def scale_out(tmp_path: Path, name: str, *, lease_seconds: int) -> tuple[dict[str, str], Settings]:
    """A migrated SQLite file, a private arq queue on the real Redis, and the environment a
    `tillgate worker` process needs to use them (failing clearly when Redis is not there)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        await redis.ping()
    except OSError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); these tests do not skip.", pytrace=False)
    finally:
        await redis.aclose()
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    upgrade(url)
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
    queue = f"tillgate:{name}:{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TILLGATE_DATABASE_URL": url, "TILLGATE_SECRET_KEYS": secret, "TILLGATE_REDIS_URL": REDIS_URL,
           "TILLGATE_QUEUE_NAME": queue, "TILLGATE_JOB_LEASE_SECONDS": str(lease_seconds)}
    return env, Settings(database_url=url, secret_keys=[secret], redis_url=REDIS_URL, queue_name=queue)


async def test_a_worker_killed_mid_sync_loses_and_duplicates_nothing(tmp_path, slow_sandbox):
    env, settings = await scale_out(tmp_path, "faults", lease_seconds=2)
    services = Services.build(settings)
    worker_log = tmp_path / "worker.log"
    workers: list[subprocess.Popen] = []
    try:
        tenant_id, _ = await create_tenant(services.db, "faults")
        connection = await services.connections.create(tenant_id, ConnectionCreate(
            connector="apex", name="flaky", credentials={"api_key": KEY}, settings={"base_url": slow_sandbox}))
        cid = connection["id"]
        await services.start_dispatcher()
        job_id, _ = await services.dispatcher.submit(
            "sync", {"connection_id": cid, "entities": ["products"], "mode": "full"},
            tenant_id=tenant_id, dedupe_key=sync_dedupe_key(cid))

        async def count(table, **where) -> int:
            query = select(func.count()).select_from(table)
            for name, value in where.items():
                query = query.where(table.c[name] == value)
            async with services.db.read() as conn:
                return (await conn.execute(query)).scalar_one()

        async def pages() -> int:
            async with services.db.read() as conn:
                return (await conn.execute(select(func.coalesce(func.max(t.sync_runs.c.pages), 0))
                                           .where(t.sync_runs.c.connection_id == cid))).scalar_one()

        workers.append(start_worker(env, worker_log))
        for _ in range(400):
            if await pages() >= 4:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the first worker never got going:\n{worker_log.read_text()[-2000:]}", pytrace=False)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        cached_at_kill = await count(t.records, connection_id=cid, entity="products")
        assert 0 < cached_at_kill < PRODUCTS and (await jobs.get(services.db, job_id))["status"] == "running"

        workers.append(start_worker(env, worker_log))  # its start-up sweep finds the job once the lease lapses
        for _ in range(1200):
            if (await jobs.get(services.db, job_id))["status"] == "done":
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the fresh worker did not finish the job:\n{worker_log.read_text()[-3000:]}", pytrace=False)
        assert await count(t.records, connection_id=cid, entity="products") == PRODUCTS
        assert await count(t.events, connection_id=cid, type="product.created") == PRODUCTS
        runs = await count(t.sync_runs, connection_id=cid)
        assert runs == 1 and await count(t.sync_runs, connection_id=cid, status="succeeded") == 1
        assert (await jobs.get(services.db, job_id))["attempts"] == 2
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(15)
        await services.stop_dispatcher()
        await services.db.dispose()


async def test_redis_flushed_mid_run_loses_nothing(tmp_path, slow_sandbox):
    """FLUSHDB while one sync runs and another waits in the Redis queue: the running one finishes,
    the lost one is re-rung by the sweeper from the jobs table, and both complete once."""
    from redis.asyncio import Redis

    env, settings = await scale_out(tmp_path, "flush", lease_seconds=5)
    services = Services.build(settings)
    redis = Redis.from_url(REDIS_URL)
    worker_log = tmp_path / "worker.log"
    worker: subprocess.Popen | None = None
    try:
        tenant_id, _ = await create_tenant(services.db, "flush")
        connections = [
            (await services.connections.create(tenant_id, ConnectionCreate(
                connector="apex", name=name, credentials={"api_key": KEY}, settings={"base_url": slow_sandbox})))["id"]
            for name in ("first", "second")
        ]
        await services.start_dispatcher()
        job_ids = []
        for cid in connections:
            job_id, _ = await services.dispatcher.submit(
                "sync", {"connection_id": cid, "entities": ["products"], "mode": "full"},
                tenant_id=tenant_id, dedupe_key=sync_dedupe_key(cid))
            job_ids.append(job_id)
        # One job at a time, so the second waits in the Redis queue while the first runs.
        worker_env = {**env, "TILLGATE_WORKER_MAX_JOBS": "1"}
        worker = start_worker(worker_env, worker_log)
        for _ in range(400):
            if (await jobs.get(services.db, job_ids[0]))["status"] == "running":
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the worker never started:\n{worker_log.read_text()[-2000:]}", pytrace=False)
        assert (await jobs.get(services.db, job_ids[1]))["status"] == "queued"
        await redis.flushdb()  # Redis forgets the queued job (and the running one's bookkeeping)
        for _ in range(1200):  # the worker's sweeper (every 10 s) re-rings the lost job
            if all(state == "done" for state in [(await jobs.get(services.db, job_id))["status"] for job_id in job_ids]):
                break
            await asyncio.sleep(0.05)
        else:
            states = [(await jobs.get(services.db, job_id))["status"] for job_id in job_ids]
            pytest.fail(f"jobs did not finish ({states}):\n{worker_log.read_text()[-3000:]}", pytrace=False)
        async with services.db.read() as conn:
            for cid in connections:
                products = (await conn.execute(select(func.count()).select_from(t.records).where(
                    t.records.c.connection_id == cid, t.records.c.entity == "products"))).scalar_one()
                created = (await conn.execute(select(func.count()).select_from(t.events).where(
                    t.events.c.connection_id == cid, t.events.c.type == "product.created"))).scalar_one()
                assert products == created == PRODUCTS
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(15)
        await redis.aclose()
        await services.stop_dispatcher()
        await services.db.dispose()


# --- inbound webhooks: nothing acknowledged is ever lost ------------------------------------------------
AIPOS_KEY = "aipos_test_sandbox_key"
WEBHOOK_SECRET = "whsec_" + "5e" * 16
DELIVERIES = 100


@pytest.fixture
def aipos_sandbox(tmp_path):
    """An AI POS sandbox process with DELIVERIES synthetic products; yields its API base URL."""
    with sandbox_process(tmp_path, "aipos", DELIVERIES, 5, "/aipos/api/v1/health",
                         {"Authorization": f"Bearer {AIPOS_KEY}"}) as base:
        yield f"{base}/aipos/api/v1"


def signed(kind: str, event_id: str, obj: dict) -> tuple[bytes, dict[str, str]]:
    """One AI POS delivery as the vendor signs it (connectors/aipos/API.md "Webhooks")."""
    from connectors.aipos.sandbox import dumps, signature_header

    body = dumps({"id": event_id, "object": "event", "type": kind, "created_at": obj.get("updated_at"),
                       "data": {"object": obj}})
    return body, {"Content-Type": "application/json", "AIPOS-Event-Id": event_id,
                  "AIPOS-Signature": signature_header([WEBHOOK_SECRET], int(time.time()), event_id, body)}


async def webhook_setup(tmp_path: Path, name: str, sandbox: str) -> tuple[dict[str, str], Services, str, list[dict]]:
    """Scale-out environment, an AI POS connection holding the webhook secret, and the sandbox's products."""
    env, settings = await scale_out(tmp_path, name, lease_seconds=2)
    services = Services.build(settings)
    tenant_id, _ = await create_tenant(services.db, name)
    connection = await services.connections.create(tenant_id, ConnectionCreate(
        connector="aipos", name=name, credentials={"api_key": AIPOS_KEY, "webhook_secret": WEBHOOK_SECRET},
        settings={"base_url": sandbox}))
    products = json.loads(httpx.get(f"{sandbox}/products", params={"limit": DELIVERIES},
                                    headers={"Authorization": f"Bearer {AIPOS_KEY}"}).content,
                          parse_float=Decimal)["data"]  # money stays exact on its way back out
    assert len(products) == DELIVERIES
    return env, services, connection["id"], products


def start_api(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with log_path.open("a") as log:
        process = subprocess.Popen([str(BIN / "tillgate"), "serve", "--port", str(port), "--log-level", "warning"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/readyz", timeout=1), "tillgate serve", log=log_path)
    return process, base


async def post_all(base: str, cid: str, deliveries: list[tuple[bytes, dict[str, str]]]) -> list[dict]:
    """POST every delivery to /hooks/{cid}, 20 at a time; every one must be acknowledged 200."""
    gate = asyncio.Semaphore(20)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        async def one(body: bytes, headers: dict[str, str]) -> dict:
            async with gate:
                response = await http.post(f"/hooks/{cid}", content=body, headers=headers)
            assert response.status_code == 200, response.text
            return response.json()

        return await asyncio.gather(*(one(body, headers) for body, headers in deliveries))


async def inbox_states(services: Services, cid: str) -> dict[str, int]:
    async with services.db.read() as conn:
        return dict((await conn.execute(select(t.webhook_inbox.c.status, func.count()).where(
            t.webhook_inbox.c.connection_id == cid).group_by(t.webhook_inbox.c.status))).all())


async def wait_processed(services: Services, cid: str, log_path: Path, *, until: int = DELIVERIES) -> dict[str, int]:
    for _ in range(1200):
        states = await inbox_states(services, cid)
        if states.get("processed", 0) >= until:
            return states
        await asyncio.sleep(0.05)
    pytest.fail(f"deliveries not processed ({await inbox_states(services, cid)}):\n{log_path.read_text()[-3000:]}",
                pytrace=False)


async def running_webhook_jobs(services: Services) -> int:
    async with services.db.read() as conn:
        return (await conn.execute(select(func.count()).select_from(t.jobs).where(
            t.jobs.c.kind == "webhook", t.jobs.c.status == "running"))).scalar_one()


async def cached_products(services: Services, cid: str) -> tuple[dict[str, str], int]:
    """(remote id -> cached unified price, product.created events) for the connection."""
    async with services.db.read() as conn:
        rows = (await conn.execute(select(t.records.c.remote_id, t.records.c.data).where(
            t.records.c.connection_id == cid, t.records.c.entity == "products"))).all()
        created = (await conn.execute(select(func.count()).select_from(t.events).where(
            t.events.c.connection_id == cid, t.events.c.type == "product.created"))).scalar_one()
    return {remote: json.loads(data)["price"] for remote, data in rows}, created


async def test_an_api_process_killed_right_after_acking_100_webhooks_loses_none(tmp_path, aipos_sandbox):
    """100 signed product.updated deliveries, each with a new price, acknowledged 200 by a real
    `tillgate serve` process that is then SIGKILLed at once, with no worker running: all 100 are
    in the inbox with their jobs, and a worker started afterwards applies every one exactly once."""
    env, services, cid, products = await webhook_setup(tmp_path, "apikill", aipos_sandbox)
    log_path = tmp_path / "processes.log"
    api, base = start_api(env, log_path)
    worker: subprocess.Popen | None = None
    try:
        deliveries, prices = [], {}
        for i, product in enumerate(products):
            prices[product["id"]] = f"{100 + i}.25"
            changed = {**product, "price": Decimal(prices[product["id"]]), "updated_at": "2027-01-01T00:00:00Z"}
            deliveries.append(signed("product.updated", f"evt_kill_{i:03d}", changed))
        answers = await post_all(base, cid, deliveries)
        api.send_signal(signal.SIGKILL)  # right after the 100th 2xx
        api.wait(10)
        assert [a["duplicate"] for a in answers] == [False] * DELIVERIES
        assert await inbox_states(services, cid) == {"received": DELIVERIES}
        async with services.db.read() as conn:
            queued = (await conn.execute(select(func.count()).select_from(t.jobs).where(
                t.jobs.c.kind == "webhook", t.jobs.c.status == "queued"))).scalar_one()
        assert queued == DELIVERIES

        worker = start_worker(env, log_path)  # its start-up sweep re-rings whatever Redis never got
        assert await wait_processed(services, cid, log_path) == {"processed": DELIVERIES}
        cached, created = await cached_products(services, cid)
        assert cached == {pid: prices[pid] for pid in prices}
        assert created == DELIVERIES
    finally:
        for process in (api, worker):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(15)
        await services.db.dispose()


async def test_a_worker_killed_while_processing_webhooks_loses_none(tmp_path, aipos_sandbox):
    """100 thin inventory.low deliveries (each makes the worker fetch the product and its level
    from a sandbox slowed to 150 ms a request); the worker is SIGKILLed with deliveries still
    being processed; a fresh worker takes the leased jobs over: every delivery ends processed,
    every product is cached once with one product.created event."""
    env, services, cid, products = await webhook_setup(tmp_path, "workerkill", aipos_sandbox)
    log_path = tmp_path / "processes.log"
    api, base = start_api(env, log_path)
    workers: list[subprocess.Popen] = []
    try:
        httpx.post(aipos_sandbox.split("/aipos/")[0] + "/_sandbox/faults", json={"latency_ms": 150}).raise_for_status()
        deliveries = [signed("inventory.low", f"evt_low_{i:03d}",
                             {"product_id": p["id"], "stock": p["stock"], "low_stock_threshold": p["low_stock_threshold"],
                              "updated_at": p["updated_at"]})
                      for i, p in enumerate(products)]
        await post_all(base, cid, deliveries)
        workers.append(start_worker(env, log_path))
        for _ in range(1200):  # some deliveries applied, others under the worker's lease: kill now
            states = await inbox_states(services, cid)
            if states.get("processed", 0) >= 5 and await running_webhook_jobs(services) >= 3:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail(f"the first worker never got going ({states}):\n{log_path.read_text()[-3000:]}", pytrace=False)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        states = await inbox_states(services, cid)
        assert 0 < states.get("processed", 0) < DELIVERIES, states
        assert await running_webhook_jobs(services) > 0  # leased by the dead worker, never to be finished by it

        workers.append(start_worker(env, log_path))
        assert await wait_processed(services, cid, log_path) == {"processed": DELIVERIES}
        cached, created = await cached_products(services, cid)
        assert set(cached) == {p["id"] for p in products}
        assert created == DELIVERIES
    finally:
        for process in (api, *workers):
            if process.poll() is None:
                process.terminate()
                process.wait(15)
        await services.db.dispose()


# -- outbound webhooks in scale-out ----------------------------------------------------------------
async def test_a_worker_killed_while_delivering_webhooks_loses_none(tmp_path):
    """Scale-out: a `tillgate serve` process writes events (60 products through the API) and
    rings the delivery channel; a `tillgate worker` delivers them to a slow receiver and is
    SIGKILLed midway; a second worker takes the endpoint over once its lease lapses. The
    receiver ends with every event, first arrivals in seq order, every delivery verifying with
    `standardwebhooks`; duplicates on the wire are allowed, none missing."""
    from standardwebhooks.webhooks import Webhook
    from test_webhooks_outbound import Receiver, serving

    env, settings = await scale_out(tmp_path, "deliverykill", lease_seconds=2)
    env = {**env, "TILLGATE_WEBHOOK_ALLOW_PRIVATE": "true", "TILLGATE_WEBHOOK_TIMEOUT_SECONDS": "1",
           "TILLGATE_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2"}
    services = Services.build(settings)
    log_path = tmp_path / "processes.log"
    processes: list[subprocess.Popen] = []
    receiver = Receiver(delay=0.03)
    try:
        _, key = await create_tenant(services.db, "deliverykill")
        api, base = start_api(env, log_path)
        processes.append(api)
        # the first worker polls rarely: its prompt deliveries show the API's doorbell reaches it
        first = start_worker({**env, "TILLGATE_WEBHOOK_POLL_SECONDS": "30"}, log_path)
        processes.append(first)
        async with serving(receiver), httpx.AsyncClient(base_url=base, timeout=30,
                                                        headers={"Authorization": f"Bearer {key.secret}"}) as http:
            con = (await http.post("/v1/connections", json={"connector": "local", "name": "Shop"})).json()["id"]
            created = await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "events": ["product.created"]})
            assert created.status_code == 201, created.text
            endpoint = created.json()
            await asyncio.sleep(2)  # the worker has started and subscribed
            started = time.monotonic()
            await http.post(f"/v1/connections/{con}/products", json={"name": "First", "sku": "K-0", "price": "1.00"})
            while not receiver.received and time.monotonic() - started < 10:
                await asyncio.sleep(0.01)
            assert receiver.received, log_path.read_text()[-3000:]
            assert time.monotonic() - started < 3  # rung over Redis, not found by a 30 s poll
            for n in range(1, 60):
                response = await http.post(f"/v1/connections/{con}/products",
                                           json={"name": f"P{n}", "sku": f"K-{n}", "price": "1.00"})
                assert response.status_code == 201, response.text
            for _ in range(1000):
                if len(receiver.received) >= 15:
                    break
                await asyncio.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            at_kill = len(receiver.received)
            assert at_kill < 60, "the first worker finished before the kill; slow the receiver down"
            processes.append(start_worker({**env, "TILLGATE_WEBHOOK_POLL_SECONDS": "0.2"}, log_path))
            events = []
            page = (await http.get("/v1/events", params={"type": "product.created", "limit": 1000})).json()
            events = [e["id"] for e in page["data"]]
            assert len(events) == 60
            for _ in range(3000):
                if {r["headers"]["webhook-id"] for r in receiver.received} >= set(events):
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail(f"missing deliveries after the takeover:\n{log_path.read_text()[-3000:]}", pytrace=False)
        verifier = Webhook(endpoint["secret"])
        first_seen: list[str] = []
        for entry in receiver.received:
            event = verifier.verify(entry["body"], entry["headers"])
            if event["id"] not in first_seen:
                first_seen.append(event["id"])
        assert first_seen == events
        # sent again: at most what the killed worker sent in its last unrecorded batch (RECORD_EVERY,
        # 0.25 s, of 30 ms answers) and the attempt in flight
        assert len(receiver.received) - len(events) <= 10
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(15)
        await services.db.dispose()
