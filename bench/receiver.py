"""The consumer of ``bench/deliveries.py`` and ``bench/freshness.py``: a cheap webhook receiver.

A bare asyncio server (uvloop) speaking just enough HTTP/1.1 (keep-alive, ``Content-Length``
bodies) to answer every ``POST`` ``200 {}`` at once and keep it: the arrival time
(``time.monotonic()``, the system-wide ``CLOCK_MONOTONIC``, comparable across processes on the
same machine), the path, the raw request head and the body. Nothing is parsed or verified while
it runs; the bench does that afterwards. So the receiver costs a few tens of microseconds a
request and is not what a bench measures.

Control requests (not recorded):

- ``POST /_dump`` with a file path as the body: write everything kept so far there (pickle of
  ``[(at, path, head, body), ...]`` in arrival order), forget it, answer ``200 {"count": n}``.
  An empty body forgets without writing.
- ``GET /_count``: ``200 {"count": n}``, how many requests are kept.

Run: ``python bench/receiver.py PORT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
import time
from typing import Any, ClassVar

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux ``/proc``; for the benches)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """``(method, path, headers)`` of a kept request head (header names lower-cased)."""
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


class Receiver(asyncio.Protocol):
    kept: ClassVar[list[tuple[float, str, bytes, bytes]]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            lowered = head.lower()
            length = 0
            at = lowered.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lowered.find(b"\r\n", at + 2)
                length = int(lowered[at + 17:stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding:" in lowered:
                self.transport.write(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            now = time.monotonic()
            first_line = head[:head.find(b"\r\n")] if b"\r\n" in head else head
            method, path = first_line.split(b" ", 2)[:2]
            if path.startswith(b"/_"):
                self.control(method, path, body)
            else:
                self.kept.append((now, path.decode(), head, body))
                self.transport.write(OK)

    def control(self, method: bytes, path: bytes, body: bytes) -> None:
        count = len(Receiver.kept)
        if path == b"/_dump" and method == b"POST":
            if body:
                with open(body.decode(), "wb") as out:
                    pickle.dump(Receiver.kept, out, protocol=pickle.HIGHEST_PROTOCOL)
            Receiver.kept = []
        self.transport.write(answer(json.dumps({"count": count}).encode()))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))
