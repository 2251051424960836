"""Running jobs: the job-kind registry, :func:`execute`, and the dispatchers.

``execute(job_id)`` is the one job function: claim the row (a no-op for a duplicate delivery),
run the kind's handler while a heartbeat renews the lease, then complete or fail it. Handlers must be idempotent (delivery is at
least once). A handler asks for a specific delay by raising :class:`RetryLater` (for a vendor's
``Retry-After``); any other exception is a failed attempt with backoff.

A kind registered with ``hold_commit=True`` runs its handler in a holding scope
(:meth:`gateway.storage.db.Database.holding`): the handler's last transaction stays open and the
job's ``done`` joins it, one commit for both (the job is ``done`` if and only if the handler's
last writes committed). Only for handlers that do nothing after their last transaction but
return: until that commit their writes are not durable (no vendor call may follow them).

Dispatchers only ring the bell:

- :class:`InProcessDispatcher` (embedded mode, no Redis): an asyncio queue and worker tasks
  inside ``tillgate serve``.
- :class:`ArqDispatcher` (scale-out): enqueues ``run_job(job_id)`` on arq/Redis, with the job id
  as arq's ``_job_id`` so a job is in the Redis queue at most once; ``tillgate worker`` runs it.

Both :meth:`~Dispatcher.sweep` the table: every due job (queued and due, or running with an
expired lease) is rung again, which is how work survives a flushed Redis or a killed worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.storage.db import Database
from gateway.workers import jobs
from gateway.workers.jobs import Job

log = logging.getLogger("tillgate.workers")

#: Seconds a claimed job may run before another worker may take it over.
LEASE_SECONDS = 300.0

Handler = Callable[["WorkerContext", Job], Awaitable[None]]


class RetryLater(Exception):
    """Raised by a handler to retry after ``seconds`` (e.g. a vendor's Retry-After)."""

    def __init__(self, reason: str, seconds: float) -> None:
        super().__init__(reason)
        self.seconds = seconds


class JobRegistry:
    """Job kinds and their handlers (an explicit dict, no discovery by name)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._hold_commit: set[str] = set()

    def register(self, kind: str, *, hold_commit: bool = False) -> Callable[[Handler], Handler]:
        """Decorator: ``@registry.register("sync") async def run_sync(ctx, job): ...``.

        Args:
            hold_commit: the job's ``done`` commits with the handler's last transaction (see the
                module docstring; only for handlers that make no outside call after it).

        Raises:
            ValueError: ``kind`` already has a handler.
        """

        def decorate(handler: Handler) -> Handler:
            if kind in self._handlers:
                raise ValueError(f"job kind {kind!r} already has a handler")
            self._handlers[kind] = handler
            if hold_commit:
                self._hold_commit.add(kind)
            return handler

        return decorate

    def get(self, kind: str) -> Handler | None:
        """The handler of ``kind``, or ``None``."""
        return self._handlers.get(kind)

    def holds_commit(self, kind: str) -> bool:
        """Whether ``kind`` was registered with ``hold_commit=True``."""
        return kind in self._hold_commit


#: The gateway's job kinds register here.
REGISTRY = JobRegistry()


@dataclass
class WorkerContext:
    """What handlers get: the database, the services container (when built), the dispatcher."""

    db: Database
    registry: JobRegistry = field(default_factory=lambda: REGISTRY)
    services: Any = None
    dispatcher: Dispatcher | None = None
    lease_seconds: float = LEASE_SECONDS


async def execute(ctx: WorkerContext, job_id: str) -> str | None:
    """Run one job if it is claimable; return its new status (``None``: nothing to do)."""
    job = await jobs.claim(ctx.db, job_id, lease_seconds=ctx.lease_seconds)
    if job is None:
        return None
    handler = ctx.registry.get(job.kind)
    if handler is None:
        return await jobs.fail(ctx.db, Job(**{**job.__dict__, "attempts": job.max_attempts}),
                               f"no handler for job kind {job.kind!r}")
    heartbeat = asyncio.create_task(_heartbeat(ctx, job))
    held = ctx.registry.holds_commit(job.kind)
    try:
        if held:
            async with ctx.db.holding():
                await handler(ctx, job)
                async with ctx.db.transaction(join_held=True) as uow:
                    await jobs.complete_running_in(uow, job)
        else:
            await handler(ctx, job)
    except RetryLater as exc:
        return await jobs.fail(ctx.db, job, f"retry later: {exc}", retry_in=exc.seconds)
    except Exception as exc:
        log.exception("job %s (%s) attempt %d failed", job.id, job.kind, job.attempts)
        return await jobs.fail(ctx.db, job, f"{exc.__class__.__name__}: {exc}")
    finally:
        await cancel_and_wait(heartbeat)
    if not held:
        await jobs.complete(ctx.db, job)
    return "done"


async def _heartbeat(ctx: WorkerContext, job: Job) -> None:
    """Keep a running job's lease alive: renew every third of the lease while the handler runs.
    A worker that dies stops renewing, and the job is free for another after the lease lapses."""
    while True:
        await asyncio.sleep(ctx.lease_seconds / 3)
        try:
            if not await jobs.renew(ctx.db, job, lease_seconds=ctx.lease_seconds):
                log.warning("job %s: lease lost; another worker may run it", job.id)
                return
        except Exception:
            log.exception("job %s: could not renew its lease", job.id)


class Dispatcher:
    """Rings the bell for jobs; subclasses decide how (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def notify(self, job_id: str, *, delay: float | None = None, generation: str = "0") -> None:
        """Have ``job_id`` looked at (after ``delay`` seconds). ``generation`` is the row's
        version (:func:`jobs.generation`): the same job at the same version is rung once."""
        raise NotImplementedError

    async def submit(self, kind: str, payload: dict[str, Any], **options: Any) -> tuple[str, bool]:
        """Write the job row, then ring: ``(job id, created)`` as :func:`jobs.enqueue` returns."""
        job_id, created = await jobs.enqueue(self.db, kind, payload, **options)
        if created:
            await self.notify(job_id)
        return job_id, created

    async def close(self) -> None:
        """Release what the dispatcher holds (tasks, connections)."""

    async def sweep(self) -> int:
        """Ring every due job again; return how many."""
        due = await jobs.due(self.db)
        for job_id, version in due:
            await self.notify(job_id, generation=version)
        return len(due)


class InProcessDispatcher(Dispatcher):
    """Embedded mode: ``concurrency`` worker tasks on an asyncio queue, and every ``sweep_every``
    seconds the ``periodic`` steps (the poll scheduler) then a sweep. Use ``async with`` (or
    :meth:`start` / :meth:`stop`)."""

    def __init__(self, db: Database, ctx: WorkerContext | None = None, *, concurrency: int = 4,
                 sweep_every: float = 5.0, periodic: list[Callable[[], Awaitable[Any]]] | None = None) -> None:
        super().__init__(db)
        self.periodic = list(periodic or [])
        self.ctx = ctx or WorkerContext(db=db)
        self.ctx.dispatcher = self
        self.concurrency = concurrency
        self.sweep_every = sweep_every
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()

    def ring(self, job_id: str) -> None:
        """:meth:`notify` without delay, callable from synchronous code (a commit's doorbell)."""
        self._queue.put_nowait(job_id)

    async def notify(self, job_id: str, *, delay: float | None = None, generation: str = "0") -> None:
        if delay:
            handle = asyncio.get_running_loop().call_later(delay, self._queue.put_nowait, job_id)
            self._timers.add(handle)
        else:
            self._queue.put_nowait(job_id)

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await execute(self.ctx, job_id)
            except Exception:
                log.exception("could not run job %s; the sweeper will retry it", job_id)
            finally:
                self._queue.task_done()

    async def _sweeper(self) -> None:
        while True:
            for step in (*self.periodic, self.sweep):
                try:
                    outcome = await step()
                    log.debug("periodic step %s: %s", getattr(step, "__name__", step), outcome)
                except Exception:
                    log.exception("periodic step %s failed", getattr(step, "__name__", step))
            await asyncio.sleep(self.sweep_every)

    async def start(self) -> None:
        """Start the worker tasks and the sweeper."""
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._sweeper()))

    async def drain(self) -> None:
        """Wait until every rung job has been looked at (tests, shutdown)."""
        await self._queue.join()

    async def stop(self) -> None:
        """Cancel the workers; unfinished jobs stay in the table for the next start."""
        for handle in self._timers:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []

    async def close(self) -> None:
        await self.stop()

    async def __aenter__(self) -> InProcessDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ArqDispatcher(Dispatcher):
    """Scale-out: rings through arq on Redis. ``pool`` is an ``arq.ArqRedis``."""

    def __init__(self, db: Database, pool: Any, *, queue_name: str) -> None:
        super().__init__(db)
        self.pool = pool
        self.queue_name = queue_name

    async def notify(self, job_id: str, *, delay: float | None = None, generation: str = "0") -> None:
        # arq's _job_id = our id and the row's version: arq refuses a second copy of the same
        # version while one is queued, so sweeps do not pile up duplicates; a row claimed by a
        # worker that then died has a new version, so its re-ring is not blocked by the dead
        # run's in-progress key (kept by arq for job_timeout). Extra deliveries are harmless:
        # claim() lets one through.
        await self.pool.enqueue_job("run_job", job_id, _job_id=f"{job_id}:{generation}", _queue_name=self.queue_name,
                                    _defer_by=delay)

    async def close(self) -> None:
        await self.pool.aclose()
