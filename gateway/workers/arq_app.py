"""``tillgate worker``: the arq worker (scale-out mode).

Job functions receive ids only and use a JSON serializer (no pickle). ``run_job`` is the single
job function; the poll scheduler and the sweeper run as arq cron jobs every 10 s (arq runs a
cron slot once across workers). Configure with ``TILLGATE_REDIS_URL`` and ``TILLGATE_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from arq import cron, func
from arq.connections import RedisSettings

import gateway.workers.tasks  # noqa: F401 - registers the job kinds
from gateway.aio import cancel_and_wait
from gateway.workers.dispatch import ArqDispatcher, WorkerContext, execute

QUEUE_NAME = "tillgate:jobs"


def serialize(value: Any) -> bytes:
    """arq job serializer: JSON (ids and small dicts only)."""
    return json.dumps(value).encode()


def deserialize(data: bytes) -> Any:
    """arq job deserializer: JSON."""
    return json.loads(data)


async def run_job(ctx: dict[str, Any], job_id: str) -> str | None:
    """arq job function: run one job row (see :func:`gateway.workers.dispatch.execute`)."""
    return await execute(ctx["tillgate"], job_id)


async def sweep(ctx: dict[str, Any]) -> int:
    """arq cron job: re-ring every due job from the table."""
    return await ctx["tillgate"].dispatcher.sweep()


async def schedule(ctx: dict[str, Any]) -> int:
    """arq cron job: queue every due poll (see :mod:`gateway.workers.scheduler`)."""
    from gateway.workers.scheduler import schedule_polls

    return await schedule_polls(ctx["tillgate"].services)


async def startup(ctx: dict[str, Any]) -> None:
    """Build the services once per worker process and keep them in ``ctx``."""
    if "tillgate" in ctx:  # provided by the caller (tests, embedding)
        return
    from gateway.api.deps import Services
    from gateway.settings import get_settings

    settings = get_settings()
    services = Services.build(settings)
    services.dispatcher = ArqDispatcher(services.db, ctx["redis"], queue_name=settings.queue_name)
    ctx["tillgate_services"] = services
    ctx["tillgate"] = WorkerContext(db=services.db, services=services, dispatcher=services.dispatcher,
                                    lease_seconds=settings.job_lease_seconds)
    await services.start_deliveries()
    ctx["tillgate_doorbell"] = asyncio.create_task(listen_for_deliveries(ctx["redis"], services.deliveries))


async def listen_for_deliveries(redis: Any, deliveries: Any) -> None:
    """Ring this worker's delivery loop on every message of the delivery channel (API processes
    publish after commits that created deliveries). Reconnects after errors; the loop's own
    poll covers the gaps."""
    from gateway.workers.deliveries import CHANNEL

    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        deliveries.ring()
        except asyncio.CancelledError:
            raise
        except Exception:
            logging.getLogger("tillgate.deliveries").warning("delivery channel lost; resubscribing", exc_info=True)
            await asyncio.sleep(1.0)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what :func:`startup` opened."""
    doorbell = ctx.pop("tillgate_doorbell", None)
    if doorbell is not None:
        await cancel_and_wait(doorbell)
    services = ctx.pop("tillgate_services", None)
    if services is not None:
        if services.deliveries is not None:
            await services.deliveries.stop()
        await services.db.dispose()


def worker_options(redis_url: str, queue_name: str = QUEUE_NAME, max_jobs: int = 10) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` (shared by the CLI and the tests)."""
    return {
        "functions": [func(run_job, name="run_job", keep_result=0, max_tries=1000)],
        "cron_jobs": [
            cron(schedule, name="schedule", second=set(range(5, 60, 10)), keep_result=0),
            cron(sweep, name="sweep", second=set(range(0, 60, 10)), run_at_startup=True, keep_result=0),
        ],
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": queue_name,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "keep_result": 0,
        "max_jobs": max_jobs,
        # Liveness is the job row's lease (renewed by a heartbeat), not arq's timeout: a long
        # backfill must not be cancelled halfway.
        "job_timeout": 6 * 3600,
    }
