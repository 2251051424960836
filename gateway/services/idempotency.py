"""``Idempotency-Key`` semantics for writes.

Same key and same request (method, path, body) replays the stored response; same key and a
different request answers 422 ``idempotency_key_reused``; while the first is in flight, 409
``idempotency_request_in_progress``. Keys are scoped to the tenant and kept
``idempotency_ttl_hours`` (at least 24 h).

Crash safety: the claim is a row written before the work starts. The work's own transaction
marks the claim ``committed`` (a pre-commit hook, through :data:`gateway.storage.db.PRECOMMIT`), so a request that
died after its write committed is never executed twice; one that died before committing can be
retried once its claim is older than :data:`IN_FLIGHT_TIMEOUT`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.errors import BadRequest, Conflict, IdempotencyInFlight, IdempotencyKeyReused
from gateway.jsonutil import utcnow
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.uow import UnitOfWork

IN_FLIGHT_TIMEOUT = timedelta(minutes=5)
MAX_KEY_LENGTH = 255



@dataclass
class StoredResponse:
    """A response kept for replay."""

    status_code: int
    body: bytes


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 hex of the request's method, path and body."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def check_key(key: str) -> str:
    """Validate an ``Idempotency-Key`` header value.

    Raises:
        BadRequest: ``invalid_idempotency_key`` when empty, too long or not printable ASCII.
    """
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters", code="invalid_idempotency_key"
        )
    return key


class IdempotencyClaim:
    """A claimed key for one request; see the module docstring for the life cycle."""

    def __init__(self, db: Database, tenant_id: str, key: str, ttl_hours: int) -> None:
        self.db = db
        self.tenant_id = tenant_id
        self.key = key
        self.ttl = timedelta(hours=ttl_hours)
        self.committed = False

    def _where(self):  # type: ignore[no-untyped-def]
        return (t.idempotency_keys.c.tenant_id == self.tenant_id) & (t.idempotency_keys.c.key == self.key)

    async def claim(self, fingerprint: str) -> StoredResponse | None:
        """Claim the key; return the stored response when this is a replay.

        Raises:
            IdempotencyKeyReused: the key was used for another request.
            IdempotencyInFlight: the first request with this key is still running.
            Conflict: ``idempotency_outcome_unknown`` when the first request committed but its
                response was lost (the server stopped in between): a claim ``committed`` for longer
                than :data:`IN_FLIGHT_TIMEOUT`; a younger one is still in flight (its response is
                being stored).
        """
        now = utcnow()
        try:
            async with self.db.transaction() as uow:
                row = (await uow.conn.execute(select(t.idempotency_keys).where(self._where()))).mappings().first()
                if row is not None and row["expires_at"] <= now:
                    await uow.conn.execute(delete(t.idempotency_keys).where(self._where()))
                    row = None
                if row is not None:
                    if row["request_hash"] != fingerprint:
                        raise IdempotencyKeyReused(
                            "this Idempotency-Key was used with a different request; use a new key"
                        )
                    if row["state"] == "done":
                        return StoredResponse(row["status_code"], (row["response_body"] or "").encode())
                    if row["state"] == "committed" and now - row["created_at"] < IN_FLIGHT_TIMEOUT:
                        # committed, its response being stored this instant (or its process just died):
                        # a retry shortly after gets the stored response
                        raise IdempotencyInFlight("a request with this Idempotency-Key is still being processed")
                    if row["state"] == "committed":
                        raise Conflict(
                            "the request with this Idempotency-Key was applied but its response was lost; "
                            "read the resource instead of retrying",
                            code="idempotency_outcome_unknown",
                        )
                    if now - row["created_at"] < IN_FLIGHT_TIMEOUT:
                        raise IdempotencyInFlight("a request with this Idempotency-Key is still being processed")
                    await uow.conn.execute(update(t.idempotency_keys).where(self._where()).values(created_at=now))
                    return None
                await uow.conn.execute(
                    insert(t.idempotency_keys).values(
                        tenant_id=self.tenant_id,
                        key=self.key,
                        request_hash=fingerprint,
                        state="in_flight",
                        created_at=now,
                        expires_at=now + self.ttl,
                    )
                )
        except IntegrityError as exc:  # a concurrent request inserted the same key first
            raise IdempotencyInFlight("a request with this Idempotency-Key is still being processed") from exc
        return None

    async def mark_committed(self, uow: UnitOfWork) -> None:
        """Pre-commit hook: record, inside the work's own transaction, that it committed."""
        if not self.committed:
            await uow.conn.execute(update(t.idempotency_keys).where(self._where()).values(state="committed"))
            self.committed = True

    async def complete(self, status_code: int, body: bytes) -> None:
        """Store the response for replays."""
        async with self.db.transaction() as uow:
            await uow.conn.execute(
                update(t.idempotency_keys)
                .where(self._where())
                .values(state="done", status_code=status_code, response_body=body.decode())
            )

    async def release(self) -> None:
        """Forget the claim of a request that failed before writing anything, so it can be retried."""
        async with self.db.transaction() as uow:
            await uow.conn.execute(
                delete(t.idempotency_keys).where(self._where()).where(t.idempotency_keys.c.state == "in_flight")
            )


async def purge_expired(db: Database) -> int:
    """Delete expired keys; return how many."""
    async with db.transaction() as uow:
        result = await uow.conn.execute(delete(t.idempotency_keys).where(t.idempotency_keys.c.expires_at <= utcnow()))
        return result.rowcount or 0
