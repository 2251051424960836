"""The HTTP client a connector talks to its vendor with: :class:`VendorClient`.

One :class:`VendorClient` per connection wraps an :class:`httpx.AsyncClient` (base URL, auth as an
:class:`httpx.Auth`, timeout) and adds, in this order around every attempt:

1. a circuit breaker (``purgatory``): while open, calls fail fast with :class:`VendorCircuitOpen`;
   5xx, timeouts, connection errors and 429 count as failures, other 4xx do not (DESIGN "Sync");
2. a leaky-bucket rate limiter (``aiolimiter``) sized from the manifest's
   ``rate_limit: {"requests": N, "per_seconds": S}``;
3. the request, whose outcome :meth:`VendorClient.classify` maps to the gateway's error tree.

Retries (``tenacity``) wrap the attempts: only errors ``classify`` marks retryable are retried,
waiting ``Retry-After`` when the vendor sent one (429/503) and capped exponential backoff with jitter
otherwise, within a bounded number of attempts and total time (:class:`RetryPolicy`).

The errors a connector sees (all :class:`gateway.errors.VendorError`, rendered by the API; ``vendor``,
``vendor_status``, ``retryable``, ``retry_after`` are always set)::

    VendorError                        (502 vendor_error: other 5xx, retryable; unexpected 1xx/3xx)
    ├── VendorRequestRejected          (502 vendor_request_rejected: 400, 409, 422, other 4xx; fatal)
    ├── VendorNotFound                 (502 vendor_not_found: 404/410; fatal)
    ├── VendorError(code=vendor_invalid_response)  (502: a 2xx body that is not JSON; fatal)
    ├── VendorUnavailable              (503 vendor_unavailable: 429, 503, connection errors; retryable)
    │   └── VendorCircuitOpen          (503 vendor_unavailable: breaker open, ``retry_after`` = time left)
    ├── VendorTimeout                  (504 vendor_timeout: httpx timeouts, 408, 504; retryable)
    ├── VendorCredentialsRejected      (424 vendor_credentials_rejected: 401, 403, refused login)
    └── PaginationLoop                 (502 vendor_pagination_loop, in ``gateway.sdk.pagination``)

Why a vendor 404 answers 502 and not 404: the client's own resource (``prod_...``) exists in the
gateway; it is the vendor that lost it, which is a vendor failure, and a 404 from the gateway would
tell the client its id is wrong. Connectors that expect a 404 (e.g. a delete that already happened)
catch :class:`VendorNotFound`.

Writes and retries: ``POST`` and ``PATCH`` are retried only when the vendor certainly did not act
(connection refused, connect/pool timeout, 429, 503); after a 500/502/504 or a read timeout the write
may have happened, so the error goes back to the caller (still ``retryable=True``: a job with an
idempotency key may retry it). Pass ``idempotent=True`` to retry such writes anyway.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import httpx
from aiolimiter import AsyncLimiter
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_base, wait_exponential_jitter

from gateway import jsonutil
from gateway.errors import VendorCredentialsRejected, VendorError, VendorTimeout, VendorUnavailable
from gateway.sdk.auth import AuthFlowFailed

log = logging.getLogger(__name__)

__all__ = [
    "BreakerPolicy",
    "RetryPolicy",
    "VendorCircuitOpen",
    "VendorClient",
    "VendorNotFound",
    "VendorRequestRejected",
    "parse_retry_after",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class VendorNotFound(VendorError):
    """The vendor answered 404/410 for something the gateway expected to exist (502, not retryable)."""

    code, title = "vendor_not_found", "The POS vendor does not know the requested object"


class VendorRequestRejected(VendorError):
    """The vendor refused the request with a 4xx other than 401/403/404/408/429 (502, not retryable)."""

    code, title = "vendor_request_rejected", "The POS vendor rejected the request"


class VendorCircuitOpen(VendorUnavailable):
    """The connection's circuit breaker is open: the call was not sent (503, retryable, ``retry_after``)."""


def vendor_did_not_act(exc: BaseException) -> bool:
    """Whether a failed vendor call certainly did not act at the vendor: the request was never
    sent (connection refused or timed out while connecting, no pooled connection, the circuit
    breaker open) or the vendor refused it before processing (429 Too Many Requests, 503 Service
    Unavailable, RFC 9110 15.6.4). A read timeout, a reset after sending or any other 5xx may have
    acted. Used to retry a non-idempotent write in place, and by
    :func:`gateway.services.adjustments.not_applied` to withdraw a push's journal entry.
    """
    if not isinstance(exc, VendorError):
        return False
    if isinstance(exc, VendorCircuitOpen):
        return True
    cause = exc.__cause__
    if isinstance(cause, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return True
    return exc.extra.get("vendor_status") in (429, 503)


@dataclass(frozen=True)
class RetryPolicy:
    """How :class:`VendorClient` retries retryable outcomes.

    Attributes:
        attempts: total attempts including the first (1 disables retries).
        max_total: seconds from the first attempt after which no further attempt starts; a
            ``Retry-After`` longer than what is left ends the retries at once (the error carries it).
        backoff: first backoff in seconds; doubled per attempt (``backoff * 2**(n-1)``).
        backoff_max: cap of one backoff, seconds.
        jitter: up to this many random seconds added to each backoff.
    """

    attempts: int = 4
    max_total: float = 30.0
    backoff: float = 0.5
    backoff_max: float = 8.0
    jitter: float = 0.5


@dataclass(frozen=True)
class BreakerPolicy:
    """The connection's circuit breaker.

    Attributes:
        threshold: consecutive counted failures that open the circuit.
        reset_timeout: seconds the circuit stays open before one trial call (half-open) is let
            through; success closes it, failure opens it again.
    """

    threshold: int = 5
    reset_timeout: float = 30.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Returns ``None`` for a missing or unreadable header; never negative.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return max(0.0, when.timestamp() - current)


class _WaitRetryAfter(wait_base):
    """Wait the error's ``retry_after`` when it has one, else the fallback backoff."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        retry_after = exc.extra.get("retry_after") if isinstance(exc, VendorError) else None
        if retry_after is not None:
            return float(retry_after)
        return self.fallback(retry_state)


@dataclass
class HealthCounters:
    """What the client saw, for ``connection.unhealthy`` / ``connection.recovered`` and ``/health``."""

    requests: int = 0
    failures: int = 0
    retries: int = 0
    fast_failures: int = 0
    last_error: str | None = None
    transitions: list[str] = field(default_factory=list)


class SharedCircuits:
    """What must outlive one client, per process: a circuit breaker and a rate limiter per
    connection, and the breaker's health transitions.

    Connectors make a :class:`VendorClient` per operation; without this, every request would
    start with a closed breaker and a full bucket. One listener on the shared breaker factory
    turns state changes into one ``on_health_change`` call per transition (not one per client).
    """

    def __init__(self) -> None:
        self._factory: AsyncCircuitBreakerFactory | None = None
        self.limiters: dict[tuple[str, int, float], AsyncLimiter] = {}
        self.transitions: dict[str, list[str]] = {}
        self.callbacks: dict[str, Callable[[str], Any]] = {}

    def factory(self) -> AsyncCircuitBreakerFactory:
        """The process's breaker factory (breakers keyed by circuit name)."""
        if self._factory is None:
            self._factory = AsyncCircuitBreakerFactory()
            self._factory.add_listener(self._event)
        return self._factory

    def limiter(self, circuit: str, rate_limit: Mapping[str, Any]) -> AsyncLimiter:
        """The circuit's token bucket for ``{"requests": N, "per_seconds": S}``."""
        key = (circuit, int(rate_limit["requests"]), float(rate_limit["per_seconds"]))
        if key not in self.limiters:
            self.limiters[key] = AsyncLimiter(key[1], key[2])
        return self.limiters[key]

    def _event(self, name: str, event_type: str, event: Any) -> None:
        if event_type != "state_changed":
            return
        seen = self.transitions.setdefault(name, [])
        change = _health_change(seen[-1] if seen else "closed", event.state)
        seen.append(event.state)
        del seen[:-20]
        if change:
            log.warning("%s: connection %s", name, change)
            callback = self.callbacks.get(name)
            if callback is not None:
                callback(change)


def _health_change(previous: str, state: str) -> str | None:
    if state == "opened" and previous != "half-opened":
        return "unhealthy"
    if state == "closed" and previous == "half-opened":
        return "recovered"
    return None


#: Breakers and limiters of real connections (clients given a ``connection_id``) in this process.
SHARED = SharedCircuits()


class VendorClient:
    """One connection's HTTP client: rate limit, circuit breaker, retries, error mapping.

    Args:
        vendor: the connector name (``vendor`` in every error, e.g. ``"apex"``).
        base_url: the vendor API root, e.g. ``"https://api.apex-pos.com/rest_api/v1"``.
        auth: an :class:`httpx.Auth` (see :mod:`gateway.sdk.auth`).
        timeout: seconds for connect/read/write/pool each, or an :class:`httpx.Timeout`.
        rate_limit: the manifest's ``{"requests": N, "per_seconds": S}`` or ``None`` (unlimited).
            aiolimiter's leaky bucket admits a burst of ``N`` then one call every ``S/N`` seconds.
        retry, breaker: policies; see :class:`RetryPolicy`, :class:`BreakerPolicy`.
        connection_id: names the circuit (defaults to ``vendor``).
        on_health_change: called with ``("unhealthy" | "recovered", client)`` when the breaker
            opens, or closes again after being open.
        sleep: the coroutine used for retry waits (tests pass a recorder).
        transport, headers: passed to :class:`httpx.AsyncClient`.
        breaker_factory: a ``purgatory.AsyncCircuitBreakerFactory`` (e.g. Redis-backed). By
            default a client with a ``connection_id`` uses the process-wide :data:`SHARED`
            breaker and rate limiter of that connection; one without gets private ones.
    """

    def __init__(
        self,
        vendor: str,
        base_url: str | httpx.URL,
        *,
        auth: httpx.Auth | None = None,
        timeout: float | httpx.Timeout = 10.0,
        rate_limit: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        connection_id: str | None = None,
        on_health_change: Callable[[str, VendorClient], Any] | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        breaker_factory: AsyncCircuitBreakerFactory | None = None,
    ) -> None:
        self.vendor = vendor
        self.auth = auth
        self.retry_policy = retry or RetryPolicy()
        self.breaker_policy = breaker or BreakerPolicy()
        self.circuit = f"{vendor}:{connection_id}" if connection_id else vendor
        self.health_counters = HealthCounters()
        self._on_health_change = on_health_change
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            base_url=base_url, auth=auth, timeout=timeout, transport=transport, headers=headers
        )
        self.limiter: AsyncLimiter | None = None
        shared = connection_id is not None and breaker_factory is None
        if rate_limit:
            self.limiter = (SHARED.limiter(self.circuit, rate_limit) if shared
                            else AsyncLimiter(rate_limit["requests"], rate_limit["per_seconds"]))
        if shared:  # the connection's breaker and health outlive this client (see SharedCircuits)
            self._breakers = SHARED.factory()
            if on_health_change is not None:
                SHARED.callbacks[self.circuit] = lambda change: on_health_change(change, self)
        else:
            self._breakers = breaker_factory or AsyncCircuitBreakerFactory(
                default_threshold=self.breaker_policy.threshold, default_ttl=self.breaker_policy.reset_timeout
            )
            self._breakers.add_listener(self._breaker_event)
        self._breaker: Any = None

    # -- life cycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> VendorClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, *, logout: bool = False) -> None:
        """Close the connection pool; with ``logout=True`` first revoke a login session, best effort."""
        logout_call = getattr(self.auth, "logout_call", None)
        request = logout_call(self._client.base_url) if logout and logout_call is not None else None
        if request is not None:
            try:
                await self._client.send(request, auth=None)
            except httpx.HTTPError as exc:
                log.info("%s: logout failed: %s", self.vendor, type(exc).__name__)
        await self._client.aclose()

    # -- the one place outcomes are judged ----------------------------------------------------------
    def classify(self, outcome: httpx.Response | BaseException) -> VendorError | None:
        """Map a vendor response or a transport error to the gateway error tree; ``None`` for a success.

        ``retryable`` on the result is the only retry decision in the SDK. Messages name the
        method, the URL path (never the query, which some vendors use for keys) and the status,
        never credentials or tokens.
        """
        if isinstance(outcome, VendorError):
            return outcome
        if isinstance(outcome, AuthFlowFailed):
            where = f"{outcome.stage} at {self.vendor}"
            response = outcome.response
            if response is None or response.is_success:
                return VendorError(
                    f"{where} failed: {outcome.reason}",
                    vendor=self.vendor,
                    vendor_status=response.status_code if response is not None else None,
                    code="vendor_invalid_response",
                )
            status = response.status_code
            if status == 429 or status >= 500:
                return self.classify(response)
            return VendorCredentialsRejected(
                f"{self.vendor} refused the {outcome.stage} with the connection's credentials ({status})",
                vendor=self.vendor,
                vendor_status=status,
            )
        if isinstance(outcome, httpx.TimeoutException):
            return VendorTimeout(
                f"{self.vendor} did not answer in time ({type(outcome).__name__})",
                vendor=self.vendor,
                retryable=True,
            )
        if isinstance(outcome, httpx.TransportError):
            return VendorUnavailable(
                f"could not reach {self.vendor} ({type(outcome).__name__})", vendor=self.vendor, retryable=True
            )
        if isinstance(outcome, httpx.HTTPError):
            return VendorError(f"talking to {self.vendor} failed ({type(outcome).__name__})", vendor=self.vendor)
        if isinstance(outcome, BaseException):
            return None
        return self._classify_response(outcome)

    def _classify_response(self, response: httpx.Response) -> VendorError | None:
        status = response.status_code
        if 200 <= status < 300:
            return None
        request = response.request
        what = f"{self.vendor} answered {status} to {request.method} {request.url.path}"
        kw: dict[str, Any] = {"vendor": self.vendor, "vendor_status": status}
        if status in (401, 403):
            return VendorCredentialsRejected(f"{what}: the connection's credentials were rejected", **kw)
        if status in (404, 410):
            return VendorNotFound(what, **kw)
        if status in (408, 504):
            return VendorTimeout(what, retryable=True, **kw)
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return VendorUnavailable(what, retryable=True, retry_after=retry_after, **kw)
        if status >= 500:
            return VendorError(what, retryable=True, **kw)
        if 400 <= status < 500:
            return VendorRequestRejected(f"{what}{self._vendor_message(response)}", **kw)
        return VendorError(f"{what} (unexpected status)", **kw)

    def _vendor_message(self, response: httpx.Response) -> str:
        """The vendor's own short error message (``error``/``message``/``detail``), secrets redacted."""
        try:
            doc = jsonutil.loads(response.content)
        except jsonutil.MalformedJSON:
            return ""
        message: Any = None
        for scope in (doc, doc.get("error") if isinstance(doc, dict) else None):
            if isinstance(scope, dict):
                message = next(
                    (scope[k] for k in ("message", "error", "detail") if isinstance(scope.get(k), str)), None
                )
            if message:
                break
        if not isinstance(message, str) or not message:
            return ""
        secrets = getattr(self.auth, "secrets", lambda: ())()
        for secret in secrets:
            if secret:
                message = message.replace(secret, "***")
        return f": {message[:200]}"

    @staticmethod
    def _counts_against_breaker(exc: BaseException) -> bool:
        """5xx, 408, 429, timeouts and connection errors count; 4xx, cancellation and bugs do not."""
        if not isinstance(exc, VendorError) or isinstance(exc, VendorCircuitOpen):
            return False
        status = exc.extra.get("vendor_status")
        if status is None:
            return isinstance(exc, (VendorTimeout, VendorUnavailable))
        return status >= 500 or status in (408, 429)

    def _should_retry(self, method: str, idempotent: bool | None) -> Callable[[BaseException], bool]:
        safe = idempotent if idempotent is not None else method.upper() in IDEMPOTENT_METHODS

        def should(exc: BaseException) -> bool:
            if not isinstance(exc, VendorError) or not exc.retryable or isinstance(exc, VendorCircuitOpen):
                return False
            if safe:
                return True
            return vendor_did_not_act(exc)  # a write: only when the vendor certainly did not act

        return should

    # -- health -----------------------------------------------------------------------------------
    @property
    def breaker_state(self) -> str:
        """``"closed"``, ``"opened"`` or ``"half-opened"`` (purgatory's names)."""
        return self._breaker.context.state if self._breaker is not None else "closed"

    def health(self) -> dict[str, Any]:
        """``{"state", "failure_count", "retry_after" (seconds or None), "requests", "failures", "retries",
        "fast_failures", "last_error"}`` for the connection's health report."""
        counters = self.health_counters
        return {
            "state": self.breaker_state,
            "failure_count": self._breaker.context.failure_count if self._breaker is not None else 0,
            "retry_after": self._open_remaining(),
            "requests": counters.requests,
            "failures": counters.failures,
            "retries": counters.retries,
            "fast_failures": counters.fast_failures,
            "last_error": counters.last_error,
        }

    def _open_remaining(self) -> float | None:
        if self._breaker is None or self._breaker.context.state != "opened":
            return None
        opened_at = self._breaker.context.opened_at or time.time()
        return max(0.0, opened_at + self._breaker.context.ttl - time.time())

    def _breaker_event(self, name: str, event_type: str, event: Any) -> None:
        if name != self.circuit or event_type != "state_changed":
            return
        previous = self.health_counters.transitions[-1] if self.health_counters.transitions else "closed"
        self.health_counters.transitions.append(event.state)
        change = _health_change(previous, event.state)
        if change:
            log.warning("%s: connection %s", self.circuit, change)
            if self._on_health_change is not None:
                self._on_health_change(change, self)

    async def _get_breaker(self) -> Any:
        if self._breaker is None:
            self._breaker = await self._breakers.get_breaker(
                self.circuit,
                threshold=self.breaker_policy.threshold,
                ttl=self.breaker_policy.reset_timeout,
                # purgatory's exclude: (type, predicate) -> True means "not a failure"
                exclude=[(BaseException, lambda exc: not self._counts_against_breaker(exc))],
            )
        return self._breaker

    # -- requests ----------------------------------------------------------------------------------
    async def _attempt(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        breaker = await self._get_breaker()
        try:
            async with breaker:
                if self.limiter is not None:
                    await self.limiter.acquire()
                self.health_counters.requests += 1
                try:
                    response = await self._client.request(method, path, **kwargs)
                except (httpx.HTTPError, AuthFlowFailed) as exc:
                    raise self._failed(self.classify(exc)) from exc  # type: ignore[arg-type]
                error = self.classify(response)
                if error is not None:
                    raise self._failed(error)
                return response
        except OpenedState as exc:
            self.health_counters.fast_failures += 1
            remaining = self._open_remaining()
            raise VendorCircuitOpen(
                f"{self.vendor} is failing; calls are paused for {remaining or 0:.0f} s",
                vendor=self.vendor,
                retryable=True,
                retry_after=remaining,
            ) from exc

    def _failed(self, error: VendorError) -> VendorError:
        self.health_counters.failures += 1
        self.health_counters.last_error = error.code
        return error

    async def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> httpx.Response:
        """Send ``method path`` (relative to ``base_url``) with retries; return the 2xx response.

        ``kwargs`` go to :meth:`httpx.AsyncClient.request` (``params``, ``json``, ``content``,
        ``headers``, ...). ``idempotent`` overrides the method-based retry rule for writes.

        Raises:
            gateway.errors.VendorError: any subclass in the module's tree, after retries.
        """
        policy = self.retry_policy

        async def before_sleep(state: RetryCallState) -> None:
            self.health_counters.retries += 1
            exc = state.outcome.exception() if state.outcome is not None else None
            log.info(
                "%s: %s %s failed (%s), retry %d in %.2f s",
                self.vendor,
                method,
                path,
                getattr(exc, "code", type(exc).__name__),
                state.attempt_number,
                state.upcoming_sleep,
            )

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.max_total),
            wait=_WaitRetryAfter(
                wait_exponential_jitter(multiplier=policy.backoff, max=policy.backoff_max, jitter=policy.jitter)
            ),
            retry=retry_if_exception(self._should_retry(method, idempotent)),
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(self._attempt, method, path, kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """``GET path``; see :meth:`request`."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """``POST path`` (retried only when the vendor cannot have acted); see :meth:`request`."""
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> httpx.Response:
        """``PUT path``; see :meth:`request`."""
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        """``PATCH path`` (retried only when the vendor cannot have acted); see :meth:`request`."""
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        """``DELETE path``; see :meth:`request`."""
        return await self.request("DELETE", path, **kwargs)

    def decode(self, response: httpx.Response) -> Any:
        """The response body as JSON with exact decimals (``gateway.jsonutil.loads``); ``None`` when empty.

        Raises:
            gateway.errors.VendorError: ``vendor_invalid_response`` (502, not retryable) for a body
                that is not JSON.
        """
        if not response.content:
            return None
        try:
            return jsonutil.loads(response.content)
        except jsonutil.MalformedJSON as exc:
            raise VendorError(
                f"{self.vendor} answered {response.request.method} {response.request.url.path} with a body that is not JSON",
                vendor=self.vendor,
                vendor_status=response.status_code,
                code="vendor_invalid_response",
            ) from exc

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, then :meth:`decode`: JSON numbers with a fraction become ``Decimal``."""
        return self.decode(await self.request(method, path, **kwargs))

    def __repr__(self) -> str:
        return f"VendorClient(vendor={self.vendor!r}, base_url={str(self._client.base_url)!r}, auth={self.auth!r})"
