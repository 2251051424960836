"""What routes share: the services container, authentication and the idempotent write runner."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from limits import parse as parse_limit
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter
from starlette.requests import Request
from starlette.responses import Response

from gateway import jsonutil
from gateway.api.http import JSONBytes
from gateway.crypto import CredentialCipher
from gateway.errors import PROBLEM_CONTENT_TYPE, BadRequest, RateLimited, TillgateError, Unauthorized
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.connections import ConnectionService
from gateway.services.idempotency import IdempotencyClaim, check_key, request_fingerprint
from gateway.services.inbox import Inbox
from gateway.services.inventory_links import InventoryLinkService
from gateway.services.tenants import KeyVerifier
from gateway.services.webhook_endpoints import WebhookEndpointService
from gateway.settings import Settings
from gateway.storage.db import PRECOMMIT, Database


@dataclass
class Services:
    """Everything a request may need, built once per app (``app.state.services``)."""

    settings: Settings
    db: Database
    registry: ConnectorRegistry
    cipher: CredentialCipher
    connections: ConnectionService
    keys: KeyVerifier
    limiter: FixedWindowRateLimiter
    rate_limit: Any
    inbox: Inbox
    webhooks: WebhookEndpointService
    links: InventoryLinkService
    dispatcher: Any = None
    #: The delivery worker of this process (embedded mode), or ``None``.
    deliveries: Any = None
    _unsubscribe: Any = None
    _ring_jobs: Any = None

    @classmethod
    def build(cls, settings: Settings, *, db: Database | None = None, registry: ConnectorRegistry | None = None) -> Services:
        """Create the services for ``settings`` (database engine, connector registry, cipher)."""
        db = db or Database(settings.database_url, read_cache_size=settings.read_cache_size)
        registry = registry or ConnectorRegistry()
        cipher = CredentialCipher(settings.resolved_secret_keys())
        return cls(
            settings=settings,
            db=db,
            registry=registry,
            cipher=cipher,
            connections=ConnectionService(db, registry, cipher),
            keys=KeyVerifier(db, ttl=settings.api_key_cache_seconds),
            limiter=FixedWindowRateLimiter(MemoryStorage()),
            rate_limit=parse_limit(settings.api_rate_limit),
            inbox=Inbox(db),
            webhooks=WebhookEndpointService(db, cipher, allow_private=settings.webhook_allow_private),
            links=InventoryLinkService(db, registry),
        )

    async def start_dispatcher(self) -> None:
        """Embedded mode (no Redis): run jobs in this process. Scale-out: ring arq on Redis; the
        jobs run in ``tillgate worker`` processes."""
        import gateway.workers.tasks  # noqa: F401 - registers the job kinds
        from gateway.workers.dispatch import ArqDispatcher, InProcessDispatcher, WorkerContext

        if self.settings.redis_url:
            from arq import create_pool
            from arq.connections import RedisSettings

            from gateway.workers.arq_app import deserialize, serialize

            pool = await create_pool(RedisSettings.from_dsn(self.settings.redis_url), job_serializer=serialize,
                                     job_deserializer=deserialize)
            self.dispatcher = ArqDispatcher(self.db, pool, queue_name=self.settings.queue_name)
            self._unsubscribe = publish_deliveries(self.db, pool)
        else:
            from gateway.workers.scheduler import schedule_polls

            async def schedule() -> int:
                return await schedule_polls(self)

            ctx = WorkerContext(db=self.db, services=self, lease_seconds=self.settings.job_lease_seconds)
            self.dispatcher = InProcessDispatcher(self.db, ctx,
                                                  periodic=[schedule],
                                                  sweep_every=self.settings.scheduler_interval_seconds)
            await self.dispatcher.start()
            await self.start_deliveries()
        self._ring_jobs = ring_jobs(self.dispatcher)
        self.db.job_listeners.append(self._ring_jobs)

    async def start_deliveries(self) -> None:
        """Run a :class:`~gateway.workers.deliveries.DeliveryWorker` in this process."""
        from gateway.workers.deliveries import DeliveryWorker

        if self.deliveries is None:
            self.deliveries = DeliveryWorker(self.db, self.webhooks, self.settings)
            await self.deliveries.start()

    async def stop_dispatcher(self) -> None:
        """Stop what :meth:`start_dispatcher` started; unfinished jobs and deliveries stay in
        their tables."""
        deliveries, self.deliveries = self.deliveries, None
        if deliveries is not None:
            await deliveries.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._ring_jobs in self.db.job_listeners:
            self.db.job_listeners.remove(self._ring_jobs)
        self._ring_jobs = None
        dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            await dispatcher.close()


def ring_jobs(dispatcher: Any) -> Callable[[list[str]], None]:
    """The doorbell a :class:`Database` rings with the jobs a committed transaction queued
    (``Database.job_listeners``): each is handed to ``dispatcher.notify`` in a task of its own, so
    the committing code never waits on it (a lost ring leaves the job to the sweeper); an
    in-process dispatcher's queue takes them at once."""
    import asyncio
    import logging

    pending: set[asyncio.Task[Any]] = set()

    async def notify(job_ids: list[str]) -> None:
        try:
            for job_id in job_ids:
                await dispatcher.notify(job_id)
        except Exception:
            logging.getLogger("tillgate.jobs").warning("could not ring jobs %s; the sweeper will", job_ids, exc_info=True)

    def ring(job_ids: list[str]) -> None:
        if hasattr(dispatcher, "ring"):  # in process: queued at once, so a drain() right after sees them
            for job_id in job_ids:
                dispatcher.ring(job_id)
            return
        task = asyncio.get_running_loop().create_task(notify(job_ids))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return ring


def publish_deliveries(db: Database, redis: Any) -> Callable[[], None]:
    """Scale-out: after a commit that created deliveries, publish on the delivery channel so
    ``tillgate worker`` processes send them now rather than at their next poll. Returns the
    function that stops it."""
    import asyncio
    import logging

    from gateway.workers.deliveries import CHANNEL

    pending: set[asyncio.Task[Any]] = set()

    async def publish() -> None:
        try:
            await redis.publish(CHANNEL, b"1")
        except Exception:
            logging.getLogger("tillgate.deliveries").warning("could not ring the delivery workers", exc_info=True)

    def ring() -> None:
        task = asyncio.get_running_loop().create_task(publish())
        pending.add(task)
        task.add_done_callback(pending.discard)

    db.endpoints.listeners.append(ring)
    return lambda: db.endpoints.listeners.remove(ring) if ring in db.endpoints.listeners else None


def services(request: Request) -> Services:
    """The app's :class:`Services`."""
    return request.app.state.services


async def authenticate(request: Request) -> str:
    """Return the tenant id of the request's API key and count it against the key's rate limit.

    Raises:
        Unauthorized: missing, malformed, unknown or revoked key.
        RateLimited: the key is over ``TILLGATE_API_RATE_LIMIT`` (``Retry-After`` set).
    """
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("send the API key as 'Authorization: Bearer tgk_...'", code="missing_api_key")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <api key>'", code="invalid_api_key")
    svc = services(request)
    key = key.strip()
    tenant_id = await svc.keys.tenant_for(key)
    if tenant_id is None:
        raise Unauthorized("the API key is not valid or was revoked", code="invalid_api_key")
    key_id = key.split("_", 2)[1]
    # In memory, per process. The aio storage expires keys on the event loop; the sync one starts a
    # timer thread every 10 ms, which contends for the GIL with every request.
    if not await svc.limiter.hit(svc.rate_limit, "v1", key_id):
        stats = await svc.limiter.get_window_stats(svc.rate_limit, "v1", key_id)
        retry = max(1, int(stats.reset_time - time.time()) + 1)
        raise RateLimited(
            f"this API key is over its limit of {svc.settings.api_rate_limit}",
            headers={"Retry-After": str(retry)},
            retry_after=retry,
        )
    request.state.tenant_id = tenant_id
    return tenant_id


async def run_write(
    request: Request,
    tenant_id: str,
    raw_body: bytes,
    handler: Callable[[], Awaitable[Any]],
    *,
    status_code: int = 201,
    require_key: bool = False,
) -> Response:
    """Run a write with ``Idempotency-Key`` semantics and answer with its JSON result.

    ``handler`` performs the write (its transactions mark the key committed before they
    commit) and returns the object to send.

    Raises:
        BadRequest: ``idempotency_key_required`` when ``require_key`` and no header.
        IdempotencyKeyReused, IdempotencyInFlight, Conflict: see :mod:`gateway.services.idempotency`.
    """
    key = request.headers.get("idempotency-key")
    if key is None:
        if require_key:
            raise BadRequest("this request needs an Idempotency-Key header", code="idempotency_key_required")
        return JSONBytes(jsonutil.dumps(await handler()), status_code=status_code)
    svc = services(request)
    claim = IdempotencyClaim(svc.db, tenant_id, check_key(key), svc.settings.idempotency_ttl_hours)
    stored = await claim.claim(request_fingerprint(request.method, request.url.path, raw_body))
    if stored is not None:
        media = PROBLEM_CONTENT_TYPE if stored.status_code >= 400 else "application/json"
        return Response(stored.body, status_code=stored.status_code, media_type=media,
                        headers={"Idempotent-Replayed": "true"})
    token = PRECOMMIT.set(claim.mark_committed)
    try:
        result = await handler()
    except TillgateError as exc:
        PRECOMMIT.reset(token)
        if claim.committed:
            body = jsonutil.dumps(exc.problem(getattr(request.state, "request_id", None)))
            await claim.complete(exc.status, body)
        else:
            await claim.release()
        raise
    except BaseException:
        PRECOMMIT.reset(token)
        if not claim.committed:
            await claim.release()
        raise
    PRECOMMIT.reset(token)
    body = jsonutil.dumps(result)
    await claim.complete(status_code, body)
    return JSONBytes(body, status_code=status_code)
