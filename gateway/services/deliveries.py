"""Sending one outbound webhook delivery: the Standard Webhooks signature, the HTTP attempt under
the SSRF guard, and what its outcome means for the delivery and the endpoint.

Follows DESIGN.md "Events and outbound webhooks" and the Standard Webhooks specification
(https://www.standardwebhooks.com, ``spec/standard-webhooks.md``):

- the body is the event exactly as ``GET /v1/events`` renders it (``{"id", "seq", "type",
  "connection_id", "occurred_at", "data", "changed"}``), ``Content-Type: application/json``;
- ``webhook-id`` is the event id (stable across retries and replays: receivers dedupe on it),
  ``webhook-timestamp`` the attempt's Unix time in seconds, ``webhook-signature``
  ``v1,<base64 HMAC-SHA256 over "<id>.<timestamp>.<body>">`` keyed with the endpoint's
  ``whsec_`` secret (signed by the ``standardwebhooks`` package itself);
- a 2xx is delivered; anything else (3xx included: redirects are never followed), a timeout
  (``webhook_timeout_seconds``, 15 s, for the whole attempt) or a connection error is a failed
  attempt, retried on the schedule (``webhook_retry_schedule``); ``429`` and ``503`` wait the
  receiver's ``Retry-After`` instead of the schedule's step (capped at 24 h); ``410 Gone``
  disables the endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

from gateway import __version__
from gateway.netguard import Resolver, UrlRefused
from gateway.sdk.http import parse_retry_after

#: Longest ``Retry-After`` honoured, in seconds.
MAX_RETRY_AFTER = 86_400.0
#: Characters of the receiver's answer kept in the delivery log.
RESPONSE_KEPT = 1000
USER_AGENT = f"Tillgate-Webhooks/{__version__}"


def new_secret() -> str:
    """A new endpoint secret: ``whsec_`` + base64 of 24 random bytes (the Standard Webhooks form)."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def signed_headers(secret: str | Webhook, event_id: str, body: bytes, *, timestamp: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt of ``body``.

    Args:
        secret: the ``whsec_`` secret, or a ``standardwebhooks.Webhook`` built from it.
        event_id: the ``webhook-id``.
        timestamp: Unix seconds (default now); only whole seconds are sent.

    Returns:
        ``{"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "user-agent"}``.
    """
    signer = secret if isinstance(secret, Webhook) else Webhook(secret)
    when = datetime.fromtimestamp(int(time.time() if timestamp is None else timestamp), tz=UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signer.sign(event_id, when, body.decode()),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


@dataclass(frozen=True)
class AttemptResult:
    """One HTTP attempt. ``status_code`` ``None``: no answer (``error`` says why); ``duration_ms``
    wall time; ``response_body`` the first :data:`RESPONSE_KEPT` characters; ``retry_after``
    the receiver's ``Retry-After`` in seconds on a 429/503."""

    status_code: int | None
    error: str | None
    duration_ms: int
    response_body: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        """``410 Gone``: the receiver asks never to be called again."""
        return self.status_code == 410


def retry_delay(attempts: int, schedule: list[float], result: AttemptResult) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones (``None``: give up).

    The ``attempts``-th failure waits ``schedule[attempts - 1]``; past the end of the schedule
    the delivery has failed. A 429/503 ``Retry-After`` (capped at :data:`MAX_RETRY_AFTER`)
    replaces the step; it still counts as an attempt.
    """
    if attempts > len(schedule):
        return None
    if result.retry_after is not None:
        return min(result.retry_after, MAX_RETRY_AFTER)
    return schedule[attempts - 1]


class DeliverySender:
    """Sends attempts: one pooled ``httpx.AsyncClient`` (no redirects, no environment proxies),
    the SSRF guard and a timeout on the whole attempt. Use ``async with`` or :meth:`close`."""

    def __init__(self, *, allow_private: bool, timeout: float = 15.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeout = timeout
        self.resolver = Resolver(allow_private=allow_private)
        self.allow_private = allow_private
        self.client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=httpx.Timeout(timeout), transport=transport,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100, keepalive_expiry=30),
        )

    async def __aenter__(self) -> DeliverySender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections."""
        await self.client.aclose()

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> AttemptResult:
        """POST ``body`` to ``url``; never raises for anything the receiver or network does."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                target, extra_headers, extensions = await self._target(url)
                async with self.client.stream("POST", target, content=body, headers={**headers, **extra_headers},
                                              extensions=extensions) as response:
                    kept = await _read_some(response)
        except UrlRefused as exc:
            return AttemptResult(None, f"refused: {exc}", _ms(started))
        except TimeoutError:
            return AttemptResult(None, f"timed out after {self.timeout:g} s", _ms(started))
        except httpx.HTTPError as exc:
            return AttemptResult(None, f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__,
                                 _ms(started))
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        error = None
        if not 200 <= status < 300:
            error = f"HTTP {status}"
            if 300 <= status < 400:
                error += f" (redirect to {response.headers.get('location', '?')[:300]} not followed)"
        return AttemptResult(status, error, _ms(started), kept, retry_after)

    async def _target(self, url: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """The URL to connect to, extra headers and request extensions: with the guard on, the
        checked address replaces the host (``Host`` and TLS SNI keep the name)."""
        if self.allow_private:
            return url, {}, {}
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self.resolver.resolve(host, port)
        shown = f"[{address}]" if ":" in address else address
        netloc = f"{shown}:{parts.port}" if parts.port else shown
        host_header = parts.netloc.rsplit("@", 1)[-1]
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), {"host": host_header}, extensions


async def _read_some(response: httpx.Response) -> str | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= RESPONSE_KEPT * 4:
            break
    if not chunks:
        return None
    return b"".join(chunks).decode("utf-8", "replace")[:RESPONSE_KEPT]


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
