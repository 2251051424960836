"""Importers: products CSV, demo catalog and the UCI Online Retail transaction format.

The big test imports the real 40,000-line sample once (module-scoped, on its own SQLite file)
and checks the result against figures this file computes itself from the CSV with plain
``csv`` + ``Decimal`` (no importer code). Small tests cover each rule with hand-written files.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
from collections import Counter, defaultdict
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from gateway import jsonutil
from gateway.crypto import CredentialCipher
from gateway.importers import ImportFileError, import_online_retail, import_products_csv, load_demo_catalog
from gateway.importers.online_retail import merchandise_sku, parse_date
from gateway.model import ConnectionCreate
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.connections import ConnectionService
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.migrate import upgrade

#: The real sample lives in the shared folder beside the repository (``../shared``), as on CI;
#: ``TILLGATE_RETAIL_SAMPLE`` points elsewhere.
DATA = Path(os.environ.get("TILLGATE_RETAIL_SAMPLE",
                           Path(__file__).resolve().parents[2] / "shared/data/online_retail_sample.csv"))


def require_sample() -> Path:
    """The sample's path, or a failure that says where it was looked for (never a skip)."""
    if not DATA.is_file():
        pytest.fail(f"the retail sample is not at {DATA}: the repository expects ../shared beside it "
                    "(or set TILLGATE_RETAIL_SAMPLE)", pytrace=False)
    return DATA
HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
CENT = Decimal("0.01")


@pytest.fixture
def database_url(sqlite_only_url: str) -> str:
    """These tests run on SQLite only (the importers use the connector API, not SQL dialects)."""
    return sqlite_only_url


async def new_connector(db: Database, tenant_id: str) -> Any:
    service = ConnectionService(db, ConnectorRegistry(), CredentialCipher([os.urandom(32)]))
    connection = await service.create(tenant_id, ConnectionCreate(connector="local", name="import"))
    return await service.connector_for(tenant_id, connection["id"])


async def records_of(db: Database, connection_id: str, entity: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        rows = (
            await conn.execute(
                select(t.records.c.data).where(
                    t.records.c.connection_id == connection_id,
                    t.records.c.entity == entity,
                    t.records.c.deleted_at.is_(None),
                )
            )
        ).all()
    return [jsonutil.loads(row.data) for row in rows]


async def on_hand(db: Database, connection_id: str) -> dict[str, Decimal]:
    """sku -> on hand (sum over locations)."""
    products = {p["id"]: p["sku"] for p in await records_of(db, connection_id, "products")}
    out: dict[str, Decimal] = defaultdict(Decimal)
    for level in await records_of(db, connection_id, "inventory"):
        out[products[level["product_id"]]] += Decimal(str(level["on_hand"]))
    return dict(out)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the real file, imported once ---------------------------------------------------------------
def independent_expectations(path: Path) -> dict[str, Any]:
    """Figures computed straight from the CSV by the documented rules, without importer code."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [(i + 2, r) for i, r in enumerate(csv.DictReader(fh))]
    usable = set()
    customers = set()
    for _, r in rows:
        code = r["StockCode"].strip()
        if r["CustomerID"].strip():
            customers.add(r["CustomerID"].strip())
        if re.fullmatch(r"[0-9]{5}[A-Za-z]*", code) and r["Description"].strip() and Decimal(r["UnitPrice"]) > 0:
            usable.add(code.upper())

    def sku(r: dict[str, str]) -> str | None:
        code = r["StockCode"].strip()
        return code.upper() if re.fullmatch(r"[0-9]{5}[A-Za-z]*", code) and code.upper() in usable else None

    invoice_totals: dict[str, Decimal] = defaultdict(Decimal)
    sale_lines = 0
    credit_lines: list[tuple[int, dict[str, str]]] = []
    writeoffs = 0
    invoice_at: dict[str, datetime] = {}
    for _line, r in rows:
        at = datetime.strptime(r["InvoiceDate"], "%Y-%m-%d %H:%M:%S")
        invoice_at[r["InvoiceNo"]] = min(at, invoice_at.get(r["InvoiceNo"], at))
    for line, r in rows:
        if not sku(r):
            continue
        qty, price, inv = Decimal(r["Quantity"]), Decimal(r["UnitPrice"]), r["InvoiceNo"]
        if inv.isdigit() and qty > 0 and price > 0:
            invoice_totals[inv] += (qty * price).quantize(CENT, rounding=ROUND_HALF_UP)
            sale_lines += 1
        elif inv.isdigit() and qty < 0:
            writeoffs += 1
        elif inv.startswith("C") and qty < 0:
            credit_lines.append((line, r))

    # Credit matching, re-derived plainly: walk invoices by (date, number, first line); a credit
    # line takes the latest earlier sale line of the same sku and customer with enough quantity
    # left, preferring the same unit price.
    first_line: dict[str, int] = {}
    for line, r in rows:
        first_line.setdefault(r["InvoiceNo"], line)
    by_invoice: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    for line, r in rows:
        by_invoice[r["InvoiceNo"]].append((line, r))
    sales: dict[tuple[str, str], list[list[Any]]] = defaultdict(list)  # [at, seq, price, left]
    matched: dict[int, Decimal] = {}
    seq = 0
    for inv in sorted(by_invoice, key=lambda n: (invoice_at[n], n, first_line[n])):
        cust = next((r["CustomerID"].strip() for _, r in by_invoice[inv] if r["CustomerID"].strip()), "")
        for line, r in by_invoice[inv]:
            s = sku(r)
            if not s:
                continue
            qty, price = Decimal(r["Quantity"]), Decimal(r["UnitPrice"])
            if inv.isdigit() and qty > 0 and price > 0 and cust:
                seq += 1
                sales[(cust, s)].append([invoice_at[inv], seq, price, qty])
            elif inv.startswith("C") and qty < 0 and cust:
                fits = [x for x in sales[(cust, s)] if x[0] <= invoice_at[inv] and x[3] >= -qty]
                if fits:
                    best = max(fits, key=lambda x: (x[2] == price, x[0], x[1]))
                    best[3] += qty
                    matched[line] = -qty * best[2]
    return {
        "products": len(usable),
        "customers": len(customers),
        "orders": len(invoice_totals),
        "invoice_totals": dict(invoice_totals),
        "sales_total": sum(invoice_totals.values(), Decimal(0)),
        "sale_lines": sale_lines,
        "credit_lines": [line for line, _ in credit_lines],
        "matched": matched,
        "refund_total": sum(matched.values(), Decimal(0)),
        "writeoffs": writeoffs,
        "lines": len(rows),
    }


@pytest.fixture(scope="module")
def retail(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Import the real sample twice into one fresh SQLite connection; collect what the tests check."""
    require_sample()
    url = f"sqlite:///{tmp_path_factory.mktemp('retail') / 'retail.db'}"
    upgrade(url)

    async def run() -> dict[str, Any]:
        from gateway.services.tenants import create_tenant

        db = Database(url)

        # A throw-away file: skip the per-commit fsync (synchronous=FULL) to keep this test short.
        @event.listens_for(db.engine.sync_engine, "connect")
        def _no_fsync(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.close()

        try:
            tenant_id, _ = await create_tenant(db, "retail-import")
            connector = await new_connector(db, tenant_id)
            seen: list[tuple[int, int]] = []
            first = await import_online_retail(connector, DATA, progress=lambda d, n: seen.append((d, n)))
            cid = connector.context.id
            state = {
                "products": await records_of(db, cid, "products"),
                "customers": await records_of(db, cid, "customers"),
                "orders": await records_of(db, cid, "orders"),
                "on_hand": await on_hand(db, cid),
            }
            second = await import_online_retail(connector, DATA)
            state_after = {
                "products": len(await records_of(db, cid, "products")),
                "customers": len(await records_of(db, cid, "customers")),
                "orders": await records_of(db, cid, "orders"),
            }
            return {"first": first, "second": second, "state": state, "after": state_after, "progress": seen}
        finally:
            await db.dispose()

    result = asyncio.run(run())
    result["expected"] = independent_expectations(DATA)
    return result


def test_retail_counts_add_up(retail: dict[str, Any]) -> None:
    summary = retail["first"]
    assert summary.lines == 40_000 == retail["expected"]["lines"]
    assert summary.imported_lines + summary.skipped_lines == 40_000
    assert summary.accounted
    assert all(s.reason.strip() and s.code for s in summary.skipped)
    assert len({s.line for s in summary.skipped}) == summary.skipped_lines  # one outcome per line
    assert "usable StockCode" in summary.render()
    assert retail["progress"][-1] == (40_000, 40_000)


def test_retail_products_and_customers(retail: dict[str, Any]) -> None:
    expected, state = retail["expected"], retail["state"]
    assert len(state["products"]) == expected["products"]
    assert len({p["sku"] for p in state["products"]}) == expected["products"]
    assert all(p["currency"] == "GBP" and p["tax_inclusive"] and Decimal(str(p["tax_rate"])) == 20 for p in state["products"])
    assert all(p["name"] == p["name"].strip() for p in state["products"])
    assert len(state["customers"]) == expected["customers"]
    assert retail["first"].records["products_created"] == expected["products"]
    assert retail["first"].records["customers_created"] == expected["customers"]


def test_retail_orders_and_totals(retail: dict[str, Any]) -> None:
    expected, summary = retail["expected"], retail["first"]
    orders = retail["state"]["orders"]
    assert len(orders) == expected["orders"]
    totals = {o["number"]: Decimal(str(o["total"])) for o in orders}
    assert totals == expected["invoice_totals"]
    assert sum(totals.values(), Decimal(0)) == expected["sales_total"] == summary.totals["sales"]
    assert summary.outcomes["sale_line"] == expected["sale_lines"]
    assert all(o["payment_status"] == "paid" and o["payments"][0]["method"] == "card" for o in orders)
    assert all(v >= 0 for v in retail["state"]["on_hand"].values())


def test_retail_refunds_match_credit_notes(retail: dict[str, Any]) -> None:
    expected, summary = retail["expected"], retail["first"]
    skipped = {s.line: s for s in summary.skipped}
    credit_lines = expected["credit_lines"]
    refunded = [line for line in credit_lines if line not in skipped]
    assert summary.outcomes["refund_line"] == len(refunded)
    assert summary.outcomes["refund_line"] + sum(1 for line in credit_lines if line in skipped) == len(credit_lines)
    assert sorted(refunded) == sorted(expected["matched"])
    assert all(skipped[line].code in ("credit_unmatched", "credit_no_customer") for line in credit_lines if line in skipped)
    engine_refunds = sum(
        (Decimal(str(r["amount"])) for o in retail["state"]["orders"] for r in o["refunds"]), Decimal(0)
    )
    assert engine_refunds == summary.totals.get("refunds", Decimal(0)) == expected["refund_total"]
    assert summary.outcomes["adjustment"] == expected["writeoffs"]


def test_retail_second_import_adds_nothing(retail: dict[str, Any]) -> None:
    second, after = retail["second"], retail["after"]
    assert second.imported_lines == 0
    assert second.skipped_lines == 40_000
    assert not any(name.endswith(("_created", "_adjustments")) for name in second.records)
    assert after["products"] == len(retail["state"]["products"])
    assert after["customers"] == len(retail["state"]["customers"])
    assert [o["refunds"] for o in sorted(after["orders"], key=lambda o: o["id"])] == [
        o["refunds"] for o in sorted(retail["state"]["orders"], key=lambda o: o["id"])
    ]


# -- Online Retail rules on a tiny file ---------------------------------------------------------
RULES_CSV = HEADER + "".join(
    line + "\n"
    for line in [
        # a later invoice first in the file: replay goes by InvoiceDate
        "536400,85123A,WHITE HANGING HEART T-LIGHT HOLDER ,2,2010-12-03 10:00:00,2.55,17850,United Kingdom",
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",
        "536365,85123a,CREAM HANGING HEART T-LIGHT HOLDER,1,2010-12-01 08:26:00,2.95,17850,United Kingdom",
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,2,2010-12-01 08:26:00,2.55,17850,United Kingdom",
        "536365,POST,POSTAGE,1,2010-12-01 08:26:00,18,17850,United Kingdom",
        "536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,United Kingdom",
        "536367,22633,HAND WARMER UNION JACK,3,2010-12-01 09:00:00,1.85,13047,France",
        "536367,22633,hand warmer union jack,1,2010-12-01 09:00:00,2.10,13047,France",
        "536368,22633,,5,2010-12-01 09:05:00,0,,United Kingdom",
        "536369,22633,thrown away,-2,2010-12-01 09:10:00,0,,United Kingdom",
        "536370,99999,,-4,2010-12-01 09:11:00,0,,United Kingdom",
        "C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-2,2010-12-02 10:00:00,2.55,17850,United Kingdom",
        "C536380,22633,HAND WARMER UNION JACK,-1,2010-12-02 10:05:00,1.85,17850,United Kingdom",
        "C536381,22633,HAND WARMER UNION JACK,-1,2010-12-02 10:06:00,1.85,,United Kingdom",
        "C536382,D,Discount,-1,2010-12-02 10:07:00,5,17850,United Kingdom",
    ]
)


async def test_retail_rules_on_small_file(db: Database, tenant: tuple[str, str], tmp_path: Path) -> None:
    connector = await new_connector(db, tenant[0])
    cid = connector.context.id
    summary = await import_online_retail(connector, write(tmp_path, "rules.csv", RULES_CSV))
    assert summary.lines == 15 and summary.accounted
    codes = {s.line: s.code for s in summary.skipped}
    assert codes == {
        6: "non_merchandise",  # POST
        10: "zero_price",
        12: "unusable_product",  # 99999: only an empty description at price 0
        14: "credit_unmatched",  # customer 17850 never bought 22633
        15: "credit_no_customer",
        16: "non_merchandise",  # D (discount)
    }
    assert summary.outcomes == Counter({"sale_line": 7, "refund_line": 1, "adjustment": 1})

    products = {p["sku"]: p for p in await records_of(db, cid, "products")}
    assert set(products) == {"85123A", "22633"}  # 85123a folded into 85123A
    assert products["85123A"]["name"] == "WHITE HANGING HEART T-LIGHT HOLDER"  # most frequent, trimmed
    assert Decimal(str(products["85123A"]["price"])) == Decimal("2.55")  # most frequent price
    assert products["22633"]["name"] == "HAND WARMER UNION JACK"
    customers = {c["name"]: c for c in await records_of(db, cid, "customers")}
    assert set(customers) == {"Customer 17850", "Customer 13047"}
    assert customers["Customer 13047"]["address"]["country"] == "France"

    orders = {o["number"]: o for o in await records_of(db, cid, "orders")}
    assert set(orders) == {"536365", "536366", "536367", "536400"}
    first = orders["536365"]
    assert [line["quantity"] for line in first["lines"]] == ["6", "1", "2"]  # repeated sku: separate lines
    assert Decimal(first["total"]) == Decimal(6) * Decimal("2.55") + Decimal("2.95") + 2 * Decimal("2.55")
    assert first["created_at"] == "2010-12-01T08:26:00Z"
    assert orders["536366"]["customer_id"] is None
    assert Decimal(orders["536367"]["total"]) == Decimal(3) * Decimal("1.85") + Decimal("2.10")
    # C536379 (2010-12-02) refunds the latest earlier sale at the same price: 536365's first line
    # (536400 is dated after the credit note).
    refunds = first["refunds"]
    assert len(refunds) == 1 and refunds[0]["reason"] == "credit note C536379"
    assert refunds[0]["lines"] == [{"line_id": first["lines"][2]["id"], "quantity": "2", "amount": "5.10"}]
    assert refunds[0]["created_at"] == "2010-12-02T10:00:00Z"
    assert summary.totals["refunds"] == Decimal("5.10")
    assert summary.totals["sales"] == sum((Decimal(o["total"]) for o in orders.values()), Decimal(0))
    # Stock: opening = everything the file takes out; refunds restock 2 of 85123A.
    stock = await on_hand(db, cid)
    assert stock["85123A"] == Decimal(2)
    assert stock["22633"] == Decimal(0)

    again = await import_online_retail(connector, write(tmp_path, "rules.csv", RULES_CSV))
    assert again.imported_lines == 0 and again.accounted
    assert again.skipped_by_code()["already_imported"] == 9
    assert len(await records_of(db, cid, "orders")) == 4
    assert await on_hand(db, cid) == stock


async def test_retail_malformed_lines_are_skipped(db: Database, tenant: tuple[str, str], tmp_path: Path) -> None:
    connector = await new_connector(db, tenant[0])
    text = HEADER + (
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
        "536366,85123A,WHITE HANGING HEART T-LIGHT HOLDER,six,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
        "536367,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1,yesterday,2.55,17850,United Kingdom\n"
        "536368,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1,2010-12-01 08:26:00,£2.55,17850,United Kingdom\n"
        "536369,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1\n"
        "536370,85123A,WHITE HANGING HEART T-LIGHT HOLDER,0,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
        "536371,,NO CODE,1,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
        "536372,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1,2010-12-01 08:26:00,-1,17850,United Kingdom\n"
        "\n"
        "536373,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1,12/1/2010 9:30,2.55,17850.0,United Kingdom\n"
    )
    summary = await import_online_retail(connector, write(tmp_path, "bad.csv", text))
    assert summary.lines == 9 and summary.accounted
    reasons = {s.line: s.reason for s in summary.skipped}
    assert set(reasons) == {3, 4, 5, 6, 7, 8, 9}
    assert all(s.code == "malformed" for s in summary.skipped)
    assert "Quantity 'six'" in reasons[3]
    assert "InvoiceDate 'yesterday'" in reasons[4]
    assert "UnitPrice" in reasons[5]
    assert "fields" in reasons[6]
    assert summary.outcomes["sale_line"] == 2  # line 2 and line 11 (US date, CustomerID 17850.0)
    assert [c["name"] for c in await records_of(db, connector.context.id, "customers")] == ["Customer 17850"]


async def test_retail_file_errors(db: Database, tenant: tuple[str, str], tmp_path: Path) -> None:
    connector = await new_connector(db, tenant[0])
    with pytest.raises(ImportFileError, match="empty"):
        await import_online_retail(connector, write(tmp_path, "empty.csv", ""))
    with pytest.raises(ImportFileError, match="missing column"):
        await import_online_retail(connector, write(tmp_path, "products.csv", "sku,name,price\nA,B,1\n"))
    with pytest.raises(ImportFileError, match="cannot read"):
        await import_online_retail(connector, tmp_path / "nope.csv")
    summary = await import_online_retail(connector, write(tmp_path, "header.csv", HEADER))
    assert summary.lines == 0 and summary.accounted
    assert await records_of(db, connector.context.id, "products") == []


def test_retail_parsing_helpers() -> None:
    assert merchandise_sku("85123a") == "85123A"
    assert merchandise_sku("15056bl") == "15056BL"
    for code in ("POST", "DOT", "M", "C2", "BANK CHARGES", "gift_0001_20", "DCGS0070", "AMAZONFEE"):
        assert merchandise_sku(code) is None
    assert parse_date("2011-10-30 16:17:00") == parse_date("10/30/2011 16:17")
    with pytest.raises(ValueError):
        parse_date("2011-13-01 00:00:00")


# -- products CSV -------------------------------------------------------------------------------
async def test_products_csv_create_update_and_skip(db: Database, tenant: tuple[str, str], tmp_path: Path) -> None:
    connector = await new_connector(db, tenant[0])
    cid = connector.context.id
    text = (
        "sku,name,price,barcode,cost,currency,tax_rate,tax_inclusive,unit,category,on_hand,low_stock_threshold\n"
        "A1,Mug ,3.50,5012345678900,1.20,GBP,20,true,each,Kitchen,25,5\n"
        "A2,Flour,1.10,,,GBP,0,no,kg,Kitchen,2.5,\n"
        "A3,Card,x,,,,,,,,,\n"  # bad price
        "A4,,1.00,,,,,,,,,\n"  # empty name
        "A5,Short,1.00\n"  # missing columns
        "A1,Mug again,3.60,,,,,,,,,\n"  # duplicate sku
        "A6,Bag,-1,,,,,,,,,\n"  # negative price
        "A7,Tin,1.00,,,pounds,,,,,,\n"  # bad currency
        "A8,Jar,1.00,,,,,maybe,,,,\n"  # bad boolean
        "A9,Pen,0.5,,,,,,,Stationery,,\n"
    )
    summary = await import_products_csv(connector, write(tmp_path, "p.csv", text))
    assert summary.lines == 10 and summary.accounted
    assert summary.outcomes == Counter({"product_created": 3})
    reasons = {s.line: (s.code, s.reason) for s in summary.skipped}
    assert set(reasons) == {4, 5, 6, 7, 8, 9, 10}
    assert reasons[4] == ("malformed", "price 'x' is not a number")
    assert reasons[5][1] == "name is empty"
    assert "fields" in reasons[6][1]
    assert reasons[7][0] == "duplicate_sku" and "line 2" in reasons[7][1]
    assert "at least 0" in reasons[8][1]
    assert "currency" in reasons[9][1]
    assert "tax_inclusive" in reasons[10][1]
    assert summary.records["categories_created"] == 2
    products = {p["sku"]: p for p in await records_of(db, cid, "products")}
    assert products["A1"]["name"] == "Mug" and products["A1"]["barcode"] == "5012345678900"
    assert products["A1"]["tax_inclusive"] is True and products["A2"]["unit"] == "kg"
    categories = {c["name"]: c["id"] for c in await records_of(db, cid, "categories")}
    assert products["A1"]["category_ids"] == [categories["Kitchen"]]
    assert await on_hand(db, cid) == {"A1": Decimal(25), "A2": Decimal("2.5"), "A9": Decimal(0)}

    # Same file again: nothing changes. A changed file: updates and a stock count.
    again = await import_products_csv(connector, write(tmp_path, "p.csv", text))
    assert again.outcomes == Counter({"product_unchanged": 3}) and not again.records
    changed = "sku,name,price,on_hand\nA1,Mug,3.75,30\nB1,New,2,\n"
    third = await import_products_csv(connector, write(tmp_path, "p2.csv", changed))
    assert third.outcomes == Counter({"product_updated": 1, "product_created": 1})
    assert third.records["stock_counts"] == 1
    products = {p["sku"]: p for p in await records_of(db, cid, "products")}
    assert Decimal(str(products["A1"]["price"])) == Decimal("3.75")
    assert (await on_hand(db, cid))["A1"] == Decimal(30)


async def test_products_csv_file_errors(db: Database, tenant: tuple[str, str], tmp_path: Path) -> None:
    connector = await new_connector(db, tenant[0])
    with pytest.raises(ImportFileError, match="empty"):
        await import_products_csv(connector, write(tmp_path, "e.csv", "\n\n"))
    with pytest.raises(ImportFileError, match=r"missing required column.*price"):
        await import_products_csv(connector, write(tmp_path, "h.csv", "sku,name\nA,B\n"))
    with pytest.raises(ImportFileError, match=r"unknown column.*'prce'"):
        await import_products_csv(connector, write(tmp_path, "u.csv", "sku,name,price,prce\nA,B,1,2\n"))
    summary = await import_products_csv(connector, write(tmp_path, "o.csv", "SKU, Name ,Price\n"))
    assert summary.lines == 0 and summary.accounted


async def test_demo_catalog(db: Database, tenant: tuple[str, str]) -> None:
    connector = await new_connector(db, tenant[0])
    cid = connector.context.id
    summary = await load_demo_catalog(connector)
    assert summary.accounted and summary.skipped_lines == 0
    assert 35 <= summary.outcomes["product_created"] <= 45
    products = await records_of(db, cid, "products")
    assert len(products) == summary.outcomes["product_created"]
    assert all(p["currency"] == "GBP" and p["tax_inclusive"] and p["category_ids"] for p in products)
    stock = await on_hand(db, cid)
    assert all(10 <= v <= 200 for v in stock.values()) and len(stock) == len(products)
    again = await load_demo_catalog(connector)
    assert again.outcomes == Counter({"product_unchanged": len(products)})


async def test_retail_engine_refusals_are_skips(db: Database, tenant: tuple[str, str], tmp_path: Path) -> None:
    from gateway.errors import Conflict, ValidationFailed

    connector = await new_connector(db, tenant[0])
    create_product, create_order = connector.create_product, connector.create_order

    async def refuse_product(body: Any) -> dict[str, Any]:
        if body.sku == "22633":
            raise ValidationFailed("no hand warmers here")
        return await create_product(body)

    async def refuse_order(body: Any) -> dict[str, Any]:
        if body.number == "536400":
            raise Conflict("not enough stock", code="insufficient_stock")
        return await create_order(body)

    connector.create_product, connector.create_order = refuse_product, refuse_order
    summary = await import_online_retail(connector, write(tmp_path, "rules.csv", RULES_CSV))
    assert summary.accounted
    rejected = {s.line: s.reason for s in summary.skipped if s.code == "rejected"}
    assert set(rejected) == {2, 7, 8, 9, 11, 14, 15}  # every 22633 line, and invoice 536400
    assert "no hand warmers here" in rejected[7]
    assert "insufficient_stock" in rejected[2]
    assert summary.outcomes == Counter({"sale_line": 3, "refund_line": 1})
