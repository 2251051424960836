"""The connector kit's HTTP half: auth flows, VendorClient (retries, breaker, rate limit, error
mapping) and paginators. No network: every vendor is an ``httpx.MockTransport``; retry waits go to
a recording ``sleep``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from decimal import Decimal
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from gateway.errors import VendorCredentialsRejected, VendorError, VendorTimeout, VendorUnavailable
from gateway.sdk import (
    ApiKeyHeader,
    BearerToken,
    BreakerPolicy,
    CursorPaginator,
    LoginWithRefresh,
    OffsetPaginator,
    PageNumberPaginator,
    PaginationLoop,
    RetryPolicy,
    VendorCircuitOpen,
    VendorClient,
    VendorNotFound,
    VendorRequestRejected,
)
from gateway.sdk.auth import jwt_expiry
from gateway.sdk.http import parse_retry_after
from gateway.sdk.pagination import extract

BASE = "https://pos.test/api"


class Sleeps(list[float]):
    """A recording stand-in for ``asyncio.sleep``."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(handler: Any, **kwargs: Any) -> tuple[VendorClient, Sleeps]:
    sleeps = Sleeps()
    kwargs.setdefault("retry", RetryPolicy(attempts=4, max_total=30, backoff=0.5, backoff_max=4, jitter=0.1))
    client = VendorClient("apex", BASE, transport=httpx.MockTransport(handler), sleep=sleeps, **kwargs)
    return client, sleeps


def scripted(*responses: httpx.Response | Exception) -> tuple[Any, list[httpx.Request]]:
    """A handler answering ``responses`` in order (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses[min(len(seen), len(responses)) - 1]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


# -- static auth ------------------------------------------------------------------------------------
async def test_api_key_header_and_bearer() -> None:
    handler, seen = scripted(httpx.Response(200, json={}))
    client, _ = make_client(handler, auth=ApiKeyHeader("X-API-Key", "apx_secret"))
    async with client:
        await client.get("/products")
    assert seen[0].headers["X-API-Key"] == "apx_secret"
    assert "apx_secret" not in repr(client.auth) and "apx_secret" not in repr(client)

    handler, seen = scripted(httpx.Response(200, json={}))
    client, _ = make_client(handler, auth=BearerToken("tok_secret"))
    async with client:
        await client.get("/products")
    assert seen[0].headers["Authorization"] == "Bearer tok_secret"
    assert "tok_secret" not in repr(client.auth)


# -- login with refresh ------------------------------------------------------------------------------
class HQLogin(LoginWithRefresh):
    """HQStore-style: POST /api/v1/auth/login {username, pin}; POST /api/v1/auth/refresh."""

    def __init__(self, username: str, pin: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._username, self._pin = username, pin

    def login_request(self, request: httpx.Request) -> httpx.Request:
        body = {"username": self._username, "pin": self._pin}
        return httpx.Request("POST", self.url_for(request, "/api/v1/auth/login"), json=body)

    def refresh_request(self, request: httpx.Request, refresh_token: str) -> httpx.Request:
        return httpx.Request(
            "POST", self.url_for(request, "/api/v1/auth/refresh"), json={"refreshToken": refresh_token}
        )


class FakeHQ:
    """Issues ``acc-N``/``ref-N`` tokens; the products route needs a live access token."""

    def __init__(self, expires_in: int | None = 900) -> None:
        self.n = 0
        self.access: set[str] = set()
        self.refresh: set[str] = set()
        self.paths: list[str] = []
        self.expires_in = expires_in
        self.login_status = 200

    def _issue(self) -> httpx.Response:
        self.n += 1
        access, refresh = f"acc-{self.n}", f"ref-{self.n}"
        self.access.add(access)
        self.refresh.add(refresh)
        data: dict[str, Any] = {"accessToken": access, "refreshToken": refresh}
        if self.expires_in is not None:
            data["expiresIn"] = self.expires_in
        return httpx.Response(200, json={"success": True, "data": data})

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == "/api/v1/auth/login":
            await asyncio.sleep(0.01)  # let concurrent requests pile up on the lock
            if self.login_status != 200:
                return httpx.Response(self.login_status, json={"success": False, "error": "bad pin 9876"})
            return self._issue()
        if request.url.path == "/api/v1/auth/refresh":
            if json.loads(request.content)["refreshToken"] not in self.refresh:
                return httpx.Response(401, json={"success": False, "error": "invalid refresh token"})
            return self._issue()
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.access:
            return httpx.Response(401, json={"success": False, "error": "expired"})
        return httpx.Response(200, json={"success": True, "data": [], "token": token})


def hq_client(server: FakeHQ, **auth_kwargs: Any) -> tuple[VendorClient, HQLogin]:
    auth = HQLogin("admin", "9876", **auth_kwargs)
    client, _ = make_client(server, auth=auth)
    return client, auth


async def test_login_once_for_concurrent_requests() -> None:
    server = FakeHQ()
    client, auth = hq_client(server)
    async with client:
        results = await asyncio.gather(*(client.json("GET", "/v1/products") for _ in range(10)))
    assert auth.logins == 1 and server.paths.count("/api/v1/auth/login") == 1
    assert {r["token"] for r in results} == {"acc-1"}


async def test_refresh_on_expiry_with_skew() -> None:
    now = [1_000_000.0]
    server = FakeHQ(expires_in=900)
    client, auth = hq_client(server, clock=lambda: now[0], skew=30)
    async with client:
        await client.get("/v1/products")
        now[0] += 880  # within the 30 s skew of the 900 s lifetime
        body = await client.json("GET", "/v1/products")
    assert body["token"] == "acc-2"
    assert (auth.logins, auth.refreshes) == (1, 1)
    assert server.paths == ["/api/v1/auth/login", "/api/v1/products", "/api/v1/auth/refresh", "/api/v1/products"]


async def test_expiry_from_jwt_exp_claim() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1_700_000_900}).encode()).decode().rstrip("=")
    assert jwt_expiry(f"h.{payload}.s") == 1_700_000_900.0
    assert jwt_expiry("not-a-jwt") is None


async def test_refresh_once_on_401_and_replay() -> None:
    server = FakeHQ()
    client, auth = hq_client(server)
    async with client:
        await client.get("/v1/products")
        server.access.clear()  # the vendor revoked the access token early
        body = await client.json("GET", "/v1/products")
    assert body["token"] == "acc-2"
    assert server.paths[2:] == ["/api/v1/products", "/api/v1/auth/refresh", "/api/v1/products"]
    assert (auth.logins, auth.refreshes) == (1, 1)


async def test_login_again_when_refresh_refused() -> None:
    server = FakeHQ()
    client, auth = hq_client(server)
    async with client:
        await client.get("/v1/products")
        server.access.clear()
        server.refresh.clear()
        body = await client.json("GET", "/v1/products")
    assert body["token"] == "acc-2"
    assert server.paths[2:] == ["/api/v1/products", "/api/v1/auth/refresh", "/api/v1/auth/login", "/api/v1/products"]
    assert (auth.logins, auth.refreshes) == (2, 0)


async def test_persistent_401_renews_once_then_424() -> None:
    server = FakeHQ()
    client, _ = hq_client(server)
    server.access = set()

    class NeverValid(set[str]):
        def __contains__(self, item: object) -> bool:
            return False

    server.access = NeverValid()
    async with client:
        with pytest.raises(VendorCredentialsRejected) as info:
            await client.get("/v1/products")
    assert server.paths.count("/api/v1/products") == 2  # one replay, no loop
    assert info.value.status == 424 and info.value.extra["vendor_status"] == 401


async def test_refused_login_is_424_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = FakeHQ()
    server.login_status = 401
    client, auth = hq_client(server)
    async with client:
        with pytest.raises(VendorCredentialsRejected) as info:
            await client.get("/v1/products")
    assert server.paths == ["/api/v1/auth/login"]  # a refused login is not retried
    problem = json.dumps(info.value.problem())
    assert "9876" not in problem and "9876" not in caplog.text and "9876" not in repr(auth)


async def test_tokens_never_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = FakeHQ()
    client, auth = hq_client(server)
    async with client:
        await client.get("/v1/products")
        server.access.clear()
        await client.get("/v1/products")
    for secret in ("acc-1", "acc-2", "ref-1", "ref-2", "9876"):
        assert secret not in repr(auth) and secret not in caplog.text and secret not in repr(client)
    assert "***" in repr(auth)


async def test_login_refresh_5xx_is_retried() -> None:
    server = FakeHQ()
    calls = {"n": 0}

    async def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/auth/login" and calls["n"] == 0:
            calls["n"] += 1
            return httpx.Response(503, headers={"Retry-After": "2"})
        return await server(request)

    auth = HQLogin("admin", "9876")
    client, sleeps = make_client(flaky, auth=auth)
    async with client:
        await client.get("/v1/products")
    assert sleeps == [2.0] and auth.logins == 1


# -- retries ------------------------------------------------------------------------------------------
async def test_503_retry_after_seconds_is_honoured() -> None:
    handler, seen = scripted(httpx.Response(503, headers={"Retry-After": "7"}), httpx.Response(200, json={"ok": 1}))
    client, sleeps = make_client(handler)
    async with client:
        assert await client.json("GET", "/products") == {"ok": 1}
    assert sleeps == [7.0] and len(seen) == 2


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_429_burst_then_success() -> None:
    limited = httpx.Response(429, headers={"Retry-After": "1"})
    handler, seen = scripted(limited, limited, limited, httpx.Response(200, json=[]))
    client, sleeps = make_client(handler)
    async with client:
        await client.get("/products")
    assert sleeps == [1.0, 1.0, 1.0] and len(seen) == 4


async def test_backoff_without_retry_after_is_capped_exponential_with_jitter() -> None:
    handler, seen = scripted(httpx.Response(502))
    client, sleeps = make_client(
        handler, retry=RetryPolicy(attempts=5, max_total=60, backoff=1, backoff_max=3, jitter=0.5)
    )
    async with client:
        with pytest.raises(VendorError) as info:
            await client.get("/products")
    assert len(seen) == 5 and info.value.retryable and info.value.extra["vendor_status"] == 502
    for wait, floor in zip(sleeps, [1, 2, 3, 3], strict=True):
        assert floor <= wait <= min(floor + 0.5, 3)


async def test_retry_after_beyond_budget_gives_up_at_once() -> None:
    handler, seen = scripted(httpx.Response(429, headers={"Retry-After": "120"}))
    client, sleeps = make_client(handler)
    async with client:
        with pytest.raises(VendorUnavailable) as info:
            await client.get("/products")
    assert sleeps == [] and len(seen) == 1
    assert info.value.extra["retry_after"] == 120.0 and info.value.retryable


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_no_retry_on_4xx(status: int) -> None:
    handler, seen = scripted(httpx.Response(status, json={"error": "no"}))
    client, sleeps = make_client(handler)
    async with client:
        with pytest.raises(VendorError) as info:
            await client.get("/products/1")
    assert len(seen) == 1 and sleeps == [] and not info.value.retryable


async def test_writes_retry_only_when_vendor_did_not_act() -> None:
    handler, seen = scripted(httpx.Response(500), httpx.Response(201, json={}))
    client, _ = make_client(handler)
    async with client:
        with pytest.raises(VendorError):
            await client.post("/products", json={"name": "Latte"})
        assert len(seen) == 1
        await client.post("/products", json={"name": "Latte"}, idempotent=True)  # e.g. an idempotency key
    handler, seen = scripted(httpx.Response(503), httpx.Response(201, json={}))
    client, _ = make_client(handler)
    async with client:
        await client.post("/products", json={"name": "Latte"})
    assert len(seen) == 2


async def test_connect_error_and_timeout_are_retried_and_mapped() -> None:
    handler, seen = scripted(httpx.ConnectError("refused"))
    client, sleeps = make_client(handler)
    async with client:
        with pytest.raises(VendorUnavailable) as info:
            await client.get("/products")
    assert len(seen) == 4 and len(sleeps) == 3
    assert isinstance(info.value.__cause__, httpx.ConnectError) and info.value.retryable

    handler, seen = scripted(httpx.ReadTimeout("slow"), httpx.Response(200, json={}))
    client, _ = make_client(handler)
    async with client:
        await client.get("/products")
    assert len(seen) == 2


# -- circuit breaker ---------------------------------------------------------------------------------
async def test_breaker_opens_fails_fast_half_opens_and_closes() -> None:
    status = {"code": 500}
    hits: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(request.url.path)
        return httpx.Response(status["code"], json={})

    changes: list[str] = []
    client, _ = make_client(
        handler,
        retry=RetryPolicy(attempts=1),
        breaker=BreakerPolicy(threshold=3, reset_timeout=0.05),
        on_health_change=lambda change, _client: changes.append(change),
    )
    async with client:
        for _ in range(3):
            with pytest.raises(VendorError):
                await client.get("/products")
        assert client.breaker_state == "opened" and changes == ["unhealthy"]
        with pytest.raises(VendorCircuitOpen) as info:
            await client.get("/products")
        assert len(hits) == 3  # not sent
        assert info.value.status == 503 and info.value.retryable
        assert 0 <= info.value.extra["retry_after"] <= 0.05
        health = client.health()
        assert health["state"] == "opened" and health["fast_failures"] == 1 and health["failures"] == 3

        await asyncio.sleep(0.06)
        with pytest.raises(VendorError):  # the half-open trial fails: open again
            await client.get("/products")
        assert client.breaker_state == "opened"
        await asyncio.sleep(0.06)
        status["code"] = 200
        await client.get("/products")
        assert client.breaker_state == "closed" and changes == ["unhealthy", "recovered"]


async def test_4xx_do_not_count_against_the_breaker() -> None:
    handler, seen = scripted(httpx.Response(404), httpx.Response(422), httpx.Response(400), httpx.Response(404))
    client, _ = make_client(handler, retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(threshold=2))
    async with client:
        for _ in range(4):
            with pytest.raises(VendorError):
                await client.get("/products/9")
    assert client.breaker_state == "closed" and len(seen) == 4


async def test_429_counts_against_the_breaker() -> None:
    handler, _ = scripted(httpx.Response(429))
    client, _ = make_client(handler, retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(threshold=2))
    async with client:
        for _ in range(2):
            with pytest.raises(VendorUnavailable):
                await client.get("/products")
        assert client.breaker_state == "opened"


# -- rate limit -------------------------------------------------------------------------------------
async def test_rate_limit_spacing() -> None:
    stamps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        stamps.append(time.monotonic())
        return httpx.Response(200, json={})

    # 5 requests per 0.25 s: a burst of 5, then one every 0.05 s -> 10 requests take >= 0.25 s.
    client, _ = make_client(handler, rate_limit={"requests": 5, "per_seconds": 0.25})
    start = time.monotonic()
    async with client:
        await asyncio.gather(*(client.get("/products") for _ in range(10)))
    assert len(stamps) == 10
    assert time.monotonic() - start >= 0.22
    assert stamps[-1] - stamps[0] >= 0.22


# -- error mapping -----------------------------------------------------------------------------------
ERROR_TABLE = [
    (400, VendorRequestRejected, 502, "vendor_request_rejected", False),
    (401, VendorCredentialsRejected, 424, "vendor_credentials_rejected", False),
    (403, VendorCredentialsRejected, 424, "vendor_credentials_rejected", False),
    (404, VendorNotFound, 502, "vendor_not_found", False),
    (408, VendorTimeout, 504, "vendor_timeout", True),
    (409, VendorRequestRejected, 502, "vendor_request_rejected", False),
    (422, VendorRequestRejected, 502, "vendor_request_rejected", False),
    (429, VendorUnavailable, 503, "vendor_unavailable", True),
    (500, VendorError, 502, "vendor_error", True),
    (502, VendorError, 502, "vendor_error", True),
    (503, VendorUnavailable, 503, "vendor_unavailable", True),
    (504, VendorTimeout, 504, "vendor_timeout", True),
]


@pytest.mark.parametrize(("vendor_status", "cls", "status", "code", "retryable"), ERROR_TABLE)
async def test_error_mapping(vendor_status: int, cls: type, status: int, code: str, retryable: bool) -> None:
    handler, _ = scripted(httpx.Response(vendor_status, json={"error": "nope"}))
    client, _ = make_client(handler, retry=RetryPolicy(attempts=1), auth=ApiKeyHeader("X-API-Key", "apx_k"))
    async with client:
        with pytest.raises(VendorError) as info:
            await client.get("/products/7?api_key=apx_k")
    err = info.value
    assert type(err) is cls and (err.status, err.code, err.retryable) == (status, code, retryable)
    doc = err.problem("req_1")
    assert doc["vendor"] == "apex" and doc["vendor_status"] == vendor_status and doc["retryable"] is retryable
    assert "apx_k" not in json.dumps(doc) and "/products/7" in doc["detail"]


@pytest.mark.parametrize(
    ("exc", "cls", "status"),
    [
        (httpx.ConnectError("x"), VendorUnavailable, 503),
        (httpx.ReadTimeout("x"), VendorTimeout, 504),
        (httpx.ConnectTimeout("x"), VendorTimeout, 504),
        (httpx.RemoteProtocolError("x"), VendorUnavailable, 503),
        (httpx.TooManyRedirects("x"), VendorError, 502),
    ],
)
def test_classify_transport_errors(exc: Exception, cls: type, status: int) -> None:
    client = VendorClient("apex", BASE)
    err = client.classify(exc)
    assert type(err) is cls and err is not None and err.status == status and err.extra["vendor"] == "apex"
    assert client.classify(httpx.Response(204, request=httpx.Request("GET", BASE))) is None


async def test_vendor_message_is_kept_and_secrets_redacted() -> None:
    handler, _ = scripted(httpx.Response(422, json={"error": {"message": "key apx_secret lacks products.manage"}}))
    client, _ = make_client(handler, auth=ApiKeyHeader("X-API-Key", "apx_secret"))
    async with client:
        with pytest.raises(VendorRequestRejected) as info:
            await client.post("/products", json={})
    assert "lacks products.manage" in info.value.detail and "apx_secret" not in info.value.detail


async def test_invalid_json_and_exact_decimals() -> None:
    handler, _ = scripted(httpx.Response(200, content=b"<html>oops</html>"))
    client, sleeps = make_client(handler)
    async with client:
        with pytest.raises(VendorError) as info:
            await client.json("GET", "/products")
    err = info.value
    assert (type(err), err.status, err.code, err.retryable) == (VendorError, 502, "vendor_invalid_response", False)
    assert sleeps == []

    handler, _ = scripted(httpx.Response(200, content=b'{"price": 4.50, "stock": 200}'))
    client, _ = make_client(handler)
    async with client:
        body = await client.json("GET", "/products/1")
    assert body["price"] == Decimal("4.50") and isinstance(body["price"], Decimal) and body["stock"] == 200


# -- pagination --------------------------------------------------------------------------------------
RECORDS = [{"id": i, "name": f"p{i}"} for i in range(1, 8)]


def page_number_vendor(echo: bool = True, total: bool = True, stuck: bool = False) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        page = 1 if stuck else int(request.url.params["page"])
        limit = int(request.url.params["limit"])
        body: dict[str, Any] = {"data": RECORDS[(page - 1) * limit : page * limit]}
        if echo:
            body["page"] = page
        if total:
            body["total"] = len(RECORDS)
        return httpx.Response(200, json=body)

    return handler


async def test_page_number_walks_to_the_end() -> None:
    for total in (True, False):
        client, _ = make_client(page_number_vendor(total=total))
        pager = PageNumberPaginator(page_size=3, total_path="total" if total else None)
        async with client:
            pages = [page async for page in pager.pages(client, "/products")]
        assert [len(p.records) for p in pages] == [3, 3, 1]
        assert [r for p in pages for r in p.records] == RECORDS
        assert pages[-1].next_position is None and pages[0].next_position == {"page": 2}


async def test_page_number_exact_multiple_stops_on_total() -> None:
    client, _ = make_client(page_number_vendor())
    pager = PageNumberPaginator(page_size=7)
    async with client:
        pages = [page async for page in pager.pages(client, "/products")]
    assert len(pages) == 1


async def test_page_number_not_advancing_is_a_loop() -> None:
    client, _ = make_client(page_number_vendor(stuck=True))
    async with client:
        with pytest.raises(PaginationLoop, match="asked for page 2"):
            [page async for page in PageNumberPaginator(page_size=3).pages(client, "/products")]


async def test_identical_page_is_a_loop() -> None:
    client, _ = make_client(page_number_vendor(echo=False, total=False, stuck=True))
    pager = PageNumberPaginator(page_size=3, page_path=None, total_path=None)
    async with client:
        with pytest.raises(PaginationLoop, match="repeats the previous page") as info:
            [page async for page in pager.pages(client, "/products")]
    assert not info.value.retryable and info.value.code == "vendor_pagination_loop" and info.value.status == 502


async def test_offset_paginator() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        return httpx.Response(200, json={"items": RECORDS[offset : offset + limit], "meta": {"total": 7}})

    client, _ = make_client(handler)
    pager = OffsetPaginator(page_size=2, records_path="items", total_path="meta.total")
    async with client:
        records = [r async for r in pager.records(client, "/customers")]
    assert records == RECORDS


def cursor_vendor(tokens: dict[str | None, str | None], in_header: bool = False) -> Any:
    """``tokens`` maps the cursor asked to the next one; records are named by the cursor."""

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        following = tokens[cursor]
        body: dict[str, Any] = {"data": [{"id": f"{cursor}-1"}, {"id": f"{cursor}-2"}]}
        headers = {}
        if in_header:
            if following:
                headers["X-Next-Cursor"] = following
        else:
            body["meta"] = {"next": following}
        return httpx.Response(200, json=body, headers=headers)

    return handler


async def test_cursor_from_body_and_header() -> None:
    chain: dict[str | None, str | None] = {None: "a", "a": "b", "b": None}
    client, _ = make_client(cursor_vendor(chain))
    async with client:
        pages = [p async for p in CursorPaginator(token_path="meta.next").pages(client, "/orders")]
    assert [p.position for p in pages] == [{"cursor": None}, {"cursor": "a"}, {"cursor": "b"}]

    client, _ = make_client(cursor_vendor(chain, in_header=True))
    async with client:
        pager = CursorPaginator(token_path=None, token_header="X-Next-Cursor")
        pages = [p async for p in pager.pages(client, "/orders")]
    assert len(pages) == 3


async def test_repeated_cursor_is_a_loop_naming_the_token() -> None:
    client, _ = make_client(cursor_vendor({None: "a", "a": "b", "b": "a"}))
    async with client:
        with pytest.raises(PaginationLoop, match="page token 'a'"):
            [p async for p in CursorPaginator(token_path="meta.next").pages(client, "/orders")]


async def test_max_pages_bound() -> None:
    counter = {"n": 0}

    def endless(request: httpx.Request) -> httpx.Response:
        counter["n"] += 1
        return httpx.Response(200, json={"data": [{"id": counter["n"]}], "meta": {"next": f"t{counter['n']}"}})

    client, _ = make_client(endless)
    async with client:
        with pytest.raises(PaginationLoop, match="more than 5 pages"):
            [p async for p in CursorPaginator(token_path="meta.next", max_pages=5).pages(client, "/orders")]
    assert counter["n"] == 5


async def test_checkpoint_and_resume() -> None:
    saved: list[dict[str, Any] | None] = []

    async def checkpoint(position: dict[str, Any] | None) -> None:
        saved.append(position)

    client, _ = make_client(page_number_vendor())
    first: list[Any] = []
    async with client:
        pager = PageNumberPaginator(page_size=3, on_checkpoint=checkpoint)
        async for page in pager.pages(client, "/products"):
            first.extend(page.records)
            break  # the backfill stops (crash, deploy, time budget)
        assert saved == [{"page": 2}]
        rest = [r async for r in PageNumberPaginator(page_size=3).records(client, "/products", start=saved[-1])]
    assert first + rest == RECORDS


def test_extract_paths() -> None:
    doc = {"a": {"b": [{"c": 1}]}}
    assert extract(doc, "a.b.0.c") == 1 and extract(doc, "a.x", "d") == "d" and extract(doc, None) is doc


class TenantLogin(HQLogin):
    """TenantPOS-style: ``POST /auth/logout`` revokes the refresh token."""

    def logout_request(self, base_url: httpx.URL, refresh_token: str | None) -> httpx.Request | None:
        return httpx.Request(
            "POST", base_url.copy_with(path="/api/v1/auth/logout"), json={"refreshToken": refresh_token}
        )


async def test_logout_on_close() -> None:
    server = FakeHQ()
    auth = TenantLogin("admin", "9876")
    client, _ = make_client(server, auth=auth)
    await client.get("/v1/products")
    await client.aclose(logout=True)
    assert server.paths[-1] == "/api/v1/auth/logout" and not auth.has_token


async def test_prefetch_asks_for_the_next_page_early_and_cancels_it_when_the_caller_stops() -> None:
    """With prefetch (the default) page N+1 is requested before page N is handed over; a caller
    that stops after the first page leaves no request running, and the records a page hands
    over are decoded exactly (Decimal) although the walk itself decodes with orjson."""
    asked: list[str] = []
    release = asyncio.Event()

    async def vendor(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        asked.append(f"start {page}")
        if page == 2:
            await release.wait()  # page 2 hangs until released (or cancelled)
        asked.append(f"end {page}")
        body = f'{{"data": [{{"id": {page}, "price": 1.10}}], "total": 3, "page": {page}}}'
        return httpx.Response(200, content=body.encode(), headers={"Content-Type": "application/json"})

    client, _ = make_client(vendor)
    async with client:
        pages = PageNumberPaginator(page_size=1).pages(client, "/products")
        first = await anext(pages)
        assert asked == ["start 1", "end 1", "start 2"]  # page 2 is on its way already
        raw = first.records[0]
        assert raw["price"] == Decimal("1.10") and isinstance(raw["price"], Decimal)
        assert str(raw["price"]) == "1.10"
        await pages.aclose()  # the caller stops: the request for page 2 is cancelled, not left running
        release.set()
        await asyncio.sleep(0.01)
        assert "end 2" not in asked

    client, _ = make_client(vendor)
    release.set()
    async with client:
        walked = [p async for p in PageNumberPaginator(page_size=1, prefetch=False).pages(client, "/products")]
    assert [p.records[0]["id"] for p in walked] == [1, 2, 3]
