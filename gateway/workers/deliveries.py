"""The delivery worker: sends pending outbound webhook deliveries, each endpoint in ``seq`` order.

One :class:`DeliveryWorker` runs in every process that delivers: inside ``tillgate serve`` in
embedded mode, inside each ``tillgate worker`` in scale-out mode. It loops:

1. find enabled endpoints with pending deliveries whose head is due and that no live worker
   holds (``webhook_endpoints.lease_owner`` / ``lease_until``);
2. take each one's lease with a conditional ``UPDATE`` (so across processes one worker sends to
   an endpoint at a time, which is what keeps its order) and serve it in its own task, up to
   ``webhook_concurrency`` endpoints at once: a slow or failing endpoint holds one task, never
   the others;
3. sleep until a doorbell rings (a commit that created deliveries in this process, see
   :class:`gateway.storage.outbox.EndpointCache`; in scale-out, also the Redis channel
   :data:`CHANNEL` the API processes publish on), the earliest known retry comes due, or
   ``webhook_poll_seconds`` pass.

Serving an endpoint: read up to :data:`BATCH` pending deliveries in ``seq`` order (with their
events), POST them one after another while each answers 2xx (for at most :data:`RECORD_EVERY`
seconds), and record the outcomes, the attempt log and a renewed lease in one transaction per
batch; when the batch leaves nothing more to send now (it was the last, it failed, or the next
delivery is not yet due), that same transaction releases the lease, so serving an endpoint
costs two transactions (lease, record-and-release). The first failure stops the
batch: the delivery waits its retry (``retry_at`` on the endpoint) and the ones after it wait
behind it, so a receiver sees an endpoint's events in ``seq`` order; when the schedule runs out
it is ``failed`` and the queue moves on. A 410 disables the endpoint. Delivery is at least once:
a crash between a 2xx and its record sends that delivery again (same ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, insert, or_, select, update

from gateway import jsonutil
from gateway.aio import cancel_and_wait
from gateway.ids import new_id
from gateway.services.deliveries import AttemptResult, DeliverySender, retry_delay, signed_headers
from gateway.services.events import render_event
from gateway.services.webhook_endpoints import WebhookEndpointService, bump_version
from gateway.settings import Settings
from gateway.storage import tables as t
from gateway.storage.db import Database

log = logging.getLogger("tillgate.deliveries")

#: Deliveries read (and recorded) per transaction.
BATCH = 100
#: Seconds of sending after which a batch's outcomes are recorded (and the next batch read): what
#: a crash can make the worker send twice.
RECORD_EVERY = 0.25
#: Seconds an endpoint rests after an error of the gateway's own (not the receiver's).
ERROR_PAUSE = 30.0
#: The Redis pub/sub channel API processes ring in scale-out mode.
CHANNEL = "tillgate:deliveries"

_d, _e, _w = t.webhook_deliveries.c, t.events.c, t.webhook_endpoints.c

# What serving one batch left to do (DeliveryWorker._serve_batch).
_MORE = object()  # the endpoint may have more due now; the lease was renewed
_RELEASED = object()  # nothing more to send now; the batch's transaction released the lease
_STOP = object()  # not this worker's to serve (gone, disabled, lease lost): release what is left

_MARK_DELIVERED = (
    update(t.webhook_deliveries).where(_d.id == bindparam("b_id"))
    .values(status="delivered", attempts=bindparam("b_attempts"), last_attempt_at=bindparam("b_at"),
            last_status_code=bindparam("b_code"), last_error=None, delivered_at=bindparam("b_at"),
            updated_at=bindparam("b_at"))
)


class DeliveryWorker:
    """Sends pending deliveries (see the module docstring). ``start`` / ``stop``, or ``async with``.

    Args:
        db: the database (its outbox rings :meth:`ring`).
        endpoints: for the endpoints' signing secrets.
        settings: ``webhook_*`` settings (schedule, timeout, guard, concurrency, poll).
        sender: the HTTP side (default: a :class:`DeliverySender` from ``settings``).
    """

    def __init__(self, db: Database, endpoints: WebhookEndpointService, settings: Settings, *,
                 sender: DeliverySender | None = None) -> None:
        self.db = db
        self.endpoints = endpoints
        self.schedule = list(settings.webhook_retry_schedule)
        self.concurrency = settings.webhook_concurrency
        self.poll_seconds = settings.webhook_poll_seconds
        # An endpoint's lease outlives any batch (a batch takes no new attempt after RECORD_EVERY,
        # and one attempt is at most the timeout); a dead worker's endpoints wait this long.
        self.lease_seconds = max(4.0, settings.webhook_timeout_seconds * 4)
        self.sender = sender or DeliverySender(allow_private=settings.webhook_allow_private,
                                               timeout=settings.webhook_timeout_seconds)
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{new_id('request')[-8:]}"
        self._wake = asyncio.Event()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.delivered = 0  # deliveries this worker recorded as delivered (for benches and status)

    async def __aenter__(self) -> DeliveryWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def ring(self) -> None:
        """Look for due deliveries now (called after commits that created some)."""
        self._wake.set()

    async def start(self) -> None:
        """Start the loop and listen to this process's outbox."""
        self.db.endpoints.listeners.append(self.ring)
        self._loop_task = asyncio.create_task(self._run(), name="tillgate-deliveries")

    async def stop(self) -> None:
        """Stop sending: cancel the loop and endpoint tasks, release their leases, close HTTP.
        A delivery sent but not yet recorded is sent again later (at least once)."""
        with contextlib.suppress(ValueError):
            self.db.endpoints.listeners.remove(self.ring)
        tasks = [task for task in (self._loop_task, *self._active.values()) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            await cancel_and_wait(task)
        self._loop_task = None
        with contextlib.suppress(Exception):
            async with self.db.transaction() as uow:
                await uow.conn.execute(update(t.webhook_endpoints).where(_w.lease_owner == self.owner)
                                       .values(lease_owner=None, lease_until=None))
        await self.sender.close()

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until no delivery is due and no endpoint task runs (tests, benches).

        Raises:
            TimeoutError: still busy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ring()
            await asyncio.sleep(0.02)
            if not self._active and not await self._due_endpoints(limit=1, due_now=True):
                await asyncio.sleep(0.02)
                if not self._active and not await self._due_endpoints(limit=1, due_now=True):
                    return
        raise TimeoutError("deliveries still due or running")

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self._dispatch()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery worker: could not look for due deliveries")
                wait = self.poll_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, min(wait, self.poll_seconds)))

    async def _due_endpoints(self, *, limit: int = 1000, due_now: bool = False) -> list[Any]:
        """Enabled endpoints with pending deliveries that no other live worker holds
        (``due_now``: only those whose ``retry_at`` has passed)."""
        now = jsonutil.utcnow()
        pending = exists().where(_d.endpoint_id == _w.id, _d.status == "pending")
        query = select(_w.id, _w.retry_at).where(
            _w.status == "enabled", _w.deleted_at.is_(None), pending,
            or_(_w.lease_until.is_(None), _w.lease_until < now, _w.lease_owner == self.owner),
        )
        if due_now:
            query = query.where(or_(_w.retry_at.is_(None), _w.retry_at <= now))
        async with self.db.read() as conn:
            return (await conn.execute(query.limit(limit))).all()

    async def _dispatch(self) -> float:
        """Start a task for each due endpoint not served yet; return seconds to the next known retry."""
        if len(self._active) >= self.concurrency:
            return self.poll_seconds
        now = jsonutil.utcnow()
        wait = self.poll_seconds
        for row in await self._due_endpoints():
            if row.id in self._active:
                continue
            if row.retry_at is not None and row.retry_at > now:
                wait = min(wait, (row.retry_at - now).total_seconds())
                continue
            if len(self._active) >= self.concurrency:
                break
            if await self._lease(row.id, now):
                self._active[row.id] = asyncio.create_task(self._serve(row.id), name=f"tillgate-deliver-{row.id}")
        return wait

    async def _lease(self, endpoint_id: str, now: datetime) -> bool:
        async with self.db.transaction() as uow:
            result = await uow.conn.execute(
                update(t.webhook_endpoints).where(
                    _w.id == endpoint_id, _w.status == "enabled", _w.deleted_at.is_(None),
                    or_(_w.lease_until.is_(None), _w.lease_until < now, _w.lease_owner == self.owner),
                ).values(lease_owner=self.owner, lease_until=now + timedelta(seconds=self.lease_seconds))
            )
        return bool(result.rowcount)

    # -- one endpoint ----------------------------------------------------------------------------
    async def _serve(self, endpoint_id: str) -> None:
        release: dict[str, Any] = {"lease_owner": None, "lease_until": None}
        outcome = _STOP
        try:
            while (outcome := await self._serve_batch(endpoint_id)) is _MORE:
                pass
        except asyncio.CancelledError:
            self._active.pop(endpoint_id, None)
            raise
        except Exception:  # a bug or an undecryptable secret: not a receiver's failure
            log.exception("delivery worker: could not serve endpoint %s; trying again in %g s",
                          endpoint_id, ERROR_PAUSE)
            release["retry_at"] = jsonutil.utcnow() + timedelta(seconds=ERROR_PAUSE)
            outcome = _STOP
        if outcome is not _RELEASED:
            with contextlib.suppress(Exception):
                async with self.db.transaction() as uow:
                    await uow.conn.execute(update(t.webhook_endpoints).where(
                        _w.id == endpoint_id, _w.lease_owner == self.owner).values(**release))
        self._active.pop(endpoint_id, None)
        self.ring()  # deliveries committed while this task was finishing are looked at now

    async def _serve_batch(self, endpoint_id: str) -> object:
        """Send one batch. Returns :data:`_MORE` when the endpoint may have more due right away (the
        lease is renewed), :data:`_RELEASED` when the batch's transaction released the lease, or
        :data:`_STOP` when the endpoint is no longer this worker's to serve (the caller releases)."""
        async with self.db.read() as conn:
            endpoint = (await conn.execute(select(t.webhook_endpoints).where(_w.id == endpoint_id))).first()
            if endpoint is None or endpoint.status != "enabled" or endpoint.deleted_at is not None \
                    or endpoint.lease_owner != self.owner:
                return _STOP
            batch = (await conn.execute(
                select(_d.id.label("delivery_id"), _d.attempts, _d.next_attempt_at, t.events)
                .join(t.events, _e.id == _d.event_id)
                .where(_d.endpoint_id == endpoint_id, _d.status == "pending")
                .order_by(_d.seq).limit(BATCH)
            )).all()
        if not batch:
            async with self.db.transaction() as uow:
                await uow.conn.execute(update(t.webhook_endpoints).where(_w.id == endpoint_id).values(retry_at=None))
                await uow.conn.execute(update(t.webhook_endpoints).where(
                    _w.id == endpoint_id, _w.lease_owner == self.owner).values(lease_owner=None, lease_until=None))
            return _RELEASED
        signer = self.endpoints.signer(endpoint)
        started = time.monotonic()
        sent: list[tuple[Any, AttemptResult, datetime]] = []
        head_due: datetime | None = None
        for row in batch:
            now = jsonutil.utcnow()
            if row.next_attempt_at > now:
                head_due = row.next_attempt_at
                break
            body = render_event(row)
            result = await self.sender.send(endpoint.url, signed_headers(signer, row.id, body), body)
            sent.append((row, result, now))
            if not result.delivered or time.monotonic() - started > RECORD_EVERY:
                break
        # the whole batch went out and it was the last one: nothing more to send right now
        exhausted = len(batch) < BATCH and len(sent) == len(batch)
        return await self._record(endpoint, sent, head_due, exhausted=exhausted)

    async def _record(self, endpoint: Any, sent: list[tuple[Any, AttemptResult, datetime]],
                      head_due: datetime | None, *, exhausted: bool = False) -> object:
        """Write a batch's outcomes, attempts, the endpoint's state and lease in one transaction.

        The lease is renewed when the worker should read the next batch at once (returns
        :data:`_MORE`), else released in the same transaction (:data:`_RELEASED`): after a
        failure, when the next delivery is not yet due, or when ``exhausted`` (the batch was the
        last and went out whole). Deliveries committed meanwhile ring the worker, which leases the
        endpoint again once this task has finished. :data:`_STOP` when the lease was lost."""
        now = jsonutil.utcnow()
        delivered = [(row, result, at) for row, result, at in sent if result.delivered]
        failure = next(((row, result, at) for row, result, at in sent if not result.delivered), None)
        endpoint_values: dict[str, Any] = {"lease_until": now + timedelta(seconds=self.lease_seconds), "retry_at": head_due}
        more = head_due is None and not exhausted
        async with self.db.transaction() as uow:
            if delivered:
                await uow.conn.execute(_MARK_DELIVERED, [
                    {"b_id": row.delivery_id, "b_attempts": row.attempts + 1, "b_at": at, "b_code": result.status_code}
                    for row, result, at in delivered])
            if failure is not None:
                row, result, at = failure
                attempts = row.attempts + 1
                values: dict[str, Any] = {"attempts": attempts, "last_attempt_at": at, "last_status_code": result.status_code,
                                          "last_error": result.error, "updated_at": now}
                if result.gone:
                    values["next_attempt_at"] = now
                    endpoint_values.update(status="disabled", disabled_reason="gone", retry_at=None)
                    more = False
                else:
                    delay = retry_delay(attempts, self.schedule, result)
                    if delay is None:
                        values["status"] = "failed"
                    else:
                        values["next_attempt_at"] = now + timedelta(seconds=delay)
                        endpoint_values["retry_at"] = values["next_attempt_at"]
                        more = False
                await uow.conn.execute(update(t.webhook_deliveries).where(
                    _d.id == row.delivery_id, _d.status == "pending").values(**values))  # not if cancelled meanwhile
            if sent:
                await uow.conn.execute(insert(t.webhook_attempts), [
                    {"id": new_id("delivery_attempt"), "delivery_id": row.delivery_id, "endpoint_id": endpoint.id,
                     "attempt": row.attempts + 1, "attempted_at": at, "status_code": result.status_code,
                     "error": result.error, "duration_ms": result.duration_ms, "response_body": result.response_body}
                    for row, result, at in sent])
            if endpoint_values.get("status") == "disabled":
                await bump_version(uow, endpoint.tenant_id)
            if not more:
                endpoint_values.update(lease_owner=None, lease_until=None)
            held = await uow.conn.execute(update(t.webhook_endpoints).where(
                and_(_w.id == endpoint.id, _w.lease_owner == self.owner)).values(**endpoint_values))
        self.delivered += len(delivered)
        if failure is not None and failure[1].gone:
            log.warning("endpoint %s answered 410 Gone: disabled", endpoint.id)
        if not held.rowcount:
            return _STOP
        return _MORE if more else _RELEASED
