"""Vendor authentication as :class:`httpx.Auth` flows.

Three schemes cover the POS vendors Tillgate speaks to:

* :class:`ApiKeyHeader`: a static key in a header (Apex POS: ``X-API-Key: apx_...``).
* :class:`BearerToken`: a static ``Authorization: Bearer <token>``.
* :class:`LoginWithRefresh`: credentials are exchanged for a short-lived access token and a
  refresh token (HQStore POS: ``POST /api/v1/auth/login`` with username + PIN, then
  ``POST /api/v1/auth/refresh``; TenantPOS: ``POST /auth/login``, 15 min access / 7 day refresh,
  ``POST /auth/logout``). Subclasses build the vendor's login/refresh requests; the base class
  owns the life cycle (log in on first use, refresh before expiry and once on a 401, log in again
  when the refresh token is refused) and serialises it per instance with an :class:`asyncio.Lock`.

Failures of the login or refresh call itself are raised as :class:`AuthFlowFailed` carrying the
vendor's response; :meth:`gateway.sdk.http.VendorClient.classify` turns it into the gateway's
error tree (the one place that decides retryable vs fatal). Tokens and credentials are never
logged and never appear in ``repr()`` or in error messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway import jsonutil

log = logging.getLogger(__name__)

__all__ = [
    "ApiKeyHeader",
    "AuthFlowFailed",
    "BearerToken",
    "LoginWithRefresh",
    "TokenSet",
]


class ApiKeyHeader(httpx.Auth):
    """Send a static API key in a header on every request.

    Args:
        header: the header name, e.g. ``"X-API-Key"`` (Apex POS API reference, every endpoint).
        key: the secret key; hidden from ``repr()``.
    """

    def __init__(self, header: str, key: str) -> None:
        if not header or not key:
            raise ValueError("ApiKeyHeader needs a header name and a key")
        self.header = header
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self.header] = self._key
        yield request

    def secrets(self) -> tuple[str, ...]:
        """The secret values this auth sends (for redaction of vendor messages)."""
        return (self._key,)

    def __repr__(self) -> str:
        return f"ApiKeyHeader(header={self.header!r}, key='***')"


class BearerToken(httpx.Auth):
    """Send ``Authorization: Bearer <token>`` with a static token (hidden from ``repr()``)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("BearerToken needs a token")
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def secrets(self) -> tuple[str, ...]:
        """The secret values this auth sends (for redaction of vendor messages)."""
        return (self._token,)

    def __repr__(self) -> str:
        return "BearerToken(token='***')"


class AuthFlowFailed(Exception):
    """The vendor refused or failed a login or refresh call.

    Attributes:
        response: the vendor's response (already read), or ``None`` when its body was not usable.
        stage: ``"login"`` or ``"refresh"``.
        reason: a short description without secrets (e.g. ``"no access token in the response"``).
    """

    def __init__(self, stage: str, response: httpx.Response | None, reason: str) -> None:
        self.stage = stage
        self.response = response
        self.reason = reason
        status = f" ({response.status_code})" if response is not None else ""
        super().__init__(f"{stage} failed{status}: {reason}")


@dataclass
class TokenSet:
    """Tokens from a login or refresh answer.

    Attributes:
        access_token: the bearer token.
        refresh_token: the refresh token, or ``None`` (keep the previous one).
        expires_in: access-token lifetime in seconds when the vendor says so; otherwise the
            JWT ``exp`` claim is used, and failing that :attr:`LoginWithRefresh.default_ttl`.
    """

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_in: float | None = None


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (seconds since the epoch) of a JWT, read without verifying it.

    Returns ``None`` when the token is not a JWT or has no numeric ``exp``.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def _dig(doc: Any, *names: str) -> Any:
    """First present member of ``names`` in ``doc`` or in its ``data`` envelope."""
    for scope in (doc, doc.get("data") if isinstance(doc, dict) else None):
        if isinstance(scope, dict):
            for name in names:
                if scope.get(name) not in (None, ""):
                    return scope[name]
    return None


class LoginWithRefresh(httpx.Auth):
    """Log in with credentials, send ``Authorization: Bearer``, refresh, log in again.

    The flow per request:

    1. Under the instance lock: without a token, log in; with an access token that expires
       within ``skew`` seconds, refresh (or log in again when the vendor refuses the refresh
       token with a 4xx, or there is none).
    2. Send the request with ``Authorization: Bearer <access>``.
    3. On a 401, once: renew as in 1 (unless another request already did) and replay the request.
       A second 401 is returned to the caller (the client maps it to 424
       ``vendor_credentials_rejected``).

    Subclasses implement :meth:`login_request` and :meth:`refresh_request`, and may override
    :meth:`parse_tokens` (the default reads ``access_token``/``accessToken``,
    ``refresh_token``/``refreshToken`` and ``expires_in``/``expiresIn``, at the top level or in a
    ``data`` envelope) and :meth:`logout_request`.

    Args:
        skew: seconds before expiry at which the token counts as expired.
        default_ttl: access-token lifetime in seconds when neither ``expires_in`` nor a JWT
            ``exp`` claim says it (TenantPOS documents 15 minutes).
        clock: wall-clock seconds since the epoch (``time.time``); tests pass a fake.

    Raises (from the flow):
        AuthFlowFailed: the login call failed, or a refresh call failed with 429/5xx.
    """

    requires_request_body = True  # a 401 replays the request, so its body must be in memory

    def __init__(
        self, *, skew: float = 30.0, default_ttl: float = 900.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.skew = skew
        self.default_ttl = default_ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires_at: float | None = None
        self.logins = 0
        self.refreshes = 0

    # -- subclass hooks --------------------------------------------------------------------------
    def login_request(self, request: httpx.Request) -> httpx.Request:
        """Build the login request (credentials in the body). ``request`` is the one being sent,
        useful for its URL: see :meth:`url_for`."""
        raise NotImplementedError

    def refresh_request(self, request: httpx.Request, refresh_token: str) -> httpx.Request:
        """Build the refresh request for ``refresh_token``."""
        raise NotImplementedError

    def logout_request(self, base_url: httpx.URL, refresh_token: str | None) -> httpx.Request | None:
        """Build a request revoking the session (TenantPOS ``POST /auth/logout``), or ``None``."""
        return None

    def parse_tokens(self, response: httpx.Response, stage: str) -> TokenSet:
        """Read the tokens from a successful (2xx) login or refresh response.

        Raises:
            AuthFlowFailed: the body is not JSON or has no access token.
        """
        try:
            doc = jsonutil.loads(response.content)
        except jsonutil.MalformedJSON:
            raise AuthFlowFailed(stage, response, "the answer is not JSON") from None
        access = _dig(doc, "access_token", "accessToken", "token")
        if not isinstance(access, str):
            raise AuthFlowFailed(stage, response, "no access token in the answer")
        refresh = _dig(doc, "refresh_token", "refreshToken")
        expires = _dig(doc, "expires_in", "expiresIn")
        return TokenSet(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) else None,
            expires_in=float(expires) if isinstance(expires, (int, float)) and not isinstance(expires, bool) else None,
        )

    @staticmethod
    def url_for(request: httpx.Request, path: str) -> httpx.URL:
        """``path`` (absolute, e.g. ``"/api/v1/auth/login"``) on the scheme and host of ``request``."""
        return request.url.copy_with(path=path, query=None, fragment=None)

    # -- state -------------------------------------------------------------------------------------
    @property
    def has_token(self) -> bool:
        """Whether an access token is held (the token itself is never exposed)."""
        return self._access is not None

    def secrets(self) -> tuple[str, ...]:
        """The secret values currently held (for redaction of vendor messages)."""
        return tuple(s for s in (self._access, self._refresh) if s)

    def logout_call(self, base_url: httpx.URL) -> httpx.Request | None:
        """The prepared logout request (with ``Authorization``) for the session held, or ``None``.

        The tokens are forgotten either way; the caller sends the request best effort.
        """
        request = self.logout_request(base_url, self._refresh) if self._access else None
        if request is not None:
            request.headers["Authorization"] = f"Bearer {self._access}"
        self.forget()
        return request

    def forget(self) -> None:
        """Drop the tokens: the next request logs in."""
        self._access = self._refresh = None
        self._expires_at = None

    def _fresh(self) -> bool:
        if self._access is None:
            return False
        return self._expires_at is None or self._clock() < self._expires_at - self.skew

    def _store(self, tokens: TokenSet) -> None:
        self._access = tokens.access_token
        if tokens.refresh_token:
            self._refresh = tokens.refresh_token
        now = self._clock()
        if tokens.expires_in is not None:
            self._expires_at = now + tokens.expires_in
        else:
            exp = jwt_expiry(tokens.access_token)
            self._expires_at = exp if exp is not None else now + self.default_ttl

    def _renew(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Refresh, or log in; a plain generator of the calls to make (driven by the flow)."""
        if self._refresh is not None:
            response = yield self.refresh_request(request, self._refresh)
            if response.is_success:
                self._store(self.parse_tokens(response, "refresh"))
                self.refreshes += 1
                log.debug("access token refreshed")
                return
            if response.status_code == 429 or response.status_code >= 500:
                raise AuthFlowFailed("refresh", response, "the vendor could not refresh the token")
            log.info("refresh token refused (%s); logging in again", response.status_code)
            self._refresh = None
        response = yield self.login_request(request)
        if not response.is_success:
            raise AuthFlowFailed("login", response, "the vendor refused the login")
        self._store(self.parse_tokens(response, "login"))
        self.logins += 1
        log.debug("logged in")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.requires_request_body:
            await request.aread()
        sent_with: str | None = None
        for attempt in range(2):
            async with self._lock:
                stale = not self._fresh() if attempt == 0 else self._access in (None, sent_with)
                if stale:
                    steps = self._renew(request)
                    try:
                        call = next(steps)
                        while True:
                            response = yield call
                            await response.aread()
                            call = steps.send(response)
                    except StopIteration:
                        pass
                sent_with = self._access
            request.headers["Authorization"] = f"Bearer {sent_with}"
            response = yield request
            if response.status_code != 401 or attempt == 1:
                return
            log.info("the vendor answered 401; renewing the token once")
            if self._access == sent_with:
                self._expires_at = 0.0  # mark stale so the next pass renews it
        return

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("LoginWithRefresh works with httpx.AsyncClient only")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token={'***' if self._access else None})"
