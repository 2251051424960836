"""Generic async paginators over a :class:`~gateway.sdk.http.VendorClient` (after meltano's
``singer_sdk/pagination.py``).

Each paginator walks one list endpoint and yields :class:`Page` objects (a list of records plus
the position to resume from)::

    pager = PageNumberPaginator(page_size=50, records_path="data", total_path="total")
    async for page in pager.pages(client, "/products", start=saved_position):
        upsert(page.records)
        save(page.next_position)        # None once the end is reached

Three styles cover the vendors: :class:`PageNumberPaginator` (Apex ``?page=&limit=`` answering
``{data, total, page}``; HQStore ``page``/``pageSize`` with ``total``), :class:`OffsetPaginator`
(``?offset=&limit=``) and :class:`CursorPaginator` (a next token in the body or a header).

Guards (DESIGN "Sync: pagination guards"): a repeated cursor, a page whose record ids equal the
previous page's, a vendor that answers another page number than asked, or more than ``max_pages``
pages raise :class:`PaginationLoop` (502 ``vendor_pagination_loop``, not retryable): never an
endless loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx
import orjson

from gateway.errors import VendorError
from gateway.sdk.http import VendorClient

log = logging.getLogger(__name__)

__all__ = [
    "BasePaginator",
    "CursorPaginator",
    "OffsetPaginator",
    "Page",
    "PageNumberPaginator",
    "PaginationLoop",
    "extract",
]


class PaginationLoop(VendorError):
    """The vendor's pagination does not advance (502 ``vendor_pagination_loop``, not retryable)."""

    code, title = "vendor_pagination_loop", "The POS vendor's pagination does not advance"


_MISSING = object()


def extract(doc: Any, path: str | None, default: Any = None) -> Any:
    """Follow a dotted path (``"data"``, ``"meta.next_cursor"``, ``"items.0.id"``) into ``doc``.

    ``None`` or ``""`` returns ``doc`` itself; a missing step returns ``default``.
    """
    if not path:
        return doc
    current = doc
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part, _MISSING)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else _MISSING
        else:
            current = _MISSING
        if current is _MISSING:
            return default
    return current


def _scan(client: VendorClient, response: httpx.Response) -> Any:
    """Decode a page for the walk itself (record list, ids, totals, tokens) with orjson: numbers
    with a fraction come out as floats here, which no pagination decision reads; the exact
    decode (``Decimal``) is :attr:`Page.records`. Falls back to the exact decoder for what orjson
    refuses (integers beyond 64 bits, an empty body) so the error, if any, is the same.

    Raises:
        gateway.errors.VendorError: ``vendor_invalid_response`` for a body that is not JSON.
    """
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return client.decode(response)


async def _start(task: asyncio.Task[Any]) -> None:
    """Give a just-created request task the event loop turns it needs to put its request on the
    wire, so the vendor works on it while the caller handles the current page (a caller that
    does not await anything would otherwise hold it back until it asks for the next page)."""
    for _ in range(_START_TURNS):
        if task.done():
            return
        await asyncio.sleep(0)


#: Event-loop turns a request takes to reach the socket through VendorClient (tenacity, breaker,
#: httpx, httpcore): 3 measured with the default transport; one more for an auth flow's await.
_START_TURNS = 4


def _key(position: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in position.items()))


def describe(position: Mapping[str, Any]) -> str:
    """A short human description of a position: ``page 3``, ``offset 100``, ``page token 'abc...'``."""
    if "cursor" in position:
        token = position["cursor"]
        if token is None:
            return "the first page"
        text = str(token)
        return f"page token {text if len(text) <= 40 else text[:37] + '...'!r}"
    return ", ".join(f"{k} {v}" for k, v in position.items())


class Page:
    """One page of a list endpoint.

    Attributes:
        records: the records (vendor dicts, numbers with a fraction as ``Decimal``), possibly
            empty; decoded exactly on first access, so a page nobody reads is never decoded so.
        number: 0-based count of pages fetched in this run.
        position: where this page was fetched from (e.g. ``{"page": 3}``).
        next_position: where to resume after this page, or ``None`` at the end; JSON-serialisable,
            pass it as ``start=`` to continue a backfill.
        body: the decoded response body (exact, on first access).
        digest: SHA-256 hex of the response body bytes (what a connector builds
            :attr:`gateway.sdk.connector.Page.fingerprint` from).
    """

    __slots__ = ("_body", "_client", "_records", "_records_path", "_response", "digest", "next_position",
                 "number", "position")

    def __init__(self, *, client: VendorClient, response: httpx.Response, records_path: str | None, number: int,
                 position: dict[str, Any], next_position: dict[str, Any] | None, digest: str | None) -> None:
        self._client, self._response, self._records_path = client, response, records_path
        self._body: Any = _MISSING
        self._records: list[Any] | None = None
        self.number, self.position, self.next_position, self.digest = number, position, next_position, digest

    @property
    def body(self) -> Any:
        if self._body is _MISSING:
            self._body = self._client.decode(self._response)
        return self._body

    @property
    def records(self) -> list[Any]:
        if self._records is None:
            self._records = extract(self.body, self._records_path, default=None) or []
        return self._records


class BasePaginator:
    """Shared walking loop and guards; subclasses say how to ask and how to advance.

    Args:
        records_path: dotted path to the record list in the body (``None``: the body is the list).
        id_key: the record id member, for the identical-page guard (``None`` compares whole records).
        max_pages: safety bound on pages per run.
        on_checkpoint: called (awaited if it returns an awaitable) with each page's ``next_position``.
        prefetch: ask for the next page before yielding this one, so the vendor works on it while
            the caller maps and stores this one (one request in flight ahead, never more; it goes
            through the client's rate limit, retries and breaker like any other). A request
            still in flight when the caller stops iterating is cancelled.
    """

    def __init__(
        self,
        *,
        records_path: str | None = "data",
        id_key: str | None = "id",
        max_pages: int = 10_000,
        on_checkpoint: Callable[[dict[str, Any] | None], Awaitable[None] | None] | None = None,
        prefetch: bool = True,
    ) -> None:
        self.records_path = records_path
        self.id_key = id_key
        self.max_pages = max_pages
        self.on_checkpoint = on_checkpoint
        self.prefetch = prefetch

    # -- subclass hooks ----------------------------------------------------------------------------
    def first_position(self) -> dict[str, Any]:
        raise NotImplementedError

    def params_for(self, position: dict[str, Any]) -> dict[str, Any]:
        """Query parameters asking for the page at ``position``."""
        raise NotImplementedError

    def next_position(
        self, position: dict[str, Any], records: list[Any], body: Any, response: httpx.Response
    ) -> dict[str, Any] | None:
        """Where the next page is, or ``None`` at the end.

        ``records`` and ``body`` are the walk's quick decode (see :func:`_scan`): ids, counts and
        tokens are exact, numbers with a fraction are floats; never map records from here.
        """
        raise NotImplementedError

    def check(self, position: dict[str, Any], body: Any, vendor: str) -> None:
        """Raise :class:`PaginationLoop` if the answer shows the vendor did not move to ``position``."""

    # -- walking -----------------------------------------------------------------------------------
    def _fingerprint(self, records: list[Any]) -> tuple[Any, ...]:
        if self.id_key is None:
            return tuple([repr(r) for r in records])
        key = self.id_key
        return tuple([r.get(key) if isinstance(r, dict) else repr(r) for r in records])

    async def pages(
        self,
        client: VendorClient,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        start: Mapping[str, Any] | None = None,
        method: str = "GET",
        **kwargs: Any,
    ) -> AsyncIterator[Page]:
        """Yield the pages of ``method path`` from ``start`` (a saved ``next_position``) or the beginning.

        Raises:
            PaginationLoop: a guard tripped (see the module docstring).
            gateway.errors.VendorError: from the client; ``vendor_invalid_response`` for a body
                that is not JSON or whose records are not a list.
        """
        position: dict[str, Any] | None = dict(start) if start else self.first_position()
        previous: tuple[Any, ...] | None = None
        seen = {_key(position)}
        number = 0
        ahead: asyncio.Task[httpx.Response] | None = None  # the next page, asked for early

        def ask(at: dict[str, Any]) -> Awaitable[httpx.Response]:
            return client.request(method, path, params={**(params or {}), **self.params_for(at)}, **kwargs)

        try:
            while position is not None:
                if number >= self.max_pages:
                    raise PaginationLoop(
                        f"{client.vendor} {path}: more than {self.max_pages} pages; stopping at {position}",
                        vendor=client.vendor,
                    )
                if ahead is not None:
                    task, ahead = ahead, None
                    response = await task
                else:
                    response = await ask(position)
                page, previous = self._page(client, path, response, position, previous, seen, number)
                if page.next_position is not None and self.prefetch and number + 1 < self.max_pages:
                    ahead = asyncio.ensure_future(ask(page.next_position))
                    await _start(ahead)
                if self.on_checkpoint is not None:
                    result = self.on_checkpoint(page.next_position)
                    if result is not None:
                        await result
                yield page
                position = page.next_position
                number += 1
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead

    def _page(self, client: VendorClient, path: str, response: httpx.Response, position: dict[str, Any],
              previous: tuple[Any, ...] | None, seen: set[Any], number: int) -> tuple[Page, tuple[Any, ...]]:
        """Decode one answer, run the guards, and work out the next position (added to ``seen``);
        return the page and its records' fingerprint (for the next page's repeat guard).

        Raises:
            PaginationLoop, VendorError: see :meth:`pages`.
        """
        body = _scan(client, response)
        records = extract(body, self.records_path, default=[])
        if records is None:
            records = []
        if not isinstance(records, list):
            raise VendorError(
                f"{client.vendor} {path}: {self.records_path or 'the body'} is not a list",
                vendor=client.vendor,
                vendor_status=response.status_code,
                code="vendor_invalid_response",
            )
        self.check(position, body, client.vendor)
        fingerprint = self._fingerprint(records)
        if records and fingerprint == previous:
            raise PaginationLoop(
                f"{client.vendor} {path}: the page at {position} repeats the previous page's records",
                vendor=client.vendor,
            )
        following = self.next_position(position, records, body, response)
        if following is not None:
            if _key(following) in seen:
                raise PaginationLoop(
                    f"{client.vendor} {path}: after {describe(position)} the vendor points back to "
                    f"{describe(following)}, already fetched in this run",
                    vendor=client.vendor,
                )
            seen.add(_key(following))
        page = Page(client=client, response=response, records_path=self.records_path, number=number,
                    position=position, next_position=following, digest=hashlib.sha256(response.content).hexdigest())
        return page, fingerprint

    async def records(self, client: VendorClient, path: str, **kwargs: Any) -> AsyncIterator[Any]:
        """Yield the records of every page (see :meth:`pages`)."""
        async for page in self.pages(client, path, **kwargs):
            for record in page.records:
                yield record


class PageNumberPaginator(BasePaginator):
    """``?page=N&limit=M`` pagination.

    Ends when ``pages_seen * page_size >= total`` (when the body has ``total_path``), else at an
    empty or short page (fewer records than the page size; the size the vendor reports at
    ``page_size_path`` wins over the one asked, since vendors cap it, e.g. Apex at 100).

    Args:
        page_param, size_param: query parameter names (Apex: ``page``, ``limit``; HQStore:
            ``page``, ``pageSize``).
        page_size: records asked per page.
        first_page: the first page's number (1 for Apex and HQStore).
        total_path: dotted path to the total record count, or ``None``.
        page_path: dotted path where the vendor echoes the page number; when present it must equal
            the page asked, else :class:`PaginationLoop` (a vendor ignoring ``page``).
        page_size_path: dotted path to the page size the vendor used, or ``None``.
    Position: ``{"page": N}``.
    """

    def __init__(
        self,
        *,
        page_param: str = "page",
        size_param: str = "limit",
        page_size: int = 50,
        first_page: int = 1,
        total_path: str | None = "total",
        page_path: str | None = "page",
        page_size_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.page_param, self.size_param = page_param, size_param
        self.page_size, self.first_page = page_size, first_page
        self.total_path, self.page_path, self.page_size_path = total_path, page_path, page_size_path

    def first_position(self) -> dict[str, Any]:
        return {"page": self.first_page}

    def params_for(self, position: dict[str, Any]) -> dict[str, Any]:
        return {self.page_param: position["page"], self.size_param: self.page_size}

    def check(self, position: dict[str, Any], body: Any, vendor: str) -> None:
        echoed = extract(body, self.page_path) if self.page_path else None
        if isinstance(echoed, (int, str)) and not isinstance(echoed, bool) and str(echoed) != str(position["page"]):
            raise PaginationLoop(
                f"{vendor}: asked for page {position['page']}, the vendor answered page {echoed}", vendor=vendor
            )

    def next_position(
        self, position: dict[str, Any], records: list[Any], body: Any, response: httpx.Response
    ) -> dict[str, Any] | None:
        if not records:
            return None
        page = int(position["page"])
        size = extract(body, self.page_size_path) if self.page_size_path else None
        size = int(size) if isinstance(size, int) and size > 0 else self.page_size
        total = extract(body, self.total_path) if self.total_path else None
        if isinstance(total, int) and not isinstance(total, bool):
            if (page - self.first_page + 1) * size >= total:
                return None
        elif len(records) < size:
            return None
        return {"page": page + 1}


class OffsetPaginator(BasePaginator):
    """``?offset=N&limit=M`` pagination; the next offset is ``offset + len(records)``.

    Ends at an empty page, when the next offset reaches ``total`` (when the body has it), or at a
    short page when there is no total. Position: ``{"offset": N}``.
    """

    def __init__(
        self,
        *,
        offset_param: str = "offset",
        size_param: str = "limit",
        page_size: int = 50,
        total_path: str | None = "total",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.offset_param, self.size_param, self.page_size, self.total_path = (
            offset_param,
            size_param,
            page_size,
            total_path,
        )

    def first_position(self) -> dict[str, Any]:
        return {"offset": 0}

    def params_for(self, position: dict[str, Any]) -> dict[str, Any]:
        return {self.offset_param: position["offset"], self.size_param: self.page_size}

    def next_position(
        self, position: dict[str, Any], records: list[Any], body: Any, response: httpx.Response
    ) -> dict[str, Any] | None:
        if not records:
            return None
        following = int(position["offset"]) + len(records)
        total = extract(body, self.total_path) if self.total_path else None
        if isinstance(total, int) and not isinstance(total, bool):
            return None if following >= total else {"offset": following}
        return None if len(records) < self.page_size else {"offset": following}


class CursorPaginator(BasePaginator):
    """Opaque next-token pagination; ends when the token is missing or empty.

    Args:
        cursor_param: the query parameter carrying the token.
        token_path: dotted path to the next token in the body (e.g. ``"meta.next_cursor"``), or
        token_header: a response header with the next token (e.g. ``"X-Next-Cursor"``).
        size_param, page_size: optional page-size parameter.
    A token seen before in the run (any paginator: a position seen before) raises
    :class:`PaginationLoop`. Position: ``{"cursor": token}``
    (``{"cursor": None}`` for the first page).
    """

    def __init__(
        self,
        *,
        cursor_param: str = "cursor",
        token_path: str | None = "next_cursor",
        token_header: str | None = None,
        size_param: str | None = "limit",
        page_size: int | None = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if token_path is None and token_header is None:
            raise ValueError("CursorPaginator needs token_path or token_header")
        self.cursor_param, self.token_path, self.token_header = cursor_param, token_path, token_header
        self.size_param, self.page_size = size_param, page_size

    def first_position(self) -> dict[str, Any]:
        return {"cursor": None}

    def params_for(self, position: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if position.get("cursor") is not None:
            params[self.cursor_param] = position["cursor"]
        if self.size_param and self.page_size:
            params[self.size_param] = self.page_size
        return params

    def next_position(
        self, position: dict[str, Any], records: list[Any], body: Any, response: httpx.Response
    ) -> dict[str, Any] | None:
        token: Any = None
        if self.token_header is not None:
            token = response.headers.get(self.token_header)
        if token in (None, "") and self.token_path is not None:
            token = extract(body, self.token_path)
        if token in (None, "") or token is False:
            return None
        return {"cursor": str(token)}
