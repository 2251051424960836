"""Benchmark: signed AI POS webhook deliveries into ``POST /hooks/{connection_id}``, against a bare floor.

What it measures (DESIGN.md "Performance targets", inbound vendor webhooks):

1. **Throughput.** ``BENCH_DELIVERIES`` (default 6,000) distinct, correctly signed
   ``product.updated`` deliveries (AI POS's scheme, ``connectors/aipos/API.md``), sent by
   ``BENCH_CONCURRENCY`` (64) keep-alive connections as fast as they are answered. Each must be
   answered ``200`` with ``duplicate: false``; afterwards the ``webhook_inbox`` table must hold
   exactly that many rows, each with its job. Target: >= 1,000 stored deliveries/s.
2. **Latency at 500/s.** ``BENCH_SECONDS`` (10) of deliveries sent open loop at a fixed 500/s
   (each at its scheduled instant, on whichever connection is free, a new one when none is), the
   ack time measured from the scheduled instant (no coordinated omission). Target: p99 < 50 ms.

The gateway is one ``uvicorn --factory gateway.api.app:create_app`` process (uvloop + httptools,
access log off) on a fresh SQLite database, run as in scale-out mode: ``TILLGATE_REDIS_URL`` is
set, so the API process verifies, stores the delivery with its job, and enqueues the job id in
arq; no worker consumes that queue during the run (processing is a worker's cost, not the
ingest's). ``BENCH_DATABASE=postgresql`` runs the gateway on the local PostgreSQL instead (a
fresh schema in database ``test``).

The floor is ``bench/floor_app.py``'s ``POST /hooks/{connection_id}``: a bare Starlette endpoint
that reads the body, parses it with the gateway's JSON parser and answers a fixed 200, under the
same uvicorn settings, loaded the same way in the same run.

The load generator is a child process (one core of two) speaking HTTP/1.1 over asyncio streams
with the requests signed in advance, so the client costs as little as possible and the same for
both servers. An AI POS sandbox process answers the connection's credential check at set-up only.

Run: ``.venv/bin/python bench/webhook_ingest.py`` (``make bench`` runs it too). Needs Redis at
``TILLGATE_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``). Exit status 1 when a target
is missed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

DELIVERIES = int(os.environ.get("BENCH_DELIVERIES", "6000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "64"))
RATE = int(os.environ.get("BENCH_RATE", "500"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
DATABASE = os.environ.get("BENCH_DATABASE", "sqlite")
REDIS_URL = os.environ.get("TILLGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.get("TILLGATE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
API_KEY = "aipos_test_sandbox_key"
WEBHOOK_SECRET = "whsec_" + "b3" * 16
IDLE_LIMIT = 3.0  # seconds a kept-alive connection may sit unused (uvicorn's keep-alive timeout is 5 s)
THROUGHPUT_TARGET = 1000.0
P99_TARGET_MS = 50.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the load generator (a child process) -------------------------------------------------------------
def signed_requests(host: str, path: str, prefix: str, count: int) -> list[bytes]:
    """``count`` complete HTTP/1.1 requests: distinct ``product.updated`` events signed as AI POS signs.

    Each body is the event envelope the AI POS sandbox sends (``{"id", "object": "event", "type",
    "created_at", "data": {"object": <product>}}``, about 500 bytes), its ``updated_at`` one second
    after the previous one's, so every delivery is a newer version of the same product.
    """
    from decimal import Decimal

    from connectors.aipos.sandbox import dumps, signature_header

    stamp = int(time.time())
    out = []
    for i in range(count):
        event_id = f"evt_{prefix}{i:07d}"
        updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_780_000_000 + i))
        body = dumps({
            "id": event_id, "object": "event", "type": "product.updated", "created_at": updated,
            "data": {"object": {
                "id": "prod_001", "object": "product", "name": "Masala Chai", "sku": "CHAI-001",
                "barcode": "8901234567890", "category": "Beverages", "price": Decimal("45.00"), "tax_rate": 5, "unit": "each",
                "active": True, "stock": 120 - i % 50, "low_stock_threshold": 10,
                "created_at": "2026-03-01T09:00:00Z", "updated_at": updated}},
        })
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nAIPOS-Event-Id: {event_id}\r\n"
                f"AIPOS-Signature: {signature_header([WEBHOOK_SECRET], stamp, event_id, body)}\r\n"
                "User-Agent: AIPOS-Webhooks/1.0\r\n\r\n")
        out.append(head.encode() + body)
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads its whole response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last_used = time.monotonic()

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``; return the status and body of the response."""
        self.writer.write(request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        self.last_used = time.monotonic()
        return status, body

    def close(self) -> None:
        self.writer.close()


def check(status: int, body: bytes, floor: bool) -> None:
    if status != 200:
        raise SystemExit(f"a delivery was answered {status}: {body[:500]!r}")
    if not floor and b'"duplicate":false' not in body:
        raise SystemExit(f"a distinct delivery was not stored as new: {body[:500]!r}")


async def throughput(port: int, requests: list[bytes], floor: bool) -> dict[str, Any]:
    """Closed loop: CONCURRENCY connections, each sending the next request when answered."""
    connections = [await Connection.open(port) for _ in range(CONCURRENCY)]
    queue = iter(requests)

    async def run(connection: Connection) -> None:
        for request in queue:
            check(*await connection.send(request), floor)

    started = time.perf_counter()
    await asyncio.gather(*(run(c) for c in connections))
    seconds = time.perf_counter() - started
    for c in connections:
        c.close()
    return {"count": len(requests), "seconds": seconds, "per_second": len(requests) / seconds}


async def latency(port: int, requests: list[bytes], floor: bool) -> dict[str, Any]:
    """Open loop at RATE/s: request i goes at start + i/RATE on a free connection; latency from then."""
    idle: list[Connection] = [await Connection.open(port) for _ in range(16)]
    latencies: list[float] = []
    opened = len(idle)

    async def one(request: bytes, due: float) -> None:
        nonlocal opened
        while idle and time.monotonic() - idle[-1].last_used > IDLE_LIMIT:  # uvicorn closes idle ones at 5 s
            idle.pop().close()
        if idle:
            connection = idle.pop()
        else:
            connection = await Connection.open(port)
            opened += 1
        status, body = await connection.send(request)
        latencies.append(time.perf_counter() - due)
        idle.append(connection)
        check(status, body, floor)

    loop = asyncio.get_running_loop()
    tasks = []
    start = time.perf_counter() + 0.05
    for i, request in enumerate(requests):
        due = start + i / RATE
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(request, due)))
    await asyncio.gather(*tasks)
    for c in idle:
        c.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"count": len(latencies), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000,
            "connections": opened}


async def child_load(port: int, path: str, prefix: str, floor: bool) -> dict[str, Any]:
    warm = signed_requests("127.0.0.1", path, prefix + "w", 300)
    load = signed_requests("127.0.0.1", path, prefix + "t", DELIVERIES)
    paced = signed_requests("127.0.0.1", path, prefix + "l", RATE * SECONDS)
    await throughput(port, warm, floor)
    return {"throughput": await throughput(port, load, floor), "latency": await latency(port, paced, floor),
            "sent": len(warm) + len(load) + len(paced)}


# -- parent ----------------------------------------------------------------------------------------------
def wait_ready(url: str, process: subprocess.Popen, timeout: float = 60, headers: dict[str, str] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited ({process.returncode}):\n{process.stderr.read().decode()[-4000:]}")
        try:
            if httpx.get(url, headers=headers or {}, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not start")


def uvicorn(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "uvicorn"), *args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def run_load(port: int, path: str, prefix: str, floor: bool) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", str(port), path, prefix, "floor" if floor else "gateway"],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"the load generator failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


async def redis_ready() -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        await redis.ping()
    except OSError as exc:
        raise SystemExit(f"bench/webhook_ingest.py needs Redis at {REDIS_URL} ({exc})") from exc
    finally:
        await redis.aclose()


async def drop_queue(queue: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{queue}*")] + [k async for k in redis.scan_iter(match="arq:job:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def setup_database(db_url: str, base_url: str, secret_key: bytes) -> dict[str, Any]:
    """A migrated database with one tenant and one AI POS connection holding the webhook secret."""
    from gateway.crypto import CredentialCipher
    from gateway.model import ConnectionCreate
    from gateway.sdk.registry import ConnectorRegistry
    from gateway.services.connections import ConnectionService
    from gateway.services.tenants import create_tenant
    from gateway.storage.db import Database
    from gateway.storage.migrate import upgrade

    upgrade(db_url)
    db = Database(db_url)
    tenant_id, _key = await create_tenant(db, "bench")
    service = ConnectionService(db, ConnectorRegistry(), CredentialCipher([secret_key]))
    connection = await service.create(tenant_id, ConnectionCreate(
        connector="aipos", name="bench", credentials={"api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET},
        settings={"base_url": base_url}))
    await db.dispose()
    return {"tenant_id": tenant_id, "connection_id": connection["id"]}


async def stored(db_url: str, connection_id: str) -> tuple[int, int]:
    """(inbox rows, of which with a job row) for the connection."""
    from sqlalchemy import func, select

    from gateway.storage import tables as t
    from gateway.storage.db import Database

    db = Database(db_url)
    async with db.read() as conn:
        rows = (await conn.execute(select(func.count()).select_from(t.webhook_inbox).where(
            t.webhook_inbox.c.connection_id == connection_id))).scalar_one()
        with_job = (await conn.execute(select(func.count()).select_from(t.webhook_inbox).join(
            t.jobs, t.jobs.c.id == t.webhook_inbox.c.job_id).where(
            t.webhook_inbox.c.connection_id == connection_id))).scalar_one()
    await db.dispose()
    return rows, with_job


def fresh_database(work: Path) -> tuple[str, str | None]:
    """(database URL, PostgreSQL schema to drop afterwards or None)."""
    if DATABASE == "sqlite":
        return f"sqlite:///{work / 'bench.db'}", None
    if DATABASE != "postgresql":
        raise SystemExit(f"BENCH_DATABASE must be sqlite or postgresql, not {DATABASE!r}")
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{PG_URL}?options=-csearch_path%3D{schema}", schema


def drop_schema(schema: str | None) -> None:
    if schema:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> int:
    asyncio.run(redis_ready())
    work = Path(tempfile.mkdtemp(prefix="tillgate-bench-hooks-"))
    db_url, schema = fresh_database(work)
    queue = f"tillgate:bench-hooks:{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TILLGATE_DATABASE_URL": db_url,
           "TILLGATE_SECRET_KEYS": base64.urlsafe_b64encode(os.urandom(32)).decode(),
           "TILLGATE_REDIS_URL": REDIS_URL, "TILLGATE_QUEUE_NAME": queue, "PYTHONPATH": str(ROOT)}
    sandbox_port, gateway_port, floor_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen] = []
    try:
        sandbox = subprocess.Popen([str(BIN / "tillgate"), "sandbox", "aipos", "--port", str(sandbox_port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        processes.append(sandbox)
        base_url = f"http://127.0.0.1:{sandbox_port}/aipos/api/v1"
        wait_ready(base_url + "/health", sandbox, headers={"Authorization": f"Bearer {API_KEY}"})
        secret = base64.urlsafe_b64decode(env["TILLGATE_SECRET_KEYS"])
        setup = asyncio.run(setup_database(db_url, base_url, secret))
        gateway = uvicorn(["--factory", "gateway.api.app:create_app"], env, gateway_port)
        floor = uvicorn(["bench.floor_app:app"], env, floor_port)
        processes += [gateway, floor]
        wait_ready(f"http://127.0.0.1:{gateway_port}/readyz", gateway)
        wait_ready(f"http://127.0.0.1:{floor_port}/one", floor)
        path = f"/hooks/{setup['connection_id']}"
        floor_runs = [run_load(floor_port, path, "f0", True)]
        gateway_run = run_load(gateway_port, path, "g", False)
        floor_runs.append(run_load(floor_port, path, "f1", True))
        rows, with_job = asyncio.run(stored(db_url, setup["connection_id"]))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        asyncio.run(drop_queue(queue))
        drop_schema(schema)
        shutil.rmtree(work, ignore_errors=True)

    floor_tp = max(f["throughput"]["per_second"] for f in floor_runs)
    floor_p99 = min(f["latency"]["p99_ms"] for f in floor_runs)
    tp, lat = gateway_run["throughput"], gateway_run["latency"]
    tp_pass = tp["per_second"] >= THROUGHPUT_TARGET and rows == with_job == gateway_run["sent"]
    p99_pass = lat["p99_ms"] < P99_TARGET_MS
    print(f"webhook_ingest: signed AI POS product.updated deliveries to one gateway process "
          f"(uvicorn, uvloop + httptools, {DATABASE}, jobs enqueued in Redis, no worker consuming)")
    print("floor: bare Starlette POST /hooks/{id} parsing the body (bench/floor_app.py), two runs: "
          + ", ".join(f"{f['throughput']['per_second']:,.0f}/s p99 {f['latency']['p99_ms']:.1f} ms" for f in floor_runs))
    print(f"stored: {rows:,} inbox rows ({with_job:,} with their job) for {gateway_run['sent']:,} deliveries sent")
    print(f"{'measure':<34}{'gateway':>14}{'floor':>14}{'ratio':>9}  target")
    print(f"{'throughput, ' + str(CONCURRENCY) + ' connections':<34}{tp['per_second']:>12,.0f}/s{floor_tp:>12,.0f}/s"
          f"{tp['per_second'] / floor_tp:>8.2f}x  >= {THROUGHPUT_TARGET:,.0f} stored/s: {'PASS' if tp_pass else 'MISS'}")
    print(f"{'ack p50 at ' + str(RATE) + '/s':<34}{lat['p50_ms']:>11.1f} ms"
          f"{min(f['latency']['p50_ms'] for f in floor_runs):>11.1f} ms")
    print(f"{'ack p99 at ' + str(RATE) + '/s':<34}{lat['p99_ms']:>11.1f} ms{floor_p99:>11.1f} ms"
          f"{lat['p99_ms'] / floor_p99:>8.2f}x  < {P99_TARGET_MS:.0f} ms: {'PASS' if p99_pass else 'MISS'}")
    print(f"{'ack max at ' + str(RATE) + '/s':<34}{lat['max_ms']:>11.1f} ms   ({lat['connections']} connections opened)")
    return 0 if tp_pass and p99_pass else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        port, path, prefix, role = sys.argv[2:6]
        print(json.dumps(asyncio.run(child_load(int(port), path, prefix, role == "floor"))))
    else:
        sys.exit(main())
