"""The HQ/Store sandbox against the vendor doc (``vendor-docs/hqstore-pos-api.txt``) and the
choices in ``connectors/hqstore/SANDBOX.md``: login and refresh, the ``{success, data, error}``
envelope, ``total``/``page``/``pageSize``, the doc's create-sale body, voids, inventory
adjustments, transfers, sync tokens, faults, seeding, and the ``tillgate sandbox`` entry point."""

from __future__ import annotations

import base64
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.hqstore.sandbox import PERMISSIONS, create_app, line_net, round_half_up, tax_amounts

CSV_PATH = Path(__file__).resolve().parents[2] / "shared/data/online_retail_sample.csv"
BASE = "http://hq.test"


class Client:
    """An HTTP client on one sandbox app, logged in as ``admin``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.store = app.state.hqstore
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
        self.token = ""
        self.refresh = ""

    async def login(self, username: str = "admin", pin: str = "1234") -> httpx.Response:
        answer = await self.http.post("/api/v1/auth/login", json={"username": username, "pin": pin})
        if answer.status_code == 200:
            self.token = answer.json()["data"]["accessToken"]
            self.refresh = answer.json()["data"]["refreshToken"]
        return answer

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)


@pytest.fixture
async def hq() -> Any:
    client = Client(create_app(products=12, customers=7, sales=6, seed=0))
    await client.login()
    yield client
    await client.http.aclose()


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# -- auth ----------------------------------------------------------------------------------------------
async def test_login_answers_the_documented_shape_with_a_jwt(hq: Client) -> None:
    answer = await hq.login()
    body = answer.json()
    assert answer.status_code == 200 and body["success"] is True
    data = body["data"]
    assert set(data) == {"accessToken", "refreshToken", "user", "permissions"}
    assert data["accessToken"].startswith("eyJ")  # the doc's "eyJ...": a JWT
    assert set(data["user"]) == {"id", "username", "displayName", "isActive"} and data["user"]["username"] == "admin"
    assert "products.view" in data["permissions"]
    token_claims = claims(data["accessToken"])
    assert token_claims["exp"] - int(token_claims["iat"]) == 900 and token_claims["sub"] == data["user"]["id"]


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"username": "admin", "pin": "0000"}, 401, "Invalid credentials"),
    ({"username": "nobody", "pin": "1234"}, 401, "Invalid credentials"),
    ({"username": "admin"}, 400, "username and pin are required"),
    ([1, 2], 400, "Request body must be a JSON object"),
])
async def test_login_failures_use_the_error_envelope(hq: Client, body: Any, status: int, error: str) -> None:
    answer = await hq.http.post("/api/v1/auth/login", json=body)
    assert answer.status_code == status and answer.json() == {"success": False, "error": error}


async def test_pin_login_and_me(hq: Client) -> None:
    answer = await hq.http.post("/api/v1/auth/pin-login", json={"pin": "1234"})
    assert answer.status_code == 200 and answer.json()["data"]["user"]["username"] == "admin"
    me = await hq.call("GET", "/api/v1/auth/me")
    assert me.json()["data"]["user"]["username"] == "admin" and me.json()["data"]["permissions"] == list(PERMISSIONS)


async def test_routes_need_a_valid_unexpired_token(hq: Client) -> None:
    assert (await hq.http.get("/api/v1/products")).json() == {"success": False, "error": "Authentication required"}
    bad = await hq.http.get("/api/v1/products", headers={"Authorization": "Bearer not.a.jwt"})
    assert bad.status_code == 401 and bad.json()["error"] == "Invalid token"
    assert (await hq.call("GET", "/api/v1/products")).status_code == 200
    clock = await hq.http.post("/_sandbox/clock", json={"advance": 901})
    assert clock.status_code == 200
    expired = await hq.call("GET", "/api/v1/products")
    assert expired.status_code == 401 and expired.json() == {"success": False, "error": "Token expired"}
    assert (await hq.http.get("/health")).json() == {"status": "ok"}  # no auth


async def test_refresh_rotates_the_refresh_token(hq: Client) -> None:
    old = hq.refresh
    answer = await hq.http.post("/api/v1/auth/refresh", json={"refreshToken": old})
    assert answer.status_code == 200 and set(answer.json()["data"]) == {"accessToken", "refreshToken"}
    assert answer.json()["data"]["refreshToken"] != old
    again = await hq.http.post("/api/v1/auth/refresh", json={"refreshToken": old})
    assert again.status_code == 401 and again.json()["error"] == "Invalid refresh token"
    assert (await hq.http.post("/api/v1/auth/refresh", json={})).status_code == 400


async def test_revoke_knob_and_missing_permission(hq: Client) -> None:
    assert (await hq.http.post("/_sandbox/tokens/revoke")).status_code == 200
    revoked = await hq.call("GET", "/api/v1/stores")
    assert revoked.status_code == 401 and revoked.json()["error"] == "Token revoked"
    hq.store.add_user("clerk", "5678", permissions=["pos.sell"])
    await hq.login("clerk", "5678")
    forbidden = await hq.call("GET", "/api/v1/products")
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "Missing permission: products.view"


# -- lists ---------------------------------------------------------------------------------------------
async def test_paginated_lists_add_total_page_and_page_size(hq: Client) -> None:
    first = (await hq.call("GET", "/api/v1/products", params={"page": 1, "pageSize": 5})).json()
    assert (first["success"], first["total"], first["page"], first["pageSize"], len(first["data"])) == (True, 12, 1, 5, 5)
    last = (await hq.call("GET", "/api/v1/products", params={"page": 3, "pageSize": 5})).json()
    assert len(last["data"]) == 2
    capped = (await hq.call("GET", "/api/v1/products", params={"pageSize": 1000})).json()
    assert capped["pageSize"] == 100
    default = (await hq.call("GET", "/api/v1/customers")).json()
    assert default["pageSize"] == 20 and default["total"] == 7
    bad = await hq.call("GET", "/api/v1/products", params={"page": "x"})
    assert bad.status_code == 400 and bad.json()["success"] is False


async def test_product_money_is_minor_units_and_reads_with_tax_rates(hq: Client) -> None:
    listed = (await hq.call("GET", "/api/v1/products", params={"pageSize": 1})).json()["data"][0]
    assert isinstance(listed["sellPrice"], int) and isinstance(listed["costPrice"], int) and "taxRates" not in listed
    single = (await hq.call("GET", f"/api/v1/products/{listed['id']}")).json()["data"]
    group = hq.store.tax_groups[listed["taxGroupId"]]
    assert [r["rate"] for r in single["taxRates"]] == [r.rate for r in sorted(group.rates, key=lambda r: r.sort_order)]
    by_barcode = (await hq.call("GET", f"/api/v1/products/barcode/{listed['barcode']}")).json()["data"]
    assert by_barcode["id"] == listed["id"]
    missing = await hq.call("GET", "/api/v1/products/barcode/nope")
    assert missing.status_code == 404 and missing.json() == {"success": False, "error": "Product not found"}


async def test_product_create_update_and_soft_delete(hq: Client) -> None:
    body = {"sku": "PROD-001", "barcode": "1234567890123", "name": "Product Name", "description": "Optional description",
            "departmentId": None, "costPrice": 500, "sellPrice": 999, "taxGroupId": None, "trackStock": True}
    created = await hq.call("POST", "/api/v1/products", json=body)  # the doc's body, verbatim
    assert created.status_code == 201
    product = created.json()["data"]
    assert (product["sellPrice"], product["costPrice"], product["isActive"]) == (999, 500, True)
    dup = await hq.call("POST", "/api/v1/products", json=body)
    assert dup.status_code == 409 and dup.json()["error"] == "SKU already exists"
    updated = await hq.call("PUT", f"/api/v1/products/{product['id']}", json={"sellPrice": 1099})
    assert updated.json()["data"]["sellPrice"] == 1099
    assert (await hq.call("PUT", f"/api/v1/products/{product['id']}", json={"sellPrice": 9.5})).status_code == 400
    deleted = await hq.call("DELETE", f"/api/v1/products/{product['id']}")
    assert deleted.json()["data"]["isActive"] is False
    assert (await hq.call("GET", f"/api/v1/products/{product['id']}")).json()["data"]["isActive"] is False


async def test_reference_lists(hq: Client) -> None:
    stores = (await hq.call("GET", "/api/v1/stores")).json()["data"]
    assert [s["code"] for s in stores] == ["S01", "S02"]
    departments = (await hq.call("GET", "/api/v1/departments")).json()["data"]
    assert any(d["parentId"] for d in departments)
    groups = (await hq.call("GET", "/api/v1/taxes/groups")).json()["data"]
    assert [g["name"] for g in groups] == ["Standard", "City", "Luxury"]
    assert [r["isCompound"] for r in groups[2]["taxRates"]] == [False, False, True]
    taxes = (await hq.call("GET", "/api/v1/taxes")).json()["data"]
    assert {t["rate"] for t in taxes} == {825, 100, 500}


# -- sales ---------------------------------------------------------------------------------------------
def doc_sale(hq: Client, **changes: Any) -> dict[str, Any]:
    """The doc's "Create Sale Body" with its uuids replaced by the sandbox's ids."""
    product = next(iter(hq.store.products.values()))
    body = {
        "receiptNumber": "R-0001", "cashierId": next(iter(hq.store.users)), "terminalId": "T01",
        "subtotal": 1998, "taxTotal": 165, "discountTotal": 0, "grandTotal": 2163,
        "storeId": next(iter(hq.store.stores)), "salesRepId": None, "customerId": None,
        "items": [{"productId": product.id, "productName": "Coffee", "quantity": 2000, "unitPrice": 999,
                   "taxRate": 825, "taxAmount": 165, "discountAmount": 0, "lineTotal": 2163,
                   "taxes": [{"taxRateName": "State Tax", "rate": 825, "taxAmount": 165, "isCompound": False,
                              "sortOrder": 0}]}],
        "payments": [{"method": "CASH", "amount": 2200, "reference": None}],
    }
    body.update(changes)
    return body


async def test_the_docs_create_sale_body_is_accepted_and_moves_stock(hq: Client) -> None:
    body = doc_sale(hq)
    product_id, store_id = body["items"][0]["productId"], body["storeId"]
    before = hq.store.levels[(product_id, store_id)].quantity
    answer = await hq.call("POST", "/api/v1/sales", json=body)
    assert answer.status_code == 201, answer.text
    sale = answer.json()["data"]
    assert (sale["status"], sale["grandTotal"], sale["changeDue"], sale["receiptNumber"]) == ("COMPLETED", 2163, 37, "R-0001")
    assert sale["items"][0]["quantity"] == 2000 and sale["items"][0]["id"]
    assert hq.store.levels[(product_id, store_id)].quantity == before - 2000
    dup = await hq.call("POST", "/api/v1/sales", json=body)
    assert dup.status_code == 409 and dup.json()["error"] == "Receipt number already exists for this store"

    listed = (await hq.call("GET", "/api/v1/sales", params={"store_id": store_id, "date_from": "2026-01-01",
                                                             "pageSize": 100})).json()
    assert sale["id"] in {s["id"] for s in listed["data"]}
    old = (await hq.call("GET", "/api/v1/sales", params={"date_to": "2026-01-01"})).json()
    assert old["total"] == 0
    voided = await hq.call("PUT", f"/api/v1/sales/{sale['id']}/void", json={"reason": "test"})
    assert voided.json()["data"]["status"] == "VOIDED"
    assert hq.store.levels[(product_id, store_id)].quantity == before
    again = await hq.call("PUT", f"/api/v1/sales/{sale['id']}/void", json={})
    assert again.status_code == 409
    only_voided = (await hq.call("GET", "/api/v1/sales", params={"status": "VOIDED", "pageSize": 100})).json()
    assert all(s["status"] == "VOIDED" for s in only_voided["data"])


@pytest.mark.parametrize(("changes", "error"), [
    ({"grandTotal": 2164}, "grandTotal is 2164, expected 2163"),
    ({"subtotal": 1998.0}, "subtotal must be an integer"),
    ({"payments": [{"method": "CASH", "amount": 2000, "reference": None}]}, "payments total 2000 is less than grandTotal 2163"),
    ({"payments": [{"method": "BITCOIN", "amount": 2200}]}, "payments[0].method must be one of"),
    ({"items": []}, "items must be a non-empty array"),
])
async def test_inconsistent_sales_are_refused_with_400(hq: Client, changes: dict[str, Any], error: str) -> None:
    answer = await hq.call("POST", "/api/v1/sales", json=doc_sale(hq, **changes))
    assert answer.status_code == 400 and answer.json()["success"] is False
    assert answer.json()["error"].startswith(error)


async def test_wrong_tax_amount_is_refused(hq: Client) -> None:
    body = doc_sale(hq)
    body["items"][0]["taxes"][0]["taxAmount"] = 164
    answer = await hq.call("POST", "/api/v1/sales", json=body)
    assert answer.status_code == 400 and "expected 165" in answer.json()["error"]


def test_rounding_helpers() -> None:
    assert round_half_up(164835, 1000) == 165 and round_half_up(5, 10) == 1 and round_half_up(4, 10) == 0
    assert line_net(2000, 999) == 1998 and line_net(1250, 399) == 499
    store = create_app(products=1, customers=0, sales=0).state.hqstore
    luxury = next(g for g in store.tax_groups.values() if g.name == "Luxury")
    assert tax_amounts(1998, luxury.rates) == [165, 20, 109]  # compound 5 % on 1998 + 165 + 20


# -- inventory, transfers, sync ------------------------------------------------------------------------------
async def test_inventory_levels_and_adjustments_in_thousandths(hq: Client) -> None:
    level = (await hq.call("GET", "/api/v1/inventory", params={"pageSize": 1})).json()["data"][0]
    assert set(level) == {"id", "storeId", "productId", "quantity", "reorderLevel", "updatedAt"}
    body = {"storeId": level["storeId"], "productId": level["productId"], "quantity": 1500, "reason": "RECEIVED",
            "notes": "PO-1"}
    answer = await hq.call("POST", "/api/v1/inventory/adjustments", json=body)
    assert answer.status_code == 201
    data = answer.json()["data"]
    assert (data["quantityBefore"], data["quantityAfter"]) == (level["quantity"], level["quantity"] + 1500)
    low = await hq.call("POST", "/api/v1/inventory/adjustments", json={**body, "quantity": -10**9})
    assert low.status_code == 400 and low.json()["error"].startswith("Insufficient stock")
    for bad in ({"quantity": 0}, {"quantity": 1.5}, {"reason": "LOST"}):
        assert (await hq.call("POST", "/api/v1/inventory/adjustments", json={**body, **bad})).status_code == 400
    filtered = (await hq.call("GET", "/api/v1/inventory", params={"product_id": level["productId"],
                                                                  "store_id": level["storeId"]})).json()
    assert filtered["total"] == 1 and filtered["data"][0]["quantity"] == level["quantity"] + 1500


async def test_transfers_list_and_detail(hq: Client) -> None:
    listed = (await hq.call("GET", "/api/v1/transfers")).json()
    assert listed["total"] == 2 and "items" not in listed["data"][0]
    detail = (await hq.call("GET", f"/api/v1/transfers/{listed['data'][0]['id']}")).json()["data"]
    assert detail["status"] == "RECEIVED" and detail["items"][0]["quantity"] == 2000
    assert (await hq.call("GET", "/api/v1/transfers", params={"status": "SENT"})).json()["total"] == 1


async def test_sync_pull_uses_the_sync_token_not_the_jwt(hq: Client) -> None:
    refused = await hq.call("GET", "/api/v1/sync/pull", params={"entity": "products"})
    assert refused.status_code == 401 and refused.json()["error"] == "Invalid sync token"
    token = {"X-Sync-Token": "hqs_sync_sandbox"}
    everything = (await hq.http.get("/api/v1/sync/pull", params={"entity": "products", "pageSize": 100},
                                    headers=token)).json()
    assert everything["total"] == 12 and "serverTime" in everything
    since = (await hq.http.get("/api/v1/sync/pull", params={"entity": "products", "since": "2026-01-01T00:10:00Z"},
                               headers=token)).json()
    assert since["total"] == 3  # products 10, 11, 12 were updated at 00:10, 00:11, 00:12
    assert (await hq.http.get("/api/v1/sync/pull", params={"entity": "nope"}, headers=token)).status_code == 400
    status = (await hq.http.get("/api/v1/sync/status", headers=token)).json()["data"]
    assert status["storeId"] == next(iter(hq.store.stores))


# -- faults, seeding, serving -----------------------------------------------------------------------------
async def test_fault_knobs_answer_in_the_envelope(hq: Client) -> None:
    await hq.http.post("/_sandbox/faults", json={"error_rate": 1.0, "error_status": 503, "error_retry_after": 2})
    answer = await hq.call("GET", "/api/v1/products")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    assert answer.json() == {"success": False, "error": "Service unavailable"}
    await hq.http.delete("/_sandbox/faults")
    state = (await hq.http.get("/_sandbox/state")).json()
    assert state["hqstore"]["products"] == 12 and state["faulted"] == {"503": 1}
    unknown = await hq.call("GET", "/api/v1/nothing")
    assert unknown.status_code == 404 and unknown.json() == {"success": False, "error": "Route not found"}


def test_seeding_from_the_retail_csv() -> None:
    store = create_app(seed_csv=CSV_PATH, products=30).state.hqstore
    assert len(store.products) == 30
    assert store.sales and all(s.status == "COMPLETED" for s in store.sales.values())
    sale = next(iter(store.sales.values()))
    assert sale.grand_total == sale.subtotal + sale.tax_total
    assert all(isinstance(p.sell_price, int) for p in store.products.values())


def test_create_app_options_are_checked() -> None:
    with pytest.raises(ValueError):
        create_app(stores=0)
    with pytest.raises(ValueError):
        create_app(token_ttl=0)


def test_tillgate_sandbox_entry_point_builds_the_app() -> None:
    (found,) = [ep for ep in entry_points(group="tillgate.sandboxes") if ep.name == "hqstore"]
    app = found.load()(products=3, seed=5)
    assert len(app.state.hqstore.products) == 3
