"""Benchmark: cached reads of the /v1 API against a bare Starlette floor, in the same run.

What it measures (DESIGN.md "Performance targets"): requests/s of ``GET .../products/{id}``
and ``GET .../products?limit=50`` on the gateway (SQLite, auth, rate limiting, metrics — all
on), and of a bare Starlette endpoint serving a JSON body of the same size, both under the
same uvicorn settings (1 process, uvloop + httptools, access log off), loaded by ``wrk``
(1 thread, 32 connections) on this machine. Target: gateway >= 0.5 x floor. The same reads
with the SQLite read cache off (``TILLGATE_READ_CACHE_SIZE=0``) are printed for information:
that is what a read costs right after a write.

Run: ``make bench`` (needs ``wrk``: ``apt-get install wrk``). Exit status 1 when a target is missed.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DURATION = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
TARGET = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {url} did not start")


def wrk(url: str, key: str | None, seconds: int) -> float:
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s"]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url} answered {errors.group(1)} errors under load:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def uvicorn(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "uvicorn"), *args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def main() -> int:
    if shutil.which("wrk") is None:
        print("bench/read_api.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tillgate-bench-"))
    env = {**os.environ,
           "TILLGATE_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
           "TILLGATE_SECRET_KEYS": base64.urlsafe_b64encode(os.urandom(32)).decode(),
           "TILLGATE_API_RATE_LIMIT": "100000000/minute"}
    subprocess.run([str(BIN / "tillgate"), "migrate"], env=env, check=True, capture_output=True)
    created = subprocess.run([str(BIN / "tillgate"), "tenants", "create", "bench"], env=env, check=True,
                             capture_output=True, text=True)
    key = created.stdout.strip().splitlines()[-1]
    port, floor_port, cold_port = free_port(), free_port(), free_port()
    servers = [uvicorn(["--factory", "gateway.api.app:create_app"], env, port),
               uvicorn(["--factory", "gateway.api.app:create_app"], {**env, "TILLGATE_READ_CACHE_SIZE": "0"}, cold_port)]
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/healthz")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            con = http.post("/v1/connections", json={"connector": "local", "name": "bench"}).raise_for_status().json()
            for n in range(60):
                http.post(f"/v1/connections/{con['id']}/products", json={
                    "sku": f"BENCH-{n:04d}", "name": f"Bench product {n} WHITE HANGING HEART T-LIGHT HOLDER",
                    "description": "Glazed ceramic holder for one tea light.", "price": "2.55", "cost": "1.10",
                    "tax_rate": "20", "tax_inclusive": True, "barcode": f"50000000{n:05d}",
                    "translations": {"ar": {"name": "حامل شموع"}},
                }).raise_for_status()
            products = http.get(f"/v1/connections/{con['id']}/products", params={"limit": 50}).raise_for_status()
            one_path = f"/v1/connections/{con['id']}/products/{products.json()['data'][7]['id']}"
            list_path = f"/v1/connections/{con['id']}/products?limit=50"
            one_body = http.get(one_path).raise_for_status().content
            list_body = products.content
        (work / "one.json").write_bytes(one_body)
        (work / "list.json").write_bytes(list_body)
        floor_env = {**env, "BENCH_ONE": str(work / "one.json"), "BENCH_LIST": str(work / "list.json"),
                     "PYTHONPATH": str(ROOT / "bench")}
        servers.append(uvicorn(["floor_app:app"], floor_env, floor_port))
        floor = f"http://127.0.0.1:{floor_port}"
        wait_ready(floor + "/one")
        cold = f"http://127.0.0.1:{cold_port}"
        wait_ready(cold + "/healthz")
        rows = []
        for label, ours, theirs, size in (("GET one product", base + one_path, floor + "/one", len(one_body)),
                                          ("GET list of 50", base + list_path, floor + "/list", len(list_body))):
            wrk(ours, key, 2)
            wrk(theirs, key, 2)  # warm-up both
            floor_rps = wrk(theirs, key, DURATION)
            ours_rps = wrk(ours, key, DURATION)
            wrk(cold + ours[len(base):], key, 2)
            cold_rps = wrk(cold + ours[len(base):], key, DURATION)
            rows.append((label, size, floor_rps, ours_rps, ours_rps / floor_rps, cold_rps))
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"read_api: wrk 1 thread, {CONNECTIONS} connections, {DURATION}s per run, 1 uvicorn process each")
    print(f"{'endpoint':<18}{'body bytes':>11}{'floor req/s':>13}{'gateway req/s':>15}{'ratio':>8}  target")
    ok = True
    for label, size, floor_rps, ours_rps, ratio, _ in rows:
        passed = ratio >= TARGET
        ok &= passed
        print(f"{label:<18}{size:>11}{floor_rps:>13.0f}{ours_rps:>15.0f}{ratio:>8.2f}  >= {TARGET} "
              f"{'PASS' if passed else 'MISS'}")
    print("for information, the same reads with TILLGATE_READ_CACHE_SIZE=0 (every request queries SQLite):")
    for label, _size, floor_rps, _ours, _ratio, cold_rps in rows:
        print(f"{label:<18}{'':>11}{floor_rps:>13.0f}{cold_rps:>15.0f}{cold_rps / floor_rps:>8.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
