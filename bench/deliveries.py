"""Benchmark: outbound webhook deliveries from the delivery worker to a local receiver, against a bare floor.

What it measures (DESIGN.md "Performance targets", outbound deliveries to a local receiver:
>= 500 deliveries/s):

1. **One endpoint.** ``BENCH_EVENTS`` (default 5,000) events already committed, each with its
   ``pending`` delivery row (made by the outbox in the event's transaction), all for one endpoint
   (``events: ["*"]``). The clock starts when a :class:`gateway.workers.deliveries.DeliveryWorker`
   starts and stops when it has recorded the last one ``delivered``. One endpoint is served in
   ``seq`` order, one request after the other: this is the hard case.
2. **Several endpoints.** The same number of deliveries spread over ``BENCH_ENDPOINTS`` (4)
   endpoints on the same receiver (``BENCH_EVENTS / 4`` events, each fanned out to every endpoint);
   the worker serves endpoints concurrently (``webhook_concurrency``), each in its own order.

The worker runs in a child process set up as ``tillgate serve`` runs it in embedded mode: the
same :class:`~gateway.api.deps.Services` from ``TILLGATE_*`` settings, uvloop, the serving
process's GIL switch interval and frozen GC (``gateway.api.app``), ``webhook_*`` settings at
their defaults except ``TILLGATE_WEBHOOK_ALLOW_PRIVATE=true``. Only the API is missing: it is
idle in this scenario, and a process of its own lets the bench start the clock with the worker
and stop it on the worker's own ``delivered`` count, with no polling from outside.

Each event is a ``product.updated`` with a ~500-byte product as ``data``, emitted through
``db.transaction(tenant_id)`` + ``uow.emit`` (100 a transaction) before the clock starts. The
database is a fresh SQLite file per scenario; ``BENCH_DATABASE=postgresql`` uses a fresh schema
in the local PostgreSQL (database ``test``) instead.

The receiver is ``bench/receiver.py`` (a separate process: bare asyncio on uvloop, answers every
request ``200 {}`` at once and keeps it). After each run every request it got is checked: each
verifies with ``standardwebhooks.Webhook(secret).verify``, its body's id equals ``webhook-id``,
every event id of the endpoint arrived, and the first arrivals come in ``seq`` order; the
database must show every delivery ``delivered`` with one attempt.

The floor is what any sender must pay: a child process of the same kind (uvloop, same GIL
switch interval) whose bare ``httpx.AsyncClient`` loop POSTs the same bodies with the same
headers, signed beforehand, one after the other, to the same receiver URLs (for several
endpoints: one such loop per endpoint, concurrently, on one client). It runs before and after
the worker runs; the faster of the two counts.

Run: ``.venv/bin/python bench/deliveries.py`` (``make bench`` runs it too). Knobs:
``BENCH_EVENTS``, ``BENCH_ENDPOINTS``, ``BENCH_DATABASE``, ``BENCH_PROFILE=DIR`` (``py-spy record``
of each worker run, ``.venv/bin/pip install py-spy`` first, to ``DIR/deliveries_<endpoints>.txt`` as
collapsed stacks; the sampling costs the worker some CPU, so the figures of that run are not
comparable). Exit status 1 when a target is missed
or a check fails.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.webhook_ingest import DATABASE, drop_schema, free_port, fresh_database, wait_ready  # noqa: E402

EVENTS = int(os.environ.get("BENCH_EVENTS", "5000"))
ENDPOINTS = int(os.environ.get("BENCH_ENDPOINTS", "4"))
PROFILE = os.environ.get("BENCH_PROFILE", "")
EVENTS_PER_TRANSACTION = 100
TIMEOUT = 600.0  # seconds the worker may take before the run counts as failed
TARGET = 500.0


def like_a_gateway_process() -> None:
    """What ``gateway.api.app``'s lifespan does to the serving process (GC frozen, short GIL switch interval)."""
    from gateway.api.app import GIL_SWITCH_INTERVAL

    gc.collect()
    gc.freeze()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def product(i: int) -> dict[str, Any]:
    """A product as the gateway caches it: about 500 bytes of JSON."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_780_000_000 + i))
    return {
        "id": f"prd_{i:026d}", "object": "product", "connection_id": "con_bench", "remote_id": f"P-{i:06d}",
        "sku": f"CHAI-{i:06d}", "barcode": "8901234567890", "name": "Masala Chai, 250 g",
        "description": "Assam CTC with cardamom, ginger and cinnamon.", "category_ids": ["cat_beverages"],
        "price": Decimal("45.00") + i % 7, "cost": Decimal("28.50"), "currency": "INR", "tax_rate": Decimal("5"),
        "tax_inclusive": True, "unit": "each", "track_inventory": True, "active": True, "variants": [],
        "created_at": "2026-03-01T09:00:00Z", "updated_at": stamp, "deleted_at": None,
    }


# -- children ---------------------------------------------------------------------------------------
async def child_worker(expected: int) -> dict[str, Any]:
    """Run a DeliveryWorker as ``tillgate serve`` does until it has delivered ``expected``."""
    from sqlalchemy import text

    from gateway.api.deps import Services
    from gateway.settings import Settings
    from gateway.workers.deliveries import DeliveryWorker

    settings = Settings()
    svc = Services.build(settings)
    async with svc.db.read() as conn:  # a serving process has its engine connected already
        await conn.execute(text("SELECT 1"))
    worker = DeliveryWorker(svc.db, svc.webhooks, settings)
    like_a_gateway_process()
    cpu, started = time.process_time(), time.perf_counter()
    await worker.start()
    while worker.delivered < expected and time.perf_counter() - started < TIMEOUT:
        await asyncio.sleep(0.002)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    delivered = worker.delivered
    await worker.stop()
    await svc.db.dispose()
    return {"delivered": delivered, "seconds": seconds, "per_second": delivered / seconds, "cpu_seconds": cpu}


async def child_floor(lanes_file: str) -> dict[str, Any]:
    """POST every lane's pre-signed requests one after the other (the lanes concurrently) with bare httpx."""
    import httpx

    lanes = pickle.loads(Path(lanes_file).read_bytes())
    like_a_gateway_process()
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=15) as client:
        async def lane(requests: list[tuple[str, dict[str, str], bytes]]) -> None:
            for url, headers, body in requests:
                response = await client.post(url, content=body, headers=headers)
                if response.status_code != 200:
                    raise SystemExit(f"the receiver answered {response.status_code}")

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(lane(requests) for requests in lanes))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    count = sum(len(requests) for requests in lanes)
    return {"count": count, "seconds": seconds, "per_second": count / seconds, "cpu_seconds": cpu}


# -- parent ---------------------------------------------------------------------------------------------
async def setup_database(db_url: str, secret_key: bytes, receiver: str, endpoints: int, events: int,
                         lanes_file: Path) -> dict[str, Any]:
    """A migrated database: a tenant, a ``local`` connection, ``endpoints`` endpoints on the receiver
    (``/hooks/e<i>``), then ``events`` events and their pending deliveries. Writes the floor's
    requests (the same bodies and headers, signed now) to ``lanes_file``, one lane per endpoint."""
    from sqlalchemy import select

    from gateway import jsonutil
    from gateway.crypto import CredentialCipher
    from gateway.model import ConnectionCreate
    from gateway.model.webhooks import WebhookEndpointCreate
    from gateway.sdk.registry import ConnectorRegistry
    from gateway.services.connections import ConnectionService
    from gateway.services.deliveries import signed_headers
    from gateway.services.events import render_event
    from gateway.services.tenants import create_tenant
    from gateway.services.webhook_endpoints import WebhookEndpointService
    from gateway.storage import tables as t
    from gateway.storage.db import Database
    from gateway.storage.migrate import upgrade

    upgrade(db_url)
    db = Database(db_url)
    cipher = CredentialCipher([secret_key])
    tenant_id, _key = await create_tenant(db, "bench")
    connection = await ConnectionService(db, ConnectorRegistry(), cipher).create(
        tenant_id, ConnectionCreate(connector="local", name="bench"))
    service = WebhookEndpointService(db, cipher, allow_private=True)
    created = [await service.create(tenant_id, WebhookEndpointCreate(url=f"{receiver}/hooks/e{i}", events=["*"]))
               for i in range(endpoints)]
    for start in range(0, events, EVENTS_PER_TRANSACTION):
        async with db.transaction(tenant_id) as uow:
            for i in range(start, min(events, start + EVENTS_PER_TRANSACTION)):
                uow.emit("product.updated", connection["id"], product(i), ["price", "updated_at"])
    out: dict[str, Any] = {"tenant_id": tenant_id, "endpoints": [], "deliveries": 0}
    lanes = []
    sizes = []
    d = t.webhook_deliveries.c
    async with db.read() as conn:
        for endpoint in created:
            rows = (await conn.execute(
                select(t.events).join(t.webhook_deliveries, d.event_id == t.events.c.id)
                .where(d.endpoint_id == endpoint["id"], d.status == "pending").order_by(d.seq))).all()
            bodies = [(row.id, render_event(row)) for row in rows]
            lanes.append([(endpoint["url"], signed_headers(endpoint["secret"], event_id, body), body)
                          for event_id, body in bodies])
            sizes += [len(body) for _, body in bodies]
            out["endpoints"].append({"id": endpoint["id"], "url": endpoint["url"], "secret": endpoint["secret"],
                                     "events": [row.id for row in rows]})
            out["deliveries"] += len(rows)
    await db.dispose()
    lanes_file.write_bytes(pickle.dumps(lanes))
    out["body_bytes"] = sum(sizes) / len(sizes)
    out["data_bytes"] = len(jsonutil.dumps(product(0)))
    return out


async def delivery_state(db_url: str) -> dict[str, int]:
    """Deliveries by status, and attempts logged."""
    from sqlalchemy import func, select

    from gateway.storage import tables as t
    from gateway.storage.db import Database

    db = Database(db_url)
    async with db.read() as conn:
        counts = dict((await conn.execute(select(t.webhook_deliveries.c.status, func.count())
                                          .group_by(t.webhook_deliveries.c.status))).all())
        counts["attempts"] = (await conn.execute(select(func.count()).select_from(t.webhook_attempts))).scalar_one()
    await db.dispose()
    return counts


def run_child(args: list[str], env: dict[str, str], profile: str | None = None) -> dict[str, Any]:
    """Run ``--child args`` and return the JSON it prints; ``profile``: ``py-spy record`` it to that file."""
    child = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    spy = None
    if profile:
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(child.pid),
                                "--nonblocking", "--format", "raw", "--rate", "200", "-o", profile],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stdout, stderr = child.communicate()
    if spy is not None:
        spy.wait(60)
    if child.returncode != 0:
        raise SystemExit(f"bench child {args[0]} failed ({child.returncode}):\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def receiver_dump(base: str, path: Path) -> list[tuple[float, str, bytes, bytes]]:
    """Everything the receiver kept since the last dump (forgotten there)."""
    import httpx

    httpx.post(base + "/_dump", content=str(path).encode(), timeout=60).raise_for_status()
    kept = pickle.loads(path.read_bytes())
    path.unlink()
    return kept


def receiver_forget(base: str) -> int:
    """Make the receiver forget what it kept; return how many requests that was."""
    import httpx

    response = httpx.post(base + "/_dump", content=b"", timeout=60)
    response.raise_for_status()
    return response.json()["count"]


def check_received(kept: list[tuple[float, str, bytes, bytes]], setup: dict[str, Any]) -> dict[str, Any]:
    """Verify every request; per endpoint: every event arrived, first arrivals in seq order."""
    from standardwebhooks.webhooks import Webhook

    from bench.receiver import parse_head

    problems: list[str] = []
    duplicates = 0
    by_path: dict[str, list[tuple[float, bytes, bytes]]] = {}
    for at, path, head, body in kept:
        by_path.setdefault(path, []).append((at, head, body))
    for endpoint in setup["endpoints"]:
        path = "/" + endpoint["url"].split("/", 3)[3]
        verifier = Webhook(endpoint["secret"])
        seen: dict[str, int] = {}
        order: list[int] = []
        for _at, head, body in by_path.pop(path, []):
            _method, _path, headers = parse_head(head)
            payload = verifier.verify(body, headers)  # raises WebhookVerificationError
            if payload["id"] != headers["webhook-id"]:
                problems.append(f"{path}: body id {payload['id']} under webhook-id {headers['webhook-id']}")
            if payload["id"] in seen:
                duplicates += 1
                continue
            seen[payload["id"]] = payload["seq"]
            order.append(payload["seq"])
        missing = set(endpoint["events"]) - set(seen)
        if missing:
            problems.append(f"{path}: {len(missing)} of {len(endpoint['events'])} events never arrived")
        if set(seen) - set(endpoint["events"]):
            problems.append(f"{path}: {len(set(seen) - set(endpoint['events']))} unexpected events")
        if order != sorted(order):
            problems.append(f"{path}: first arrivals not in seq order")
    if by_path:
        problems.append(f"requests to unknown paths: {sorted(by_path)}")
    return {"requests": len(kept), "duplicates": duplicates, "problems": problems}


def main() -> int:
    from bench.receiver import process_cpu

    work = Path(tempfile.mkdtemp(prefix="tillgate-bench-deliveries-"))
    if PROFILE:
        Path(PROFILE).mkdir(parents=True, exist_ok=True)
    secret_key = os.urandom(32)
    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("TILLGATE_")}
    base_env.update({"PYTHONPATH": str(ROOT), "TILLGATE_SECRET_KEYS": base64.urlsafe_b64encode(secret_key).decode(),
                     "TILLGATE_WEBHOOK_ALLOW_PRIVATE": "true", "TILLGATE_LOG_LEVEL": "warning"})
    scenarios = [("1 endpoint", 1, EVENTS), (f"{ENDPOINTS} endpoints", ENDPOINTS, EVENTS // ENDPOINTS)]
    schemas: list[str | None] = []
    runs: list[dict[str, Any]] = []
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "receiver.py"), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        wait_ready(receiver + "/_count", process)
        for n, (name, endpoints, events) in enumerate(scenarios):
            (work / str(n)).mkdir()
            db_url, schema = fresh_database(work / str(n))
            schemas.append(schema)
            lanes = work / f"lanes{n}.pickle"
            setup = asyncio.run(setup_database(db_url, secret_key, receiver, endpoints, events, lanes))
            runs.append({"name": name, "endpoints": endpoints, "db_url": db_url, "setup": setup, "lanes": lanes,
                         "floors": []})

        def floor(run: dict[str, Any]) -> None:
            run["floors"].append(run_child(["floor", str(run["lanes"])], base_env))
            if receiver_forget(receiver) != run["setup"]["deliveries"]:
                raise SystemExit("the receiver did not get every request of the floor")

        for run in runs:
            floor(run)
        for run in runs:
            before = process_cpu(process.pid)
            run["worker"] = run_child(["worker", str(run["setup"]["deliveries"])],
                                      {**base_env, "TILLGATE_DATABASE_URL": run["db_url"]},
                                      profile=f"{PROFILE}/deliveries_{run['endpoints']}.txt" if PROFILE else None)
            run["receiver_cpu"] = process_cpu(process.pid) - before
            run["received"] = check_received(receiver_dump(receiver, work / "dump.pickle"), run["setup"])
            run["state"] = asyncio.run(delivery_state(run["db_url"]))
        for run in runs:
            floor(run)
    finally:
        process.terminate()
        process.wait(10)
        for schema in schemas:
            drop_schema(schema)
        shutil.rmtree(work, ignore_errors=True)

    setup = runs[0]["setup"]
    print(f"deliveries: outbound webhooks from a DeliveryWorker (child process set up as `tillgate serve` runs it) "
          f"to bench/receiver.py, {DATABASE}, product.updated events with {setup['data_bytes']}-byte data "
          f"({setup['body_bytes']:.0f}-byte bodies)")
    print("floor: bare httpx.AsyncClient POSTing the same pre-signed requests one after the other per endpoint, "
          "two runs: " + "; ".join(
              f"{run['name']}: " + ", ".join(f"{f['per_second']:,.0f}/s" for f in run["floors"]) for run in runs))
    ok = True
    print(f"{'measure':<34}{'gateway':>12}{'floor':>12}{'ratio':>8}  target")
    for run in runs:
        setup, worker, state, received = run["setup"], run["worker"], run["state"], run["received"]
        floor_best = max(run["floors"], key=lambda f: f["per_second"])
        checks = (worker["delivered"] == setup["deliveries"] == state.get("delivered", 0) == state["attempts"]
                  and not received["problems"] and received["requests"] == setup["deliveries"])
        passed = worker["per_second"] >= TARGET and checks
        ok = ok and passed
        label = f"{run['name']}, {setup['deliveries']:,} deliveries"
        print(f"{label:<34}{worker['per_second']:>10,.0f}/s{floor_best['per_second']:>10,.0f}/s"
              f"{worker['per_second'] / floor_best['per_second']:>7.2f}x  >= {TARGET:,.0f}/s: {'PASS' if passed else 'MISS'}")
        print(f"  worker {worker['seconds']:.2f} s, CPU {worker['cpu_seconds'] * 1000 / max(1, worker['delivered']):.2f} ms"
              f"/delivery; floor CPU {floor_best['cpu_seconds'] * 1000 / floor_best['count']:.2f} ms/request; "
              f"receiver CPU {run['receiver_cpu'] * 1000 / max(1, received['requests']):.3f} ms/request")
        print(f"  checked: {received['requests']:,} requests received, all verified with standardwebhooks, "
              f"{received['duplicates']} duplicates; database: {state}")
        for problem in received["problems"]:
            print(f"  PROBLEM: {problem}")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import uvloop

        kind = sys.argv[2]
        if kind == "worker":
            print(json.dumps(uvloop.run(child_worker(int(sys.argv[3])))))
        else:
            print(json.dumps(uvloop.run(child_floor(sys.argv[3]))))
    else:
        sys.exit(main())
