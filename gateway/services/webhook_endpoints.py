"""Webhook endpoints as a service: subscribe, change, enable/disable, delete; the delivery log;
manual retry; replay from a ``seq``.

Every change to an endpoint bumps the tenant's ``event_counters.endpoints_version`` in the same
transaction, which tells every process's outbox (:mod:`gateway.storage.outbox`) to reload its
subscriptions before matching the next event; because that row is also what orders events, an
endpoint receives exactly the matching events whose seq was assigned after it was created or
enabled. A disabled endpoint gets no new deliveries (``replay`` fills the gap if wanted); its
pending ones wait and go out in order once it is enabled again. Deleting cancels pending ones.

The ``whsec_`` secret is kept as ciphertext bound to (tenant, endpoint) and shown once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from standardwebhooks.webhooks import Webhook

from gateway import jsonutil
from gateway.crypto import CredentialCipher
from gateway.errors import NotFound, ValidationFailed
from gateway.ids import new_id
from gateway.model.webhooks import ReplayRequest, WebhookEndpointCreate, WebhookEndpointUpdate
from gateway.netguard import UrlRefused, check_url
from gateway.services.deliveries import new_secret
from gateway.services.records import decode_cursor, encode_cursor, keyset_page
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.outbox import Subscription
from gateway.storage.uow import UnitOfWork

#: Most events one replay request queues.
REPLAY_LIMIT = 10_000


def render_endpoint(row: Any, *, secret: str | None = None) -> dict[str, Any]:
    """The API's WebhookEndpoint for a ``webhook_endpoints`` row (``secret`` only when given)."""
    out = {
        "id": row.id, "url": row.url, "description": row.description, "events": jsonutil.loads(row.events),
        "connection_ids": None if row.connection_ids is None else jsonutil.loads(row.connection_ids),
        "status": row.status, "disabled_reason": row.disabled_reason,
        "created_at": jsonutil.rfc3339(row.created_at), "updated_at": jsonutil.rfc3339(row.updated_at),
    }
    if secret is not None:
        out["secret"] = secret
    return out


def render_delivery(row: Any, attempts: list[Any] | None = None) -> dict[str, Any]:
    """The API's WebhookDelivery for a ``webhook_deliveries`` row (with ``attempt_log`` when
    ``attempts`` rows are given)."""
    out: dict[str, Any] = {
        "id": row.id, "endpoint_id": row.endpoint_id, "event_id": row.event_id, "seq": row.seq,
        "event_type": row.event_type, "status": row.status, "attempts": row.attempts,
        "next_attempt_at": jsonutil.rfc3339(row.next_attempt_at) if row.status == "pending" else None,
        "last_attempt_at": jsonutil.rfc3339(row.last_attempt_at), "last_status_code": row.last_status_code,
        "last_error": row.last_error, "delivered_at": jsonutil.rfc3339(row.delivered_at),
        "created_at": jsonutil.rfc3339(row.created_at),
    }
    if attempts is not None:
        out["attempt_log"] = [
            {"attempt": a.attempt, "attempted_at": jsonutil.rfc3339(a.attempted_at), "status_code": a.status_code,
             "error": a.error, "duration_ms": a.duration_ms, "response_body": a.response_body}
            for a in attempts
        ]
    return out


async def bump_version(uow: UnitOfWork, tenant_id: str) -> None:
    """Invalidate every process's cached subscriptions of ``tenant_id`` (inside ``uow``)."""
    await uow.conn.execute(
        update(t.event_counters).where(t.event_counters.c.tenant_id == tenant_id)
        .values(endpoints_version=t.event_counters.c.endpoints_version + 1)
    )


class WebhookEndpointService:
    """``/v1/webhook-endpoints`` and what the delivery worker needs from endpoints (secrets)."""

    def __init__(self, db: Database, cipher: CredentialCipher, *, allow_private: bool) -> None:
        self.db = db
        self.cipher = cipher
        self.allow_private = allow_private
        self._signers: dict[tuple[str, str], Webhook] = {}

    # -- endpoints -------------------------------------------------------------------------------
    def _check_url(self, url: str) -> str:
        try:
            return check_url(url, allow_private=self.allow_private)
        except UrlRefused as exc:
            raise ValidationFailed(str(exc), code="webhook_url_refused", reason=exc.reason,
                                   errors=[{"loc": ["body", "url"], "msg": str(exc), "type": exc.reason}]) from exc

    async def _check_connections(self, conn: Any, tenant_id: str, connection_ids: list[str] | None) -> list[str] | None:
        if connection_ids is None:
            return None
        wanted = list(dict.fromkeys(connection_ids))
        found = {row[0] for row in (await conn.execute(
            select(t.connections.c.id).where(t.connections.c.tenant_id == tenant_id, t.connections.c.id.in_(wanted),
                                             t.connections.c.deleted_at.is_(None))
        )).all()}
        missing = [cid for cid in wanted if cid not in found]
        if missing:
            raise ValidationFailed(
                f"no connection {missing[0]!r} on this account", code="unknown_connection",
                errors=[{"loc": ["body", "connection_ids", connection_ids.index(cid)], "msg": "no such connection",
                         "type": "unknown_connection"} for cid in missing])
        return wanted

    async def create(self, tenant_id: str, body: WebhookEndpointCreate) -> dict[str, Any]:
        """Subscribe; the answer holds the ``whsec_`` secret, the only time it is shown.

        Raises:
            ValidationFailed: ``webhook_url_refused`` (see :func:`gateway.netguard.check_url`),
                ``unknown_connection``.
        """
        url = self._check_url(body.url)
        endpoint_id = new_id("webhook_endpoint")
        secret = new_secret()
        now = jsonutil.utcnow()
        async with self.db.transaction(tenant_id) as uow:
            connection_ids = await self._check_connections(uow.conn, tenant_id, body.connection_ids)
            await uow.conn.execute(insert(t.webhook_endpoints).values(
                id=endpoint_id, tenant_id=tenant_id, url=url, description=body.description,
                events=jsonutil.dumps(body.events).decode(),
                connection_ids=None if connection_ids is None else jsonutil.dumps(connection_ids).decode(),
                secret=self.cipher.encrypt(secret.encode(), tenant_id=tenant_id, connection_id=endpoint_id),
                status="enabled", created_at=now, updated_at=now,
            ))
            await bump_version(uow, tenant_id)
        return render_endpoint(await self._row(tenant_id, endpoint_id), secret=secret)

    async def _row(self, tenant_id: str, endpoint_id: str) -> Any:
        async with self.db.read() as conn:
            row = (await conn.execute(select(t.webhook_endpoints).where(
                t.webhook_endpoints.c.id == endpoint_id, t.webhook_endpoints.c.tenant_id == tenant_id,
                t.webhook_endpoints.c.deleted_at.is_(None)))).first()
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        return row

    async def get(self, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
        """One endpoint (no secret).

        Raises:
            NotFound: no such endpoint of this tenant (or it was deleted).
        """
        return render_endpoint(await self._row(tenant_id, endpoint_id))

    async def list(self, tenant_id: str, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the tenant's endpoints, oldest first, and the cursor of the next page."""
        c = t.webhook_endpoints.c
        query = select(t.webhook_endpoints).where(c.tenant_id == tenant_id, c.deleted_at.is_(None))
        async with self.db.read() as conn:
            rows, next_cursor = await keyset_page(conn, t.webhook_endpoints, query, limit=limit, cursor=cursor)
        return [render_endpoint(row) for row in rows], next_cursor

    async def update(self, tenant_id: str, endpoint_id: str, body: WebhookEndpointUpdate) -> dict[str, Any]:
        """Change the members sent. Enabling clears ``disabled_reason`` and resumes pending
        deliveries; disabling (``disabled_reason: manual``) holds them.

        Raises:
            NotFound: no such endpoint.
            ValidationFailed: as :meth:`create`, or ``null`` sent for ``url`` / ``events``.
        """
        sent = body.model_fields_set
        for name in ("url", "events", "status"):
            if name in sent and getattr(body, name) is None:
                raise ValidationFailed(f"{name} cannot be null", errors=[
                    {"loc": ["body", name], "msg": "may not be null", "type": "null_not_allowed"}])
        await self._row(tenant_id, endpoint_id)
        values: dict[str, Any] = {"updated_at": jsonutil.utcnow()}
        if body.url is not None:
            values["url"] = self._check_url(body.url)
        if body.events is not None:
            values["events"] = jsonutil.dumps(body.events).decode()
        if "description" in sent:
            values["description"] = body.description
        if body.status == "enabled":
            values.update(status="enabled", disabled_reason=None, retry_at=None)
        elif body.status == "disabled":
            values.update(status="disabled", disabled_reason="manual")
        async with self.db.transaction(tenant_id) as uow:
            if "connection_ids" in sent:
                ids = await self._check_connections(uow.conn, tenant_id, body.connection_ids)
                values["connection_ids"] = None if ids is None else jsonutil.dumps(ids).decode()
            await uow.conn.execute(update(t.webhook_endpoints).where(
                t.webhook_endpoints.c.id == endpoint_id, t.webhook_endpoints.c.tenant_id == tenant_id,
                t.webhook_endpoints.c.deleted_at.is_(None)).values(**values))
            await bump_version(uow, tenant_id)
            if body.status == "enabled":
                uow.after_commit.append(self.db.endpoints.ring)
        return await self.get(tenant_id, endpoint_id)

    async def delete(self, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
        """Delete (soft): no new deliveries, pending ones ``cancelled``; the log stays readable
        to nobody (the endpoint answers 404 from now on). Returns the endpoint as it was.

        Raises:
            NotFound: no such endpoint.
        """
        row = await self._row(tenant_id, endpoint_id)
        now = jsonutil.utcnow()
        async with self.db.transaction(tenant_id) as uow:
            await uow.conn.execute(update(t.webhook_endpoints).where(t.webhook_endpoints.c.id == endpoint_id)
                                   .values(deleted_at=now, updated_at=now, status="disabled"))
            await uow.conn.execute(update(t.webhook_deliveries).where(
                t.webhook_deliveries.c.endpoint_id == endpoint_id, t.webhook_deliveries.c.status == "pending",
            ).values(status="cancelled", updated_at=now))
            await bump_version(uow, tenant_id)
        return {**render_endpoint(row), "deleted": True}

    # -- deliveries ------------------------------------------------------------------------------
    async def deliveries(self, tenant_id: str, endpoint_id: str, *, status: str | None, limit: int,
                         cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """The delivery log, newest first (by creation), optionally of one ``status``."""
        await self._row(tenant_id, endpoint_id)
        c = t.webhook_deliveries.c
        query = select(t.webhook_deliveries).where(c.endpoint_id == endpoint_id)
        if status:
            query = query.where(c.status == status)
        if cursor:
            before_time, before_id = decode_cursor(cursor)
            query = query.where(or_(c.created_at < before_time, and_(c.created_at == before_time, c.id < before_id)))
        async with self.db.read() as conn:
            rows = (await conn.execute(query.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1))).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return [render_delivery(row) for row in rows], encode_cursor(rows[-1].created_at, rows[-1].id) if more else None

    async def delivery(self, tenant_id: str, endpoint_id: str, delivery_id: str) -> dict[str, Any]:
        """One delivery with its ``attempt_log``.

        Raises:
            NotFound: no such endpoint or delivery.
        """
        await self._row(tenant_id, endpoint_id)
        async with self.db.read() as conn:
            row = (await conn.execute(select(t.webhook_deliveries).where(
                t.webhook_deliveries.c.id == delivery_id, t.webhook_deliveries.c.endpoint_id == endpoint_id))).first()
            if row is None:
                raise NotFound(f"no delivery {delivery_id!r} to this endpoint")
            attempts = (await conn.execute(select(t.webhook_attempts).where(
                t.webhook_attempts.c.delivery_id == delivery_id).order_by(
                t.webhook_attempts.c.attempted_at, t.webhook_attempts.c.id))).all()
        return render_delivery(row, attempts)

    async def retry(self, tenant_id: str, endpoint_id: str, delivery_id: str) -> dict[str, Any]:
        """Send a delivery again now (``pending``, a fresh retry schedule); any status but
        ``cancelled``. It goes out in ``seq`` order with the endpoint's other pending ones.

        Raises:
            NotFound: no such endpoint or delivery.
            Conflict: ``delivery_cancelled``.
        """
        from gateway.errors import Conflict

        await self._row(tenant_id, endpoint_id)
        now = jsonutil.utcnow()
        async with self.db.transaction(tenant_id) as uow:
            row = (await uow.conn.execute(select(t.webhook_deliveries.c.status).where(
                t.webhook_deliveries.c.id == delivery_id, t.webhook_deliveries.c.endpoint_id == endpoint_id))).first()
            if row is None:
                raise NotFound(f"no delivery {delivery_id!r} to this endpoint")
            if row.status == "cancelled":
                raise Conflict("the delivery was cancelled with its endpoint", code="delivery_cancelled")
            await uow.conn.execute(update(t.webhook_deliveries).where(t.webhook_deliveries.c.id == delivery_id).values(
                status="pending", attempts=0, next_attempt_at=now, updated_at=now))
            await uow.conn.execute(update(t.webhook_endpoints).where(t.webhook_endpoints.c.id == endpoint_id)
                                   .values(retry_at=None))
            uow.after_commit.append(self.db.endpoints.ring)
        return await self.delivery(tenant_id, endpoint_id, delivery_id)

    async def replay(self, tenant_id: str, endpoint_id: str, body: ReplayRequest) -> dict[str, Any]:
        """Deliver again every event with ``from_seq <= seq <= to_seq`` that matches the endpoint
        now (its current ``events`` and ``connection_ids``), in seq order, with their original
        ``webhook-id``. Existing deliveries of those events become ``pending`` again; the others
        are created. At most :data:`REPLAY_LIMIT` events per call.

        Returns:
            ``{"endpoint_id", "from_seq", "to_seq", "queued", "next_seq"}``: ``next_seq`` is the
            ``from_seq`` to send next when the limit stopped the replay early, else ``null``.

        Raises:
            NotFound: no such endpoint.
            ValidationFailed: ``to_seq`` below ``from_seq``.
        """
        if body.to_seq is not None and body.to_seq < body.from_seq:
            raise ValidationFailed("to_seq is below from_seq", errors=[
                {"loc": ["body", "to_seq"], "msg": "must be at least from_seq", "type": "invalid_range"}])
        row = await self._row(tenant_id, endpoint_id)
        subscription = Subscription(row.id, tuple(jsonutil.loads(row.events)),
                                    None if row.connection_ids is None else frozenset(jsonutil.loads(row.connection_ids)))
        e = t.events.c
        query = select(e.id, e.seq, e.type, e.connection_id).where(e.tenant_id == tenant_id, e.seq >= body.from_seq)
        if body.to_seq is not None:
            query = query.where(e.seq <= body.to_seq)
        now = jsonutil.utcnow()
        queued, next_seq, last_seen = 0, None, None
        async with self.db.transaction(tenant_id) as uow:
            rows = (await uow.conn.execute(query.order_by(e.seq).limit(REPLAY_LIMIT + 1))).all()
            if len(rows) > REPLAY_LIMIT:
                next_seq = rows[REPLAY_LIMIT].seq
                rows = rows[:REPLAY_LIMIT]
            matching = [r for r in rows if subscription.matches(r.type, r.connection_id)]
            last_seen = rows[-1].seq if rows else None
            existing: set[str] = set()
            for chunk in _chunks([r.id for r in matching], 500):
                existing.update(x[0] for x in (await uow.conn.execute(select(t.webhook_deliveries.c.event_id).where(
                    t.webhook_deliveries.c.endpoint_id == endpoint_id, t.webhook_deliveries.c.event_id.in_(chunk)))).all())
            for chunk in _chunks(sorted(existing), 500):
                await uow.conn.execute(update(t.webhook_deliveries).where(
                    t.webhook_deliveries.c.endpoint_id == endpoint_id, t.webhook_deliveries.c.event_id.in_(chunk),
                ).values(status="pending", attempts=0, next_attempt_at=now, updated_at=now))
            new_rows = [{"id": new_id("delivery"), "tenant_id": tenant_id, "endpoint_id": endpoint_id, "event_id": r.id,
                         "seq": r.seq, "event_type": r.type, "status": "pending", "attempts": 0, "next_attempt_at": now,
                         "created_at": now, "updated_at": now} for r in matching if r.id not in existing]
            if new_rows:
                await uow.conn.execute(insert(t.webhook_deliveries), new_rows)
            await uow.conn.execute(update(t.webhook_endpoints).where(t.webhook_endpoints.c.id == endpoint_id)
                                   .values(retry_at=None))
            queued = len(matching)
            if queued:
                uow.after_commit.append(self.db.endpoints.ring)
        return {"endpoint_id": endpoint_id, "from_seq": body.from_seq,
                "to_seq": body.to_seq if body.to_seq is not None else last_seen, "queued": queued, "next_seq": next_seq}

    # -- for the delivery worker -----------------------------------------------------------------
    def signer(self, row: Any) -> Webhook:
        """The ``standardwebhooks.Webhook`` of an endpoint row (its decrypted secret), cached per
        (endpoint, ciphertext)."""
        key = (row.id, row.secret)
        signer = self._signers.get(key)
        if signer is None:
            secret = self.cipher.decrypt(row.secret, tenant_id=row.tenant_id, connection_id=row.id).decode()
            if len(self._signers) > 10_000:
                self._signers.clear()
            signer = self._signers[key] = Webhook(secret)
        return signer

    async def pending_count(self, endpoint_id: str) -> int:
        """Pending deliveries of an endpoint (for status pages and tests)."""
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(t.webhook_deliveries).where(
                t.webhook_deliveries.c.endpoint_id == endpoint_id, t.webhook_deliveries.c.status == "pending"))).scalar())


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
