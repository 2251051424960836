"""Inventory links (``/v1/inventory-links``): locations of several connections kept in one stock
pool. A change at one member reaches every other member once, as a ``link`` adjustment; what the
link wrote never comes back (no loops), and a POS write happens once per logical change.

The pools run one gateway (API + embedded dispatcher through ``httpx.ASGITransport``) in front of
an AI POS sandbox, an Apex sandbox and the built-in ``local`` engine, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from inventory_world import AIPOS_BASE, APEX_BASE, Wire, World, wired
from sqlalchemy import select

from connectors.aipos import AIPOSConnector
from connectors.aipos.sandbox import create_app as aipos_app
from connectors.apex import ApexConnector
from connectors.apex.sandbox import create_app as apex_app
from connectors.local import LocalConnector
from gateway.api.app import create_app
from gateway.api.deps import Services
from gateway.sdk.registry import ConnectorRegistry
from gateway.settings import Settings
from gateway.storage import tables as t

BARCODE = "5012345678900"


@dataclass
class Shop:
    """A ``local`` connection of the pool: its id, location and the linked product."""

    connection_id: str
    location_id: str
    product_id: str
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"/v1/connections/{self.connection_id}"

    async def on_hand(self, product_id: str | None = None) -> str:
        answer = await self.http.get(f"{self.base}/inventory", params={"limit": 200})
        assert answer.status_code == 200, answer.text
        level = next(lv for lv in answer.json()["data"]
                     if lv["product_id"] == (product_id or self.product_id) and lv["location_id"] == self.location_id)
        return level["on_hand"]

    async def adjust(self, delta: str, product_id: str | None = None) -> dict[str, Any]:
        answer = await self.http.post(f"{self.base}/inventory/adjustments", headers={"Idempotency-Key": uuid.uuid4().hex},
                                      json={"product_id": product_id or self.product_id, "location_id": self.location_id,
                                            "delta": delta, "reason": "restock"})
        assert answer.status_code == 202, answer.text
        return answer.json()

    async def sell(self, quantity: str, product_id: str | None = None) -> dict[str, Any]:
        answer = await self.http.post(f"{self.base}/orders", json={
            "location_id": self.location_id,
            "lines": [{"product_id": product_id or self.product_id, "quantity": quantity}],
            "payments": [{"method": "cash", "amount": "1000.00"}]})
        assert answer.status_code == 201, answer.text
        return answer.json()

    async def adjustments(self) -> list[dict[str, Any]]:
        answer = await self.http.get(f"{self.base}/inventory/adjustments", params={"limit": 200})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]


async def new_shop(http: httpx.AsyncClient, name: str, *, sku: str = "LNK-1", barcode: str | None = None,
                   connector: str = "local", stock: str = "10") -> Shop:
    """A ``local`` connection with one product (``sku``, ``barcode``) holding ``stock`` at its default location."""
    created = await http.post("/v1/connections", json={"connector": connector, "name": name})
    assert created.status_code == 201, created.text
    connection_id = created.json()["id"]
    location_id = (await http.get(f"/v1/connections/{connection_id}/locations")).json()["data"][0]["id"]
    product = await http.post(f"/v1/connections/{connection_id}/products", json={
        "sku": sku, "barcode": barcode, "name": "Linked mug", "price": "9.99", "tax_rate": "0"})
    assert product.status_code == 201, product.text
    shop = Shop(connection_id, location_id, product.json()["id"], http)
    if stock != "0":
        await shop.adjust(stock)
    return shop


@contextlib.asynccontextmanager
async def gateway(db: Any, tenant: tuple[str, str], *classes: type) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """One gateway with its embedded dispatcher, serving ``classes`` (default: ``local``)."""
    config = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                      api_rate_limit="100000/minute", scheduler_interval_seconds=3600)
    services = Services.build(config, db=db, registry=ConnectorRegistry(list(classes) or [LocalConnector],
                                                                        load_entry_points=False))
    app = create_app(config, services=services)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test",
        headers={"Authorization": f"Bearer {tenant[1]}"},
    ) as http:
        yield http, services


async def link(http: httpx.AsyncClient, *members: tuple[str, str], match_by: str = "sku") -> dict[str, Any]:
    answer = await http.post("/v1/inventory-links", json={
        "name": "one pool", "match_by": match_by,
        "members": [{"connection_id": c, "location_id": loc} for c, loc in members]})
    assert answer.status_code == 201, answer.text
    return answer.json()


# -- the API ---------------------------------------------------------------------------------------
async def test_links_are_created_listed_changed_and_deleted_with_clear_errors(db, tenant):
    async with gateway(db, tenant) as (http, _):
        a, b, c = [await new_shop(http, name, stock="0") for name in ("A", "B", "C")]
        created = await link(http, (a.connection_id, a.location_id), (b.connection_id, b.location_id))
        assert created["object"] == "inventory_link" and created["id"].startswith("ilk_")
        assert created["status"] == "enabled" and created["match_by"] == "sku" and created["unmatched_count"] == 0
        assert created["members"] == [{"connection_id": a.connection_id, "location_id": a.location_id},
                                      {"connection_id": b.connection_id, "location_id": b.location_id}]
        assert (await http.get(f"/v1/inventory-links/{created['id']}")).json() == created
        listed = (await http.get("/v1/inventory-links")).json()
        assert [item["id"] for item in listed["data"]] == [created["id"]] and listed["next_cursor"] is None

        async def refused(members: list[dict[str, str]], status: int, code: str, **extra: Any) -> dict[str, Any]:
            answer = await http.post("/v1/inventory-links", json={"members": members, **extra})
            assert answer.status_code == status, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["code"] == code, answer.json()
            return answer.json()

        member = {"connection_id": c.connection_id, "location_id": c.location_id}
        await refused([member], 422, "validation_error")
        await refused([member, member], 422, "duplicate_member")
        await refused([member, {"connection_id": "con_nope", "location_id": c.location_id}], 422, "unknown_connection")
        await refused([member, {"connection_id": a.connection_id, "location_id": "loc_nope"}], 422, "unknown_location")
        await refused([member, {"connection_id": a.connection_id, "location_id": a.location_id}], 409,
                      "location_already_linked")
        await refused([member, member], 422, "validation_error", match_by="name")
        problem = await refused([member, {"connection_id": b.connection_id, "location_id": b.location_id}], 409,
                                "location_already_linked")
        assert problem["link_id"] == created["id"]

        disabled = await http.patch(f"/v1/inventory-links/{created['id']}", json={"status": "disabled", "name": "x"})
        assert disabled.status_code == 200 and (disabled.json()["status"], disabled.json()["name"]) == ("disabled", "x")
        bad = await http.patch(f"/v1/inventory-links/{created['id']}", json={"status": None})
        assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
        assert (await http.delete(f"/v1/inventory-links/{created['id']}")).status_code == 200
        gone = await http.get(f"/v1/inventory-links/{created['id']}")
        assert gone.status_code == 404 and gone.json()["code"] == "not_found"
        # its locations are free again
        await link(http, (a.connection_id, a.location_id), (c.connection_id, c.location_id))


# -- two local shops ---------------------------------------------------------------------------------
async def test_a_sale_at_one_shop_reaches_the_other_once_and_never_comes_back(db, tenant):
    async with gateway(db, tenant) as (http, services):
        a, b = await new_shop(http, "A"), await new_shop(http, "B")
        only_a = (await http.post(f"{a.base}/products", json={"sku": "ONLY-A", "name": "Only here", "price": "1.00"})).json()
        await a.adjust("5", only_a["id"])
        made = await link(http, (a.connection_id, a.location_id), (b.connection_id, b.location_id))

        await a.sell("2")
        await services.dispatcher.drain()
        assert (await a.on_hand(), await b.on_hand()) == ("8", "8")
        pushed = [adj for adj in await b.adjustments() if adj["link_id"]]
        assert len(pushed) == 1
        assert (pushed[0]["delta"], pushed[0]["reason"], pushed[0]["status"], pushed[0]["link_id"]) == (
            "-2", "link", "applied", made["id"])
        assert pushed[0]["reference"].startswith(f"{a.connection_id}:")
        assert not [adj for adj in await a.adjustments() if adj["link_id"]], "the link wrote back to its source"

        # a consumer's adjustment at B is a change of the pool too
        await b.adjust("5")
        await services.dispatcher.drain()
        assert (await a.on_hand(), await b.on_hand()) == ("13", "13")
        assert [adj["delta"] for adj in await a.adjustments() if adj["link_id"]] == ["5"]
        assert len([adj for adj in await b.adjustments() if adj["link_id"]]) == 1

        # a product B does not carry: counted on the link, nothing pushed
        await a.sell("1", only_a["id"])
        await services.dispatcher.drain()
        now = (await http.get(f"/v1/inventory-links/{made['id']}")).json()
        assert now["unmatched_count"] == 1 and "ONLY-A" in now["last_unmatched"]
        assert len([adj for adj in await b.adjustments() if adj["link_id"]]) == 1

        # disabled: nothing flows
        await http.patch(f"/v1/inventory-links/{made['id']}", json={"status": "disabled"})
        await a.sell("1")
        await services.dispatcher.drain()
        assert (await a.on_hand(), await b.on_hand()) == ("12", "13")


async def test_a_link_adjustment_that_cannot_apply_fails_visibly(db, tenant):
    async with gateway(db, tenant) as (http, services):
        a, b = await new_shop(http, "A", stock="10"), await new_shop(http, "B", stock="1")
        await link(http, (a.connection_id, a.location_id), (b.connection_id, b.location_id))
        await a.sell("3")
        await services.dispatcher.drain()
        pushed = [adj for adj in await b.adjustments() if adj["link_id"]]
        assert [(adj["delta"], adj["status"]) for adj in pushed] == [("-3", "failed")]
        assert pushed[0]["last_error"].startswith("insufficient_stock")
        assert (await a.on_hand(), await b.on_hand()) == ("7", "1")


# -- AI POS, Apex and the local engine in one pool ---------------------------------------------------
@contextlib.asynccontextmanager
async def three_way(db: Any, tenant: tuple[str, str], *, stock: int = 30) -> AsyncIterator[tuple[World, World, Shop, Services]]:
    """AI POS (product ``prod_003``), Apex (product 3, warehouse 1) and a ``local`` shop, all
    carrying barcode :data:`BARCODE` with ``stock`` on hand, synced; not linked yet."""
    holder: dict[str, Any] = {}

    async def to_gateway(scope: Any, receive: Any, send: Any) -> None:
        await holder["app"](scope, receive, send)

    aipos = aipos_app(products=5, customers=1, sales=0, seed=11, rate_limit=None,
                      webhook_transport=httpx.ASGITransport(app=to_gateway), webhook_retry_schedule=[0.01, 0.01])
    aipos.state.aipos.products["prod_003"].stock = stock
    aipos.state.aipos.products["prod_003"].barcode = BARCODE
    apex = apex_app(products=5, customers=1, invoices=0, seed=11)
    apex.state.apex.products[3].stock[0] = stock
    apex.state.apex.products[3].barcode = BARCODE
    aipos_wire, apex_wire = Wire(aipos), Wire(apex)
    aipos_cls, apex_cls = wired(AIPOSConnector, aipos_wire, "links_test"), wired(ApexConnector, apex_wire, "links_test")
    config = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                      api_rate_limit="100000/minute", scheduler_interval_seconds=3600)
    services = Services.build(config, db=db, registry=ConnectorRegistry([aipos_cls, apex_cls, LocalConnector],
                                                                        load_entry_points=False))
    holder["app"] = app = create_app(config, services=services)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test",
        headers={"Authorization": f"Bearer {tenant[1]}"},
    ) as http:
        worlds = []
        for kind, cls, vendor, wire, base, credentials in (
                ("aipos", aipos_cls, aipos, aipos_wire, AIPOS_BASE, {"api_key": "aipos_test_sandbox_key"}),
                ("apex", apex_cls, apex, apex_wire, APEX_BASE, {"api_key": "apx_sandbox_key"})):
            here = World(kind, http, services, vendor, wire, tenant_id=tenant[0])
            await here.connect(cls, {"base_url": base, "safety_stock": "0"}, credentials)
            assert here.product["barcode"] == BARCODE
            worlds.append(here)
        await worlds[0].subscribe()
        shop = await new_shop(http, "local shop", sku="LOCAL-MUG", barcode=BARCODE, stock=str(stock))
        await services.dispatcher.drain()
        yield worlds[0], worlds[1], shop, services


async def test_three_systems_in_one_pool_by_barcode(db, tenant):
    async with three_way(db, tenant) as (aipos, apex, shop, services):
        await link(aipos.http, (aipos.connection_id, aipos.location["id"]), (apex.connection_id, apex.location["id"]),
                   (shop.connection_id, shop.location_id), match_by="barcode")

        async def settle() -> None:
            """What the POSes report reaches the gateway: AI POS webhooks, then a poll of each
            (an AI POS sale's webhook carries the sale; its stock arrives by the inventory poll)."""
            for _ in range(2):
                await aipos.deliver_webhooks()
                for w in (aipos, apex):
                    await w.sync("incremental", ["inventory"])
                await services.dispatcher.drain()

        async def pool() -> tuple[int, int, str, str, str]:
            return (aipos.stock(), apex.stock(), (await aipos.level())["on_hand"], (await apex.level())["on_hand"],
                    await shop.on_hand())

        # 1. a sale at the AI POS till: one write at Apex, one at the local shop, none back at AI POS
        sale = await aipos.pos("POST", "/sales", {"items": [{"product_id": "prod_003", "qty": 2}], "payment_method": "cash"})
        assert sale.status_code == 201, sale.text
        await settle()
        assert await pool() == (28, 28, "28", "28", "28")
        assert (aipos.applications(), apex.applications()) == (0, 1)

        # 2. a consumer's adjustment at Apex: one write at Apex, one at AI POS, the local shop follows
        answer = await apex.adjust("-3")
        assert answer.status_code == 202, answer.text
        await settle()  # the polls bring the writes back: echoes
        assert await pool() == (25, 25, "25", "25", "25")
        assert (aipos.applications(), apex.applications()) == (1, 2)

        # 3. a count at the Apex back office, seen by the poll: propagated as its delta
        apex.set_stock(27)
        await settle()
        assert await pool() == (27, 27, "27", "27", "27")
        assert (aipos.applications(), apex.applications()) == (2, 2)

        # 4. a sale at the local engine
        await shop.sell("4")
        await settle()
        assert await pool() == (23, 23, "23", "23", "23")
        assert (aipos.applications(), apex.applications()) == (3, 3)

        # every link adjustment applied, one per member per change
        async with services.db.read() as conn:
            rows = (await conn.execute(select(t.adjustments.c.connection_id, t.adjustments.c.status).where(
                t.adjustments.c.link_id.is_not(None), t.adjustments.c.tenant_id == tenant[0]))).all()
        assert all(status == "applied" for _, status in rows), rows
        per_member = {cid: sum(1 for c, _ in rows if c == cid) for cid in
                      (aipos.connection_id, apex.connection_id, shop.connection_id)}
        assert per_member == {aipos.connection_id: 3, apex.connection_id: 2, shop.connection_id: 3}

        # and nothing more happens on a further round of polls and a full count
        for w in (aipos, apex):
            await w.reconcile()
        await settle()
        assert await pool() == (23, 23, "23", "23", "23")
        assert (aipos.applications(), apex.applications()) == (3, 3)
