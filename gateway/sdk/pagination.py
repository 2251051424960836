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

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

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


@dataclass
class Page:
    """One page of a list endpoint.

    Attributes:
        records: the records (vendor dicts), possibly empty.
        number: 0-based count of pages fetched in this run.
        position: where this page was fetched from (e.g. ``{"page": 3}``).
        next_position: where to resume after this page, or ``None`` at the end; JSON-serialisable,
            pass it as ``start=`` to continue a backfill.
        body: the decoded response body.
    """

    records: list[Any]
    number: int
    position: dict[str, Any]
    next_position: dict[str, Any] | None
    body: Any = None


class BasePaginator:
    """Shared walking loop and guards; subclasses say how to ask and how to advance.

    Args:
        records_path: dotted path to the record list in the body (``None``: the body is the list).
        id_key: the record id member, for the identical-page guard (``None`` compares whole records).
        max_pages: safety bound on pages per run.
        on_checkpoint: called (awaited if it returns an awaitable) with each page's ``next_position``.
    """

    def __init__(
        self,
        *,
        records_path: str | None = "data",
        id_key: str | None = "id",
        max_pages: int = 10_000,
        on_checkpoint: Callable[[dict[str, Any] | None], Awaitable[None] | None] | None = None,
    ) -> None:
        self.records_path = records_path
        self.id_key = id_key
        self.max_pages = max_pages
        self.on_checkpoint = on_checkpoint

    # -- subclass hooks ----------------------------------------------------------------------------
    def first_position(self) -> dict[str, Any]:
        raise NotImplementedError

    def params_for(self, position: dict[str, Any]) -> dict[str, Any]:
        """Query parameters asking for the page at ``position``."""
        raise NotImplementedError

    def next_position(
        self, position: dict[str, Any], records: list[Any], body: Any, response: httpx.Response
    ) -> dict[str, Any] | None:
        """Where the next page is, or ``None`` at the end."""
        raise NotImplementedError

    def check(self, position: dict[str, Any], body: Any, vendor: str) -> None:
        """Raise :class:`PaginationLoop` if the answer shows the vendor did not move to ``position``."""

    # -- walking -----------------------------------------------------------------------------------
    def _fingerprint(self, records: list[Any]) -> tuple[Any, ...]:
        if self.id_key is None:
            return tuple(repr(r) for r in records)
        return tuple(r.get(self.id_key) if isinstance(r, Mapping) else repr(r) for r in records)

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
        while position is not None:
            if number >= self.max_pages:
                raise PaginationLoop(
                    f"{client.vendor} {path}: more than {self.max_pages} pages; stopping at {position}",
                    vendor=client.vendor,
                )
            response = await client.request(
                method, path, params={**(params or {}), **self.params_for(position)}, **kwargs
            )
            body = client.decode(response)
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
            previous = fingerprint
            following = self.next_position(position, records, body, response)
            if following is not None:
                if _key(following) in seen:
                    raise PaginationLoop(
                        f"{client.vendor} {path}: after {describe(position)} the vendor points back to "
                        f"{describe(following)}, already fetched in this run",
                        vendor=client.vendor,
                    )
                seen.add(_key(following))
            page = Page(records=records, number=number, position=position, next_position=following, body=body)
            if self.on_checkpoint is not None:
                result = self.on_checkpoint(following)
                if result is not None:
                    await result
            yield page
            position = following
            number += 1

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
