"""The webhook inbox: inbound vendor deliveries, stored before they are acknowledged.

``POST /hooks/{connection_id}`` has the connector verify a delivery
(:meth:`~gateway.sdk.connector.Connector.verify_webhook`), then :func:`receive` stores it in one
transaction with the job that will process it, and only then does the route answer 2xx: a
delivery the vendor saw acknowledged is on disk, and so is the work it calls for. The vendor's
retries and duplicates (same event id) find the stored row and add nothing.

The ``webhook`` job (:func:`process`) hands the stored delivery to
:meth:`~gateway.sdk.connector.Connector.apply_webhook`, which updates the records cache with a
version guard (the vendor's ``updated_at``), so a delivery processed twice, or out of order, or
after a poll that already saw a newer version, changes nothing. A failing delivery is retried
on the job schedule (the vendor's ``Retry-After`` when it gave one); after the last attempt the
row is ``failed`` with the error, and the next poll reconciles the cache anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import jsonutil
from gateway.errors import VendorError
from gateway.ids import new_id
from gateway.sdk.connector import Connector, InboundEvent
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.workers import jobs

JOB_KIND = "webhook"


@dataclass(frozen=True)
class Received:
    """What :func:`receive` did: the inbox row's ``id``; ``duplicate`` when the event was stored
    before (``job_id`` is then ``None``: nothing new to do)."""

    id: str
    duplicate: bool
    job_id: str | None


async def _existing(conn: Any, connection_id: str, event_id: str) -> str | None:
    row = (await conn.execute(select(t.webhook_inbox.c.id).where(
        t.webhook_inbox.c.connection_id == connection_id, t.webhook_inbox.c.vendor_event_id == event_id))).first()
    return None if row is None else row[0]


async def receive(db: Database, connector: Connector, event: InboundEvent, body: bytes) -> Received:
    """Store a verified delivery and its processing job in one transaction (durable on return).

    Args:
        event: what ``connector.verify_webhook`` made of the delivery.
        body: the raw body as received (kept as UTF-8 text; the vendor's JSON).

    Raises:
        gateway.errors.WebhookMalformed: the body is not UTF-8.
    """
    from gateway.errors import WebhookMalformed

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookMalformed("the webhook body is not UTF-8") from exc
    context = connector.context
    inbox_id = new_id("inbound_delivery")
    now = jsonutil.utcnow()
    try:
        async with db.transaction(context.tenant_id) as uow:
            found = await _existing(uow.conn, context.id, event.id)
            if found is not None:
                return Received(found, True, None)
            job_id = await jobs.enqueue_in(uow, JOB_KIND, {"inbox_id": inbox_id}, tenant_id=context.tenant_id)
            await uow.conn.execute(insert(t.webhook_inbox).values(
                id=inbox_id, tenant_id=context.tenant_id, connection_id=context.id, vendor_event_id=event.id,
                event_type=event.type, occurred_at=event.occurred_at, received_at=now, body=text,
                status="received", job_id=job_id, attempts=0,
            ))
    except IntegrityError:  # PostgreSQL: the same event stored by a concurrent request first
        async with db.read() as conn:
            found = await _existing(conn, context.id, event.id)
        if found is None:
            raise
        return Received(found, True, None)
    return Received(inbox_id, False, job_id)


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
    try:
        await connector.apply_webhook(event)
    except Exception as exc:
        final = last_attempt or (isinstance(exc, VendorError) and not exc.retryable)
        async with db.transaction() as uow:
            await uow.conn.execute(update(t.webhook_inbox).where(t.webhook_inbox.c.id == inbox_id).values(
                attempts=attempt, last_error=f"{exc.__class__.__name__}: {exc}"[:2000],
                status="failed" if final else "received"))
        raise
    async with db.transaction() as uow:
        await uow.conn.execute(update(t.webhook_inbox).where(t.webhook_inbox.c.id == inbox_id).values(
            attempts=attempt, last_error=None, status="processed", processed_at=jsonutil.utcnow()))
