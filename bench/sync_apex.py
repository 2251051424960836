"""Benchmark: full sync and unchanged incremental poll of 100,000 Apex products, against a bare httpx floor.

What it measures (DESIGN.md "Performance targets"):

1. **Full sync.** ``SyncEngine.run("products", mode="full")`` of the Apex connector into a fresh,
   migrated SQLite database: every page mapped, content-hashed, inserted with its
   ``product.created`` event and checkpointed. Target: wall time <= 1.5 x the floor's; peak RSS
   of the syncing process (``ru_maxrss`` of a subprocess that does nothing else) < 300 MB.
2. **Incremental poll, nothing changed.** The next ``SyncEngine.run("products")`` (``auto``:
   Apex has no modified-since filter, so it is a full scan diffed by content hash, then the
   mark-and-sweep). Target: <= 1.2 x the floor's time, 0 records rows rewritten (rows whose
   ``updated_at`` is at or after the poll's start) and no event but ``connection.sync_completed``.
   It runs three times, each followed by a floor run; the fastest poll counts (the floor too
   counts its fastest run), and every poll must rewrite nothing and emit nothing.

The floor is a bare ``httpx.AsyncClient`` loop (its own subprocess) downloading the same pages
(``GET /rest_api/v1/products?page=N&limit=100`` with the ``X-API-Key``) one after the other and
discarding the bodies. It runs five times (before the full sync, then after the sync and after
each poll); the fastest run is the floor (the strictest choice).

Vendor: the Apex sandbox (``connectors/apex/sandbox.py``, ``create_app(products=100000)``,
synthetic mode, no faults) served by uvicorn (``gateway.testing.sandbox.run``: uvloop +
httptools) in its own process on 127.0.0.1; the same server answers the floor and both syncs.

**Rate limit lifted.** The Apex manifest limits a connection to 20 requests/s (1,000 pages would
take >= 50 s whatever the gateway does), and the sandbox enforces none. Like the tests, the bench
registers a subclass of ``ApexConnector`` whose ``client_overrides`` is ``{"rate_limit": None}``;
everything else (retries, circuit breaker, auth, mappings, records cache) is production code.

Only the ``products`` entity is synced (categories, inventory and orders are not: no category
ids resolve, so ``category_ids`` is ``[]`` in every product, as it is before a first categories sync).

Run: ``make bench`` or ``.venv/bin/python bench/sync_apex.py``. ``BENCH_PRODUCTS`` changes the
catalog size (default 100000); ``BENCH_PROFILE=DIR`` writes a cProfile of each sync child to
``DIR/sync_apex_{full,incremental}.prof`` (times are then inflated). Exit status 1 when a target
is missed.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRODUCTS = int(os.environ.get("BENCH_PRODUCTS", "100000"))
PAGE_SIZE = 100
KEY = "apx_bench_key"
FULL_TARGET = 1.5
INCREMENTAL_TARGET = 1.2
PEAK_MB_TARGET = 300.0
POLLS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- the pieces shared by the parent and the children ----------------------------------------------
def connector_class() -> type:
    """ApexConnector with the manifest's 20 requests/s lifted (the sandbox has no limit)."""
    from typing import ClassVar

    from connectors.apex import ApexConnector

    class BenchApex(ApexConnector):
        client_overrides: ClassVar[dict[str, Any]] = {"rate_limit": None}

    return BenchApex


def service(db: Any, secret_key: bytes) -> Any:
    from gateway.crypto import CredentialCipher
    from gateway.sdk.registry import ConnectorRegistry
    from gateway.services.connections import ConnectionService

    return ConnectionService(db, ConnectorRegistry([connector_class()], load_entry_points=False),
                             CredentialCipher([secret_key]))


# -- children ----------------------------------------------------------------------------------------
def child_server(port: int) -> None:
    from connectors.apex.sandbox import create_app
    from gateway.testing.sandbox import run

    run(create_app(products=PRODUCTS, api_keys=[KEY]), port=port, log_level="warning")


async def child_floor(base_url: str) -> dict[str, Any]:
    import httpx

    pages = -(-PRODUCTS // PAGE_SIZE)
    started = time.perf_counter()
    received = 0
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": KEY, "Accept": "application/json"},
                                 timeout=30) as http:
        for page in range(1, pages + 1):
            response = await http.get("/products", params={"page": page, "limit": PAGE_SIZE})
            response.raise_for_status()
            received += len(response.content)
    return {"seconds": time.perf_counter() - started, "pages": pages, "bytes": received}


async def child_sync(db_url: str, setup: dict[str, Any], mode: str) -> dict[str, Any]:
    from sqlalchemy import func, select

    from gateway import jsonutil
    from gateway.services.sync import SyncEngine
    from gateway.storage import tables as t
    from gateway.storage.db import Database

    db = Database(db_url)
    svc = service(db, bytes.fromhex(setup["secret_key"]))
    connector = await svc.connector_for(setup["tenant_id"], setup["connection_id"])
    engine = SyncEngine(db, connector)
    conn_id = setup["connection_id"]
    async with db.read() as conn:
        seq_before = (await conn.execute(select(func.coalesce(func.max(t.events.c.seq), 0)).where(
            t.events.c.tenant_id == setup["tenant_id"]))).scalar_one()
    rss_before = current_rss_mb()
    poll_started = jsonutil.utcnow()
    started = time.perf_counter()
    result = await engine.run("products", mode=mode)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    async with db.read() as conn:
        rewritten = (await conn.execute(select(func.count()).select_from(t.records).where(
            t.records.c.connection_id == conn_id, t.records.c.updated_at >= poll_started))).scalar_one()
        live = (await conn.execute(select(func.count()).select_from(t.records).where(
            t.records.c.connection_id == conn_id, t.records.c.entity == "products",
            t.records.c.deleted_at.is_(None)))).scalar_one()
        events = dict((await conn.execute(select(t.events.c.type, func.count()).where(
            t.events.c.tenant_id == setup["tenant_id"], t.events.c.seq > seq_before).group_by(t.events.c.type))).all())
    await db.dispose()
    return {"seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": rss_before, "mode": result.mode,
            "status": result.status, "pages": result.pages, "seen": result.seen, "created": result.created,
            "updated": result.updated, "unchanged": result.unchanged, "deleted": result.deleted,
            "rows_rewritten": rewritten, "live": live, "events": events}


def child_main(role: str, args: list[str]) -> None:
    if role == "server":
        child_server(int(args[0]))
        return
    if role == "floor":
        out = asyncio.run(child_floor(args[0]))
    elif role in ("full", "incremental"):
        coro = child_sync(args[0], json.loads(args[1]), "full" if role == "full" else "auto")
        profile_dir = os.environ.get("BENCH_PROFILE")
        if profile_dir:  # cProfile the whole child (slower: times and ratios are then meaningless)
            import cProfile

            with cProfile.Profile() as profiler:
                out = asyncio.run(coro)
            profiler.dump_stats(str(Path(profile_dir) / f"sync_apex_{role}.prof"))
        else:
            out = asyncio.run(coro)
    else:
        raise SystemExit(f"unknown role {role}")
    print(json.dumps(out))


# -- parent ------------------------------------------------------------------------------------------
def run_child(role: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", role, *args], capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"bench child {role} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the sandbox exited ({server.returncode}):\n{server.stderr.read().decode()[-4000:]}")
        try:
            if httpx.get(url, headers={"X-API-Key": KEY}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"sandbox at {url} did not start")


async def setup_database(db_url: str, base_url: str, secret_key: bytes) -> dict[str, Any]:
    from gateway.model import ConnectionCreate
    from gateway.services.tenants import create_tenant
    from gateway.storage.db import Database
    from gateway.storage.migrate import upgrade

    upgrade(db_url)
    db = Database(db_url)
    tenant_id, _key = await create_tenant(db, "bench")
    connection = await service(db, secret_key).create(tenant_id, ConnectionCreate(
        connector="apex", name="bench", credentials={"api_key": KEY}, settings={"base_url": base_url}))
    await db.dispose()
    return {"tenant_id": tenant_id, "connection_id": connection["id"], "secret_key": secret_key.hex()}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="tillgate-bench-sync-"))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/rest_api/v1"
    db_url = f"sqlite:///{work / 'bench.db'}"
    server = subprocess.Popen([sys.executable, __file__, "--child", "server", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(base_url + "/health", server)
        setup = asyncio.run(setup_database(db_url, base_url, os.urandom(32)))
        run_child("floor", base_url)  # warm-up: the server's first pass
        floors = [run_child("floor", base_url)]
        full = run_child("full", db_url, json.dumps(setup))
        floors.append(run_child("floor", base_url))
        polls = []
        for _ in range(POLLS):  # each an unchanged poll; the fastest counts, as for the floor
            polls.append(run_child("incremental", db_url, json.dumps(setup)))
            floors.append(run_child("floor", base_url))
        db_mb = sum(f.stat().st_size for f in work.iterdir()) / 2**20
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    floor = min(f["seconds"] for f in floors)
    poll = min(polls, key=lambda p: p["seconds"])
    rewritten_any = sum(p["rows_rewritten"] + p["updated"] + p["created"] + p["deleted"] for p in polls)
    pages = floors[0]["pages"]
    print(f"sync_apex: {PRODUCTS:,} Apex sandbox products, {pages} pages of {PAGE_SIZE}, sandbox in its own uvicorn "
          f"process on 127.0.0.1, SQLite at {db_url}")
    print("NOTE: the Apex manifest's rate limit (20 requests/s) is lifted for this bench "
          "(ApexConnector subclass with client_overrides={'rate_limit': None}); the sandbox has none.")
    print("floor: bare httpx.AsyncClient loop downloading the same pages, bodies discarded; runs "
          + ", ".join(f"{f['seconds']:.2f}s" for f in floors) + f" -> fastest {floor:.2f}s "
          f"({floors[0]['bytes'] / 2**20:.1f} MiB)")
    rows = []
    ok = True

    def row(label: str, value: str, floor_text: str, ratio: str, target: str, passed: bool) -> None:
        nonlocal ok
        ok &= passed
        rows.append(f"{label:<34}{value:>12}{floor_text:>10}{ratio:>8}  {target:<10}{'PASS' if passed else 'MISS'}")

    full_ratio = full["seconds"] / floor
    poll_ratio = poll["seconds"] / floor
    row("full sync time", f"{full['seconds']:.2f}s", f"{floor:.2f}s", f"{full_ratio:.2f}", f"<= {FULL_TARGET}x",
        full_ratio <= FULL_TARGET)
    row("full sync peak RSS", f"{full['peak_rss_mb']:.0f} MB", "", "", f"< {PEAK_MB_TARGET:.0f} MB",
        full["peak_rss_mb"] < PEAK_MB_TARGET)
    row("full sync records created", f"{full['created']:,}", "", "", f"= {PRODUCTS:,}",
        full["created"] == PRODUCTS and full["live"] == PRODUCTS and full["status"] == "succeeded")
    row("incremental poll time", f"{poll['seconds']:.2f}s", f"{floor:.2f}s", f"{poll_ratio:.2f}",
        f"<= {INCREMENTAL_TARGET}x", poll_ratio <= INCREMENTAL_TARGET)
    row("incremental rows rewritten", f"{rewritten_any}", "", "", "= 0", rewritten_any == 0)
    other_events = {k: v for p in polls for k, v in p["events"].items() if k != "connection.sync_completed"}
    row("incremental events (not sync_*)", f"{sum(other_events.values())}", "", "", "= 0",
        not other_events and all(p["events"].get("connection.sync_completed") == 1 for p in polls))
    print(f"{'measure':<34}{'gateway':>12}{'floor':>10}{'ratio':>8}  {'target':<10}")
    print("\n".join(rows))
    print(f"for information: full sync RSS before run() {full['rss_before_mb']:.0f} MB; "
          f"{PRODUCTS / full['seconds']:,.0f} products/s; events {full['events']}; database {db_mb:.0f} MB")
    print(f"for information: {POLLS} polls, " + ", ".join(f"{p['seconds']:.2f}s" for p in polls)
          + f"; mode {poll['mode']}, {poll['unchanged']:,} unchanged, {poll['deleted']} deleted, "
          f"peak RSS {poll['peak_rss_mb']:.0f} MB; events {poll['events']}")
    if other_events:
        print(f"unexpected events after the poll: {other_events}")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(main())
