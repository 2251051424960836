"""The ``jobs`` table as a service.

Life of a job: :func:`enqueue` writes a ``queued`` row (and the caller rings a dispatcher);
:func:`claim` moves it to ``running`` with a lease (a conditional ``UPDATE``, so two deliveries
of the same job cannot both run it); the handler finishes with :func:`complete` (or
:func:`complete_running_in`, inside the handler's last transaction) or :func:`fail`.
A ``running`` job whose lease expired (its worker died) is claimable again. Times are aware UTC;
durations are seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway import jsonutil
from gateway.ids import new_id
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.uow import UnitOfWork

#: Seconds before retry n (1-based) of a failed job, capped; jitter is added on top.
BACKOFF_SECONDS = (5, 30, 120, 600, 1800, 3600)


@dataclass(frozen=True)
class Job:
    """A claimed job: ``payload`` holds ids only (never objects)."""

    id: str
    tenant_id: str | None
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


def backoff(attempts: int, *, jitter: float = 0.1) -> float:
    """Seconds to wait after the ``attempts``-th failure: the schedule, capped, plus up to 10 % jitter."""
    base = BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS)) - 1] if attempts > 0 else BACKOFF_SECONDS[0]
    return base * (1 + random.uniform(0, jitter))


async def enqueue(
    db: Database,
    kind: str,
    payload: dict[str, Any],
    *,
    tenant_id: str | None = None,
    dedupe_key: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int = 8,
) -> tuple[str, bool]:
    """Queue a job; return ``(job id, created)``.

    With ``dedupe_key``, an unfinished (queued or running) job with the same key is returned
    instead of a new one (``created`` false): the same poll is never queued twice, even by two
    processes at once (a partial unique index decides).
    """
    now = jsonutil.utcnow()
    job_id = new_id("job")
    try:
        async with db.transaction() as uow:
            if dedupe_key is not None:
                existing = (
                    await uow.conn.execute(
                        select(t.jobs.c.id).where(
                            t.jobs.c.dedupe_key == dedupe_key, t.jobs.c.status.in_(("queued", "running"))
                        )
                    )
                ).first()
                if existing is not None:
                    return existing[0], False
            await _insert(uow.conn, job_id, kind, payload, tenant_id=tenant_id, dedupe_key=dedupe_key,
                          run_after=run_after or now, max_attempts=max_attempts, now=now)
    except IntegrityError:  # another process queued the same key between our check and insert
        async with db.read() as conn:
            row = (
                await conn.execute(
                    select(t.jobs.c.id).where(
                        t.jobs.c.dedupe_key == dedupe_key, t.jobs.c.status.in_(("queued", "running"))
                    )
                )
            ).first()
        if row is None:
            raise
        return row[0], False
    return job_id, True


async def _insert(conn: Any, job_id: str, kind: str, payload: dict[str, Any], *, tenant_id: str | None,
                  dedupe_key: str | None, run_after: datetime, max_attempts: int, now: datetime) -> None:
    await conn.execute(
        insert(t.jobs).values(
            id=job_id, tenant_id=tenant_id, kind=kind, payload=jsonutil.dumps(payload).decode(),
            dedupe_key=dedupe_key, status="queued", attempts=0, max_attempts=max_attempts,
            run_after=run_after, created_at=now, updated_at=now,
        )
    )


async def enqueue_in(uow: UnitOfWork, kind: str, payload: dict[str, Any], *, tenant_id: str | None = None,
                     max_attempts: int = 8) -> str:
    """Queue a job inside the caller's transaction (no dedupe key): the job exists if and only if
    the caller's writes commit, so work stored with it can never be left without its job. Ring
    the dispatcher after the commit (``uow.after_commit``); until then, or if that ring is lost,
    the sweeper finds the row."""
    return (await enqueue_many_in(uow, kind, [(payload, tenant_id)], max_attempts=max_attempts))[0]


async def enqueue_many_in(uow: UnitOfWork, kind: str, payloads: list[tuple[dict[str, Any], str | None]], *,
                          max_attempts: int = 8) -> list[str]:
    """:func:`enqueue_in` for several jobs of one ``kind`` in one statement.

    Args:
        payloads: ``(payload, tenant_id)`` per job.

    Returns:
        the new job ids, in the order of ``payloads``.
    """
    now = jsonutil.utcnow()
    ids = [new_id("job") for _ in payloads]
    await uow.conn.execute(insert(t.jobs), [
        {"id": job_id, "tenant_id": tenant_id, "kind": kind, "payload": jsonutil.dumps(payload).decode(),
         "dedupe_key": None, "status": "queued", "attempts": 0, "max_attempts": max_attempts,
         "run_after": now, "created_at": now, "updated_at": now}
        for job_id, (payload, tenant_id) in zip(ids, payloads, strict=True)
    ])
    return ids


async def claim(db: Database, job_id: str, *, lease_seconds: float = 300) -> Job | None:
    """Start a job: ``queued`` and due, or ``running`` with an expired lease → ``running``.

    Returns ``None`` when the job is not claimable (done, failed, not yet due, or running under
    a live lease): a duplicate delivery is then a no-op.
    """
    now = jsonutil.utcnow()
    claimable = and_(
        t.jobs.c.id == job_id,
        or_(
            and_(t.jobs.c.status == "queued", t.jobs.c.run_after <= now),
            and_(t.jobs.c.status == "running", t.jobs.c.lease_until < now),
        ),
    )
    async with db.transaction() as uow:
        row = (
            await uow.conn.execute(
                update(t.jobs)
                .where(claimable)
                .values(status="running", attempts=t.jobs.c.attempts + 1,
                        lease_until=now + timedelta(seconds=lease_seconds), updated_at=now)
                .returning(t.jobs.c.id, t.jobs.c.tenant_id, t.jobs.c.kind, t.jobs.c.payload,
                           t.jobs.c.attempts, t.jobs.c.max_attempts)
            )
        ).first()
    if row is None:
        return None
    return Job(row.id, row.tenant_id, row.kind, jsonutil.loads(row.payload), row.attempts, row.max_attempts)


async def renew(db: Database, job: Job, *, lease_seconds: float) -> bool:
    """Extend a running job's lease (the heartbeat of a live worker); ``False`` if it is no
    longer this run's (finished, or taken over after the lease lapsed)."""
    now = jsonutil.utcnow()
    async with db.transaction() as uow:
        result = await uow.conn.execute(
            update(t.jobs)
            .where(t.jobs.c.id == job.id, t.jobs.c.status == "running", t.jobs.c.attempts == job.attempts)
            .values(lease_until=now + timedelta(seconds=lease_seconds))
        )
    return bool(result.rowcount)


async def complete(db: Database, job: Job) -> None:
    """Mark a claimed job done."""
    async with db.transaction() as uow:
        await complete_running_in(uow, job)


async def complete_running_in(uow: UnitOfWork, job: Job) -> bool:
    """Mark a claimed job done inside the caller's transaction, so the job is ``done`` if and only
    if the caller's last writes commit (one commit for both, e.g. a held transaction joined with
    ``Database.transaction(join_held=True)``). ``False`` when the row was no longer ``running``."""
    now = jsonutil.utcnow()
    result = await uow.conn.execute(
        update(t.jobs).where(t.jobs.c.id == job.id, t.jobs.c.status == "running")
        .values(status="done", lease_until=None, last_error=None, updated_at=now, finished_at=now)
    )
    return bool(result.rowcount)


async def fail(db: Database, job: Job, error: str, *, retry_in: float | None = None) -> str:
    """Record a failed attempt: back to ``queued`` after ``retry_in`` (default :func:`backoff`)
    while attempts remain, else ``failed``. Returns the new status."""
    now = jsonutil.utcnow()
    if job.attempts >= job.max_attempts:
        status, values = "failed", {"finished_at": now}
    else:
        delay = backoff(job.attempts) if retry_in is None else retry_in
        status, values = "queued", {"run_after": now + timedelta(seconds=delay)}
    async with db.transaction() as uow:
        await uow.conn.execute(
            update(t.jobs).where(t.jobs.c.id == job.id, t.jobs.c.status == "running")
            .values(status=status, lease_until=None, last_error=error[:4000], updated_at=now, **values)
        )
    return status


def generation(updated_at: datetime) -> str:
    """A job row's version for the doorbell: it changes when the row is claimed or failed."""
    return str(int(updated_at.timestamp() * 1_000_000))


async def due(db: Database, *, limit: int = 500) -> list[tuple[str, str]]:
    """``(id, generation)`` of jobs that should be running now: queued and due, or running with
    an expired lease (its worker died)."""
    now = jsonutil.utcnow()
    async with db.read() as conn:
        rows = (
            await conn.execute(
                select(t.jobs.c.id, t.jobs.c.updated_at)
                .where(
                    or_(
                        and_(t.jobs.c.status == "queued", t.jobs.c.run_after <= now),
                        and_(t.jobs.c.status == "running", t.jobs.c.lease_until < now),
                    )
                )
                .order_by(t.jobs.c.run_after)
                .limit(limit)
            )
        ).all()
    return [(row.id, generation(row.updated_at)) for row in rows]


async def get(db: Database, job_id: str) -> dict[str, Any] | None:
    """One job row as a dict (for status pages and tests)."""
    async with db.read() as conn:
        row = (await conn.execute(select(t.jobs).where(t.jobs.c.id == job_id))).mappings().first()
    return None if row is None else dict(row)
