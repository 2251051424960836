"""Write locks: a lease on a key, held across vendor calls by one writer among every process.

A read-modify-write at a POS that can only *set* a quantity (Apex) must not interleave with
another one on the same stock row, and the gateway's own bookkeeping of it (the adjustment's
intent, the write journal) must commit *while* the lock is held, before the vendor is called.
So the lock cannot be a database transaction held open (on SQLite that would block every other
writer for the length of the vendor calls, and the intent could not commit inside it). It is:

1. an :class:`asyncio.Lock` per key in this process, so tasks of one process queue in memory;
2. a row in ``write_locks`` (key, owner token, ``lease_until``) taken with a conditional write:
   ``UPDATE ... WHERE lease_until < now`` or a first ``INSERT``, each its own short transaction,
   so every process sharing the database (SQLite or PostgreSQL) sees it. While held, a heartbeat
   renews the lease every third of it; the holder's death stops the heartbeat and the lease
   lapses (:data:`LEASE_SECONDS`), after which another writer takes the key over.

:meth:`Held.verify` re-checks ownership inside a caller's transaction (and renews the lease), a
fencing step for writes that must not happen once the lease was lost. A writer that cannot get
the key within ``wait`` seconds gets :class:`LockBusy` (409 ``write_in_progress``, retryable).
Times are seconds; timestamps aware UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError

from gateway import jsonutil
from gateway.aio import cancel_and_wait
from gateway.errors import Conflict
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

#: Seconds a lease lasts without renewal (a holder that died frees the key after this).
LEASE_SECONDS = 120.0
#: Seconds a writer waits for a busy key before giving up with :class:`LockBusy`.
WAIT_SECONDS = 30.0
#: Seconds between two tries of a key held by another process.
POLL_SECONDS = 0.05

_LOCAL: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


class LockBusy(Conflict):
    """Another writer holds the key (409 ``write_in_progress``); retry after ``retry_after`` s."""

    code, title = "write_in_progress", "Another write to this stock level is in progress"


class Held:
    """A held key: its ``key`` and the holder's ``owner`` token."""

    def __init__(self, db: Database, key: str, owner: str, lease: float) -> None:
        self.db = db
        self.key = key
        self.owner = owner
        self.lease = lease

    def _renewal(self) -> Any:
        until = jsonutil.utcnow() + timedelta(seconds=self.lease)
        return (update(t.write_locks).where(t.write_locks.c.key == self.key, t.write_locks.c.owner == self.owner)
                .values(lease_until=until))

    async def verify(self, uow: UnitOfWork) -> None:
        """Inside ``uow``: check the key is still ours and renew its lease (fencing).

        Raises:
            LockBusy: the lease lapsed and another writer took the key (nothing in ``uow`` may commit).
        """
        if not (await uow.conn.execute(self._renewal())).rowcount:
            raise LockBusy(f"the lock on {self.key} was lost (its lease lapsed)", retry_after=1)

    async def renew(self) -> bool:
        """Renew the lease in its own transaction; ``False`` when it is no longer ours."""
        async with self.db.transaction() as uow:
            return bool((await uow.conn.execute(self._renewal())).rowcount)


async def _try_take(db: Database, key: str, owner: str, lease: float) -> bool:
    now = jsonutil.utcnow()
    until = now + timedelta(seconds=lease)
    async with db.transaction() as uow:
        taken = await uow.conn.execute(
            update(t.write_locks).where(t.write_locks.c.key == key, t.write_locks.c.lease_until < now)
            .values(owner=owner, lease_until=until, acquired_at=now))
        if taken.rowcount:
            return True
    try:
        async with db.transaction() as uow:
            await uow.conn.execute(insert(t.write_locks).values(key=key, owner=owner, lease_until=until,
                                                                acquired_at=now))
    except IntegrityError:  # held (the row exists and its lease is live)
        return False
    return True


async def _heartbeat(held: Held) -> None:
    while True:
        await asyncio.sleep(held.lease / 3)
        try:
            if not await held.renew():
                log.warning("write lock %s: lease lost", held.key)
                return
        except Exception:
            log.exception("write lock %s: could not renew the lease", held.key)


@contextlib.asynccontextmanager
async def hold(db: Database, key: str, *, lease: float = LEASE_SECONDS, wait: float = WAIT_SECONDS) -> AsyncIterator[Held]:
    """Hold ``key`` (up to 300 characters) for the block, against every task and process.

    Raises:
        LockBusy: the key stayed held by another process for ``wait`` seconds.
    """
    local = _LOCAL.get(key)
    if local is None:
        local = _LOCAL[key] = asyncio.Lock()
    await local.acquire()  # holders of this process release it in bounded time (their waits are bounded)
    try:
        deadline = time.monotonic() + wait
        owner = secrets.token_hex(16)
        while not await _try_take(db, key, owner, lease):
            if time.monotonic() >= deadline:
                raise LockBusy(f"another process kept {key} for {wait} s", retry_after=1)
            await asyncio.sleep(POLL_SECONDS)
        held = Held(db, key, owner, lease)
        heartbeat = asyncio.create_task(_heartbeat(held))
        try:
            yield held
        finally:
            await cancel_and_wait(heartbeat)
            try:
                async with db.transaction() as uow:
                    await uow.conn.execute(delete(t.write_locks).where(t.write_locks.c.key == key,
                                                                       t.write_locks.c.owner == owner))
            except Exception:  # the lease lapses on its own
                log.exception("write lock %s: could not release", key)
    finally:
        local.release()
