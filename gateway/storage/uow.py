"""The unit of work: one write transaction plus the events it emits (the outbox).

Events are collected while the transaction runs and written at its end: one
``UPDATE event_counters ... RETURNING last_seq`` reserves a block of ``seq`` numbers and holds
the tenant's counter row locked until commit, so on PostgreSQL transactions of a tenant commit
in ``seq`` order and a reader of ``/v1/events`` never sees a later seq before an earlier one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import jsonutil
from gateway.ids import new_id
from gateway.storage import tables as t
from gateway.storage.outbox import EndpointCache, fan_out

# Built once: every write transaction runs them.
_RESERVE_SEQS = (
    update(t.event_counters)
    .where(t.event_counters.c.tenant_id == bindparam("b_tenant"))
    .values(last_seq=t.event_counters.c.last_seq + bindparam("b_count"))
    .returning(t.event_counters.c.last_seq, t.event_counters.c.endpoints_version)
)
_INSERT_EVENTS = insert(t.events)


@dataclass
class PendingEvent:
    """An event to be written when the transaction ends."""

    type: str
    connection_id: str | None
    data: dict[str, Any]
    changed: list[str]
    id: str = field(default_factory=lambda: new_id("event"))
    seq: int | None = None
    encoded: str | None = None  # ``data`` as JSON text, when the caller has it already


class UnitOfWork:
    """A write transaction: ``conn`` for statements, :meth:`emit` for events.

    Attributes:
        conn: the transaction's connection.
        tenant_id: the tenant whose events may be emitted.
        events: events emitted so far; their ``seq`` is set once written.
        after_commit: callbacks run after a successful commit (cache invalidation, doorbells).
        jobs: ids of jobs queued in this transaction to ring once it committed (the
            :class:`~gateway.storage.db.Database`'s ``job_listeners``: the dispatcher).
        endpoints: the webhook endpoints cache events are fanned out with (``None``: no fan-out,
            only for tools that write events outside a :class:`~gateway.storage.db.Database`).
    """

    def __init__(self, conn: AsyncConnection, tenant_id: str | None, *, dialect: str,
                 endpoints: EndpointCache | None = None) -> None:
        self.conn = conn
        self.endpoints = endpoints
        self.tenant_id = tenant_id
        self.dialect = dialect
        self.events: list[PendingEvent] = []
        self.after_commit: list[Callable[[], None]] = []
        self.jobs: list[str] = []
        self.committed = False

    def emit(self, type: str, connection_id: str | None, data: dict[str, Any], changed: list[str],
             *, encoded: str | None = None) -> PendingEvent:
        """Queue an event; it commits with the transaction or not at all.

        ``encoded``: ``data`` already encoded by :func:`gateway.jsonutil.dumps` (a record's stored
        text), to save encoding it again; it must be exactly that encoding of ``data``.

        Raises:
            RuntimeError: the unit of work has no tenant.
        """
        if self.tenant_id is None:
            raise RuntimeError("this transaction has no tenant to emit events for")
        pending = PendingEvent(type=type, connection_id=connection_id, data=data, changed=changed, encoded=encoded)
        self.events.append(pending)
        return pending

    async def flush_events(self) -> None:
        """Assign ``seq`` numbers, insert queued events and their webhook deliveries
        (:func:`gateway.storage.outbox.fan_out`); called by the database before commit."""
        if not self.events:
            return
        count = len(self.events)
        result = await self.conn.execute(_RESERVE_SEQS, {"b_tenant": self.tenant_id, "b_count": count})
        row = result.first()
        if row is None:
            raise RuntimeError(f"tenant {self.tenant_id} has no event counter")
        first, version = row[0] - count + 1, row[1]
        now = jsonutil.utcnow()
        rows = []
        for offset, pending in enumerate(self.events):
            pending.seq = first + offset
            rows.append(
                {
                    "id": pending.id,
                    "tenant_id": self.tenant_id,
                    "seq": pending.seq,
                    "type": pending.type,
                    "connection_id": pending.connection_id,
                    "occurred_at": now,
                    "data": pending.encoded if pending.encoded is not None else jsonutil.dumps(pending.data).decode(),
                    "changed": jsonutil.dumps(pending.changed).decode(),
                }
            )
        await self.conn.execute(_INSERT_EVENTS, rows)
        if self.endpoints is not None:
            await fan_out(self, self.events, version, self.endpoints)
