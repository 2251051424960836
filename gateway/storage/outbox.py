"""The outbox's second half: every event that matches a webhook endpoint becomes a delivery row
in the same transaction as the event (``webhook_deliveries``, see
:mod:`gateway.services.webhook_endpoints` and :mod:`gateway.workers.deliveries`).

Matching needs the tenant's enabled endpoints. They are cached per process and per database,
keyed by the tenant's ``event_counters.endpoints_version``: every change to an endpoint bumps
that number in its own transaction, and the unit of work reads it with the seq reservation
(which locks the counter row), so a transaction's events are matched against exactly the
endpoints that existed when its seqs were assigned, with no extra query while nothing changed.

Patterns (``webhook_endpoints.events``): ``*`` matches every type, ``<noun>.*`` every type of
that noun (``order.*``), anything else one type exactly. ``connection_ids`` ``None`` matches every
connection; a list matches events of those connections only (an event with no connection, such
as a tenant-level one, matches only endpoints without a list).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from gateway import jsonutil
from gateway.ids import new_id
from gateway.storage import tables as t

if TYPE_CHECKING:
    from gateway.storage.uow import PendingEvent, UnitOfWork

_INSERT_DELIVERIES = insert(t.webhook_deliveries)


def pattern_matches(pattern: str, event_type: str) -> bool:
    """Whether one subscription pattern (``*``, ``order.*``, ``order.created``) covers ``event_type``."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


@dataclass(frozen=True)
class Subscription:
    """An enabled endpoint as the outbox matches it."""

    endpoint_id: str
    patterns: tuple[str, ...]
    connection_ids: frozenset[str] | None

    def matches(self, event_type: str, connection_id: str | None) -> bool:
        """Whether an event of ``event_type`` on ``connection_id`` goes to this endpoint."""
        if self.connection_ids is not None and connection_id not in self.connection_ids:
            return False
        return any(pattern_matches(pattern, event_type) for pattern in self.patterns)


class EndpointCache:
    """The enabled endpoints of each tenant, valid for one ``endpoints_version`` (one per
    :class:`~gateway.storage.db.Database`)."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, tuple[int, tuple[Subscription, ...]]] = {}
        #: Called (no arguments) after a commit that created deliveries: the delivery workers'
        #: doorbells. Exceptions are the callee's problem; keep them fast.
        self.listeners: list[Callable[[], None]] = []

    async def subscriptions(self, uow: UnitOfWork, version: int) -> tuple[Subscription, ...]:
        """The tenant's enabled endpoints at ``version``, read inside ``uow`` when not cached."""
        tenant_id = uow.tenant_id
        assert tenant_id is not None
        cached = self._by_tenant.get(tenant_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        rows = (await uow.conn.execute(
            select(t.webhook_endpoints.c.id, t.webhook_endpoints.c.events, t.webhook_endpoints.c.connection_ids)
            .where(t.webhook_endpoints.c.tenant_id == tenant_id, t.webhook_endpoints.c.status == "enabled",
                   t.webhook_endpoints.c.deleted_at.is_(None))
            .order_by(t.webhook_endpoints.c.id)
        )).all()
        subscriptions = tuple(
            Subscription(row.id, tuple(jsonutil.loads(row.events)),
                         None if row.connection_ids is None else frozenset(jsonutil.loads(row.connection_ids)))
            for row in rows
        )
        self._by_tenant[tenant_id] = (version, subscriptions)
        return subscriptions

    def ring(self) -> None:
        """Tell every listener that deliveries are waiting."""
        for listener in list(self.listeners):
            listener()


async def fan_out(uow: UnitOfWork, events: Iterable[PendingEvent], version: int, cache: EndpointCache) -> int:
    """Insert one ``pending`` delivery per (event, matching endpoint) in ``uow``; return how many.

    Called by :meth:`UnitOfWork.flush_events` after the events are written, with the tenant's
    ``endpoints_version`` read under the counter lock. Rings ``cache.listeners`` after commit
    when it created any.
    """
    subscriptions = await cache.subscriptions(uow, version)
    if not subscriptions:
        return 0
    now = jsonutil.utcnow()
    rows: list[dict[str, Any]] = []
    for event in events:
        for subscription in subscriptions:
            if subscription.matches(event.type, event.connection_id):
                rows.append({
                    "id": new_id("delivery"), "tenant_id": uow.tenant_id, "endpoint_id": subscription.endpoint_id,
                    "event_id": event.id, "seq": event.seq, "event_type": event.type, "status": "pending",
                    "attempts": 0, "next_attempt_at": now, "created_at": now, "updated_at": now,
                })
    if rows:
        await uow.conn.execute(_INSERT_DELIVERIES, rows)
        uow.after_commit.append(cache.ring)
    return len(rows)
