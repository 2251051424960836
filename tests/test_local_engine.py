"""The local POS engine (connectors/local) on SQLite and PostgreSQL.

Every expected figure is computed by hand in the comments next to it.
"""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from connectors.local import engine as E
from gateway import jsonutil
from gateway.crypto import CredentialCipher
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.model import (
    ENTITY_MODELS,
    Adjustment,
    AdjustmentCreate,
    CategoryCreate,
    ConnectionCreate,
    CountSet,
    CustomerCreate,
    CustomerUpdate,
    InventoryLevel,
    LocationCreate,
    Order,
    OrderCreate,
    ProductCreate,
    ProductUpdate,
    RefundCreate,
    VoidCreate,
)
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.connections import ConnectionService
from gateway.storage import tables as t


# -- fixtures and helpers -------------------------------------------------------------------------
@pytest.fixture
def make_pos(db, tenant):
    """Factory: a local connector on a new connection with the given settings."""

    async def make(**settings):
        service = ConnectionService(db, ConnectorRegistry(), CredentialCipher([os.urandom(32)]))
        conn = await service.create(tenant[0], ConnectionCreate(connector="local", name="t", settings=settings))
        return await service.connector_for(tenant[0], conn["id"])

    return make


@pytest.fixture
async def pos(make_pos):
    return await make_pos()


async def events(pos, type_=None):
    """[(type, data)] of the connection's events in seq order."""
    query = select(t.events.c.type, t.events.c.data).where(t.events.c.connection_id == pos.context.id).order_by(t.events.c.seq)
    if type_:
        query = query.where(t.events.c.type == type_)
    async with pos.db.read() as conn:
        return [(row.type, jsonutil.loads(row.data)) for row in (await conn.execute(query)).all()]


async def count_rows(pos, table, **where):
    query = select(func.count()).select_from(table).where(table.c.connection_id == pos.context.id)
    for key, value in where.items():
        query = query.where(table.c[key] == value)
    async with pos.db.read() as conn:
        return (await conn.execute(query)).scalar_one()


async def main_location(pos):
    async with pos.db.read() as conn:
        return (await pos._default_location(conn))["id"]


async def on_hand(pos, product_id, location_id=None, variant_id=""):
    location_id = location_id or await main_location(pos)
    async with pos.db.read() as conn:
        level = await pos._level(conn, product_id, variant_id, location_id)
    return E.qty_str(level.on_hand_milli)


async def movements(pos, product_id):
    async with pos.db.read() as conn:
        rows = (
            await conn.execute(
                select(t.stock_movements)
                .where(t.stock_movements.c.product_id == product_id)
                .order_by(t.stock_movements.c.created_at, t.stock_movements.c.id)
            )
        ).all()
    return [(row.reason, E.qty_str(row.delta_milli), E.qty_str(row.on_hand_after_milli)) for row in rows]


async def product(pos, stock=None, **kw):
    body = {"name": kw.pop("name", "Mug"), "price": kw.pop("price", "2.55"), **kw}
    record = await pos.create_product(ProductCreate.model_validate(body))
    if stock:
        await pos.create_adjustment(
            AdjustmentCreate(product_id=record["id"], location_id=await main_location(pos), delta=stock, reason="restock")
        )
    return record


def order(*lines, payments=(), **kw):
    return OrderCreate.model_validate({"lines": list(lines), "payments": list(payments), **kw})


async def all_records(pos):
    async with pos.db.read() as conn:
        rows = (await conn.execute(select(t.records.c.entity, t.records.c.data).where(t.records.c.connection_id == pos.context.id))).all()
    return [(row.entity, jsonutil.loads(row.data)) for row in rows]


# -- pure engine ----------------------------------------------------------------------------------
def test_engine_money_and_quantities():
    assert E.quantize_money(Decimal("2.345"), "GBP") == Decimal("2.35")
    assert E.quantize_money(Decimal("2.5"), "JPY") == Decimal(3)
    assert E.money_str(Decimal("3.5"), "GBP") == "3.50"
    assert E.money_str(Decimal("1.2345"), "KWD") == "1.2345"
    assert E.money_str(Decimal(1), "KWD") == "1.000"
    assert E.money_str(Decimal(120), "JPY") == "120"
    assert E.qty_str(10000) == "10" and E.qty_str(1250) == "1.25" and E.qty_str(0) == "0" and E.qty_str(-500) == "-0.5"
    assert E.to_milli(Decimal("1.250")) == 1250
    # 5 % then 9.975 % compound: 5 + 9.975 × 1.05 = 15.47375 → 15.4738
    assert E.effective_rate([E.TaxComponent("GST", Decimal(5)), E.TaxComponent("QST", Decimal("9.975"), True)]) == Decimal("15.4738")


def test_engine_settle():
    s = E.settle(Decimal("17.16"), [("card", Decimal(10)), ("cash", Decimal(10))], "GBP")
    assert (s.change_due, s.amount_paid, s.payment_status) == (Decimal("2.84"), Decimal("17.16"), "paid")
    assert E.settle(Decimal(5), [], "GBP").payment_status == "unpaid"
    with pytest.raises(ValidationFailed) as exc:
        E.settle(Decimal(5), [("card", Decimal(6))], "GBP")
    assert exc.value.code == "overpaid"
    assert E.loyalty_points(Decimal("17.99"), 2) == 34


# -- catalog --------------------------------------------------------------------------------------
async def test_catalog_products_categories_locations(pos):
    parent = await pos.create_category(CategoryCreate(name="Kitchen"))
    child = await pos.create_category(CategoryCreate(name="Mugs", parent_id=parent["id"]))
    with pytest.raises(ValidationFailed):
        await pos.create_category(CategoryCreate(name="x", parent_id="cat_nope"))
    mug = await product(
        pos, sku="M1", category_ids=[child["id"]], translations={"ar": {"name": "كوب"}},
        taxes=[{"name": "GST", "rate": "5"}, {"name": "QST", "rate": "9.975", "compound": True}],
        variants=[{"name": "Red", "sku": "M1-R", "options": {"colour": "red"}, "price": "3"}, {"name": "Blue"}],
    )
    assert mug["tax_rate"] == "15.4738" and mug["taxes"][1] == {"name": "QST", "rate": "9.975", "compound": True}
    assert mug["price"] == "2.55" and mug["currency"] == "GBP"
    assert [v["id"][:4] for v in mug["variants"]] == ["var_", "var_"]
    assert mug["variants"][0]["remote_id"] == mug["variants"][0]["id"] and mug["variants"][0]["price"] == "3.00"
    plain = await product(pos, sku="P1", tax_rate="20")
    assert plain["taxes"] == [{"name": "Tax", "rate": "20", "compound": False}] and plain["tax_rate"] == "20"
    untaxed = await product(pos, sku="P2", track_inventory=False)
    assert untaxed["taxes"] == [] and untaxed["tax_rate"] == "0"
    with pytest.raises(ValidationFailed) as exc:
        await product(pos, sku="P1")
    assert exc.value.code == "duplicate_sku"
    with pytest.raises(ValidationFailed):
        await product(pos, sku="P3", category_ids=["cat_nope"])

    # levels: one per variant at Main; a new location gets levels for every tracked item
    assert await count_rows(pos, t.stock_levels) == 3
    shop = await pos.create_location(LocationCreate(name="Shop 2", kind="warehouse"))
    assert await count_rows(pos, t.stock_levels) == 6
    assert await on_hand(pos, plain["id"], shop["id"]) == "0"

    updated = await pos.update_product(plain["id"], ProductUpdate(price="3", barcode="123"))
    assert updated["price"] == "3.00" and updated["barcode"] == "123" and updated["sku"] == "P1"
    before = len(await events(pos, "product.updated"))
    await pos.update_product(plain["id"], ProductUpdate(price="3.00"))  # no change: no event
    assert len(await events(pos, "product.updated")) == before
    with pytest.raises(ValidationFailed):
        await pos.update_product(plain["id"], ProductUpdate(sku="M1"))
    keep = mug["variants"][0]["id"]
    changed = await pos.update_product(mug["id"], ProductUpdate(variants=[{"id": keep, "name": "Red"}, {"name": "Green"}]))
    assert changed["variants"][0]["id"] == keep and changed["variants"][1]["id"] != mug["variants"][1]["id"]
    assert await count_rows(pos, t.stock_levels) == 8  # Green at both locations
    deleted = await pos.delete_product(untaxed["id"])
    assert deleted["deleted_at"] is not None
    with pytest.raises(NotFound):
        await pos.delete_product("prod_nope")
    for entity, record in await all_records(pos):
        ENTITY_MODELS[entity].model_validate(record)


# -- sales ----------------------------------------------------------------------------------------
async def test_exclusive_tax_discount_tenders_change(pos):
    mug = await product(pos, sku="85123A", price="2.55", tax_rate="20", stock="10")
    # 6 × 2.55 = 15.30; − 1.00 discount = 14.30 net; 20 % = 2.86; total 17.16
    # tendered 10 card + 10 cash = 20.00; change 2.84; paid 17.16
    sale = await pos.create_order(order(
        {"sku": "85123A", "quantity": "6", "discount": "1"},
        payments=[{"method": "card", "amount": "10"}, {"method": "cash", "amount": "10"}],
    ))
    Order.model_validate(sale)
    line = sale["lines"][0]
    assert line["taxes"] == [{"name": "Tax", "rate": "20", "amount": "2.86", "compound": False}]
    assert (line["unit_price"], line["discount"], line["total"], line["quantity"]) == ("2.55", "1.00", "17.16", "6")
    assert (sale["subtotal"], sale["discount_total"], sale["tax_total"], sale["total"]) == ("15.30", "1.00", "2.86", "17.16")
    assert (sale["amount_paid"], sale["change_due"], sale["payment_status"], sale["status"]) == ("17.16", "2.84", "paid", "completed")
    assert sale["number"] == "R000001" and sale["source"] == "api" and sale["currency"] == "GBP"
    assert await on_hand(pos, mug["id"]) == "4"
    assert (await movements(pos, mug["id"]))[-1] == ("sale", "-6", "4")

    # partial payment: 1 × 2.55 + 0.51 tax = 3.06; card 1.00 → partial, open
    part = await pos.create_order(order({"product_id": mug["id"], "quantity": "1"}, payments=[{"method": "card", "amount": "1"}]))
    assert (part["total"], part["amount_paid"], part["payment_status"], part["status"]) == ("3.06", "1.00", "partial", "open")
    assert part["number"] == "R000002"
    # non-cash overpayment refused, nothing written
    with pytest.raises(ValidationFailed) as exc:
        await pos.create_order(order({"product_id": mug["id"], "quantity": "1"}, payments=[{"method": "card", "amount": "5"}]))
    assert exc.value.code == "overpaid"
    assert await on_hand(pos, mug["id"]) == "3"
    # explicit unit price and number, backdated
    back = await pos.create_order(order({"product_id": mug["id"], "quantity": "1", "unit_price": "1.00"},
                                        number="536365", placed_at="2024-01-02T03:04:05Z"))
    assert back["number"] == "536365" and back["created_at"] == "2024-01-02T03:04:05Z"
    assert (back["total"], back["payment_status"]) == ("1.20", "unpaid")  # 1.00 + 0.20 tax
    with pytest.raises(ValidationFailed):
        await pos.create_order(order({"sku": "NOPE", "quantity": "1"}))
    with pytest.raises(ValidationFailed):
        await pos.create_order(order({"product_id": mug["id"], "quantity": "1", "discount": "9"}))


async def test_inclusive_tax_residue(pos):
    await product(pos, sku="A", price="10.00", tax_rate="20", tax_inclusive=True, track_inventory=False)
    await product(pos, sku="B", price="0.99", tax_rate="20", tax_inclusive=True, track_inventory=False)
    await product(pos, sku="C", price="10.00", tax_inclusive=True, track_inventory=False,
                  taxes=[{"name": "GST", "rate": "5"}, {"name": "PST", "rate": "7"}])
    sale = await pos.create_order(order({"sku": "A", "quantity": "1"}, {"sku": "B", "quantity": "3"}, {"sku": "C", "quantity": "1"},
                                        payments=[{"method": "cash", "amount": "50"}]))
    a, b, c = sale["lines"]
    # A: 10.00 gross; net 10/1.2 = 8.333 → 8.33; tax 1.67
    assert a["taxes"][0]["amount"] == "1.67" and a["total"] == "10.00"
    # B: 3 × 0.99 = 2.97; net 2.475 → 2.48; tax 0.49
    assert b["taxes"][0]["amount"] == "0.49" and b["total"] == "2.97"
    # C: net 10/1.12 = 8.928571 → 8.93; GST 0.446 → 0.45; PST takes residue 10 − 8.93 − 0.45 = 0.62
    assert [x["amount"] for x in c["taxes"]] == ["0.45", "0.62"] and c["total"] == "10.00"
    # subtotal 22.97, tax 1.67 + 0.49 + 1.07 = 3.23, total = subtotal (tax included)
    assert (sale["subtotal"], sale["tax_total"], sale["total"]) == ("22.97", "3.23", "22.97")
    assert (sale["change_due"], sale["amount_paid"]) == ("27.03", "22.97")


async def test_compound_tax_exclusive(pos):
    await product(pos, sku="Q", price="100.00", track_inventory=False,
                  taxes=[{"name": "GST", "rate": "5"}, {"name": "QST", "rate": "9.975", "compound": True}])
    sale = await pos.create_order(order({"sku": "Q", "quantity": "1"}))
    # GST 5.00; QST on 105.00 = 10.47375 → 10.47; total 115.47
    assert [x["amount"] for x in sale["lines"][0]["taxes"]] == ["5.00", "10.47"]
    assert sale["lines"][0]["taxes"][1]["compound"] is True
    assert (sale["tax_total"], sale["total"]) == ("15.47", "115.47")


async def test_variants_and_variant_sku(pos):
    tee = await product(pos, sku="TEE", price="10", variants=[{"name": "S", "sku": "TEE-S"}, {"name": "L", "sku": "TEE-L", "price": "12"}])
    small, large = tee["variants"]
    loc = await main_location(pos)
    await pos.create_adjustment(AdjustmentCreate(product_id=tee["id"], variant_id=large["id"], location_id=loc, delta="5", reason="restock"))
    sale = await pos.create_order(order({"sku": "TEE-L", "quantity": "2"}))
    assert sale["lines"][0]["variant_id"] == large["id"] and sale["lines"][0]["unit_price"] == "12.00"
    assert sale["lines"][0]["name"] == "Mug / L"
    assert await on_hand(pos, tee["id"], variant_id=large["id"]) == "3"
    with pytest.raises(ValidationFailed):  # a product with variants needs one
        await pos.create_order(order({"product_id": tee["id"], "quantity": "1"}))
    with pytest.raises(ValidationFailed):  # variant of another product
        other = await product(pos, sku="X")
        await pos.create_order(order({"product_id": other["id"], "variant_id": small["id"], "quantity": "1"}))


async def test_credit_tender_and_limit(make_pos):
    pos = await make_pos(loyalty_points_per_unit=2)
    await product(pos, sku="S", price="10", track_inventory=False)
    cus = await pos.create_customer(CustomerCreate(name="Ann", credit_limit="30"))
    assert (cus["balance"], cus["loyalty_points"], cus["currency"], cus["credit_limit"]) == ("0.00", 0, "GBP", "30.00")
    sale = await pos.create_order(order({"sku": "S", "quantity": "2"}, customer_id=cus["id"],
                                        payments=[{"method": "credit", "amount": "15.50"}, {"method": "cash", "amount": "5"}]))
    assert (sale["status"], sale["amount_paid"]) == ("completed", "20.00")
    async with pos.db.read() as conn:
        after = await pos._load(conn, "customers", cus["id"])
    assert (after["balance"], after["loyalty_points"]) == ("15.50", 40)  # floor(20.00) × 2
    seq_before = len(await events(pos))
    with pytest.raises(ValidationFailed) as exc:  # 15.50 + 15 > 30
        await pos.create_order(order({"sku": "S", "quantity": "2"}, customer_id=cus["id"],
                                     payments=[{"method": "credit", "amount": "15"}]))
    assert exc.value.code == "credit_limit_exceeded"
    assert len(await events(pos)) == seq_before
    nolimit = await pos.create_customer(CustomerCreate(name="Bob"))
    with pytest.raises(ValidationFailed) as exc:
        await pos.create_order(order({"sku": "S", "quantity": "1"}, customer_id=nolimit["id"], payments=[{"method": "credit", "amount": "10"}]))
    assert exc.value.code == "no_credit_account"
    with pytest.raises(ValidationFailed) as exc:
        await pos.create_order(order({"sku": "S", "quantity": "1"}, payments=[{"method": "credit", "amount": "10"}]))
    assert exc.value.code == "no_credit_account"
    # refund half of the credit order: balance goes down by 15.50 × 10/20 = 7.75
    await pos.refund_order(sale["id"], RefundCreate.model_validate({"lines": [{"line_id": sale["lines"][0]["id"], "quantity": "1"}]}))
    async with pos.db.read() as conn:
        assert (await pos._load(conn, "customers", cus["id"]))["balance"] == "7.75"
    await pos.refund_order(sale["id"], RefundCreate())
    async with pos.db.read() as conn:
        assert (await pos._load(conn, "customers", cus["id"]))["balance"] == "0.00"
    upd = await pos.update_customer(cus["id"], CustomerUpdate(email="ann@example.com", credit_limit=None))
    assert upd["email"] == "ann@example.com" and upd["credit_limit"] is None and upd["name"] == "Ann"
    with pytest.raises(NotFound):
        await pos.update_customer("cus_nope", CustomerUpdate(name="x"))


# -- refunds and voids ----------------------------------------------------------------------------
async def test_partial_then_full_refund(pos):
    item = await product(pos, sku="R", price="3.33", tax_rate="20", stock="10")
    # 3 × 3.33 = 9.99; tax 1.998 → 2.00; total 11.99
    sale = await pos.create_order(order({"sku": "R", "quantity": "3"}, payments=[{"method": "card", "amount": "11.99"}]))
    line_id = sale["lines"][0]["id"]
    assert sale["total"] == "11.99" and await on_hand(pos, item["id"]) == "7"
    first = await pos.refund_order(sale["id"], RefundCreate.model_validate({"lines": [{"line_id": line_id, "quantity": "1"}], "reason": "chipped"}))
    # 11.99 × 1/3 = 3.9966 → 4.00
    assert first["refunds"][0]["amount"] == "4.00" and first["refunds"][0]["lines"][0]["amount"] == "4.00"
    assert (first["status"], first["refunded_total"]) == ("partially_refunded", "4.00")
    assert await on_hand(pos, item["id"]) == "8"
    with pytest.raises(ValidationFailed) as exc:
        await pos.refund_order(sale["id"], RefundCreate.model_validate({"lines": [{"line_id": line_id, "quantity": "3"}]}))
    assert exc.value.code == "refund_exceeds_remaining"
    with pytest.raises(ValidationFailed):
        await pos.refund_order(sale["id"], RefundCreate.model_validate({"lines": [{"line_id": "line_nope", "quantity": "1"}]}))
    full = await pos.refund_order(sale["id"], RefundCreate(refunded_at="2030-01-01T00:00:00Z"))
    # the rest: 11.99 − 4.00 = 7.99 (the last refund of the line takes the exact remainder)
    assert full["refunds"][1]["amount"] == "7.99" and full["refunds"][1]["lines"][0]["quantity"] == "2"
    assert full["refunds"][1]["created_at"] == "2030-01-01T00:00:00Z"
    assert sum(Decimal(r["amount"]) for r in full["refunds"]) == Decimal(full["total"])
    assert (full["status"], full["refunded_total"]) == ("refunded", "11.99")
    assert await on_hand(pos, item["id"]) == "10"
    assert await movements(pos, item["id"]) == [
        ("restock", "10", "10"), ("sale", "-3", "7"), ("return", "1", "8"), ("return", "2", "10"),
    ]
    Order.model_validate(full)
    with pytest.raises(Conflict) as exc:
        await pos.refund_order(sale["id"], RefundCreate())
    assert exc.value.code == "order_not_refundable"
    assert len(await events(pos, "order.refunded")) == 2
    with pytest.raises(NotFound):
        await pos.refund_order("ord_nope", RefundCreate())
    # refund without restock leaves stock alone
    sale2 = await pos.create_order(order({"sku": "R", "quantity": "1"}))
    await pos.refund_order(sale2["id"], RefundCreate(restock=False))
    assert await on_hand(pos, item["id"]) == "9"


async def test_void_restocks(make_pos):
    pos = await make_pos(loyalty_points_per_unit=1)
    item = await product(pos, sku="V", price="5", stock="4")
    cus = await pos.create_customer(CustomerCreate(name="C", credit_limit="100"))
    sale = await pos.create_order(order({"sku": "V", "quantity": "3"}, customer_id=cus["id"], payments=[{"method": "credit", "amount": "15"}]))
    assert await on_hand(pos, item["id"]) == "1"
    voided = await pos.void_order(sale["id"], VoidCreate(reason="mistake"))
    assert voided["status"] == "voided" and await on_hand(pos, item["id"]) == "4"
    assert (await movements(pos, item["id"]))[-1] == ("restock", "3", "4")
    async with pos.db.read() as conn:
        c = await pos._load(conn, "customers", cus["id"])
    assert (c["balance"], c["loyalty_points"]) == ("0.00", 0)
    assert [ty for ty, _ in await events(pos, "order.voided")] == ["order.voided"]
    with pytest.raises(Conflict) as exc:
        await pos.void_order(sale["id"], VoidCreate())
    assert exc.value.code == "order_not_voidable"
    with pytest.raises(Conflict) as exc:
        await pos.refund_order(sale["id"], RefundCreate())
    assert exc.value.code == "order_not_refundable"
    refunded = await pos.create_order(order({"sku": "V", "quantity": "1"}))
    await pos.refund_order(refunded["id"], RefundCreate.model_validate({"lines": [{"line_id": refunded["lines"][0]["id"], "quantity": "0.5"}]}))
    with pytest.raises(Conflict):
        await pos.void_order(refunded["id"], VoidCreate())


async def test_insufficient_stock_rolls_back(pos):
    a = await product(pos, sku="A", stock="5")
    b = await product(pos, sku="B", stock="2")
    before_events = len(await events(pos))
    with pytest.raises(Conflict) as exc:
        await pos.create_order(order({"sku": "A", "quantity": "1"}, {"sku": "B", "quantity": "3"}))
    assert exc.value.code == "insufficient_stock" and exc.value.status == 409
    assert await on_hand(pos, a["id"]) == "5" and await on_hand(pos, b["id"]) == "2"
    assert await count_rows(pos, t.records, entity="orders") == 0
    assert await count_rows(pos, t.stock_movements, reason="sale") == 0
    assert len(await events(pos)) == before_events
    # the same product on two lines counts together: 3 + 3 > 5
    with pytest.raises(Conflict):
        await pos.create_order(order({"sku": "A", "quantity": "3"}, {"sku": "A", "quantity": "3"}))
    ok = await pos.create_order(order({"sku": "A", "quantity": "2.5"}, {"sku": "A", "quantity": "2.5"}))
    assert await on_hand(pos, a["id"]) == "0"
    assert [ty for ty, d in await events(pos) if d.get("id") == ok["id"] or d.get("product_id") == a["id"]][-2:] == [
        "order.created", "inventory.updated"]


async def test_allow_negative_and_safety_stock(make_pos):
    pos = await make_pos(allow_negative_stock=True, safety_stock="2")
    item = await product(pos, sku="N", stock="3")
    await pos.create_order(order({"sku": "N", "quantity": "5"}))
    assert await on_hand(pos, item["id"]) == "-2"
    _, record = (await events(pos, "inventory.updated"))[-1]
    assert (record["on_hand"], record["available"]) == ("-2", "0")
    await pos.create_adjustment(AdjustmentCreate(sku="N", location_id=await main_location(pos), delta="7.5", reason="restock"))
    _, record = (await events(pos, "inventory.updated"))[-1]
    assert (record["on_hand"], record["available"]) == ("5.5", "3.5")


# -- inventory ------------------------------------------------------------------------------------
async def test_adjustment_and_count(pos):
    item = await product(pos, sku="ADJ")
    loc = await main_location(pos)
    adj = await pos.create_adjustment(AdjustmentCreate(sku="ADJ", location_id=loc, delta="5", reason="restock", reference="po-1"))
    Adjustment.model_validate(adj)
    assert (adj["product_id"], adj["delta"], adj["status"], adj["attempts"], adj["reference"]) == (item["id"], "5", "applied", 1, "po-1")
    assert [d["id"] for _, d in await events(pos, "adjustment.applied")] == [adj["id"]]
    assert await count_rows(pos, t.adjustments, status="applied") == 1
    with pytest.raises(Conflict) as exc:
        await pos.create_adjustment(AdjustmentCreate(product_id=item["id"], location_id=loc, delta="-6", reason="correction"))
    assert exc.value.code == "insufficient_stock"
    with pytest.raises(ValidationFailed):
        await pos.create_adjustment(AdjustmentCreate(product_id=item["id"], location_id="loc_nope", delta="1", reason="restock"))
    with pytest.raises(Conflict) as exc:
        await pos.set_inventory_count(item["id"], loc, CountSet(on_hand="7", expected_on_hand="4"))
    assert exc.value.code == "stale_count" and exc.value.extra["on_hand"] == "5"
    level = await pos.set_inventory_count(item["id"], loc, CountSet(on_hand="7", expected_on_hand="5"))
    InventoryLevel.model_validate(level)
    assert (level["on_hand"], level["available"], level["variant_id"]) == ("7", "7", None)
    level = await pos.set_inventory_count(item["id"], loc, CountSet(on_hand="6.25", reason="correction"))
    assert level["on_hand"] == "6.25"
    assert await movements(pos, item["id"]) == [("restock", "5", "5"), ("count", "2", "7"), ("correction", "-0.75", "6.25")]
    n = len(await events(pos, "inventory.updated"))
    await pos.set_inventory_count(item["id"], loc, CountSet(on_hand="6.25", expected_on_hand="6.25"))  # same: nothing
    assert len(await events(pos, "inventory.updated")) == n
    with pytest.raises(NotFound):
        await pos.set_inventory_count("prod_nope", loc, CountSet(on_hand="1"))
    with pytest.raises(NotFound):
        await pos.set_inventory_count(item["id"], "loc_nope", CountSet(on_hand="1"))


async def test_inventory_low_event(make_pos):
    pos = await make_pos(low_stock_threshold="1")
    item = await product(pos, sku="LOW", stock="5", low_stock_threshold="3")
    default = await product(pos, sku="DEF", stock="2")
    await pos.create_order(order({"sku": "LOW", "quantity": "1"}))  # 4: above 3
    assert await events(pos, "inventory.low") == []
    await pos.create_order(order({"sku": "LOW", "quantity": "1"}))  # 3: crosses
    await pos.create_order(order({"sku": "LOW", "quantity": "1"}))  # 2: already low, no new event
    low = await events(pos, "inventory.low")
    assert len(low) == 1 and low[0][1]["on_hand"] == "3" and low[0][1]["low_stock_threshold"] == "3"
    await pos.create_adjustment(AdjustmentCreate(product_id=default["id"], location_id=await main_location(pos), delta="-1", reason="correction"))
    low = await events(pos, "inventory.low")
    assert len(low) == 2 and low[1][1]["product_id"] == default["id"] and low[1][1]["low_stock_threshold"] == "1"
    assert item["id"] != default["id"]


# -- records and events ---------------------------------------------------------------------------
async def test_records_validate_and_events_once(pos):
    cat = await pos.create_category(CategoryCreate(name="All"))
    item = await product(pos, sku="E", category_ids=[cat["id"]], tax_rate="20", stock="10")
    cus = await pos.create_customer(CustomerCreate(name="Eve", credit_limit="100"))
    await pos.create_location(LocationCreate(name="Back", kind="warehouse"))
    sale = await pos.create_order(order({"sku": "E", "quantity": "2"}, customer_id=cus["id"],
                                        payments=[{"method": "credit", "amount": "6.12"}]))
    await pos.refund_order(sale["id"], RefundCreate.model_validate({"lines": [{"line_id": sale["lines"][0]["id"], "quantity": "1"}]}))
    for entity, record in await all_records(pos):
        ENTITY_MODELS[entity].model_validate(record)
    evs = await events(pos)
    types = [ty for ty, _ in evs]
    assert types.count("order.created") == 1 and types.count("order.refunded") == 1
    assert types.count("product.created") == 1 and types.count("customer.created") == 1
    assert types.count("location.created") == 2 and types.count("category.created") == 1
    # inventory: created at Main and Back (2), restock (1), sale (1), refund restock (1)
    assert types.count("inventory.updated") == 5
    # customer: charged once, reversed once
    assert types.count("customer.updated") == 2
    sale_events = [ty for ty, d in evs if d.get("id") == sale["id"]]
    assert sale_events == ["order.created", "order.refunded"]
    for ty, data in evs:
        if ty.startswith("adjustment."):
            Adjustment.model_validate(data)
        elif ty.split(".")[0] in {"product", "category", "location", "customer", "order", "inventory"}:
            noun = ty.split(".")[0]
            entity = {"category": "categories", "inventory": "inventory"}.get(noun, noun + "s")
            ENTITY_MODELS[entity].model_validate(data)
    assert item["id"]


# -- concurrency ----------------------------------------------------------------------------------
async def test_fifty_concurrent_sales_of_ten(pos):
    item = await product(pos, sku="HOT", stock="10")

    async def sell():
        try:
            return await pos.create_order(order({"sku": "HOT", "quantity": "1"}, payments=[{"method": "card", "amount": "2.55"}]))
        except Conflict as exc:
            assert exc.code == "insufficient_stock"
            return None

    results = await asyncio.gather(*(sell() for _ in range(50)))
    accepted = [r for r in results if r is not None]
    assert len(accepted) == 10 and results.count(None) == 40
    assert await on_hand(pos, item["id"]) == "0"
    assert await count_rows(pos, t.records, entity="orders") == 10
    created = [d["id"] for ty, d in await events(pos, "order.created")]
    assert sorted(created) == sorted(r["id"] for r in accepted)
    # Refused sales roll their receipt number back with them: the accepted ten are gap-free.
    assert sorted(r["number"] for r in accepted) == [f"R{n:06d}" for n in range(1, 11)]
    assert await count_rows(pos, t.stock_movements, reason="sale") == 10
    async with pos.db.read() as conn:
        total = (await conn.execute(select(func.sum(t.stock_movements.c.delta_milli)).where(t.stock_movements.c.product_id == item["id"]))).scalar_one()
    assert total == 0


async def test_concurrent_mixed_lines_do_not_deadlock(pos):
    """Sales naming two products in opposite orders, with adjustments and counts alongside."""
    a = await product(pos, sku="MA", stock="20")
    b = await product(pos, sku="MB", stock="20")
    loc = await main_location(pos)

    async def sale(first, second):
        return await pos.create_order(order({"sku": first, "quantity": "1"}, {"sku": second, "quantity": "1"}))

    async def adjust():
        return await pos.create_adjustment(AdjustmentCreate(product_id=a["id"], location_id=loc, delta="1", reason="restock"))

    jobs = [sale("MA", "MB") if i % 2 else sale("MB", "MA") for i in range(16)] + [adjust() for _ in range(4)]
    await asyncio.gather(*jobs)
    assert await on_hand(pos, a["id"]) == "8"  # 20 − 16 + 4
    assert await on_hand(pos, b["id"]) == "4"
    # concurrent counts with the same expectation: exactly one wins
    results = await asyncio.gather(
        *(pos.set_inventory_count(b["id"], loc, CountSet(on_hand=str(10 + i), expected_on_hand="4")) for i in range(5)),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, dict)]
    assert len(wins) == 1 and all(isinstance(r, Conflict) and r.code == "stale_count" for r in results if r not in wins)
    assert await on_hand(pos, b["id"]) == wins[0]["on_hand"]
