"""Import a generic products CSV into a connection (``tillgate import products FILE``).

Format: UTF-8 CSV with a header row. Columns (case-insensitive, any order):

=====================  ========  ===========================================================
column                 required  meaning
=====================  ========  ===========================================================
``sku``                yes       the product's SKU; rows are matched to existing products by it
``name``               yes       product name
``price``              yes       unit price, decimal in the currency's major unit (``"2.55"``)
``barcode``            no
``description``        no
``cost``               no        decimal, major unit
``currency``           no        ISO 4217 (default: the connection's)
``tax_rate``           no        percent (``"20"``)
``tax_inclusive``      no        ``true``/``false`` (also ``yes``/``no``/``1``/``0``)
``unit``               no        ``each``, ``kg``, ... (lower-case letters)
``category``           no        a category *name*; created when the connection has none by that name
``on_hand``            no        opening stock at the connection's "Main" location
``low_stock_threshold`` no       quantity (applies when the product is created)
=====================  ========  ===========================================================

Rules:

* A new SKU creates a product (``product_created``); an existing SKU is updated with the fields
  the row gives (``product_updated``), or left alone when nothing differs (``product_unchanged``),
  so importing the same file twice changes nothing.
* ``on_hand`` on a new product becomes a ``restock`` adjustment (reference
  ``import:opening-stock``); on an existing product whose on hand differs it becomes an absolute
  count (reason ``count``).
* A bad row (wrong number of fields, empty sku/name, a number that does not parse, a value the
  unified model refuses, a SKU repeated in the file, an engine refusal) is skipped with its line
  number and reason; it never stops the import.
* A missing file, an empty file, or a header without ``sku,name,price`` (or with unknown columns)
  raises :class:`~gateway.importers.summary.ImportFileError` before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.errors import TillgateError
from gateway.importers._common import (
    csv_rows,
    error_text,
    load_records,
    main_location_id,
    on_hand_by_product,
    parse_decimal,
    read_text,
)
from gateway.importers.summary import ImportFileError, ImportSummary
from gateway.model import AdjustmentCreate, CategoryCreate, CountSet, ProductCreate, ProductUpdate
from gateway.sdk.connector import Connector

REQUIRED_COLUMNS = ("sku", "name", "price")
OPTIONAL_COLUMNS = (
    "barcode", "description", "cost", "currency", "tax_rate", "tax_inclusive", "unit", "category",
    "on_hand", "low_stock_threshold",
)
DEMO_CATALOG = Path(__file__).with_name("demo_catalog.csv")
OPENING_STOCK_REFERENCE = "import:opening-stock"

_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}

Progress = Callable[[int, int], None]


@dataclass
class ProductRow:
    """One parsed row: ``fields`` are the product fields the row sets (only those given)."""

    line: int
    sku: str
    fields: dict[str, Any]
    category: str | None
    on_hand: Decimal | None
    low_stock_threshold: Decimal | None


def check_header(header: list[str]) -> list[str]:
    """Normalise the header (strip, lower-case) and check its columns.

    Raises:
        ImportFileError: a required column is missing, a column is unknown or repeated.
    """
    names = [name.strip().lower() for name in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    unknown = [c for c in names if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    repeated = sorted({c for c in names if names.count(c) > 1})
    problems = []
    if missing:
        problems.append("missing required column(s) " + ", ".join(missing))
    if unknown:
        problems.append("unknown column(s) " + ", ".join(repr(c) for c in unknown))
    if repeated:
        problems.append("repeated column(s) " + ", ".join(repeated))
    if problems:
        raise ImportFileError(
            "not a products CSV: " + "; ".join(problems) + ". Expected a header with "
            + ",".join(REQUIRED_COLUMNS) + " and optionally " + ",".join(OPTIONAL_COLUMNS)
        )
    return names


def _parse_bool(text: str, what: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{what} {text.strip()!r} is not true/false")


def parse_row(line: int, columns: list[str], fields: list[str]) -> ProductRow:
    """Parse and validate one data row.

    Raises:
        ValueError: the row is malformed; the message says why (the caller skips the row).
    """
    if len(fields) != len(columns):
        raise ValueError(f"the row has {len(fields)} fields, the header has {len(columns)}")
    cells = {name: value.strip() for name, value in zip(columns, fields, strict=True)}
    sku = cells["sku"]
    if not sku:
        raise ValueError("sku is empty")
    if not cells["name"]:
        raise ValueError("name is empty")
    product: dict[str, Any] = {"sku": sku, "name": " ".join(cells["name"].split())}
    product["price"] = parse_decimal(cells["price"], "price", places=4, minimum=Decimal(0))
    if cells.get("cost"):
        product["cost"] = parse_decimal(cells["cost"], "cost", places=4, minimum=Decimal(0))
    if cells.get("tax_rate"):
        product["tax_rate"] = parse_decimal(cells["tax_rate"], "tax_rate", places=4, minimum=Decimal(0))
    if cells.get("tax_inclusive"):
        product["tax_inclusive"] = _parse_bool(cells["tax_inclusive"], "tax_inclusive")
    for name in ("barcode", "description", "unit"):
        if cells.get(name):
            product[name] = cells[name]
    if cells.get("currency"):
        product["currency"] = cells["currency"].upper()
    on_hand = threshold = None
    if cells.get("on_hand"):
        on_hand = parse_decimal(cells["on_hand"], "on_hand", places=3, minimum=Decimal(0))
    if cells.get("low_stock_threshold"):
        threshold = parse_decimal(cells["low_stock_threshold"], "low_stock_threshold", places=3, minimum=Decimal(0))
    # Let the unified model judge the rest (lengths, currency and unit patterns, ...).
    try:
        ProductCreate(**{**product, "low_stock_threshold": None if threshold is None else format(threshold, "f")})
    except ValidationError as exc:
        raise ValueError(error_text(exc)) from None
    return ProductRow(line, sku, product, cells.get("category") or None, on_hand, threshold)


def parse_products_csv(text: str, summary: ImportSummary) -> list[ProductRow]:
    """Parse the whole file; bad rows are recorded as skipped in ``summary``.

    Raises:
        ImportFileError: empty file or bad header.
    """
    header, rows = csv_rows(text)
    columns = check_header(header)
    summary.lines = len(rows)
    parsed: list[ProductRow] = []
    first_line: dict[str, int] = {}
    for line, fields in rows:
        try:
            row = parse_row(line, columns, fields)
        except ValueError as exc:
            summary.skip(line, "malformed", str(exc))
            continue
        if row.sku in first_line:
            summary.skip(line, "duplicate_sku", f"sku {row.sku!r} already given on line {first_line[row.sku]}")
            continue
        first_line[row.sku] = line
        parsed.append(row)
    return parsed


def _same(existing: Any, wanted: Any) -> bool:
    if isinstance(wanted, Decimal):
        return existing is not None and Decimal(str(existing)) == wanted
    return existing == wanted


async def import_products_csv(
    connector: Connector, path: str | Path, *, progress: Progress | None = None
) -> ImportSummary:
    """Create or update the products of a products CSV on ``connector``'s connection.

    Args:
        connector: a connector for the target connection (the local engine, or any connector
            that supports product writes).
        path: the CSV file (see the module docstring for its columns).
        progress: called as ``progress(rows_done, rows_total)`` after each row.

    Returns:
        An :class:`ImportSummary` with outcomes ``product_created`` / ``product_updated`` /
        ``product_unchanged``, records ``categories_created``, ``stock_adjustments``,
        ``stock_counts``, and every skipped row with its line number and reason.

    Raises:
        ImportFileError: the file is missing, empty or its header is wrong (nothing is written).
    """
    started = time.perf_counter()
    summary = ImportSummary(kind="products", source=str(path))
    summary.rules = [
        "rows are matched to existing products by sku: new skus are created, existing ones updated",
        "on_hand on a new product is a restock adjustment; on an existing product an absolute count",
        "bad rows are skipped with their line number and reason",
    ]
    rows = parse_products_csv(read_text(path), summary)
    total = summary.lines
    done = total - len(rows)
    if progress:
        progress(done, total)
    if not rows:
        summary.elapsed_s = time.perf_counter() - started
        return summary.finish()

    products = {p["sku"]: p for p in await load_records(connector, "products") if p.get("sku")}
    categories = {c["name"]: c["id"] for c in await load_records(connector, "categories")}
    location_id = await main_location_id(connector)
    stock = await on_hand_by_product(connector, location_id)

    for row in rows:
        try:
            await _import_row(connector, row, products, categories, location_id, stock, summary)
        except TillgateError as exc:
            summary.skip(row.line, "rejected", f"sku {row.sku!r}: {error_text(exc)}")
        except ValidationError as exc:
            summary.skip(row.line, "rejected", f"sku {row.sku!r}: {error_text(exc)}")
        done += 1
        if progress:
            progress(done, total)
    summary.elapsed_s = time.perf_counter() - started
    return summary.finish()


async def _import_row(
    connector: Connector,
    row: ProductRow,
    products: dict[str, dict[str, Any]],
    categories: dict[str, str],
    location_id: str,
    stock: dict[str, Decimal],
    summary: ImportSummary,
) -> None:
    fields = dict(row.fields)
    if row.category:
        if row.category not in categories:
            created = await connector.create_category(CategoryCreate(name=row.category))
            categories[row.category] = created["id"]
            summary.records["categories_created"] += 1
        fields["category_ids"] = [categories[row.category]]
    existing = products.get(row.sku)
    if existing is None:
        threshold = None if row.low_stock_threshold is None else format(row.low_stock_threshold, "f")
        product = await connector.create_product(ProductCreate(**fields, low_stock_threshold=threshold))
        products[row.sku] = product
        summary.imported("product_created")
        summary.records["products_created"] += 1
        if row.on_hand:
            await _set_stock(connector, row, product, location_id, Decimal(0), summary)
        return
    currency = fields.pop("currency", None)
    if currency and currency != existing.get("currency"):
        summary.skip(
            row.line, "currency_mismatch",
            f"sku {row.sku!r} exists in {existing.get('currency')}; its currency cannot change to {currency}",
        )
        return
    fields.pop("sku", None)
    changes = {key: value for key, value in fields.items() if not _same(existing.get(key), value)}
    if changes:
        product = await connector.update_product(existing["id"], ProductUpdate(**changes))
        products[row.sku] = product
        summary.imported("product_updated")
        summary.records["products_updated"] += 1
    else:
        product = existing
        summary.imported("product_unchanged")
    if row.on_hand is not None and not product.get("track_inventory", True):
        summary.warn(row.line, "stock_not_set", f"sku {row.sku!r} does not track inventory: on_hand ignored")
    elif row.on_hand is not None:
        current = stock.get(product["id"], Decimal(0))
        if current != row.on_hand:
            await _set_stock(connector, row, product, location_id, current, summary)


async def _set_stock(
    connector: Connector,
    row: ProductRow,
    product: dict[str, Any],
    location_id: str,
    current: Decimal,
    summary: ImportSummary,
) -> None:
    assert row.on_hand is not None
    try:
        if current == 0 and row.on_hand > 0:
            await connector.create_adjustment(
                AdjustmentCreate(
                    product_id=product["id"], location_id=location_id, delta=row.on_hand,
                    reason="restock", reference=OPENING_STOCK_REFERENCE,
                )
            )
            summary.records["stock_adjustments"] += 1
        else:
            await connector.set_inventory_count(
                product["id"], location_id, CountSet(on_hand=row.on_hand, expected_on_hand=current, reason="count")
            )
            summary.records["stock_counts"] += 1
    except TillgateError as exc:
        summary.warn(row.line, "stock_not_set", f"sku {row.sku!r} saved but its on_hand was not set: {error_text(exc)}")


async def load_demo_catalog(connector: Connector) -> ImportSummary:
    """Load the bundled demo catalog (``demo_catalog.csv``: ~40 products from the UCI Online Retail
    data, GBP, 20 % VAT inclusive, with categories and opening stock) into ``connector``'s connection.

    Idempotent: a second call leaves the catalog as it is.
    """
    return await import_products_csv(connector, DEMO_CATALOG)
