"""Reading the change log (``GET /v1/events``).

``seq`` is per tenant, strictly increasing and gap-free; because seqs are assigned under the
tenant's counter lock just before commit (see :mod:`gateway.storage.uow`), a reader paging
with ``after`` never skips an event that commits later.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.jsonutil import rfc3339
from gateway.storage import tables as t


def render_event(row) -> bytes:  # type: ignore[no-untyped-def]
    """An ``events`` row as the JSON bytes ``GET /v1/events`` and webhook deliveries send."""
    return (
        b'{"id":"' + row.id.encode() + b'","seq":' + str(row.seq).encode()
        + b',"type":"' + row.type.encode() + b'","connection_id":'
        + (b'"' + row.connection_id.encode() + b'"' if row.connection_id else b"null")
        + b',"occurred_at":"' + rfc3339(row.occurred_at).encode() + b'","data":' + row.data.encode()
        + b',"changed":' + row.changed.encode() + b"}"
    )


async def list_events(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    after: int = 0,
    limit: int = 100,
    types: list[str] | None = None,
    connection_id: str | None = None,
) -> tuple[list[bytes], int]:
    """Events with ``seq > after`` in seq order, as JSON bytes, and the ``next_after`` to ask for.

    Args:
        types: event types; an entry ending in ``.*`` matches every type with that prefix.
    """
    query = select(t.events).where(t.events.c.tenant_id == tenant_id, t.events.c.seq > after)
    if types:
        clauses = []
        for pattern in types:
            if pattern == "*":
                clauses = []
                break
            if pattern.endswith(".*"):
                clauses.append(t.events.c.type.startswith(pattern[:-1], autoescape=True))
            else:
                clauses.append(t.events.c.type == pattern)
        if clauses:
            from sqlalchemy import or_

            query = query.where(or_(*clauses))
    if connection_id:
        query = query.where(t.events.c.connection_id == connection_id)
    rows = (await conn.execute(query.order_by(t.events.c.seq).limit(limit))).all()
    next_after = rows[-1].seq if rows else after
    return [render_event(row) for row in rows], next_after


async def last_seq(conn: AsyncConnection, tenant_id: str) -> int:
    """The tenant's highest assigned seq (0 when none)."""
    row = (await conn.execute(select(t.event_counters.c.last_seq).where(t.event_counters.c.tenant_id == tenant_id))).first()
    return 0 if row is None else int(row[0])
