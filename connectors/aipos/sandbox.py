"""An in-memory AI POS: the fake vendor server the AI POS connector is developed and tested against.

It follows ``connectors/aipos/API.md`` (which fixes what ``vendor-docs/aipos-api.txt`` leaves
open): base path ``/aipos/api/v1``, ``Authorization: Bearer aipos_...``, Stripe-like prefixed ids
(``prod_001``, ``cust_abc123``, ``sale_xyz789``), bare JSON objects, lists as
``{"object": "list", "data": [...], "has_more": bool}`` walked with ``limit`` / ``starting_after``
/ ``updated_since``, errors as ``{"error": {"type", "code", "message", "param"}}``, money as JSON
numbers in the major unit (``45.00``), ``Idempotency-Key`` on every ``POST``, 1000 requests per
minute per key, PDF receipts, refunds, inventory adjustments and signed webhooks it sends.
Every choice made where API.md is silent is listed in ``connectors/aipos/SANDBOX.md``; the fault
knobs and ``/_sandbox`` admin routes come from :mod:`gateway.testing.sandbox`, plus three webhook
knobs (:class:`AIPOSFaults`).

Routes (under ``/aipos/api/v1``; all but ``/health`` need a key):

``GET/POST /products``, ``GET/POST /products/{id}``, ``GET/POST /sales``, ``GET /sales/{id}``,
``GET /sales/{id}/receipt``, ``POST /sales/{id}/refund``, ``GET/POST /customers``,
``GET /customers/{id}``, ``GET /inventory``, ``POST /inventory/adjustments``, ``GET /health``.

Admin routes added to the shared ones: ``POST/GET /_sandbox/webhooks``,
``DELETE /_sandbox/webhooks/{id}``, ``POST /_sandbox/webhooks/{id}/rotate``,
``GET/DELETE /_sandbox/webhook-deliveries``, ``POST /_sandbox/sync-completed``.

Money is :class:`~decimal.Decimal` inside (quantized to 2 places) and written as a JSON number with
exactly two decimals (``45.00``); request bodies are parsed without ever making a ``float``.
Records are slotted dataclasses with aware UTC datetimes and no reference cycles, so a big seeded
store can be ``gc.freeze``-d (:func:`gateway.testing.sandbox.run` does).

Use :func:`create_app` (``tillgate sandbox aipos``); its keyword options are documented there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import math
import random
import secrets
import string
from bisect import bisect_left, bisect_right, insort
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import jsonutil
from gateway.testing.sandbox import ADMIN_PREFIX, Faults, RetailRow, Sandbox, is_admin_path, read_retail_csv

log = logging.getLogger(__name__)

BASE_PATH = "/aipos/api/v1"
HEALTH_PATH = f"{BASE_PATH}/health"
DEFAULT_API_KEYS = ("aipos_test_sandbox_key",)
DEFAULT_STORE = "AI POS Demo Store"
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
RATE_LIMIT = 1000  # requests per key per sliding 60 s window (the doc's "1000 req/min")
RATE_WINDOW_S = 60.0
IDEMPOTENCY_TTL = timedelta(hours=24)
IDEMPOTENCY_KEY_MAX = 255
WEBHOOK_RETRY_SCHEDULE = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)  # seconds before retries 1..8
WEBHOOK_TIMEOUT_S = 10.0
SECRET_OVERLAP = timedelta(hours=24)  # a rotated-out webhook secret keeps signing this long
PAYMENT_METHODS = ("cash", "card", "upi", "wallet")
MAX_ITEMS = 100  # lines per sale
MAX_QTY = 1_000_000
MAX_MONEY = Decimal("99999999.99")
CENT = Decimal("0.01")
ZERO = Decimal(0)
HUNDRED = Decimal(100)
ID_ALPHABET = string.ascii_lowercase + string.digits
SEED_EPOCH = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)  # the API.md example product's created_at
DOC_SALE_AT = datetime(2026, 3, 31, 10, 30, tzinfo=UTC)  # the doc's sample sale's created_at
SCOPE_API_KEY = "aipos.api_key"  # where the gate leaves the caller's key in the ASGI scope
EPOCH_MIN = datetime.min.replace(tzinfo=UTC)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The default clock: the current time, aware UTC."""
    return datetime.now(UTC)


# --- money ---------------------------------------------------------------------------------------


def money(value: Decimal | int | str) -> Decimal:
    """A Decimal rounded half-up to 2 places (how the vendor keeps amounts in the major unit)."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


def sale_totals(items: Iterable[SaleItem]) -> tuple[Decimal, Decimal, Decimal]:
    """``(total, tax, grand_total)`` of sale lines, by API.md's rule.

    ``total`` is the sum of the line totals (``qty * price``, exact); ``tax`` is the sum over lines of
    ``line total * tax_rate / 100``, rounded **once**, half up, to 2 places; ``grand_total`` is
    ``total + tax``. All Decimal, in the major unit.
    """
    total = ZERO
    raw_tax = ZERO
    for item in items:
        total += item.total
        raw_tax += item.total * item.tax_rate / HUNDRED
    tax = raw_tax.quantize(CENT, rounding=ROUND_HALF_UP)
    return total, tax, total + tax


def _percent(value: Decimal) -> Decimal:
    """A tax rate as stored: at most 2 decimals, no trailing zeros (``5``, ``12.5``)."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP).normalize()


# --- records -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Product:
    """A catalog item at the account's one store; ``stock`` is the on-hand quantity.

    ``updated_at`` changes on every change of the product, stock included; ``stock_updated_at`` is
    the inventory level's ``updated_at`` (stock or ``low_stock_threshold`` changed).
    """

    id: str
    name: str
    sku: str | None
    barcode: str | None
    category: str | None
    price: Decimal
    tax_rate: Decimal
    unit: str
    active: bool
    stock: int
    low_stock_threshold: int
    created_at: datetime
    updated_at: datetime
    stock_updated_at: datetime


@dataclass(slots=True)
class Customer:
    """A customer account."""

    id: str
    name: str
    email: str | None
    phone: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class SaleItem:
    """One sale line: ``total = qty * price`` (exact); ``name`` and ``tax_rate`` copied from the product."""

    product_id: str
    name: str
    qty: int
    price: Decimal
    tax_rate: Decimal
    total: Decimal


@dataclass(slots=True)
class Sale:
    """A completed (or refunded, whole-sale) sale; the totals are fixed when it is made."""

    id: str
    customer_id: str | None
    items: list[SaleItem]
    payment_method: str
    status: str
    total: Decimal
    tax: Decimal
    grand_total: Decimal
    created_at: datetime
    updated_at: datetime
    refunded_at: datetime | None = None


@dataclass(slots=True)
class Adjustment:
    """A stock change made through ``POST /inventory/adjustments``; ``quantity`` is the stock after it."""

    id: str
    product_id: str
    delta: int
    quantity: int
    reason: str | None
    created_at: datetime


Key = tuple[datetime, str]


class ChangeIndex:
    """The ``(updated_at, id)`` keys of one collection, kept sorted: the order every list answers in.

    A change moves a key to the end (new keys are always the newest: :meth:`AIPOSStore.tick`), so a
    change is a bisect plus a delete and an append.
    """

    __slots__ = ("keys",)

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self.keys: list[Key] = sorted(keys)

    def add(self, key: Key) -> None:
        """Insert a new key."""
        insort(self.keys, key)

    def move(self, old: Key, new: Key) -> None:
        """Replace ``old`` (which must be present) with ``new``."""
        index = bisect_left(self.keys, old)
        if index < len(self.keys) and self.keys[index] == old:
            del self.keys[index]
        insort(self.keys, new)

    def page(self, after: Key | None, since: datetime | None, limit: int) -> tuple[list[Key], bool]:
        """Up to ``limit`` keys after ``after`` with ``updated_at >= since``, and whether more follow."""
        start = bisect_left(self.keys, (since, "")) if since is not None else 0
        if after is not None:
            start = max(start, bisect_right(self.keys, after))
        chunk = self.keys[start : start + limit + 1]
        return chunk[:limit], len(chunk) > limit


# --- errors and JSON -----------------------------------------------------------------------------

ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


class APIError(Exception):
    """A request the vendor rejects, answered as ``{"error": {"type", "code", "message", "param"}}``.

    ``type`` follows from the status: 401 ``authentication_error``, 429 ``rate_limit_error``, 5xx
    ``api_error``, every other 4xx ``invalid_request_error``.
    """

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def response(self, headers: dict[str, str] | None = None) -> Response:
        """The error as a response."""
        return error_response(self.status, self.code, self.message, self.param, headers)


def invalid(param: str | None, message: str) -> APIError:
    """400 ``parameter_invalid``."""
    return APIError(400, "parameter_invalid", message, param)


def missing(param: str) -> APIError:
    """400 ``parameter_missing``."""
    return APIError(400, "parameter_missing", f"Missing required param: {param}.", param)


def no_such(kind: str, ident: str, param: str | None = "id", status: int = 404) -> APIError:
    """``resource_missing``: 404 for an id in the path, 400 for an id inside a body."""
    return APIError(status, "resource_missing", f"No such {kind}: '{ident}'", param)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f").encode())
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(content: Any) -> bytes:
    """Compact UTF-8 JSON the way the vendor writes it.

    ``Decimal`` is a JSON number written as it is kept (``45.00``, tax rates ``5``), datetimes are
    RFC 3339 UTC with ``Z`` (fractional seconds only when not zero).
    """
    return orjson.dumps(content, default=_default, option=orjson.OPT_UTC_Z)


class AIPOSJSON(Response):
    """A JSON response encoded by :func:`dumps`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Encode with :func:`dumps`."""
        return dumps(content)


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """The vendor's error envelope with its ``type`` derived from ``status``."""
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"type": kind, "code": code, "message": message, "param": param}}
    return AIPOSJSON(body, status_code=status, headers=headers)


def parse_time(text: str, param: str) -> datetime:
    """An RFC 3339 timestamp with a zone (``Z`` or an offset) as aware UTC; 400 ``parameter_invalid`` otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        hint = " (a '+' in a query string must be sent as %2B)" if " " in text else ""
        message = (
            f"Invalid {param}: {text!r} is not an RFC 3339 timestamp with a zone, e.g. 2026-03-31T10:30:00Z{hint}."
        )
        raise invalid(param, message)
    return moment.astimezone(UTC)


# --- rendering -----------------------------------------------------------------------------------


def render_product(p: Product) -> dict[str, Any]:
    """A product as ``GET /products/{id}`` answers it."""
    return {
        "id": p.id,
        "object": "product",
        "name": p.name,
        "sku": p.sku,
        "barcode": p.barcode,
        "category": p.category,
        "price": p.price,
        "tax_rate": p.tax_rate,
        "unit": p.unit,
        "active": p.active,
        "stock": p.stock,
        "low_stock_threshold": p.low_stock_threshold,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


def render_customer(c: Customer) -> dict[str, Any]:
    """A customer as ``GET /customers/{id}`` answers it."""
    return {
        "id": c.id,
        "object": "customer",
        "name": c.name,
        "email": c.email,
        "phone": c.phone,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


def render_sale(s: Sale) -> dict[str, Any]:
    """A sale as ``GET /sales/{id}`` answers it (and as ``sale.*`` webhooks carry it)."""
    return {
        "id": s.id,
        "object": "sale",
        "customer_id": s.customer_id,
        "items": [
            {
                "product_id": i.product_id,
                "name": i.name,
                "qty": i.qty,
                "price": i.price,
                "tax_rate": i.tax_rate,
                "total": i.total,
            }
            for i in s.items
        ],
        "payment_method": s.payment_method,
        "status": s.status,
        "total": s.total,
        "tax": s.tax,
        "grand_total": s.grand_total,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "refunded_at": s.refunded_at,
    }


def render_level(p: Product) -> dict[str, Any]:
    """A product's inventory level as ``GET /inventory`` lists it."""
    return {
        "object": "inventory_level",
        "product_id": p.id,
        "quantity": p.stock,
        "low_stock_threshold": p.low_stock_threshold,
        "updated_at": p.stock_updated_at,
    }


def render_adjustment(a: Adjustment) -> dict[str, Any]:
    """An inventory adjustment as ``POST /inventory/adjustments`` answers it."""
    return {
        "object": "inventory_adjustment",
        "id": a.id,
        "product_id": a.product_id,
        "delta": a.delta,
        "quantity": a.quantity,
        "reason": a.reason,
        "created_at": a.created_at,
    }


# --- faults --------------------------------------------------------------------------------------

WEBHOOK_KNOBS = ("webhook_duplicate_rate", "webhook_reorder", "webhook_drop_rate")


@dataclass
class AIPOSFaults(Faults):
    """The shared fault knobs plus three for the webhooks the sandbox sends.

    ``webhook_duplicate_rate`` (0..1): probability that a delivery is sent a second time (same
    event id and body, its own attempts); ``webhook_reorder``: events are held for
    ``webhook_reorder_window`` seconds and each batch is sent in a shuffled order (seeded RNG);
    ``webhook_drop_rate`` (0..1): probability that an event is never sent to anyone.
    """

    webhook_duplicate_rate: float = 0.0
    webhook_reorder: bool = False
    webhook_drop_rate: float = 0.0

    def validate(self) -> None:
        """Raise ``ValueError`` when a knob is out of range."""
        super().validate()
        for name in ("webhook_duplicate_rate", "webhook_drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")

    def updated(self, changes: dict[str, Any]) -> AIPOSFaults:
        """A copy with ``changes`` applied; ``ValueError`` on unknown knobs, wrong types or ranges."""
        base_names = [f.name for f in dataclasses.fields(Faults)]
        base = Faults(**{name: getattr(self, name) for name in base_names}).updated(
            {k: v for k, v in changes.items() if k not in WEBHOOK_KNOBS}
        )
        values = {**dataclasses.asdict(base), **{name: getattr(self, name) for name in WEBHOOK_KNOBS}}
        for name in WEBHOOK_KNOBS:
            if name not in changes:
                continue
            value = changes[name]
            if name == "webhook_reorder":
                if not isinstance(value, bool):
                    raise ValueError("webhook_reorder must be a boolean")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            values[name] = value if isinstance(value, bool) else float(value)
        new = AIPOSFaults(**values)
        new.validate()
        return new

    @classmethod
    def coerce(cls, faults: Faults | dict[str, Any] | None) -> AIPOSFaults:
        """``faults`` as :class:`AIPOSFaults` (from a dict of knobs, a plain :class:`Faults` or None)."""
        if faults is None:
            return cls()
        if isinstance(faults, dict):
            return cls().updated(faults)
        if isinstance(faults, cls):
            faults.validate()
            return faults
        new = cls(**dataclasses.asdict(faults))
        new.validate()
        return new


class AIPOSSandbox(Sandbox):
    """The shared fault state, plus a third RNG stream for the webhook knobs (re-seeded with the others)."""

    webhook_rng: random.Random

    def reseed(self, seed: int) -> None:
        """Restart the error, jitter and webhook RNG streams from ``seed``."""
        super().reseed(seed)
        self.webhook_rng = random.Random(seed + 2)

    @property
    def knobs(self) -> AIPOSFaults:
        """The current faults (always :class:`AIPOSFaults`: :func:`create_app` builds them so)."""
        faults = self.faults
        assert isinstance(faults, AIPOSFaults)
        return faults


# --- webhooks ------------------------------------------------------------------------------------


@dataclass(slots=True)
class WebhookEndpoint:
    """A receiver URL registered through the admin API; ``secret`` signs every delivery to it.

    After a rotation the previous secret signs too (a second ``v1=``) until ``previous_until``.
    """

    id: str
    url: str
    secret: str
    created_at: datetime
    previous_secret: str | None = None
    previous_until: datetime | None = None

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets that sign a delivery made at ``now``: the current one, then a rotated-out one."""
        if self.previous_secret and self.previous_until and now < self.previous_until:
            return [self.secret, self.previous_secret]
        return [self.secret]


@dataclass(slots=True)
class Event:
    """One event; ``body`` is the exact bytes every delivery (and retry) of it sends."""

    id: str
    type: str
    created_at: datetime
    body: bytes


@dataclass(slots=True)
class DeliveryAttempt:
    """One line of the delivery log.

    ``outcome``: ``delivered`` (2xx), ``retrying`` (failed, another attempt is scheduled),
    ``failed`` (failed, no attempt left or the endpoint was deleted), ``dropped`` (the drop knob:
    never sent; ``attempt`` 0). ``status`` is the receiver's HTTP status, ``error`` the exception
    when there was no answer (timeout, connection refused).
    """

    seq: int
    event_id: str
    type: str
    endpoint_id: str
    url: str
    attempt: int
    duplicate: bool
    status: int | None
    error: str | None
    outcome: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data."""
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "type": self.type,
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "attempt": self.attempt,
            "duplicate": self.duplicate,
            "status": self.status,
            "error": self.error,
            "outcome": self.outcome,
            "at": self.at,
        }


@dataclass(slots=True)
class _Job:
    event: Event
    endpoint: WebhookEndpoint
    duplicate: bool


def signature_header(secrets_: Sequence[str], timestamp: int, event_id: str, body: bytes) -> str:
    """``t=<timestamp>,v1=<hex>[,v1=<hex>...]``: HMAC-SHA256 of ``f"{t}.{event_id}.{body}"`` per secret.

    The key is the secret string itself (``whsec_...``, UTF-8), the body the raw bytes sent.
    """
    signed = f"{timestamp}.{event_id}.".encode() + body
    parts = [f"t={timestamp}"]
    parts += [f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets_]
    return ",".join(parts)


class Webhooks:
    """Registered receivers, the delivery queue and the delivery log of one sandbox.

    Deliveries run as asyncio tasks on the loop that is running when an event is published (started
    lazily: the loop that serves the app is not known before). Every attempt goes through one
    keep-alive ``httpx.AsyncClient`` of that loop (made on the first attempt, closed by
    :meth:`aclose`, which the app's lifespan calls on shutdown), as a real vendor's sender keeps
    its connections: a client per attempt costs a new connection and ~20 ms of CPU for its TLS
    context. Each (event, endpoint) delivery is one task:
    its first attempt waits for the endpoint's earlier first attempts (so one URL receives events in
    order unless ``webhook_reorder`` is on), then failed attempts (non-2xx, error, no answer within
    ``timeout`` seconds) are retried after each delay of ``retry_schedule`` in turn, with the same
    event id and body and a fresh signature. :meth:`drain` waits until every delivery has finished
    or given up. ``transport`` (an ``httpx.AsyncBaseTransport``, e.g. ``httpx.ASGITransport``)
    replaces the network; it belongs to the caller and is never closed here.
    """

    def __init__(
        self,
        *,
        sandbox: AIPOSSandbox,
        clock: Clock,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_schedule: Sequence[float] = WEBHOOK_RETRY_SCHEDULE,
        timeout: float = WEBHOOK_TIMEOUT_S,
        reorder_window: float = 0.5,
        log_size: int = 10_000,
    ) -> None:
        if any(delay < 0 for delay in retry_schedule) or timeout <= 0 or reorder_window < 0:
            raise ValueError("webhook retry delays and reorder window must be >= 0, the timeout > 0")
        self.sandbox = sandbox
        self.clock = clock
        self.transport = transport
        self.retry_schedule = tuple(float(d) for d in retry_schedule)
        self.timeout = timeout
        self.reorder_window = reorder_window
        self.endpoints: dict[str, WebhookEndpoint] = {}
        self.log: deque[DeliveryAttempt] = deque(maxlen=log_size)
        self._ids = random.Random(sandbox.seed + 3)
        self._seq = 0
        self._queue: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._flush_now: asyncio.Event | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._client: httpx.AsyncClient | None = None

    # endpoints -----------------------------------------------------------------------------------

    def register(self, url: str) -> WebhookEndpoint:
        """Add a receiver; ``ValueError`` unless ``url`` is an absolute http(s) URL."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError("url must be an absolute http(s) URL") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("url must be an absolute http(s) URL")
        endpoint = WebhookEndpoint(self._new_id("we_", 12), url, _new_secret(), self.clock())
        self.endpoints[endpoint.id] = endpoint
        return endpoint

    def remove(self, endpoint_id: str) -> bool:
        """Delete a receiver (queued and retrying deliveries to it give up); False when unknown."""
        return self.endpoints.pop(endpoint_id, None) is not None

    def rotate(self, endpoint_id: str) -> WebhookEndpoint | None:
        """Give a receiver a new secret; the old one keeps signing for 24 h (a second ``v1=``)."""
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return None
        endpoint.previous_secret, endpoint.previous_until = endpoint.secret, self.clock() + SECRET_OVERLAP
        endpoint.secret = _new_secret()
        return endpoint

    # publishing ----------------------------------------------------------------------------------

    def new_event_id(self) -> str:
        """A fresh ``evt_`` id (seeded)."""
        return self._new_id("evt_", 16)

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every registered endpoint, applying the drop and duplicate knobs."""
        if not self.endpoints:
            return
        knobs = self.sandbox.knobs
        rng = self.sandbox.webhook_rng
        targets = list(self.endpoints.values())
        if knobs.webhook_drop_rate and rng.random() < knobs.webhook_drop_rate:
            for endpoint in targets:
                self._record(_Job(event, endpoint, False), 0, None, "dropped", "dropped")
            return
        for endpoint in targets:
            self._queue.append(_Job(event, endpoint, False))
            if knobs.webhook_duplicate_rate and rng.random() < knobs.webhook_duplicate_rate:
                self._queue.append(_Job(event, endpoint, True))
        self._kick()

    @property
    def client(self) -> httpx.AsyncClient | None:
        """The keep-alive client attempts go through: made by the first attempt on the owner loop,
        ``None`` before it and after :meth:`aclose`."""
        return self._client

    @property
    def pending(self) -> int:
        """Deliveries queued or under way (retries included)."""
        return len(self._queue) + len(self._tasks)

    async def drain(self, timeout: float | None = None) -> None:
        """Send what is held back and wait until every delivery has succeeded or given up.

        ``TimeoutError`` when ``timeout`` seconds pass first (the deliveries go on). Works from any
        loop: when the sandbox is served on another thread's loop, the wait runs there.
        """
        loop = self._bind()
        if loop is None:
            await self._on_owner(self.drain(timeout))
            return
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._flush()
            waiting: set[asyncio.Task[None]] = set(self._tasks)
            if self._flusher is not None and not self._flusher.done():
                waiting.add(self._flusher)
            if not waiting and not self._queue:
                return
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{self.pending} webhook deliveries still pending")
            await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)

    async def aclose(self) -> None:
        """Cancel every queued and running delivery and close the HTTP client (the app's
        shutdown; tests that stop without draining)."""
        if self._bind() is None:
            await self._on_owner(self.aclose())
            return
        self._queue.clear()
        tasks = set(self._tasks)
        if self._flusher is not None:
            tasks.add(self._flusher)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        client, self._client = self._client, None
        if client is not None and self.transport is None:  # a caller's transport stays open
            await client.aclose()

    # internals -----------------------------------------------------------------------------------

    def _new_id(self, prefix: str, length: int) -> str:
        return prefix + "".join(self._ids.choices(ID_ALPHABET, k=length))

    def _bind(self) -> asyncio.AbstractEventLoop | None:
        """The running loop if deliveries may run on it, else None (no loop, or another live one owns them).

        Deliveries belong to the loop that started them (a server thread's, a test's); once that
        loop has stopped, the next loop starts from a clean slate.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if loop is not self._loop:
            if self._loop is not None and self._loop.is_running():
                return None
            self._loop = loop
            self._tasks = set()
            self._flusher = None
            self._flush_now = None
            self._locks = {}
            self._client = None  # its connections belonged to the stopped loop
        return loop

    async def _on_owner(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the loop that owns the deliveries (another thread's) and wait for it."""
        owner = self._loop
        if owner is None or not owner.is_running():  # no loop at all: nothing was started
            work.close()
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, owner))

    def _kick(self) -> None:
        loop = self._bind()
        if loop is None:
            owner = self._loop
            if owner is not None and owner.is_running():
                owner.call_soon_threadsafe(self._kick)
            return  # else started by the next publish or drain on a running loop
        if not self._queue:
            return
        if not self.sandbox.knobs.webhook_reorder:
            self._start_queued()
        elif self._flusher is None or self._flusher.done():
            self._flush_now = asyncio.Event()
            self._flusher = loop.create_task(self._flush_later(self._flush_now))

    def _flush(self) -> None:
        if self._flusher is not None and not self._flusher.done() and self._flush_now is not None:
            self._flush_now.set()
        elif self._queue:
            self._start_queued()

    async def _flush_later(self, now: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(now.wait(), self.reorder_window)
        except TimeoutError:
            pass
        self._start_queued()

    def _start_queued(self) -> None:
        loop = self._bind()
        if loop is None:
            return
        jobs, self._queue = self._queue, []
        if self.sandbox.knobs.webhook_reorder:
            self.sandbox.webhook_rng.shuffle(jobs)
        for job in jobs:
            task = loop.create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _Job) -> None:
        schedule = self.retry_schedule
        last = len(schedule) + 1
        try:
            lock = self._locks.setdefault(job.endpoint.id, asyncio.Lock())
            async with lock:
                done = await self._attempt(job, 1, last)
            attempt = 1
            while not done and attempt < last:
                await asyncio.sleep(schedule[attempt - 1])
                attempt += 1
                done = await self._attempt(job, attempt, last)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not kill the loop's other deliveries
            log.exception("webhook delivery %s to %s crashed", job.event.id, job.endpoint.url)

    async def _attempt(self, job: _Job, attempt: int, last: int) -> bool:
        """One signed POST, logged; True when there is nothing more to do (delivered, or no endpoint)."""
        endpoint, event = job.endpoint, job.event
        if endpoint.id not in self.endpoints:
            self._record(job, attempt, None, "endpoint deleted", "failed")
            return True
        now = self.clock()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "AIPOS-Webhooks/1.0 (sandbox)",
            "AIPOS-Event-Id": event.id,
            "AIPOS-Signature": signature_header(
                endpoint.signing_secrets(now), int(now.timestamp()), event.id, event.body
            ),
        }
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._post(endpoint.url, event.body, headers)
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure of the receiver is a failed attempt
            error = f"{type(exc).__name__}: {exc}"
        ok = status is not None and 200 <= status < 300
        self._record(job, attempt, status, error, "delivered" if ok else "retrying" if attempt < last else "failed")
        return ok

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(transport=self.transport, timeout=self.timeout)
        response = await client.post(url, content=body, headers=headers)
        return response.status_code

    def _record(self, job: _Job, attempt: int, status: int | None, error: str | None, outcome: str) -> None:
        self._seq += 1
        self.log.append(
            DeliveryAttempt(
                self._seq,
                job.event.id,
                job.event.type,
                job.endpoint.id,
                job.endpoint.url,
                attempt,
                job.duplicate,
                status,
                error,
                outcome,
                self.clock(),
            )
        )


def _new_secret() -> str:
    return "whsec_" + secrets.token_hex(16)


# --- the store -----------------------------------------------------------------------------------

MENU = [
    # name, sku, category, price, tax_rate
    ("Masala Chai", "CHAI-001", "Beverages", "45.00", 5),
    ("Filter Coffee", "COFF-002", "Beverages", "60.00", 5),
    ("Samosa", "SNCK-003", "Snacks", "25.00", 5),
    ("Vada Pav", "SNCK-004", "Snacks", "30.00", 5),
    ("Masala Dosa", "FOOD-005", "Food", "90.00", 5),
    ("Idli Sambar", "FOOD-006", "Food", "55.00", 5),
    ("Paneer Tikka Sandwich", "FOOD-007", "Food", "120.00", 5),
    ("Mango Lassi", "BEVG-008", "Beverages", "80.00", 12),
    ("Gulab Jamun", "DSRT-009", "Desserts", "40.00", 5),
    ("Packaged Water 1L", "BEVG-010", "Beverages", "20.00", 18),
]
CATEGORIES = ["Beverages", "Snacks", "Food", "Desserts", "Grocery", "Household", "Personal Care"]
TAX_RATES = [0, 5, 5, 5, 12, 18]
FIRST_NAMES = ["Aarav", "Diya", "Vihaan", "Ananya", "Rohan", "Isha", "Kabir", "Meera", "Arjun", "Priya", "Sai", "Nisha"]
LAST_NAMES = ["Sharma", "Iyer", "Patel", "Reddy", "Nair", "Gupta", "Menon", "Singh", "Das", "Kulkarni"]


def _ean13(number: int) -> str:
    """A valid EAN-13 for a product number (GS1 India prefix 890, check digit computed)."""
    body = f"890{number:09d}"
    check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10) % 10
    return body + str(check)


def product_id(number: int) -> str:
    """``prod_001`` ... ``prod_999``, then ``prod_1000`` and on (zero-padded to 3 digits)."""
    return f"prod_{number:03d}"


@dataclass
class AIPOSStore:
    """The sandbox's data and the vendor's business rules over it.

    Products, customers and sales are keyed by id, each with a :class:`ChangeIndex` (the list order);
    the inventory has its own index over the products' ``stock_updated_at``. Every change gets a
    timestamp from :meth:`tick`, strictly later than every earlier one, so ``updated_at`` changes on
    every change and ``updated_since`` never misses one. Write methods raise :class:`APIError`.
    """

    name: str = DEFAULT_STORE
    currency: str = "INR"
    default_tax_rate: Decimal = Decimal(5)
    clock: Clock = utcnow
    rng: random.Random = field(default_factory=random.Random)
    webhooks: Webhooks | None = None
    products: dict[str, Product] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    sales: dict[str, Sale] = field(default_factory=dict)
    adjustments: dict[str, Adjustment] = field(default_factory=dict)
    skus: dict[str, str] = field(default_factory=dict)
    product_index: ChangeIndex = field(default_factory=ChangeIndex)
    inventory_index: ChangeIndex = field(default_factory=ChangeIndex)
    customer_index: ChangeIndex = field(default_factory=ChangeIndex)
    sale_index: ChangeIndex = field(default_factory=ChangeIndex)
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=10_000))
    seed_report: dict[str, Any] = field(default_factory=dict)
    last_change: datetime = EPOCH_MIN

    # time and ids --------------------------------------------------------------------------------

    def tick(self) -> datetime:
        """The timestamp of a change: the clock, or 1 µs after the previous change if not later."""
        now = self.clock()
        if now <= self.last_change:
            now = self.last_change + timedelta(microseconds=1)
        self.last_change = now
        return now

    def new_id(self, prefix: str, taken: dict[str, Any]) -> str:
        """``prefix`` + 6 lowercase alphanumerics (seeded), unused in ``taken``."""
        while True:
            ident = prefix + "".join(self.rng.choices(ID_ALPHABET, k=6))
            if ident not in taken:
                return ident

    def next_product_id(self) -> str:
        """The id the next product gets (``prod_`` + one more than the count)."""
        return product_id(len(self.products) + 1)

    # events --------------------------------------------------------------------------------------

    def emit(self, kind: str, obj: dict[str, Any]) -> Event | None:
        """Record an event of type ``kind`` with ``data.object = obj`` and queue it for every receiver.

        The body is made once, now: retries and duplicates send these very bytes. Events are only
        made while a webhooks engine is attached.
        """
        if self.webhooks is None:
            return None
        created = self.clock()
        event_id = self.webhooks.new_event_id()
        body = dumps({"id": event_id, "object": "event", "type": kind, "created_at": created, "data": {"object": obj}})
        event = Event(event_id, kind, created, body)
        self.events.append(event)
        self.webhooks.publish(event)
        return event

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued webhook delivery has finished or given up (see :meth:`Webhooks.drain`)."""
        if self.webhooks is not None:
            await self.webhooks.drain(timeout)

    # changes -------------------------------------------------------------------------------------

    def _touch_product(self, p: Product, now: datetime, *, stock: bool) -> None:
        old = (p.updated_at, p.id)
        p.updated_at = now
        self.product_index.move(old, (now, p.id))
        if stock:
            old = (p.stock_updated_at, p.id)
            p.stock_updated_at = now
            self.inventory_index.move(old, (now, p.id))

    def _move_stock(self, p: Product, delta: int, now: datetime, low: list[Product]) -> None:
        before = p.stock
        p.stock += delta
        self._touch_product(p, now, stock=True)
        if before > p.low_stock_threshold >= p.stock:
            low.append(p)

    def _emit_low(self, products: Iterable[Product]) -> None:
        for p in products:
            self.emit(
                "inventory.low",
                {"product_id": p.id, "quantity": p.stock, "low_stock_threshold": p.low_stock_threshold},
            )

    def add_product(self, p: Product) -> Product:
        """Store a new product (id and sku must be unused) and index it."""
        self.products[p.id] = p
        if p.sku is not None:
            self.skus[p.sku] = p.id
        self.product_index.add((p.updated_at, p.id))
        self.inventory_index.add((p.stock_updated_at, p.id))
        return p

    def create_product(self, fields: dict[str, Any]) -> Product:
        """``POST /products``: a new product from validated fields; emits ``product.created``.

        ``fields``: ``name``, ``price`` (Decimal) required; ``sku``, ``barcode``, ``category``,
        ``tax_rate`` (percent Decimal), ``unit``, ``stock``, ``low_stock_threshold``, ``active``
        optional. 400 ``parameter_invalid`` for a sku already in use.
        """
        sku = fields.get("sku")
        if sku is not None and sku in self.skus:
            raise invalid("sku", f"A product with sku {sku!r} already exists: {self.skus[sku]}.")
        now = self.tick()
        p = Product(
            self.next_product_id(),
            fields["name"],
            sku,
            fields.get("barcode"),
            fields.get("category"),
            fields["price"],
            fields.get("tax_rate", self.default_tax_rate),
            fields.get("unit", "each"),
            fields.get("active", True),
            fields.get("stock", 0),
            fields.get("low_stock_threshold", 0),
            now,
            now,
            now,
        )
        self.add_product(p)
        self.emit("product.created", render_product(p))
        return p

    def update_product(self, p: Product, fields: dict[str, Any]) -> Product:
        """``POST /products/{id}``: set the given fields; a real change touches ``updated_at`` and emits
        ``product.updated`` (a threshold change touches the inventory level too). 400 for a taken sku."""
        sku = fields.get("sku")
        if sku is not None and self.skus.get(sku, p.id) != p.id:
            raise invalid("sku", f"A product with sku {sku!r} already exists: {self.skus[sku]}.")
        changed = {name: value for name, value in fields.items() if getattr(p, name) != value}
        if not changed:
            return p
        if "sku" in changed:
            if p.sku is not None:
                del self.skus[p.sku]
            if sku is not None:
                self.skus[sku] = p.id
        for name, value in changed.items():
            setattr(p, name, value)
        self._touch_product(p, self.tick(), stock="low_stock_threshold" in changed)
        self.emit("product.updated", render_product(p))
        return p

    def create_customer(self, name: str, email: str | None, phone: str | None) -> Customer:
        """``POST /customers``: a new customer with a fresh ``cust_`` id."""
        now = self.tick()
        c = Customer(self.new_id("cust_", self.customers), name, email, phone, now, now)
        self.customers[c.id] = c
        self.customer_index.add((now, c.id))
        return c

    def create_sale(
        self, customer_id: str | None, lines: list[tuple[str, int, Decimal | None]], payment_method: str
    ) -> Sale:
        """``POST /sales``: sell ``(product_id, qty, price or None for the catalog price)`` lines.

        400 ``resource_missing`` for an unknown customer or product (``param`` names it); 409
        ``insufficient_stock`` when a product (its lines summed) would go below 0, and then nothing
        changes. Takes the stock, emits ``sale.created`` then ``inventory.low`` per product crossing
        its threshold.
        """
        if customer_id is not None and customer_id not in self.customers:
            raise no_such("customer", customer_id, "customer_id", 400)
        wanted: Counter[str] = Counter()
        for n, (pid, qty, _) in enumerate(lines):
            if pid not in self.products:
                raise no_such("product", pid, f"items[{n}][product_id]", 400)
            wanted[pid] += qty
            product = self.products[pid]
            if wanted[pid] > product.stock:
                raise APIError(
                    409,
                    "insufficient_stock",
                    f"Insufficient stock for {pid}: {product.stock} on hand, {wanted[pid]} requested.",
                    f"items[{n}][qty]",
                )
        items = []
        for pid, qty, price in lines:
            p = self.products[pid]
            unit_price = p.price if price is None else price
            items.append(SaleItem(pid, p.name, qty, unit_price, p.tax_rate, unit_price * qty))
        total, tax, grand_total = sale_totals(items)
        now = self.tick()
        sale = Sale(
            self.new_id("sale_", self.sales),
            customer_id,
            items,
            payment_method,
            "completed",
            total,
            tax,
            grand_total,
            now,
            now,
        )
        low: list[Product] = []
        for pid, qty in wanted.items():
            self._move_stock(self.products[pid], -qty, now, low)
        self.sales[sale.id] = sale
        self.sale_index.add((now, sale.id))
        self.emit("sale.created", render_sale(sale))
        self._emit_low(low)
        return sale

    def refund_sale(self, sale: Sale) -> Sale:
        """``POST /sales/{id}/refund``: the whole sale; puts the stock back, emits ``sale.refunded``.

        409 ``sale_already_refunded`` the second time.
        """
        if sale.status == "refunded":
            raise APIError(409, "sale_already_refunded", f"Sale {sale.id} has already been refunded.", "id")
        now = self.tick()
        returned: Counter[str] = Counter()
        for item in sale.items:
            returned[item.product_id] += item.qty
        for pid, qty in returned.items():
            self._move_stock(self.products[pid], qty, now, [])
        old = (sale.updated_at, sale.id)
        sale.status, sale.refunded_at, sale.updated_at = "refunded", now, now
        self.sale_index.move(old, (now, sale.id))
        self.emit("sale.refunded", render_sale(sale))
        return sale

    def adjust_stock(self, pid: str, delta: int, reason: str | None) -> Adjustment:
        """``POST /inventory/adjustments``: add ``delta`` (not 0) to a product's stock.

        400 ``resource_missing`` for an unknown product; 409 ``insufficient_stock`` when the stock
        would go below 0 (nothing changes). Emits ``inventory.low`` when the stock crosses to or below
        the threshold.
        """
        p = self.products.get(pid)
        if p is None:
            raise no_such("product", pid, "product_id", 400)
        if p.stock + delta < 0:
            raise APIError(
                409, "insufficient_stock", f"Insufficient stock for {pid}: {p.stock} on hand, delta {delta}.", "delta"
            )
        now = self.tick()
        low: list[Product] = []
        self._move_stock(p, delta, now, low)
        adj = Adjustment(self.new_id("adj_", self.adjustments), pid, delta, p.stock, reason, now)
        self.adjustments[adj.id] = adj
        self._emit_low(low)
        return adj

    # seeding -------------------------------------------------------------------------------------

    def _finish_seeding(self) -> None:
        """Build the indexes once and start the change clock after the newest seeded record."""
        self.product_index = ChangeIndex((p.updated_at, p.id) for p in self.products.values())
        self.inventory_index = ChangeIndex((p.stock_updated_at, p.id) for p in self.products.values())
        self.customer_index = ChangeIndex((c.updated_at, c.id) for c in self.customers.values())
        self.sale_index = ChangeIndex((s.updated_at, s.id) for s in self.sales.values())
        self.skus = {p.sku: p.id for p in self.products.values() if p.sku is not None}
        stamps = [k[-1][0] for k in (self.product_index.keys, self.customer_index.keys, self.sale_index.keys) if k]
        self.last_change = max([self.last_change, *stamps])

    def seed_synthetic(self, products: int, customers: int, sales: int, rng: random.Random) -> None:
        """Generate a cafe-and-grocery store (see SANDBOX.md): API.md's examples first, then random data.

        ``prod_001`` is API.md's Masala Chai, ``cust_abc123`` its Asha Rao and, when there are
        sales, the newest is ``sale_xyz789`` (2 x prod_001 by upi at 2026-03-31T10:30:00Z).
        Historical sales do not move stock.
        """
        randint = rng.randint
        for k in range(products):
            pid = product_id(k + 1)
            created = SEED_EPOCH + timedelta(seconds=k)
            if k < len(MENU):
                name, sku, category, price_s, rate = MENU[k]
                price = Decimal(price_s)
            else:
                name, sku, category = f"Item {k + 1}", f"ITEM-{k + 1:05d}", rng.choice(CATEGORIES)
                price = Decimal(randint(1_000, 200_000)).scaleb(-2)
                rate = rng.choice(TAX_RATES)
            stock, threshold = (120, 10) if k == 0 else (randint(0, 200), randint(0, 3) * 5)
            updated = DOC_SALE_AT if k == 0 else created
            self.products[pid] = Product(
                pid,
                name,
                sku,
                "8901234567890" if k == 0 else _ean13(k + 1),
                category,
                price,
                Decimal(rate),
                "each",
                k % 25 != 24,
                stock,
                threshold,
                created,
                updated,
                updated,
            )
        for k in range(customers):
            created = SEED_EPOCH - timedelta(hours=1) + timedelta(seconds=k)
            if k == 0:
                c = Customer("cust_abc123", "Asha Rao", "asha@example.in", "+919800000001", created, created)
            else:
                first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
                email = f"{first.lower()}.{last.lower()}{k}@example.in"
                c = Customer(
                    self.new_id("cust_", self.customers),
                    f"{first} {last}",
                    email,
                    f"+9198{randint(0, 99_999_999):08d}",
                    created,
                    created,
                )
            self.customers[c.id] = c
        if products and sales:
            menu = list(self.products.values())[:20]
            buyers = list(self.customers)
            span = (DOC_SALE_AT - SEED_EPOCH - timedelta(hours=1)) / sales
            for k in range(sales):
                if k == sales - 1:
                    chai = self.products[product_id(1)]
                    lines = [(chai, 2)]
                    sale_id, at, method = "sale_xyz789", DOC_SALE_AT, "upi"
                    customer = "cust_abc123" if "cust_abc123" in self.customers else None
                else:
                    lines = [(p, randint(1, 3)) for p in rng.sample(menu, min(len(menu), randint(1, 3)))]
                    sale_id = self.new_id("sale_", self.sales)
                    while sale_id == "sale_xyz789":  # reserved for the doc's sale
                        sale_id = self.new_id("sale_", self.sales)
                    at = SEED_EPOCH + span * k + timedelta(seconds=randint(0, 600))
                    at = at.replace(microsecond=0)
                    method = rng.choice(PAYMENT_METHODS)
                    customer = rng.choice(buyers) if buyers and rng.random() < 0.6 else None
                items = [SaleItem(p.id, p.name, q, p.price, p.tax_rate, p.price * q) for p, q in lines]
                total, tax, grand_total = sale_totals(items)
                sale = Sale(sale_id, customer, items, method, "completed", total, tax, grand_total, at, at)
                if k % 7 == 6 and k != sales - 1:
                    refunded = at + timedelta(hours=2)
                    sale.status, sale.refunded_at, sale.updated_at = "refunded", refunded, refunded
                self.sales[sale.id] = sale
        self._finish_seeding()

    def seed_retail(self, rows: Iterable[RetailRow], rng: random.Random, max_products: int | None) -> None:
        """Load products, customers and sales from UCI Online Retail rows (see SANDBOX.md).

        One product per StockCode (``sku``), one customer per CustomerID, one sale per invoice that
        is not a credit note and keeps at least one line; ``seed_report`` counts what was skipped.
        """
        rows = list(rows)
        names: dict[str, Counter[str]] = {}
        prices: dict[str, Counter[Decimal]] = {}
        first_seen: dict[str, datetime] = {}
        customer_seen: dict[int, datetime] = {}
        for row in rows:
            code = row.stock_code
            names.setdefault(code, Counter())
            prices.setdefault(code, Counter())
            if row.description:
                names[code][" ".join(row.description.split())] += 1
            if row.unit_price > 0:
                prices[code][row.unit_price] += 1
            if code not in first_seen or row.invoice_date < first_seen[code]:
                first_seen[code] = row.invoice_date
            if row.customer_id is not None and (
                row.customer_id not in customer_seen or row.invoice_date < customer_seen[row.customer_id]
            ):
                customer_seen[row.customer_id] = row.invoice_date
        by_code: dict[str, Product] = {}
        for code in names:
            if max_products is not None and len(by_code) >= max_products:
                break
            name = min(names[code].items(), key=lambda kv: (-kv[1], kv[0]))[0] if names[code] else code
            price = min(prices[code].items(), key=lambda kv: (-kv[1], kv[0]))[0] if prices[code] else ZERO
            at = first_seen[code]
            p = Product(
                self.next_product_id(),
                name,
                code,
                None,
                None,
                money(price),
                self.default_tax_rate,
                "each",
                True,
                rng.randint(0, 200),
                10,
                at,
                at,
                at,
            )
            self.products[p.id] = p
            by_code[code] = p
        customer_ids: dict[int, str] = {}
        for number in sorted(customer_seen):
            at = customer_seen[number]
            c = Customer(
                self.new_id("cust_", self.customers), f"Customer {number}", f"customer{number}@example.in", None, at, at
            )
            self.customers[c.id] = c
            customer_ids[number] = c.id
        skipped: Counter[str] = Counter()
        invoices: dict[str, list[RetailRow]] = {}
        for row in rows:
            if row.stock_code not in by_code:
                skipped["product not loaded"] += 1
            elif row.is_credit_note:
                skipped["credit note"] += 1
            elif row.quantity < 1:
                skipped["quantity below 1"] += 1
            else:
                invoices.setdefault(row.invoice_no, []).append(row)
        for lines in sorted(invoices.values(), key=lambda ls: (min(r.invoice_date for r in ls), ls[0].line)):
            at = min(r.invoice_date for r in lines)
            items = []
            for r in lines:
                p, price = by_code[r.stock_code], money(r.unit_price)
                items.append(SaleItem(p.id, p.name, r.quantity, price, p.tax_rate, price * r.quantity))
            total, tax, grand_total = sale_totals(items)
            first = lines[0]
            customer = customer_ids.get(first.customer_id) if first.customer_id is not None else None
            sale = Sale(
                self.new_id("sale_", self.sales), customer, items, "card", "completed", total, tax, grand_total, at, at
            )
            self.sales[sale.id] = sale
        self.seed_report = {
            "lines": len(rows),
            "products": len(self.products),
            "customers": len(self.customers),
            "sales": len(self.sales),
            "skipped_lines": dict(skipped),
        }
        self._finish_seeding()


# --- receipts ------------------------------------------------------------------------------------


def _latin1(text: str) -> str:
    """Text the PDF core fonts can draw (Latin-1; anything else becomes ``?``)."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def receipt_pdf(store: AIPOSStore, sale: Sale) -> bytes:
    """A one-page PDF receipt made with fpdf2, on 80 mm roll paper as tall as the sale needs.

    Shows the store name, sale id, date (UTC), customer, every line (qty x price = total), the
    total, tax and grand total in the store's currency, the payment method, and ``REFUNDED`` with
    its date for a refunded sale. Byte-for-byte the same for the same sale (its dates are the PDF's).
    """
    from fpdf import FPDF  # a quarter second to import: only when a receipt is asked for
    from fpdf import __version__ as fpdf_version
    from fpdf.enums import XPos, YPos

    line = 4.0
    height = 62 + line * 2 * len(sale.items) + (line * 2 if sale.refunded_at else 0)
    pdf = FPDF(unit="mm", format=(80, height))
    pdf.set_auto_page_break(False)
    pdf.set_margins(5, 5, 5)
    pdf.set_creation_date(sale.created_at)
    pdf.set_title(f"Receipt {sale.id}")
    pdf.set_author(_latin1(store.name))
    pdf.set_producer(f"fpdf2 {fpdf_version}")
    pdf.add_page()

    def row(left: str, right: str = "", *, bold: bool = False, size: float = 8) -> None:
        pdf.set_font("Helvetica", "B" if bold else "", size)
        if right:
            pdf.cell(45, line, _latin1(left))
            pdf.cell(0, line, _latin1(right), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        else:
            pdf.cell(0, line, _latin1(left), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6, _latin1(_clip(store.name, 34)), align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 8)
    pdf.cell(0, line, "Tax invoice / receipt", align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    row("Sale", sale.id)
    row("Date", sale.created_at.astimezone(UTC).strftime("%d %b %Y %H:%M UTC"))
    customer = store.customers.get(sale.customer_id) if sale.customer_id else None
    row("Customer", _clip(customer.name, 28) if customer else "Walk-in")
    pdf.line(5, pdf.get_y() + 1, 75, pdf.get_y() + 1)
    pdf.ln(2)
    for item in sale.items:
        row(_clip(item.name, 44))
        row(f"  {item.qty} x {item.price:.2f}  (GST {format(item.tax_rate, 'f')}%)", f"{item.total:.2f}")
    pdf.line(5, pdf.get_y() + 1, 75, pdf.get_y() + 1)
    pdf.ln(2)
    row("Total", f"{sale.total:.2f}")
    row("Tax", f"{sale.tax:.2f}")
    row(f"Grand total ({store.currency})", f"{sale.grand_total:.2f}", bold=True, size=9)
    row("Paid by", sale.payment_method.upper())
    if sale.refunded_at is not None:
        pdf.ln(1)
        row("REFUNDED", sale.refunded_at.astimezone(UTC).strftime("%d %b %Y %H:%M UTC"), bold=True)
    pdf.ln(2)
    pdf.set_font("Helvetica", "I", 7)
    pdf.cell(0, line, "Thank you for shopping with us", align="C")
    return bytes(pdf.output())


# --- request bodies ------------------------------------------------------------------------------

ABSENT: Any = object()  # a field the body does not have


class Fields:
    """Reads one JSON object of a request body; the first problem raises a 400 :class:`APIError`.

    Unknown fields are rejected (``parameter_invalid``); nested objects name their fields Stripe
    style (``items[0][qty]``). Each reader returns :data:`ABSENT` when the field is not there.
    """

    def __init__(self, body: Any, allowed: Iterable[str], prefix: str = "") -> None:
        self.prefix = prefix
        if not isinstance(body, dict):
            raise invalid(prefix or None, f"{prefix or 'The request body'} must be a JSON object.")
        for name in body:
            if name not in allowed:
                raise invalid(self.param(name), f"Received unknown parameter: {self.param(name)}.")
        self.body: dict[str, Any] = body

    def param(self, name: str) -> str:
        """The field's name as errors give it."""
        return f"{self.prefix}[{name}]" if self.prefix else name

    def raw(self, name: str, *, required: bool = False, nullable: bool = False) -> Any:
        """The field's JSON value as sent (checks only presence and null)."""
        if name not in self.body:
            if required:
                raise missing(self.param(name))
            return ABSENT
        value = self.body[name]
        if value is None and (required or not nullable):
            if required:
                raise missing(self.param(name))
            raise invalid(self.param(name), f"Invalid {self.param(name)}: cannot be null.")
        return value

    def string(
        self, name: str, *, required: bool = False, nullable: bool = False, blank: bool = True, max_length: int = 255
    ) -> Any:
        """A string of at most ``max_length`` characters; not blank when ``required`` or not ``blank``."""
        value = self.raw(name, required=required, nullable=nullable)
        if value is ABSENT or value is None:
            return value
        param = self.param(name)
        if not isinstance(value, str):
            raise invalid(param, f"Invalid {param}: must be a string.")
        if not value.strip() and (required or not blank):
            raise missing(param) if required else invalid(param, f"Invalid {param}: cannot be blank.")
        if len(value) > max_length:
            raise invalid(param, f"Invalid {param}: must be at most {max_length} characters.")
        return value

    def _number(self, name: str, required: bool, nullable: bool, limit: Decimal) -> Any:
        value = self.raw(name, required=required, nullable=nullable)
        if value is ABSENT or value is None:
            return value
        param = self.param(name)
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise invalid(param, f"Invalid {param}: must be a number.")
        number = Decimal(value)
        try:
            ok = ZERO <= number <= limit and number == number.quantize(CENT)
        except InvalidOperation:
            ok = False
        if not ok:
            raise invalid(param, f"Invalid {param}: must be between 0 and {limit} with at most 2 decimals.")
        return number

    def money(self, name: str, *, required: bool = False, nullable: bool = False) -> Any:
        """An amount in the major unit: a JSON number >= 0 with at most 2 decimals, as a 2-place Decimal."""
        value = self._number(name, required, nullable, MAX_MONEY)
        return money(value) if isinstance(value, Decimal) else value

    def rate(self, name: str) -> Any:
        """A tax rate in percent: a JSON number 0..100 with at most 2 decimals (``5``, ``12.5``)."""
        value = self._number(name, False, False, HUNDRED)
        return _percent(value) if isinstance(value, Decimal) else value

    def integer(self, name: str, *, required: bool = False, minimum: int = 0, maximum: int = MAX_QTY) -> Any:
        """A JSON integer (not ``2.0``, not ``"2"``) in ``minimum..maximum``."""
        value = self.raw(name, required=required)
        if value is ABSENT:
            return value
        param = self.param(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(param, f"Invalid {param}: must be an integer.")
        if not minimum <= value <= maximum:
            raise invalid(param, f"Invalid {param}: must be between {minimum} and {maximum}.")
        return value

    def boolean(self, name: str) -> Any:
        """``true`` or ``false``."""
        value = self.raw(name)
        if value is not ABSENT and not isinstance(value, bool):
            raise invalid(self.param(name), f"Invalid {self.param(name)}: must be a boolean.")
        return value

    def choice(self, name: str, options: Sequence[str], *, required: bool = False) -> Any:
        """One of ``options``."""
        value = self.string(name, required=required)
        if value is not ABSENT and value not in options:
            raise invalid(self.param(name), f"Invalid {self.param(name)}: must be one of {', '.join(options)}.")
        return value


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not ABSENT}


PRODUCT_FIELDS = (
    "name",
    "price",
    "sku",
    "barcode",
    "category",
    "tax_rate",
    "unit",
    "stock",
    "low_stock_threshold",
    "active",
)


def product_fields(body: Any, *, create: bool) -> dict[str, Any]:
    """Validated ``POST /products`` (``create``) or ``POST /products/{id}`` fields, only those sent.

    An update takes any create field but ``stock`` (400 ``parameter_invalid``: stock moves through
    ``POST /inventory/adjustments``).
    """
    f = Fields(body, PRODUCT_FIELDS)
    if not create and "stock" in f.body:
        raise invalid("stock", "stock cannot be set on a product; use POST /inventory/adjustments.")
    return _present(
        {
            "name": f.string("name", required=create, blank=False),
            "price": f.money("price", required=create),
            "sku": f.string("sku", nullable=True, max_length=64),
            "barcode": f.string("barcode", nullable=True, max_length=64),
            "category": f.string("category", nullable=True, max_length=100),
            "tax_rate": f.rate("tax_rate"),
            "unit": f.string("unit", blank=False, max_length=32),
            "stock": f.integer("stock"),
            "low_stock_threshold": f.integer("low_stock_threshold"),
            "active": f.boolean("active"),
        }
    )


# --- rate limit and auth -------------------------------------------------------------------------


class RateLimiter:
    """``limit`` requests per key in any sliding ``window`` seconds of ``clock``.

    Only admitted requests count. :meth:`hit` answers ``(admitted, remaining, retry_after)``:
    ``retry_after`` is the whole seconds (>= 1) until the oldest counted request leaves the window.
    """

    def __init__(self, limit: int, clock: Clock, window: float = RATE_WINDOW_S) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> tuple[bool, int, int]:
        """Count one request of ``key`` if the window has room."""
        now = self.clock().timestamp()
        times = self.hits.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False, 0, max(1, math.ceil(times[0] + self.window - now))
        times.append(now)
        return True, self.limit - len(times), 0


class AIPOSGate:
    """ASGI middleware: bearer auth and the per-key rate limit, in front of the vendor routes.

    ``Authorization: Bearer <key>`` must carry a configured key (else 401 ``invalid_api_key``);
    ``/health`` and the ``/_sandbox`` routes need none and are not counted. Past the limit: 429
    ``rate_limit_exceeded`` with ``Retry-After``. Every answer to a request with a valid key carries
    ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``. The key is left in the scope for the
    idempotency cache and list cursors.
    """

    def __init__(self, app: ASGIApp, api_keys: frozenset[str], limiter: RateLimiter | None) -> None:
        self.app = app
        self.api_keys = api_keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401/429 or pass the request on with the rate-limit headers added."""
        if scope["type"] != "http" or is_admin_path(scope) or _path(scope) == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1").strip()
                break
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            message = "You did not provide an API key. Send it as 'Authorization: Bearer <key>'."
            await error_response(401, "invalid_api_key", message)(scope, receive, send)
            return
        if key not in self.api_keys:
            message = f"Invalid API key provided: {key[:10]}***."
            await error_response(401, "invalid_api_key", message)(scope, receive, send)
            return
        extra: list[tuple[bytes, bytes]] = []
        if self.limiter is not None:
            admitted, remaining, retry_after = self.limiter.hit(key)
            limit_headers = {"X-RateLimit-Limit": str(self.limiter.limit), "X-RateLimit-Remaining": str(remaining)}
            if not admitted:
                message = (
                    f"Too many requests: {self.limiter.limit} per minute per API key. Retry after {retry_after} s."
                )
                response = error_response(
                    429, "rate_limit_exceeded", message, None, {**limit_headers, "Retry-After": str(retry_after)}
                )
                await response(scope, receive, send)
                return
            extra = [(k.lower().encode(), v.encode()) for k, v in limit_headers.items()]
        scope = {**scope, SCOPE_API_KEY: key}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _path(scope: Scope) -> str:
    """The request path without the app's root path."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


# --- idempotency ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Remembered:
    fingerprint: str
    status: int
    body: bytes
    at: datetime


class IdempotencyCache:
    """Answers to ``POST``\\ s made with an ``Idempotency-Key``, per API key, kept 24 h (store clock).

    The fingerprint is the method, path and body (JSON compared parsed, keys sorted; anything else
    byte for byte). 400 answers are not kept (a corrected retry may reuse the key).
    """

    def __init__(self, clock: Clock, ttl: timedelta = IDEMPOTENCY_TTL) -> None:
        self.clock = clock
        self.ttl = ttl
        self.entries: OrderedDict[tuple[str, str], _Remembered] = OrderedDict()

    @staticmethod
    def fingerprint(method: str, path: str, raw: bytes) -> str:
        """A hash of what makes two requests "the same"."""
        try:
            parsed = jsonutil.loads(raw) if raw.strip() else None
            canonical = orjson.dumps(parsed, default=_default, option=orjson.OPT_SORT_KEYS)
        except jsonutil.MalformedJSON:
            canonical = raw
        return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()

    def lookup(self, api_key: str, key: str) -> _Remembered | None:
        """The remembered answer for ``key`` (None when unknown or older than the TTL)."""
        self._expire()
        return self.entries.get((api_key, key))

    def remember(self, api_key: str, key: str, fingerprint: str, response: Response) -> None:
        """Keep ``response`` (its status and body) for replays."""
        self.entries[(api_key, key)] = _Remembered(
            fingerprint, response.status_code, bytes(response.body), self.clock()
        )

    def _expire(self) -> None:
        cutoff = self.clock() - self.ttl
        while self.entries:
            first = next(iter(self.entries.values()))
            if first.at > cutoff:
                break
            self.entries.popitem(last=False)


# --- routes --------------------------------------------------------------------------------------

PostHandler = Callable[[Request, Any], Response]


class AIPOSHandlers:
    """The route handlers over one :class:`AIPOSStore`.

    ``POST`` handlers are plain functions of the parsed body run without an ``await`` between the
    idempotency check and the change, so concurrent requests on one loop cannot interleave.
    """

    def __init__(self, store: AIPOSStore, sandbox: AIPOSSandbox) -> None:
        self.store = store
        self.sandbox = sandbox
        self.idempotency = IdempotencyCache(store.clock)
        self.cursors: dict[tuple[str, str, str], Key] = {}

    def routes(self) -> list[Route]:
        """Every endpoint of API.md, one route per path (so 405 lists every method)."""
        b = BASE_PATH
        table: dict[str, dict[str, Callable[[Request], Any]]] = {
            f"{b}/products": {"GET": self.list_products, "POST": self._post(self.create_product)},
            f"{b}/products/{{id}}": {"GET": self.get_product, "POST": self._post(self.update_product)},
            f"{b}/sales": {"GET": self.list_sales, "POST": self._post(self.create_sale)},
            f"{b}/sales/{{id}}": {"GET": self.get_sale},
            f"{b}/sales/{{id}}/receipt": {"GET": self.receipt},
            f"{b}/sales/{{id}}/refund": {"POST": self._post(self.refund_sale)},
            f"{b}/customers": {"GET": self.list_customers, "POST": self._post(self.create_customer)},
            f"{b}/customers/{{id}}": {"GET": self.get_customer},
            f"{b}/inventory": {"GET": self.list_inventory},
            f"{b}/inventory/adjustments": {"POST": self._post(self.create_adjustment)},
            f"{b}/health": {"GET": self.health},
        }
        return [Route(path, _dispatch(handlers), methods=list(handlers)) for path, handlers in table.items()]

    # POST plumbing -------------------------------------------------------------------------------

    def _post(self, handler: PostHandler) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            key = request.headers.get("idempotency-key")
            if key is None:
                return self._run(handler, request, raw)
            if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
                return invalid(
                    "Idempotency-Key", f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters."
                ).response()
            api_key = request.scope.get(SCOPE_API_KEY, "")
            fingerprint = IdempotencyCache.fingerprint(request.method, request.url.path, raw)
            seen = self.idempotency.lookup(api_key, key)
            if seen is not None:
                if seen.fingerprint != fingerprint:
                    message = f"Idempotency-Key {key!r} was already used with another request; use a new key."
                    return APIError(409, "idempotency_key_reused", message, "Idempotency-Key").response()
                return Response(seen.body, seen.status, {"Idempotent-Replayed": "true"}, media_type="application/json")
            response = self._run(handler, request, raw)
            if response.status_code != 400:
                self.idempotency.remember(api_key, key, fingerprint, response)
            return response

        return endpoint

    @staticmethod
    def _run(handler: PostHandler, request: Request, raw: bytes) -> Response:
        try:
            try:
                body = jsonutil.loads(raw) if raw.strip() else {}
            except jsonutil.MalformedJSON as exc:
                raise invalid(None, "The request body is not valid JSON.") from exc
            return handler(request, body)
        except APIError as exc:
            return exc.response()

    # lists ---------------------------------------------------------------------------------------

    def _list(
        self,
        request: Request,
        name: str,
        index: ChangeIndex,
        records: dict[str, Any],
        current_key: Callable[[Any], Key],
        render: Callable[[Any], dict[str, Any]],
    ) -> Response:
        """A keyset page of ``index``: ``limit``, ``starting_after`` (an id), ``updated_since``.

        ``starting_after`` resumes where that id stood when it ended a page served to this API key
        (its current place otherwise), so a record changing between two pages skips nothing.
        """
        q = request.query_params
        raw_limit = q.get("limit")
        limit = DEFAULT_LIMIT
        if raw_limit is not None:
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
                raise invalid("limit", f"Invalid limit: must be an integer between 1 and {MAX_LIMIT}.")
            limit = int(raw_limit)
        since = parse_time(q["updated_since"], "updated_since") if q.get("updated_since") else None
        after: Key | None = None
        api_key = request.scope.get(SCOPE_API_KEY, "")
        if q.get("starting_after"):
            ident = q["starting_after"]
            if ident not in records:
                raise invalid("starting_after", f"Invalid starting_after: no such object {ident!r}.")
            after = self.cursors.get((api_key, name, ident)) or current_key(records[ident])
        if self.sandbox.faults.repeat_page:  # the shared knob: every page is the first, and more follow
            keys, has_more = index.page(None, since, limit)[0], True
        else:
            keys, has_more = index.page(after, since, limit)
        if keys:
            self.cursors[(api_key, name, keys[-1][1])] = keys[-1]
        return AIPOSJSON({"object": "list", "data": [render(records[k[1]]) for k in keys], "has_more": has_more})

    def _get(self, records: dict[str, Any], kind: str, request: Request) -> Any:
        ident = request.path_params["id"]
        record = records.get(ident)
        if record is None:
            raise no_such(kind, ident)
        return record

    # products ------------------------------------------------------------------------------------

    async def list_products(self, request: Request) -> Response:
        """``GET /products`` -> list of products (by ``updated_at``, then id)."""
        s = self.store
        return self._list(
            request, "products", s.product_index, s.products, lambda p: (p.updated_at, p.id), render_product
        )

    async def get_product(self, request: Request) -> Response:
        """``GET /products/{id}`` -> the product, or 404 ``resource_missing``."""
        return AIPOSJSON(render_product(self._get(self.store.products, "product", request)))

    def create_product(self, request: Request, body: Any) -> Response:
        """``POST /products`` -> 201 the product."""
        p = self.store.create_product(product_fields(body, create=True))
        return AIPOSJSON(render_product(p), status_code=201)

    def update_product(self, request: Request, body: Any) -> Response:
        """``POST /products/{id}`` (any create field but ``stock``) -> 200 the product."""
        p = self._get(self.store.products, "product", request)
        return AIPOSJSON(render_product(self.store.update_product(p, product_fields(body, create=False))))

    # sales ---------------------------------------------------------------------------------------

    async def list_sales(self, request: Request) -> Response:
        """``GET /sales`` -> list of sales."""
        s = self.store
        return self._list(request, "sales", s.sale_index, s.sales, lambda x: (x.updated_at, x.id), render_sale)

    async def get_sale(self, request: Request) -> Response:
        """``GET /sales/{id}`` -> the sale."""
        return AIPOSJSON(render_sale(self._get(self.store.sales, "sale", request)))

    def create_sale(self, request: Request, body: Any) -> Response:
        """``POST /sales`` -> 201 ``{id, total, tax, grand_total, created_at}`` (the doc's sample)."""
        f = Fields(body, ("customer_id", "items", "payment_method"))
        customer_id = f.string("customer_id", nullable=True, max_length=64)
        method = f.choice("payment_method", PAYMENT_METHODS, required=True)
        items = f.raw("items", required=True)
        if not isinstance(items, list) or not items:
            raise invalid("items", "Invalid items: must be a non-empty array of {product_id, qty, price}.")
        if len(items) > MAX_ITEMS:
            raise invalid("items", f"Invalid items: at most {MAX_ITEMS} lines per sale.")
        lines: list[tuple[str, int, Decimal | None]] = []
        for n, raw in enumerate(items):
            item = Fields(raw, ("product_id", "qty", "price"), f"items[{n}]")
            pid = item.string("product_id", required=True, max_length=64)
            qty = item.integer("qty", required=True, minimum=1)
            price = item.money("price")
            lines.append((pid, qty, None if price is ABSENT else price))
        sale = self.store.create_sale(None if customer_id is ABSENT else customer_id, lines, method)
        body_out = {
            "id": sale.id,
            "total": sale.total,
            "tax": sale.tax,
            "grand_total": sale.grand_total,
            "created_at": sale.created_at,
        }
        return AIPOSJSON(body_out, status_code=201)

    def refund_sale(self, request: Request, body: Any) -> Response:
        """``POST /sales/{id}/refund`` (empty body) -> 200 the refunded sale."""
        Fields(body, ())
        sale = self._get(self.store.sales, "sale", request)
        return AIPOSJSON(render_sale(self.store.refund_sale(sale)))

    async def receipt(self, request: Request) -> Response:
        """``GET /sales/{id}/receipt`` -> ``application/pdf``, a one-page receipt."""
        sale = self._get(self.store.sales, "sale", request)
        return Response(
            receipt_pdf(self.store, sale),
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="receipt_{sale.id}.pdf"'},
        )

    # customers -----------------------------------------------------------------------------------

    async def list_customers(self, request: Request) -> Response:
        """``GET /customers`` -> list of customers."""
        s = self.store
        return self._list(
            request, "customers", s.customer_index, s.customers, lambda c: (c.updated_at, c.id), render_customer
        )

    async def get_customer(self, request: Request) -> Response:
        """``GET /customers/{id}`` -> the customer."""
        return AIPOSJSON(render_customer(self._get(self.store.customers, "customer", request)))

    def create_customer(self, request: Request, body: Any) -> Response:
        """``POST /customers`` ``{name, email?, phone?}`` -> 201 the customer."""
        f = Fields(body, ("name", "email", "phone"))
        name = f.string("name", required=True)
        email = f.string("email", nullable=True)
        phone = f.string("phone", nullable=True, max_length=32)
        if isinstance(email, str) and (
            email.count("@") != 1 or email.startswith("@") or "." not in email.split("@")[1]
        ):
            raise invalid("email", f"Invalid email: {email!r} is not an email address.")
        c = self.store.create_customer(name, None if email is ABSENT else email, None if phone is ABSENT else phone)
        return AIPOSJSON(render_customer(c), status_code=201)

    # inventory -----------------------------------------------------------------------------------

    async def list_inventory(self, request: Request) -> Response:
        """``GET /inventory`` (``product_id=`` filter) -> list of inventory levels, by their ``updated_at``."""
        s = self.store
        pid = request.query_params.get("product_id")
        if pid:
            p = s.products.get(pid)
            index = ChangeIndex([(p.stock_updated_at, p.id)] if p else [])
        else:
            index = s.inventory_index
        return self._list(request, "inventory", index, s.products, lambda p: (p.stock_updated_at, p.id), render_level)

    def create_adjustment(self, request: Request, body: Any) -> Response:
        """``POST /inventory/adjustments`` ``{product_id, delta, reason?}`` -> 201 the adjustment."""
        f = Fields(body, ("product_id", "delta", "reason"))
        pid = f.string("product_id", required=True, max_length=64)
        delta = f.integer("delta", required=True, minimum=-MAX_QTY, maximum=MAX_QTY)
        reason = f.string("reason", nullable=True)
        if delta == 0:
            raise invalid("delta", "Invalid delta: must not be 0.")
        adj = self.store.adjust_stock(pid, delta, None if reason is ABSENT else reason)
        return AIPOSJSON(render_adjustment(adj), status_code=201)

    # health --------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """``GET /health`` -> ``{status: "ok", store, time}`` (no key, not rate limited)."""
        return AIPOSJSON({"status": "ok", "store": self.store.name, "time": self.store.clock()})


def _dispatch(handlers: dict[str, Callable[[Request], Any]]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        try:
            return await handlers[method](request)
        except APIError as exc:
            return exc.response()

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}."
        return error_response(405, "method_not_allowed", message, None, dict(exc.headers or {}))
    if exc.status_code == 404:
        return error_response(
            404, "resource_missing", f"Unrecognized request URL ({request.method}: {request.url.path})."
        )
    return error_response(exc.status_code, "parameter_invalid", str(exc.detail))


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "server_error", "Something went wrong on the sandbox's end.")


def _sandbox_error(status: int, message: str) -> Response:
    code = "rate_limit_exceeded" if status == 429 else "server_error"
    return error_response(status, code, message)


# --- admin routes (the "dashboard") --------------------------------------------------------------


class WebhookAdmin:
    """``/_sandbox`` routes that register receivers, show deliveries and fire ``sync.completed``.

    Answers use the shared admin style: ``{"error": message}`` with 400 (not a JSON object), 404
    (unknown id) or 422 (bad value).
    """

    def __init__(self, store: AIPOSStore, webhooks: Webhooks) -> None:
        self.store = store
        self.webhooks = webhooks

    @staticmethod
    def _show(endpoint: WebhookEndpoint) -> dict[str, Any]:
        return {"id": endpoint.id, "url": endpoint.url, "secret": endpoint.secret}

    async def register(self, request: Request) -> Response:
        """``POST /_sandbox/webhooks {"url"}`` -> 201 ``{id, url, secret}``."""
        try:
            body = jsonutil.loads(await request.body())
        except jsonutil.MalformedJSON:
            body = None
        if not isinstance(body, dict):
            return AIPOSJSON({"error": "body must be a JSON object"}, status_code=400)
        if set(body) != {"url"} or not isinstance(body["url"], str):
            return AIPOSJSON({"error": 'body must be {"url": "<http(s) URL>"}'}, status_code=422)
        try:
            endpoint = self.webhooks.register(body["url"])
        except ValueError as exc:
            return AIPOSJSON({"error": str(exc)}, status_code=422)
        return AIPOSJSON(self._show(endpoint), status_code=201)

    async def list_endpoints(self, request: Request) -> Response:
        """``GET /_sandbox/webhooks`` -> ``{"data": [{id, url, secret}]}``."""
        return AIPOSJSON({"data": [self._show(e) for e in self.webhooks.endpoints.values()]})

    async def delete(self, request: Request) -> Response:
        """``DELETE /_sandbox/webhooks/{id}`` -> 204, or 404."""
        if not self.webhooks.remove(request.path_params["id"]):
            return AIPOSJSON({"error": "no such webhook endpoint"}, status_code=404)
        return Response(status_code=204)

    async def rotate(self, request: Request) -> Response:
        """``POST /_sandbox/webhooks/{id}/rotate`` -> ``{id, url, secret}`` with the new secret, or 404."""
        endpoint = self.webhooks.rotate(request.path_params["id"])
        if endpoint is None:
            return AIPOSJSON({"error": "no such webhook endpoint"}, status_code=404)
        return AIPOSJSON(self._show(endpoint))

    async def deliveries(self, request: Request) -> Response:
        """``GET /_sandbox/webhook-deliveries`` -> ``{"data": [attempt...], "pending": n}``, oldest first."""
        return AIPOSJSON({"data": [a.as_dict() for a in self.webhooks.log], "pending": self.webhooks.pending})

    async def clear_deliveries(self, request: Request) -> Response:
        """``DELETE /_sandbox/webhook-deliveries`` -> 204."""
        self.webhooks.log.clear()
        return Response(status_code=204)

    async def sync_completed(self, request: Request) -> Response:
        """``POST /_sandbox/sync-completed`` -> 202 the ``sync.completed`` event it emitted."""
        event = self.store.emit("sync.completed", {"store": self.store.name, "finished_at": self.store.clock()})
        assert event is not None
        return Response(event.body, 202, media_type="application/json")

    def routes(self) -> list[Route]:
        """The admin routes."""
        a = ADMIN_PREFIX
        return [
            Route(f"{a}/webhooks", self.register, methods=["POST"]),
            Route(f"{a}/webhooks", self.list_endpoints, methods=["GET"]),
            Route(f"{a}/webhooks/{{id}}", self.delete, methods=["DELETE"]),
            Route(f"{a}/webhooks/{{id}}/rotate", self.rotate, methods=["POST"]),
            Route(f"{a}/webhook-deliveries", self.deliveries, methods=["GET"]),
            Route(f"{a}/webhook-deliveries", self.clear_deliveries, methods=["DELETE"]),
            Route(f"{a}/sync-completed", self.sync_completed, methods=["POST"]),
        ]


# --- the app -------------------------------------------------------------------------------------


def create_app(
    *,
    seed_csv: str | Path | None = None,
    products: int | None = None,
    customers: int | None = None,
    sales: int | None = None,
    api_keys: Iterable[str] = DEFAULT_API_KEYS,
    store: str = DEFAULT_STORE,
    seed: int = 0,
    faults: Faults | dict[str, Any] | None = None,
    currency: str = "INR",
    default_tax_rate: int | str | Decimal = 5,
    rate_limit: int | None = RATE_LIMIT,
    clock: Clock | None = None,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
    webhook_retry_schedule: Sequence[float] = WEBHOOK_RETRY_SCHEDULE,
    webhook_timeout: float = WEBHOOK_TIMEOUT_S,
    webhook_reorder_window: float = 0.5,
) -> Starlette:
    """Build an AI POS sandbox app (``tillgate sandbox aipos``).

    Options:

    - ``seed_csv``: a UCI Online Retail CSV; loads one product per StockCode (``sku``), one customer
      per CustomerID, one sale per invoice (credit notes and lines with quantity < 1 skipped; see
      ``store.seed_report``). With ``products`` set, only the first N StockCodes are loaded.
    - ``products``: without a CSV, generate N products (default 50); ``prod_001`` is API.md's Masala Chai.
    - ``customers``: without a CSV, generate N customers (default 20); the first is ``cust_abc123``.
    - ``sales``: without a CSV, generate N sales in March 2026 (default 20); the newest is ``sale_xyz789``.
    - ``api_keys``: the valid bearer keys, each starting with ``aipos_`` (default ``aipos_test_sandbox_key``).
    - ``store``: the store name ``/health`` and receipts show.
    - ``seed``: RNG seed for generated data, ids and the fault knobs.
    - ``faults``: initial knobs, the shared ones plus ``webhook_duplicate_rate``, ``webhook_reorder``,
      ``webhook_drop_rate`` (:class:`AIPOSFaults` or a dict).
    - ``currency``: ISO 4217 code printed on receipts (default INR; amounts carry none).
    - ``default_tax_rate``: percent for products created without ``tax_rate`` (default 5).
    - ``rate_limit``: requests per key per sliding minute (default 1000); None turns it off.
    - ``clock``: a function returning the current aware UTC datetime (timestamps, the rate-limit
      window, idempotency expiry, webhook signature times); default the system clock.
    - ``webhook_transport``: an ``httpx.AsyncBaseTransport`` deliveries go through instead of the
      network (e.g. ``httpx.ASGITransport(app=receiver)``).
    - ``webhook_retry_schedule``: seconds to wait before each retry (default 1, 2, ..., 128: 8 retries).
    - ``webhook_timeout``: seconds a receiver has to answer (default 10).
    - ``webhook_reorder_window``: seconds events are held for one shuffled batch while
      ``webhook_reorder`` is on (default 0.5; ``store.drain()`` sends at once).

    ``app.state.aipos`` is the :class:`AIPOSStore` (``await app.state.aipos.drain()`` waits for the
    webhooks), ``app.state.sandbox`` the :class:`AIPOSSandbox`. The app's lifespan shutdown cancels
    the webhooks still under way and closes their keep-alive client. ``ValueError`` for a key without
    the ``aipos_`` prefix, a negative count, a bad knob or a bad webhook setting.
    """
    keys = frozenset(api_keys)
    if not keys or any(not k.startswith("aipos_") for k in keys):
        raise ValueError("AI POS API keys start with 'aipos_'")
    if any(n is not None and n < 0 for n in (products, customers, sales)):
        raise ValueError("products, customers and sales must be >= 0")
    if rate_limit is not None and rate_limit < 1:
        raise ValueError("rate_limit must be >= 1 (or None for no limit)")
    now = clock or utcnow
    sandbox = AIPOSSandbox(
        seed=seed, faults=AIPOSFaults.coerce(faults), error_response=_sandbox_error, rate_limit_exempt={HEALTH_PATH}
    )
    webhooks = Webhooks(
        sandbox=sandbox,
        clock=now,
        transport=webhook_transport,
        retry_schedule=webhook_retry_schedule,
        timeout=webhook_timeout,
        reorder_window=webhook_reorder_window,
    )
    data = AIPOSStore(
        name=store,
        currency=currency,
        default_tax_rate=_percent(Decimal(default_tax_rate)),
        clock=now,
        rng=random.Random(seed),
    )
    seeding = random.Random(seed + 1)
    if seed_csv is not None:
        data.seed_retail(read_retail_csv(seed_csv), seeding, products)
    else:
        data.seed_synthetic(
            50 if products is None else products,
            20 if customers is None else customers,
            20 if sales is None else sales,
            seeding,
        )
    data.webhooks = webhooks  # attached after seeding: seeded records make no events
    sandbox.state_extra = lambda: {
        "aipos": {
            "products": len(data.products),
            "customers": len(data.customers),
            "sales": len(data.sales),
            "adjustments": len(data.adjustments),
            "webhooks": len(webhooks.endpoints),
            "webhook_deliveries_pending": webhooks.pending,
        }
    }
    handlers = AIPOSHandlers(data, sandbox)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:  # stop sending and close the webhook client's connections
            await webhooks.aclose()

    app = sandbox.build_app(
        [*WebhookAdmin(data, webhooks).routes(), *handlers.routes()],
        middleware=[Middleware(AIPOSGate, api_keys=keys, limiter=RateLimiter(rate_limit, now) if rate_limit else None)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.aipos = data
    return app
