"""A small base for fake vendor servers ("sandboxes") that connectors build on.

A connector's sandbox is a Starlette app that behaves like the vendor's API as its docs describe.
This module gives every sandbox the same test knobs, so the gateway's retry, rate-limit and
pagination-guard code can be exercised against any of them:

Faults (:class:`Faults`), set at construction and at runtime through the admin routes
    ``latency_ms`` + ``jitter_ms`` (every request is delayed by ``latency_ms`` plus a uniform
    ``0..jitter_ms``); ``error_rate`` (probability of answering ``error_status``, 503 by default,
    with ``Retry-After: error_retry_after`` seconds when set and the status is 503);
    ``rate_limit_every`` / ``rate_limit_burst`` / ``rate_limit_retry_after`` (after every N
    requests served, the next M answer 429 with ``Retry-After``; requests are counted in cycles of
    N + M, the cycle restarts when the faults are changed); ``repeat_page`` (list endpoints built on
    :func:`paginate` return the first page for every page number and always claim one more page,
    so a client without a loop guard never stops).

Fault middleware
    :class:`FaultMiddleware` is pure ASGI and wraps the whole app, outside the vendor's auth, so
    faults hit every route, including auth failures. The admin routes under ``/_sandbox`` are
    never faulted, never logged and need no credentials. Paths listed in ``rate_limit_exempt``
    (a vendor's documented un-limited endpoints) never answer 429 but still get latency and 5xx.

Admin routes
    ``GET /_sandbox/state`` (faults, counters, vendor extras), ``POST /_sandbox/faults`` (JSON
    object of knobs to change, plus ``"seed"`` to re-seed the RNG; unknown knobs answer 422),
    ``DELETE /_sandbox/faults`` (back to the construction-time faults), ``GET /_sandbox/requests``
    (the request log, newest last), ``DELETE /_sandbox/requests`` (clear it).

Determinism
    One seed drives two :class:`random.Random` streams, one for error draws (exactly one draw per
    non-admin request while ``error_rate`` > 0) and one for jitter, so a fixed seed gives the same
    faulted requests whatever the latency settings.

Also here: :func:`read_retail_csv` (typed rows of the UCI Online Retail CSV used to seed
sandboxes), :func:`run` (serve a sandbox with uvicorn, for ``tillgate sandbox <name>``) and
:class:`ServerThread` (serve one on a free local port in a background thread, for tests).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import gc
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ADMIN_PREFIX = "/_sandbox"

ErrorResponder = Callable[[int, str], Response]


@dataclass
class Faults:
    """The fault knobs of a sandbox (see the module docstring for their meaning)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    error_retry_after: int | None = None
    rate_limit_every: int = 0
    rate_limit_burst: int = 1
    rate_limit_retry_after: int = 1
    repeat_page: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` when a knob is out of range."""
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency_ms and jitter_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if not 500 <= self.error_status <= 599:
            raise ValueError("error_status must be a 5xx status")
        if self.error_retry_after is not None and self.error_retry_after < 0:
            raise ValueError("error_retry_after must be >= 0")
        if self.rate_limit_every < 0 or self.rate_limit_burst < 1 or self.rate_limit_retry_after < 0:
            raise ValueError("rate_limit_every must be >= 0, rate_limit_burst >= 1, rate_limit_retry_after >= 0")

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied; ``ValueError`` on unknown knobs or wrong types."""
        known = {f.name: f for f in dataclasses.fields(self)}
        values = dataclasses.asdict(self)
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"unknown fault knob {key!r}")
            values[key] = _coerce_knob(key, value, getattr(self, key))
        new = Faults(**values)
        new.validate()
        return new


def _coerce_knob(key: str, value: Any, current: Any) -> Any:
    """Check one knob's JSON value against the type of its current value."""
    if key == "error_retry_after":
        if value is None:
            return None
        current = 0
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    if isinstance(current, int):
        if int(value) != value:
            raise ValueError(f"{key} must be an integer")
        return int(value)
    return float(value)


@dataclass(slots=True)
class LoggedRequest:
    """One entry of the request log."""

    seq: int
    method: str
    path: str
    query: str
    status: int
    fault: str | None
    duration_ms: float
    at: str

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data."""
        return dataclasses.asdict(self)


def _default_error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


class Sandbox:
    """Fault state, RNG, request log and admin routes shared by one sandbox app.

    ``faults`` is a :class:`Faults` or a dict of knobs; ``error_response(status, message)`` builds
    the vendor-shaped body of injected 429/5xx answers; ``rate_limit_exempt`` lists paths (exact,
    without the root path) that never get 429; ``state_extra()`` adds vendor data to
    ``GET /_sandbox/state``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: Faults | dict[str, Any] | None = None,
        error_response: ErrorResponder | None = None,
        rate_limit_exempt: Iterable[str] = (),
        state_extra: Callable[[], dict[str, Any]] | None = None,
        log_size: int = 10_000,
    ) -> None:
        if isinstance(faults, dict):
            faults = Faults().updated(faults)
        self.initial_faults = faults or Faults()
        self.initial_faults.validate()
        self.faults = self.initial_faults
        self.error_response = error_response or _default_error
        self.rate_limit_exempt = frozenset(rate_limit_exempt)
        self.state_extra = state_extra
        self.requests: deque[LoggedRequest] = deque(maxlen=log_size)
        self.seed = seed
        self.reseed(seed)
        self.request_count = 0
        self.fault_counts: dict[str, int] = {}
        self._cycle = 0

    def reseed(self, seed: int) -> None:
        """Restart both RNG streams (errors, jitter) from ``seed``."""
        self.seed = seed
        self.error_rng = random.Random(seed)
        self.jitter_rng = random.Random(seed + 1)

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault knobs (``ValueError`` on bad ones); restarts the 429 cycle."""
        self.faults = self.faults.updated(changes)
        self._cycle = 0
        return self.faults

    def reset_faults(self) -> Faults:
        """Back to the construction-time faults; restarts the 429 cycle."""
        self.faults = self.initial_faults
        self._cycle = 0
        return self.faults

    def decide(self, path: str) -> tuple[float, int | None, dict[str, str]]:
        """For one request: (delay in seconds, injected status or None, headers of the injected answer)."""
        f = self.faults
        self.request_count += 1
        delay = f.latency_ms / 1000.0
        if f.jitter_ms:
            delay += self.jitter_rng.uniform(0, f.jitter_ms) / 1000.0
        # One error draw per request whatever else happens, so the seed alone fixes which requests fail.
        errored = f.error_rate > 0 and self.error_rng.random() < f.error_rate
        if f.rate_limit_every and path not in self.rate_limit_exempt:
            position = self._cycle % (f.rate_limit_every + f.rate_limit_burst)
            self._cycle += 1
            if position >= f.rate_limit_every:
                return delay, 429, {"Retry-After": str(f.rate_limit_retry_after)}
        if errored:
            headers = {}
            if f.error_status == 503 and f.error_retry_after is not None:
                headers["Retry-After"] = str(f.error_retry_after)
            return delay, f.error_status, headers
        return delay, None, {}

    def state(self) -> dict[str, Any]:
        """What ``GET /_sandbox/state`` answers."""
        data: dict[str, Any] = {
            "seed": self.seed,
            "faults": dataclasses.asdict(self.faults),
            "requests": self.request_count,
            "faulted": dict(self.fault_counts),
        }
        if self.state_extra is not None:
            data.update(self.state_extra())
        return data

    # admin routes -------------------------------------------------------------------------------

    async def _get_state(self, request: Request) -> Response:
        return JSONResponse(self.state())

    async def _post_faults(self, request: Request) -> Response:
        try:
            changes = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        if not isinstance(changes, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        seed = changes.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            return JSONResponse({"error": "seed must be an integer"}, status_code=422)
        try:
            self.set_faults(**changes)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        if seed is not None:
            self.reseed(seed)
        return JSONResponse(self.state())

    async def _delete_faults(self, request: Request) -> Response:
        self.reset_faults()
        return JSONResponse(self.state())

    async def _get_requests(self, request: Request) -> Response:
        return JSONResponse({"data": [r.as_dict() for r in self.requests]})

    async def _delete_requests(self, request: Request) -> Response:
        self.requests.clear()
        return Response(status_code=204)

    def admin_routes(self) -> list[BaseRoute]:
        """The ``/_sandbox`` routes."""
        return [
            Route(f"{ADMIN_PREFIX}/state", self._get_state, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/faults", self._post_faults, methods=["POST"]),
            Route(f"{ADMIN_PREFIX}/faults", self._delete_faults, methods=["DELETE"]),
            Route(f"{ADMIN_PREFIX}/requests", self._get_requests, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/requests", self._delete_requests, methods=["DELETE"]),
        ]

    def build_app(
        self,
        routes: Sequence[BaseRoute],
        *,
        middleware: Sequence[Middleware] = (),
        exception_handlers: dict[Any, Any] | None = None,
        lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    ) -> Starlette:
        """A Starlette app: admin routes + ``routes``, faults outermost, then ``middleware`` (e.g. auth).

        ``lifespan``: Starlette's lifespan context (e.g. to close what the sandbox opened on
        shutdown); :func:`run` and :class:`ServerThread` run it. The app's ``state.sandbox`` is
        this object.
        """
        app = Starlette(
            routes=[*self.admin_routes(), *routes],
            middleware=[Middleware(FaultMiddleware, sandbox=self), *middleware],
            exception_handlers=exception_handlers,
            lifespan=lifespan,
        )
        app.state.sandbox = self
        return app


def is_admin_path(scope: Scope) -> bool:
    """True for the sandbox's own ``/_sandbox`` routes (which faults and vendor auth must skip)."""
    return _relative_path(scope).startswith(ADMIN_PREFIX + "/")


def _relative_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


class FaultMiddleware:
    """ASGI middleware applying a :class:`Sandbox`'s faults and writing its request log."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Delay, maybe answer 429/5xx instead of the app, and log the request."""
        if scope["type"] != "http" or is_admin_path(scope):
            await self.app(scope, receive, send)
            return
        sb = self.sandbox
        path = _relative_path(scope)
        started = time.perf_counter()
        delay, status, headers = sb.decide(path)
        if delay > 0:
            await asyncio.sleep(delay)
        seen: dict[str, int] = {}
        fault: str | None = None
        if status is not None:
            fault = str(status)
            sb.fault_counts[fault] = sb.fault_counts.get(fault, 0) + 1
            message = (
                "Too many requests" if status == 429 else "Service unavailable" if status == 503 else "Server error"
            )
            response = sb.error_response(status, message)
            response.headers.update(headers)
            seen["status"] = status
            await response(scope, receive, send)
            self._log(scope, path, seen, fault, started)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._log(scope, path, seen, fault, started)

    def _log(self, scope: Scope, path: str, seen: dict[str, int], fault: str | None, started: float) -> None:
        sb = self.sandbox
        sb.requests.append(
            LoggedRequest(
                seq=sb.request_count,
                method=scope["method"],
                path=path,
                query=scope.get("query_string", b"").decode("latin-1"),
                status=seen.get("status", 0),
                fault=fault,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            )
        )


@dataclass(slots=True)
class Page:
    """One page of a list: the items and the numbers a page/limit API answers with."""

    items: list[Any]
    total: int
    page: int
    limit: int


def paginate(items: Sequence[Any], page: int, limit: int, sandbox: Sandbox | None = None) -> Page:
    """Slice page ``page`` (1-based) of ``limit`` items, honouring the ``repeat_page`` fault.

    With ``repeat_page`` on, every page number gets the first page's items and ``total`` is
    raised to at least ``(page + 1) * limit``, so there always seems to be one more page.
    """
    if sandbox is not None and sandbox.faults.repeat_page:
        return Page(list(items[:limit]), max(len(items), (page + 1) * limit), page, limit)
    start = (page - 1) * limit
    return Page(list(items[start : start + limit]), len(items), page, limit)


# --- CSV seeding ---------------------------------------------------------------------------------

RETAIL_COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)


@dataclass(frozen=True, slots=True)
class RetailRow:
    """One line of the UCI Online Retail CSV, typed. Money is GBP; dates are UTC."""

    line: int
    invoice_no: str
    stock_code: str
    description: str
    quantity: int
    invoice_date: datetime
    unit_price: Decimal
    customer_id: int | None
    country: str

    @property
    def is_credit_note(self) -> bool:
        """InvoiceNo starting with ``C``: a cancellation (negative quantities)."""
        return self.invoice_no.upper().startswith("C")


def _parse_retail_date(text: str) -> datetime:
    text = text.strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"bad InvoiceDate {text!r}")


def read_retail_csv(path: str | Path, *, skipped: list[tuple[int, str]] | None = None) -> Iterator[RetailRow]:
    """Yield the typed rows of a UCI Online Retail CSV (header ``InvoiceNo,StockCode,...,Country``).

    ``description`` is whitespace-trimmed (may be empty); ``quantity`` an int (negative on credit
    notes); ``unit_price`` a :class:`~decimal.Decimal`; ``customer_id`` an int or None (``12346.0``
    reads as 12346). Malformed lines (missing InvoiceNo/StockCode, bad number or date) are not
    yielded; when ``skipped`` is given, ``(line number, reason)`` is appended to it for each.
    ``ValueError`` when the header lacks a column.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in RETAIL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        for number, raw in enumerate(reader, start=2):
            try:
                invoice_no = (raw["InvoiceNo"] or "").strip()
                stock_code = (raw["StockCode"] or "").strip()
                if not invoice_no or not stock_code:
                    raise ValueError("missing InvoiceNo or StockCode")
                customer = (raw["CustomerID"] or "").strip()
                customer_id = int(Decimal(customer)) if customer else None
                unit_price = Decimal((raw["UnitPrice"] or "").strip())
                if not unit_price.is_finite():
                    raise ValueError("bad UnitPrice")
                row = RetailRow(
                    line=number,
                    invoice_no=invoice_no,
                    stock_code=stock_code,
                    description=(raw["Description"] or "").strip(),
                    quantity=int((raw["Quantity"] or "").strip()),
                    invoice_date=_parse_retail_date(raw["InvoiceDate"] or ""),
                    unit_price=unit_price,
                    customer_id=customer_id,
                    country=(raw["Country"] or "").strip(),
                )
            except (ValueError, InvalidOperation, TypeError) as exc:
                if skipped is not None:
                    skipped.append((number, str(exc) or exc.__class__.__name__))
                continue
            yield row


# --- serving -------------------------------------------------------------------------------------


def run(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve a sandbox app with uvicorn until interrupted (``tillgate sandbox <name>``).

    The seeded store is moved out of the garbage collector's sight first (``gc.freeze``): a big
    catalog would otherwise be traversed by every full collection, pausing answers at random.
    The app's lifespan runs (``lifespan="auto"``), so a sandbox closes what it opened on shutdown.
    """
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws="none", lifespan="auto")


@dataclass
class ServerThread:
    """Serve an app with uvicorn on ``host`` and a free port in a background thread (for tests).

    Use as a context manager; ``base_url`` is ``http://host:port``. Leaving the block stops the
    server (``should_exit``: the app's lifespan shutdown runs) and joins the thread.
    """

    app: ASGIApp
    host: str = "127.0.0.1"
    port: int = 0
    startup_timeout: float = 10.0
    _server: uvicorn.Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _sock: socket.socket | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(self.app, log_level="warning", ws="none", lifespan="auto", loop="asyncio", http="h11")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("sandbox server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
