"""Group commit: many concurrent small writes made durable by one transaction.

A write answered only after its commit costs one ``fsync`` of the log (SQLite's WAL under
``synchronous=FULL``, PostgreSQL's WAL): a few milliseconds on ordinary disks, paid one request
at a time behind SQLite's single writer. :class:`GroupCommit` lets callers that must not answer
before their write is durable (``POST /hooks``) share that cost: while one batch commits, new
submissions queue; the next transaction writes all of them, and each caller's ``await`` returns
only once the transaction holding its item has committed. Nothing is acknowledged early, so a
crash loses only writes no caller was told about.

When a batch's transaction fails, its items are retried one per transaction, so one bad item
(or a constraint race with another process) fails alone and the others still commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from gateway.storage.db import Database
from gateway.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Batch the items submitted while a transaction is in flight into the next one.

    Args:
        db: the database the batches are written to (through :meth:`Database.transaction`).
        write: ``await write(uow, items) -> results``: writes every item inside ``uow`` and returns
            one result per item, in order. It must be correct for any batch size (one included),
            and idempotent per item in the sense that a batch that rolled back may be written
            again item by item.
        max_batch: the most items one transaction takes (the rest go to the next).

    Use :meth:`submit` from any number of concurrent tasks on one event loop.
    """

    def __init__(self, db: Database, write: Callable[[UnitOfWork, list[T]], Awaitable[Sequence[R]]], *,
                 max_batch: int = 500) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.db = db
        self.write = write
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: transactions committed and items written, for tests and metrics
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """Write ``item`` in the next batch; return its result once that batch has committed.

        Raises:
            whatever ``write`` raised for this item when written alone (after its batch failed).
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # shield: a caller that goes away (client disconnect) does not cancel a write in flight
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                await self._write(batch)
            except Exception as exc:  # noqa: BLE001 - delivered to the callers, never lost in the task
                for _item, future in batch:
                    if not future.done():
                        future.set_exception(exc)

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            async with self.db.transaction() as uow:
                results = list(await self.write(uow, items))
            if len(results) != len(items):
                raise RuntimeError(f"write returned {len(results)} results for {len(items)} items")
        except Exception:
            if len(batch) == 1:
                raise
            log.warning("a group commit of %d items failed; writing them one by one", len(batch), exc_info=True)
            for one in batch:
                try:
                    await self._write([one])
                except Exception as exc:  # noqa: BLE001 - this item's caller gets it
                    if not one[1].done():
                        one[1].set_exception(exc)
            return
        self.batches += 1
        self.items += len(items)
        for (_item, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
