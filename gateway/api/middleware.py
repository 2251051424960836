"""Pure ASGI middleware: request ids and Prometheus metrics (no BaseHTTPMiddleware overhead)."""

from __future__ import annotations

import re
import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.ids import new_request_id

REQUESTS = Counter("tillgate_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "tillgate_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}


def _observe(method: str, route: str, status: str, seconds: float) -> None:
    key = (method, route, status)
    pair = _children.get(key)
    if pair is None:  # label children are cached: .labels() takes a lock and builds a tuple each time
        pair = _children[key] = (REQUESTS.labels(method, route, status), LATENCY.labels(method, route))
    pair[0].inc()
    pair[1].observe(seconds)


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-Id`` in, if sane, else ``req_...``), echoes it in the
    response, and records count and latency per route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if template.startswith("/docs/assets"):
                template = "/docs/assets"
            _observe(scope["method"], template, str(status), time.perf_counter() - started)
