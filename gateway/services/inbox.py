"""The webhook inbox: inbound vendor deliveries, stored before they are acknowledged.

``POST /hooks/{connection_id}`` has the connector verify a delivery
(:meth:`~gateway.sdk.connector.Connector.verify_webhook`), then :meth:`Inbox.receive` stores it in
one transaction with the job that will process it, and only then does the route answer 2xx: a
delivery the vendor saw acknowledged is on disk, and so is the work it calls for. Concurrent
deliveries share transactions (group commit), which is what lets one process store thousands a
second when every commit is an ``fsync``. The vendor's
retries and duplicates (same event id) find the stored row and add nothing.

The ``webhook`` job (:func:`process`) hands the stored delivery to
:meth:`~gateway.sdk.connector.Connector.apply_webhook`, which updates the records cache with a
version guard (the vendor's ``updated_at``), so a delivery processed twice, or out of order, or
after a poll that already saw a newer version, changes nothing. The connector's last cache write,
the row's ``processed`` and the job's ``done`` commit in one transaction
(:meth:`~gateway.storage.db.Database.holding`). A failing delivery is retried
on the job schedule (the vendor's ``Retry-After`` when it gave one); after the last attempt the
row is ``failed`` with the error, and the next poll reconciles the cache anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import jsonutil
from gateway.errors import VendorError, WebhookMalformed
from gateway.ids import new_id
from gateway.sdk.connector import Connector, InboundEvent
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.group_commit import GroupCommit
from gateway.storage.uow import UnitOfWork
from gateway.workers import jobs

JOB_KIND = "webhook"


@dataclass(frozen=True)
class Received:
    """What :func:`receive` did: the inbox row's ``id``; ``duplicate`` when the event was stored
    before (``job_id`` is then ``None``: nothing new to do)."""

    id: str
    duplicate: bool
    job_id: str | None


@dataclass(frozen=True)
class _Delivery:
    tenant_id: str
    connection_id: str
    event: InboundEvent
    text: str


class Inbox:
    """Stores verified deliveries, many concurrent ones per transaction (group commit).

    Each :meth:`receive` returns only after the transaction holding its delivery has committed;
    deliveries arriving while one commits are written together by the next (see
    :class:`~gateway.storage.group_commit.GroupCommit`), so the log's ``fsync`` is paid per batch,
    not per delivery. One instance per process and database (``Services.inbox``).

    Args:
        max_batch: the most deliveries one transaction stores.
    """

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        self.db = db
        self.writer: GroupCommit[_Delivery, Received] = GroupCommit(db, self._store, max_batch=max_batch)

    async def receive(self, connector: Connector, event: InboundEvent, body: bytes) -> Received:
        """Store a verified delivery and its processing job in one transaction (durable on return).

        Args:
            event: what ``connector.verify_webhook`` made of the delivery.
            body: the raw body as received (kept as UTF-8 text; the vendor's JSON).

        Returns:
            the inbox row's id; ``duplicate`` (and no job) when this connection stored the
            vendor's event id before.

        Raises:
            gateway.errors.WebhookMalformed: the body is not UTF-8.
        """
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookMalformed("the webhook body is not UTF-8") from exc
        context = connector.context
        try:
            return await self.writer.submit(_Delivery(context.tenant_id, context.id, event, text))
        except IntegrityError:  # PostgreSQL: the same event stored by another process first
            async with self.db.read() as conn:
                found = await _existing(conn, [(context.id, event.id)])
            if not found:
                raise
            return Received(found[(context.id, event.id)], True, None)

    async def _store(self, uow: UnitOfWork, deliveries: list[_Delivery]) -> list[Received]:
        """Write the new deliveries of a batch with their jobs; the others are duplicates."""
        found = await _existing(uow.conn, [(d.connection_id, d.event.id) for d in deliveries])
        results: list[Received | None] = [None] * len(deliveries)
        fresh: list[tuple[int, str]] = []
        for i, delivery in enumerate(deliveries):
            key = (delivery.connection_id, delivery.event.id)
            if key in found:  # stored before, or earlier in this batch
                results[i] = Received(found[key], True, None)
            else:
                found[key] = new_id("inbound_delivery")
                fresh.append((i, found[key]))
        if fresh:
            job_ids = await jobs.enqueue_many_in(
                uow, JOB_KIND, [({"inbox_id": inbox_id}, deliveries[i].tenant_id) for i, inbox_id in fresh])
            now = jsonutil.utcnow()
            rows = []
            for (i, inbox_id), job_id in zip(fresh, job_ids, strict=True):
                delivery = deliveries[i]
                rows.append({
                    "id": inbox_id, "tenant_id": delivery.tenant_id, "connection_id": delivery.connection_id,
                    "vendor_event_id": delivery.event.id, "event_type": delivery.event.type,
                    "occurred_at": delivery.event.occurred_at, "received_at": now, "body": delivery.text,
                    "status": "received", "job_id": job_id, "attempts": 0, "processed_at": None, "last_error": None,
                })
                results[i] = Received(inbox_id, False, job_id)
            await uow.conn.execute(insert(t.webhook_inbox), rows)
        return [r for r in results if r is not None]


async def _existing(conn: Any, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """``(connection id, vendor event id) -> inbox id`` for those of ``keys`` already stored."""
    rows = (await conn.execute(select(
        t.webhook_inbox.c.connection_id, t.webhook_inbox.c.vendor_event_id, t.webhook_inbox.c.id).where(
        t.webhook_inbox.c.connection_id.in_({c for c, _ in keys}),
        t.webhook_inbox.c.vendor_event_id.in_({e for _, e in keys})))).all()
    wanted = set(keys)
    return {(c, e): i for c, e, i in rows if (c, e) in wanted}


async def process(db: Database, connections: Any, inbox_id: str, *, attempt: int, last_attempt: bool) -> None:
    """Apply one stored delivery to the cache (the ``webhook`` job); a processed row is skipped.

    Raises:
        whatever ``apply_webhook`` raises, after recording it on the row (``failed`` on the last
        attempt); the job machinery retries.
    """
    async with db.read() as conn:
        row = (await conn.execute(select(t.webhook_inbox).where(t.webhook_inbox.c.id == inbox_id))).first()
    if row is None or row.status == "processed":
        return
    connector = await connections.connector_for(row.tenant_id, row.connection_id)
    event = InboundEvent(id=row.vendor_event_id, type=row.event_type, occurred_at=row.occurred_at,
                         payload=jsonutil.loads(row.body))
    # The connector's last cache write stays open and the row's ``processed`` joins it: the
    # delivery is processed if and only if its writes committed. Inside the ``webhook`` job's own
    # holding scope the job's ``done`` joins them too (gateway/workers/dispatch.py).
    async with db.holding():
        try:
            await connector.apply_webhook(event)
        except Exception as exc:
            final = last_attempt or (isinstance(exc, VendorError) and not exc.retryable)
            async with db.transaction() as uow:
                await uow.conn.execute(update(t.webhook_inbox).where(t.webhook_inbox.c.id == inbox_id).values(
                    attempts=attempt, last_error=f"{exc.__class__.__name__}: {exc}"[:2000],
                    status="failed" if final else "received"))
            raise
        async with db.transaction(join_held=True) as uow:
            await uow.conn.execute(update(t.webhook_inbox).where(t.webhook_inbox.c.id == inbox_id).values(
                attempts=attempt, last_error=None, status="processed", processed_at=jsonutil.utcnow()))
