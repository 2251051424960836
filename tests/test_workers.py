"""Jobs are rows first: in-process and arq dispatchers, retries, dedupe, leases, and recovery
after Redis loses everything. arq tests use the real Redis (``TILLGATE_TEST_REDIS_URL``)."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from gateway.jsonutil import utcnow
from gateway.storage import tables as t
from gateway.workers import jobs
from gateway.workers.dispatch import (
    ArqDispatcher,
    InProcessDispatcher,
    JobRegistry,
    RetryLater,
    WorkerContext,
    execute,
)

REDIS_URL = os.environ.get("TILLGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def registry_with(runs: list[str], *, fail_times: int = 0, retry_later: float | None = None) -> JobRegistry:
    registry = JobRegistry()
    failures = {"left": fail_times}

    @registry.register("record")
    async def record(ctx: WorkerContext, job: jobs.Job) -> None:
        if retry_later is not None and job.attempts == 1:
            raise RetryLater("vendor said wait", retry_later)
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("vendor down")
        runs.append(job.payload["value"])

    return registry


async def test_in_process_dispatcher_runs_jobs(db):
    runs: list[str] = []
    ctx = WorkerContext(db=db, registry=registry_with(runs))
    async with InProcessDispatcher(db, ctx, concurrency=2, sweep_every=3600) as dispatcher:
        ids = [(await dispatcher.submit("record", {"value": f"v{n}"}))[0] for n in range(5)]
        await dispatcher.drain()
    assert sorted(runs) == [f"v{n}" for n in range(5)]
    assert [(await jobs.get(db, job_id))["status"] for job_id in ids] == ["done"] * 5


async def test_failed_attempts_back_off_then_fail_for_good(db):
    runs: list[str] = []
    ctx = WorkerContext(db=db, registry=registry_with(runs, fail_times=10))
    job_id, _ = await jobs.enqueue(db, "record", {"value": "x"}, max_attempts=2)
    assert await execute(ctx, job_id) == "queued"
    row = await jobs.get(db, job_id)
    assert row["attempts"] == 1 and row["last_error"] == "RuntimeError: vendor down"
    assert row["run_after"] > utcnow() + timedelta(seconds=4)  # backoff: first retry after >= 5 s
    assert await execute(ctx, job_id) is None  # not due yet: a duplicate delivery does nothing
    await _make_due(db, job_id)
    assert await execute(ctx, job_id) == "failed"
    assert runs == [] and (await jobs.get(db, job_id))["finished_at"] is not None


async def test_retry_later_uses_the_requested_delay(db):
    runs: list[str] = []
    ctx = WorkerContext(db=db, registry=registry_with(runs, retry_later=42))
    job_id, _ = await jobs.enqueue(db, "record", {"value": "x"})
    assert await execute(ctx, job_id) == "queued"
    wait = (await jobs.get(db, job_id))["run_after"] - utcnow()
    assert timedelta(seconds=40) < wait <= timedelta(seconds=42)
    await _make_due(db, job_id)
    assert await execute(ctx, job_id) == "done" and runs == ["x"]


async def test_dedupe_key_and_duplicate_deliveries_run_once(db):
    runs: list[str] = []
    ctx = WorkerContext(db=db, registry=registry_with(runs))
    key = f"poll:{uuid.uuid4().hex}"
    first, created = await jobs.enqueue(db, "record", {"value": "a"}, dedupe_key=key)
    again, created_again = await jobs.enqueue(db, "record", {"value": "a"}, dedupe_key=key)
    assert created and not created_again and again == first
    results = await asyncio.gather(*(execute(ctx, first) for _ in range(5)))
    assert results.count("done") == 1 and runs == ["a"]
    # Once done, the same key may be queued again (the next poll).
    _, created_later = await jobs.enqueue(db, "record", {"value": "b"}, dedupe_key=key)
    assert created_later


async def test_a_dead_workers_job_is_taken_over_after_its_lease(db):
    runs: list[str] = []
    ctx = WorkerContext(db=db, registry=registry_with(runs))
    job_id, _ = await jobs.enqueue(db, "record", {"value": "orphan"})
    assert await jobs.claim(db, job_id) is not None  # a worker took it, then died
    dispatcher = InProcessDispatcher(db, ctx, sweep_every=3600)
    assert job_id not in [due_id for due_id, _ in await jobs.due(db)]  # the lease is still live
    async with db.transaction() as uow:
        await uow.conn.execute(update(t.jobs).where(t.jobs.c.id == job_id)
                               .values(lease_until=utcnow() - timedelta(seconds=1)))
    async with dispatcher:
        assert await dispatcher.sweep() >= 1
        await dispatcher.drain()
    row = await jobs.get(db, job_id)
    # (the sweeper also rings other tests' due jobs in this shared database; only ours matters)
    assert row["status"] == "done" and row["attempts"] == 2 and runs.count("orphan") == 1


async def _make_due(db, job_id: str) -> None:
    async with db.transaction() as uow:
        await uow.conn.execute(update(t.jobs).where(t.jobs.c.id == job_id)
                               .values(run_after=utcnow() - timedelta(seconds=1)))


# -- arq on the real Redis ---------------------------------------------------------------------
@pytest.fixture
async def arq_pool():
    from arq import create_pool
    from arq.connections import RedisSettings
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.workers.arq_app import deserialize, serialize

    try:
        pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), job_serializer=serialize,
                                 job_deserializer=deserialize, retry=0)
        await pool.ping()
    except (OSError, RedisConnectionError) as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc.__class__.__name__}). Start it or point "
                    "TILLGATE_TEST_REDIS_URL at a server; these tests do not skip.", pytrace=False)
    yield pool
    await pool.aclose()


async def run_burst_worker(ctx: WorkerContext, queue: str) -> None:
    from arq.worker import Worker

    from gateway.workers.arq_app import worker_options

    options = {**worker_options(REDIS_URL), "queue_name": queue, "burst": True, "handle_signals": False,
               "cron_jobs": None, "poll_delay": 0.05, "ctx": {"tillgate": ctx}}
    worker = Worker(**options)
    try:
        await worker.main()
    finally:
        await worker.close()


async def test_arq_worker_runs_jobs_and_the_sweeper_recovers_a_flushed_redis(sqlite_only_url, arq_pool):
    from gateway.storage.db import Database

    db = Database(sqlite_only_url)
    queue = f"tillgate:test:{uuid.uuid4().hex[:8]}"
    runs: list[str] = []
    dispatcher = ArqDispatcher(db, arq_pool, queue_name=queue)
    ctx = WorkerContext(db=db, registry=registry_with(runs), dispatcher=dispatcher)
    try:
        first = [(await dispatcher.submit("record", {"value": f"a{n}"}))[0] for n in range(3)]
        await dispatcher.notify(first[0])  # a second ring of the same version is refused by arq: no duplicate
        await run_burst_worker(ctx, queue)
        assert sorted(runs) == ["a0", "a1", "a2"]
        assert {(await jobs.get(db, job_id))["status"] for job_id in first} == {"done"}

        lost = [(await dispatcher.submit("record", {"value": f"b{n}"}))[0] for n in range(3)]
        await arq_pool.flushdb()  # Redis forgets every queued job
        await run_burst_worker(ctx, queue)
        assert sorted(runs) == ["a0", "a1", "a2"]  # nothing ran: the queue was empty
        assert {(await jobs.get(db, job_id))["status"] for job_id in lost} == {"queued"}
        assert await dispatcher.sweep() >= 3  # the table still knows
        await run_burst_worker(ctx, queue)
        assert sorted(runs) == ["a0", "a1", "a2", "b0", "b1", "b2"]
        assert {(await jobs.get(db, job_id))["status"] for job_id in lost} == {"done"}
    finally:
        await db.dispose()


async def test_serve_runs_jobs_in_process_without_redis(services):
    """Embedded mode: the app's lifespan starts an in-process dispatcher that runs submitted jobs."""
    from gateway.api.app import create_app
    from gateway.workers.dispatch import InProcessDispatcher

    app = create_app(services.settings, services=services)
    runs: list[str] = []
    async with app.router.lifespan_context(app):
        dispatcher = services.dispatcher
        assert isinstance(dispatcher, InProcessDispatcher)
        dispatcher.ctx.registry = registry_with(runs)
        job_id, _ = await dispatcher.submit("record", {"value": "embedded"})
        await dispatcher.drain()
        assert (await jobs.get(services.db, job_id))["status"] == "done"
    assert services.dispatcher is None and runs.count("embedded") == 1


async def test_a_long_job_keeps_its_lease_and_is_not_taken_over(db):
    """The heartbeat renews the lease while the handler runs, so a sweep never hands a live job
    to a second worker, however long it takes."""
    registry = JobRegistry()
    started: list[int] = []

    @registry.register("slow")
    async def slow(ctx: WorkerContext, job: jobs.Job) -> None:
        started.append(job.attempts)
        await asyncio.sleep(0.5)  # five lease lengths

    ctx = WorkerContext(db=db, registry=registry, lease_seconds=0.1)
    job_id, _ = await jobs.enqueue(db, "slow", {})
    run = asyncio.create_task(execute(ctx, job_id))
    for _ in range(8):
        await asyncio.sleep(0.06)
        assert job_id not in [due_id for due_id, _ in await jobs.due(db)]
        assert await execute(ctx, job_id) is None  # a second delivery cannot take it
    assert await run == "done" and started == [1]


async def test_cancel_and_wait_never_swallows_the_callers_cancellation():
    """A worker stopped while it waits for a job's heartbeat to finish must stop: the old
    ``task.cancel(); with suppress(CancelledError): await task`` swallowed the worker's own
    cancellation, so the worker went on to its next job and ``stop()`` waited for ever."""
    import asyncio

    from gateway.aio import cancel_and_wait

    async def slow_to_die() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # tidying up: the caller is waiting for it right now
            raise

    carried_on = asyncio.Event()

    async def caller() -> None:
        child = asyncio.create_task(slow_to_die())
        await asyncio.sleep(0)
        await cancel_and_wait(child)
        carried_on.set()

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    task.cancel()  # arrives while the caller awaits the dying child
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not carried_on.is_set()

    async def failing() -> None:
        raise RuntimeError("its own failure")

    child = asyncio.create_task(failing())
    await asyncio.sleep(0)
    await cancel_and_wait(child)  # finished with an error: not the caller's concern
    assert child.done()


# -- hold_commit: the handler's last transaction and the job's ``done`` commit once -------------------
def count_commits(db) -> list[int]:
    from sqlalchemy import event

    commits = [0]

    @event.listens_for(db.engine.sync_engine, "commit")
    def _count(_conn) -> None:
        commits[0] += 1

    return commits


def writing_registry(*, hold: bool, fail_after_write: bool = False) -> JobRegistry:
    """A ``write`` kind whose handler stores a tenant row named by the payload (then fails, if asked)."""
    from sqlalchemy import insert

    registry = JobRegistry()

    @registry.register("write", hold_commit=hold)
    async def write(ctx: WorkerContext, job: jobs.Job) -> None:
        async with ctx.db.transaction() as uow:
            await uow.conn.execute(insert(t.tenants).values(id=job.payload["name"], name="w", created_at=utcnow()))
        if fail_after_write:
            raise RuntimeError("failed after its write")

    return registry


async def _tenant_exists(db, name: str) -> bool:
    from sqlalchemy import select

    async with db.read() as conn:
        return (await conn.execute(select(t.tenants.c.id).where(t.tenants.c.id == name))).first() is not None


@pytest.mark.parametrize("hold", [True, False])
async def test_a_hold_commit_job_commits_its_last_writes_and_done_together(db, hold):
    ctx = WorkerContext(db=db, registry=writing_registry(hold=hold))
    name = f"ten_job_{uuid.uuid4().hex[:10]}"
    job_id, _ = await jobs.enqueue(db, "write", {"name": name})
    commits = count_commits(db)
    assert await execute(ctx, job_id) == "done"
    # claim, then the handler's write + done in one commit (without hold_commit: a third for done)
    assert commits == [2 if hold else 3]
    assert await _tenant_exists(db, name) and (await jobs.get(db, job_id))["status"] == "done"


async def test_a_hold_commit_job_is_done_only_if_its_writes_commit(db, monkeypatch):
    """The job's ``done`` joins the handler's held transaction: when the final write fails, the
    handler's writes roll back with it and the job is retried, never ``done`` without them."""
    ctx = WorkerContext(db=db, registry=writing_registry(hold=True))
    name = f"ten_job_{uuid.uuid4().hex[:10]}"
    job_id, _ = await jobs.enqueue(db, "write", {"name": name})

    async def broken(uow, job) -> bool:
        raise RuntimeError("could not mark it done")

    monkeypatch.setattr(jobs, "complete_running_in", broken)
    assert await execute(ctx, job_id) == "queued"
    row = await jobs.get(db, job_id)
    assert "could not mark it done" in row["last_error"] and not await _tenant_exists(db, name)
    monkeypatch.undo()
    await _make_due(db, job_id)
    assert await execute(ctx, job_id) == "done" and await _tenant_exists(db, name)


async def test_a_hold_commit_job_that_fails_after_its_write_keeps_the_write_and_is_retried(db):
    ctx = WorkerContext(db=db, registry=writing_registry(hold=True, fail_after_write=True))
    name = f"ten_job_{uuid.uuid4().hex[:10]}"
    job_id, _ = await jobs.enqueue(db, "write", {"name": name})
    assert await execute(ctx, job_id) == "queued"
    row = await jobs.get(db, job_id)
    assert row["last_error"] == "RuntimeError: failed after its write" and row["attempts"] == 1
    assert await _tenant_exists(db, name)  # its block had finished: committed when the scope ended


# -- the delivery worker: an endpoint round is two transactions -----------------------------------------
async def test_serving_an_endpoint_leases_then_records_and_releases_in_one_transaction(db, tenant):
    """Lease, send, then one transaction records the outcomes and releases the lease (it used to
    take four: lease, record, an empty read's retry_at, release). New deliveries ring the worker,
    which leases the endpoint again."""
    import base64
    import os

    import httpx

    from gateway.crypto import CredentialCipher
    from gateway.model.webhooks import WebhookEndpointCreate
    from gateway.services.deliveries import DeliverySender
    from gateway.services.webhook_endpoints import WebhookEndpointService
    from gateway.settings import Settings
    from gateway.workers.deliveries import DeliveryWorker

    tenant_id = tenant[0]
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    settings = Settings(database_url=db.url, secret_keys=[key], webhook_allow_private=True, webhook_poll_seconds=0.05)
    endpoints = WebhookEndpointService(db, CredentialCipher(settings.resolved_secret_keys()), allow_private=True)
    endpoint = await endpoints.create(tenant_id, WebhookEndpointCreate(url="http://127.0.0.1:9/hooks", events=["product.*"]))
    received: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        received.append(request.headers["webhook-id"])
        return httpx.Response(200, json={})

    worker = DeliveryWorker(db, endpoints, settings,
                            sender=DeliverySender(allow_private=True, transport=httpx.MockTransport(answer)))

    async def emit(n: int) -> list[str]:
        async with db.transaction(tenant_id) as uow:
            pending = [uow.emit("product.updated", None, {"n": i}, []) for i in range(n)]
        return [p.id for p in pending]

    async def lease() -> tuple[str | None, object]:
        async with db.read() as conn:
            row = (await conn.execute(select_endpoint(endpoint["id"]))).one()
        return row.lease_owner, row.retry_at

    try:
        first = await emit(3)
        commits = count_commits(db)
        async with worker:
            await worker.drain()
            assert commits == [2] and received == first and worker.delivered == 3
            assert await lease() == (None, None)
            second = await emit(2)
            await worker.drain()
            assert received == first + second and commits == [2 + 1 + 2]  # the events' commit, lease, record
            assert await lease() == (None, None)
    finally:
        await endpoints.delete(tenant_id, endpoint["id"])


def select_endpoint(endpoint_id: str):
    from sqlalchemy import select

    return select(t.webhook_endpoints.c.lease_owner, t.webhook_endpoints.c.retry_at).where(
        t.webhook_endpoints.c.id == endpoint_id)
