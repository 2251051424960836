"""DESIGN.md's fault tests with real processes and the real Redis: a worker killed mid-sync.

A `tillgate worker` process is killed (SIGKILL) halfway through a sync of an Apex sandbox; a
fresh worker takes the job over once its lease lapses and finishes it from the checkpoint:
every product arrives once, every `product.created` event is emitted once.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
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


@pytest.fixture
def slow_sandbox(tmp_path):
    """An Apex sandbox process with PRODUCTS products, each request delayed 120 ms."""
    port = free_port()
    log = (tmp_path / "sandbox.log").open("w")
    process = subprocess.Popen([str(BIN / "tillgate"), "sandbox", "apex", "--port", str(port),
                                "--products", str(PRODUCTS), "--seed", "3"], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/rest_api/v1/health", headers={"X-API-Key": KEY}, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the Apex sandbox did not start", pytrace=False)
        httpx.post(f"{base}/_sandbox/faults", json={"latency_ms": 120}).raise_for_status()
        yield f"{base}/rest_api/v1"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


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
