"""The TenantPOS sandbox against its contract: vendor-docs/tenant-pos-api.txt plus the choices in
connectors/tenantpos/SANDBOX.md (envelopes, token life cycle, tenant isolation, permissions,
variants, stock, sales, customers, the status codes of the doc's table and the fault knobs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.tenantpos.sandbox import ACCESS_TTL, REFRESH_TTL, create_app, dec

CSV_PATH = Path(__file__).resolve().parents[2] / "shared/data/online_retail_sample.csv"
PASSWORD = "sandbox-password"


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Vendor:
    """An httpx client on a sandbox app, logged in as one user of one tenant."""

    def __init__(self, app: Any, http: httpx.AsyncClient) -> None:
        self.app, self.http = app, http
        self.db = app.state.tenantpos
        self.tokens: dict[str, Any] = {}

    async def login(self, email: str = "admin@demo.test", tenant: str = "demo", password: str = PASSWORD) -> httpx.Response:
        answer = await self.http.post("/api/auth/login", json={"email": email, "password": password, "tenantSlug": tenant})
        if answer.status_code == 200:
            self.tokens = answer.json()["data"]
        return answer

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['accessToken']}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return await self.http.request(method, f"/api/v1{path}", headers=headers, **kwargs)

    async def data(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        answer = await self.call(method, path, **kwargs)
        assert answer.status_code == status, answer.text
        body = answer.json()
        assert body["success"] is True
        return body["data"]

    async def error(self, method: str, path: str, status: int, **kwargs: Any) -> dict[str, Any]:
        answer = await self.call(method, path, **kwargs)
        assert answer.status_code == status, answer.text
        body = answer.json()
        assert body["success"] is False and set(body["error"]) >= {"code", "message"}, body
        return body["error"]


@pytest.fixture
async def vendor() -> AsyncIterator[Vendor]:
    app = create_app(products=12, customers=7, sales=6, seed=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tenantpos.test") as http:
        v = Vendor(app, http)
        assert (await v.login()).status_code == 200
        yield v


def tenant(v: Vendor, slug: str = "demo") -> Any:
    return v.db.tenants[slug]


# --- auth ----------------------------------------------------------------------------------------------
async def test_login_answers_documented_lifespans_and_bad_credentials_are_401(vendor: Vendor) -> None:
    assert vendor.tokens["expiresIn"] == ACCESS_TTL == 15 * 60
    assert vendor.tokens["refreshExpiresIn"] == REFRESH_TTL == 7 * 24 * 3600
    assert vendor.tokens["tokenType"] == "Bearer" and vendor.tokens["user"]["role"] == "ADMIN"
    wrong = await vendor.login(password="nope")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "INVALID_CREDENTIALS"
    other = await vendor.login(tenant="nowhere")
    assert other.status_code == 401
    bad = await vendor.http.post("/api/auth/login", json={"email": "admin@demo.test"})
    assert bad.status_code == 400
    paths = {tuple(d["path"]) for d in bad.json()["error"]["details"]}
    assert paths == {("password",), ("tenantSlug",)}
    missing = await vendor.http.get("/api/v1/products")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "UNAUTHORIZED"


async def test_access_tokens_expire_after_15_minutes_and_refresh_rotates_for_7_days() -> None:
    clock = FakeClock()
    app = create_app(products=3, customers=1, sales=0, token_clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        v = Vendor(app, http)
        await v.login()
        clock.now += ACCESS_TTL - 1
        assert (await v.call("GET", "/products")).status_code == 200
        clock.now += 1
        expired = await v.call("GET", "/products")
        assert expired.status_code == 401 and expired.json()["error"]["code"] == "TOKEN_EXPIRED"
        old_refresh = v.tokens["refreshToken"]
        renewed = await http.post("/api/auth/refresh", json={"refreshToken": old_refresh})
        assert renewed.status_code == 200, renewed.text
        v.tokens = renewed.json()["data"]
        assert v.tokens["refreshToken"] != old_refresh and v.tokens["expiresIn"] == ACCESS_TTL
        assert (await v.call("GET", "/products")).status_code == 200
        reused = await http.post("/api/auth/refresh", json={"refreshToken": old_refresh})
        assert reused.status_code == 401 and reused.json()["error"]["code"] == "INVALID_REFRESH_TOKEN"
        clock.now += REFRESH_TTL
        late = await http.post("/api/auth/refresh", json={"refreshToken": v.tokens["refreshToken"]})
        assert late.status_code == 401


async def test_logout_revokes_the_session_and_change_password_revokes_all(vendor: Vendor) -> None:
    first = dict(vendor.tokens)
    await vendor.login()
    second = dict(vendor.tokens)
    answer = await vendor.http.post("/api/auth/logout", json={"refreshToken": second["refreshToken"]},
                                    headers={"Authorization": f"Bearer {second['accessToken']}"})
    assert answer.status_code == 200, answer.text
    assert (await vendor.http.post("/api/auth/refresh", json={"refreshToken": second["refreshToken"]})).status_code == 401
    vendor.tokens = first
    assert (await vendor.call("GET", "/products")).status_code == 200  # the other session lives on
    changed = await vendor.http.patch("/api/auth/change-password", headers=vendor.headers(),
                                      json={"currentPassword": PASSWORD, "newPassword": "another-password"})
    assert changed.status_code == 200, changed.text
    assert (await vendor.call("GET", "/products")).status_code == 401
    assert (await vendor.login(password="another-password")).status_code == 200
    everywhere = await vendor.http.post("/api/auth/logout-all", headers=vendor.headers())
    assert everywhere.status_code == 200
    assert (await vendor.call("GET", "/products")).status_code == 401


async def test_token_knobs_expire_access_tokens_and_shorten_lifetimes(vendor: Vendor) -> None:
    admin = await vendor.http.post("/_sandbox/tokens", json={"expire_now": True})
    assert admin.status_code == 200
    assert (await vendor.call("GET", "/products")).status_code == 401
    knobs = await vendor.http.post("/_sandbox/tokens", json={"access_ttl": 60, "advertised_ttl": 900})
    assert knobs.json()["access_ttl"] == 60
    await vendor.login()
    assert vendor.tokens["expiresIn"] == 900
    assert (await vendor.http.post("/_sandbox/tokens", json={"access_ttl": 0})).status_code == 422
    assert (await vendor.http.post("/_sandbox/tokens", json={"bogus": 1})).status_code == 422


# --- tenancy and permissions ---------------------------------------------------------------------------
async def test_another_tenants_ids_answer_404_and_lists_are_tenant_scoped(vendor: Vendor) -> None:
    acme = tenant(vendor, "acme")
    foreign = next(iter(acme.products))
    error = await vendor.error("GET", f"/products/{foreign}", 404)
    assert error["code"] == "NOT_FOUND"
    listed = await vendor.data("GET", "/products?limit=100")
    assert {p["id"] for p in listed} == set(tenant(vendor).products)
    await vendor.login("admin@acme.test", "acme")
    assert {p["id"] for p in await vendor.data("GET", "/products?limit=100")} == set(acme.products)


async def test_a_role_without_the_permission_gets_403(vendor: Vendor) -> None:
    await vendor.login("cashier@demo.test")
    assert (await vendor.call("GET", "/products")).status_code == 200
    error = await vendor.error("POST", "/products", 403, json={"name": "x", "sku": "X-1", "sellingPrice": "1"})
    assert error["code"] == "FORBIDDEN"
    await vendor.error("POST", "/inventory/stock/adjust", 403, json={})
    await vendor.error("GET", "/stores", 403)


# --- products, variants, categories --------------------------------------------------------------------
async def test_products_list_with_page_meta_and_limits(vendor: Vendor) -> None:
    answer = await vendor.call("GET", "/products?page=2&limit=5")
    body = answer.json()
    assert body["meta"] == {"page": 2, "limit": 5, "total": 12, "totalPages": 3}
    assert len(body["data"]) == 5
    error = await vendor.error("GET", "/products?limit=101", 400)
    assert error["code"] == "VALIDATION_ERROR" and error["details"][0]["path"] == ["limit"]
    product = body["data"][0]
    assert isinstance(product["sellingPrice"], str) and isinstance(product["taxRate"], str)
    assert product["createdAt"].endswith(".000Z")


async def test_product_with_variants_create_lookup_and_duplicate_sku(vendor: Vendor) -> None:
    created = await vendor.data("POST", "/products", 201, json={
        "name": "Hoodie", "sku": "HOOD", "sellingPrice": "39.90", "taxRate": "8.25",
        "variants": [{"name": "Small", "sku": "HOOD-S", "barcode": "5000000000017", "attributes": {"size": "S"}},
                     {"name": "Large", "sku": "HOOD-L", "attributes": {"size": "L"}, "sellingPrice": 42.5}]})
    assert [v["sku"] for v in created["variants"]] == ["HOOD-S", "HOOD-L"]
    assert created["sellingPrice"] == "39.9" and created["variants"][1]["sellingPrice"] == "42.5"
    rows = [r for r in tenant(vendor).stock.values() if r.product_id == created["id"]]
    assert {r.variant_id for r in rows} == {v["id"] for v in created["variants"]} and len(rows) == 4  # 2 stores
    found = await vendor.data("GET", "/products/lookup/barcode/5000000000017")
    assert found["id"] == created["id"] and found["matchedVariantId"] == created["variants"][0]["id"]
    await vendor.error("GET", "/products/lookup/barcode/0000", 404)
    for sku in ("HOOD", "HOOD-L"):
        error = await vendor.error("POST", "/products", 409, json={"name": "Again", "sku": sku, "sellingPrice": "1"})
        assert error["code"] == "DUPLICATE_SKU"
    medium = await vendor.data("POST", f"/products/{created['id']}/variants", 201,
                               json={"name": "Medium", "sku": "HOOD-M", "attributes": {"size": "M"}})
    await vendor.data("DELETE", f"/products/{created['id']}/variants/{created['variants'][0]['id']}")
    again = await vendor.data("GET", f"/products/{created['id']}")
    assert [v["sku"] for v in again["variants"]] == ["HOOD-L", "HOOD-M"] and again["variants"][1]["id"] == medium["id"]
    await vendor.data("DELETE", f"/products/{created['id']}")
    await vendor.error("GET", f"/products/{created['id']}", 404)


async def test_zod_validation_details_name_every_field(vendor: Vendor) -> None:
    error = await vendor.error("POST", "/products", 400, json={"name": "", "sellingPrice": "-1",
                                                               "variants": [{"name": "S"}]})
    paths = {tuple(d["path"]) for d in error["details"]}
    assert paths == {("name",), ("sku",), ("sellingPrice",), ("variants", 0, "sku")}
    assert all(isinstance(d["message"], str) and d["code"] for d in error["details"])
    bad_json = await vendor.call("POST", "/products", content=b"{", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400


async def test_category_tree_and_flat_list(vendor: Vendor) -> None:
    tree = await vendor.data("GET", "/products/categories")
    assert [c["name"] for c in tree] == ["Beverages", "Bakery", "Apparel"]
    beverages = tree[0]
    assert [c["name"] for c in beverages["children"]] == ["Hot Drinks", "Cold Drinks"]
    assert all(c["parentId"] == beverages["id"] for c in beverages["children"])
    flat = await vendor.data("GET", "/products/categories?flat=true")
    assert len(flat) == 6 and all("children" not in c for c in flat)
    child = await vendor.data("POST", "/products/categories", 201, json={"name": "Espresso Drinks",
                                                                         "parentId": beverages["children"][0]["id"]})
    cycle = await vendor.error("PATCH", f"/products/categories/{beverages['id']}", 422, json={"parentId": child["id"]})
    assert cycle["code"] == "INVALID_PARENT"


# --- inventory ------------------------------------------------------------------------------------------
def _plain_row(v: Vendor) -> Any:
    t = tenant(v)
    return next(r for r in sorted(t.stock.values(), key=lambda r: r.id) if r.variant_id is None)


async def test_adjust_set_threshold_low_and_movements(vendor: Vendor) -> None:
    row = _plain_row(vendor)
    before = row.quantity
    key = {"storeId": row.store_id, "productId": row.product_id}
    adjusted = await vendor.data("POST", "/inventory/stock/adjust", json={**key, "quantity": "-1.5", "reason": "DAMAGE",
                                                                          "reference": "ref-1"})
    assert Decimal(adjusted["stock"]["quantity"]) == before - Decimal("1.5")
    assert adjusted["movement"]["type"] == "ADJUSTMENT" and adjusted["movement"]["reference"] == "ref-1"
    short = await vendor.error("POST", "/inventory/stock/adjust", 422, json={**key, "quantity": "-100000"})
    assert short["code"] == "INSUFFICIENT_STOCK"
    zero = await vendor.error("POST", "/inventory/stock/adjust", 400, json={**key, "quantity": 0})
    assert zero["details"][0]["path"] == ["quantity"]
    done = await vendor.data("POST", "/inventory/stock/set", json={**key, "quantity": "4"})
    assert done["stock"]["quantity"] == "4" and Decimal(done["movement"]["quantity"]) == 4 - (before - Decimal("1.5"))
    level = await vendor.data("PATCH", f"/inventory/stock/{row.store_id}/{row.product_id}/threshold",
                              json={"lowStockThreshold": "5"})
    assert level["lowStockThreshold"] == "5" and level["isLow"] is True
    low = await vendor.data("GET", "/inventory/stock/low?limit=100")
    assert row.id in {r["id"] for r in low}
    moves = await vendor.data("GET", f"/inventory/movements?productId={row.product_id}&storeId={row.store_id}"
                                     "&reference=ref-1")
    assert [m["quantity"] for m in moves] == ["-1.5"]
    since = (row.updated_at - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    recent = await vendor.data("GET", f"/inventory/movements?since={since}&limit=100")
    assert [m["type"] for m in recent] == ["ADJUSTMENT", "SET"]


async def test_products_with_variants_keep_stock_per_variant(vendor: Vendor) -> None:
    t = tenant(vendor)
    product = next(p for p in t.products.values() if p.variants)
    store = next(iter(t.stores))
    error = await vendor.error("POST", "/inventory/stock/adjust", 400,
                               json={"storeId": store, "productId": product.id, "quantity": "1"})
    assert error["details"][0]["path"] == ["variantId"]
    variant = product.variants[1]
    answer = await vendor.data("POST", "/inventory/stock/adjust", json={
        "storeId": store, "productId": product.id, "variantId": variant.id, "quantity": "2"})
    assert answer["stock"]["variantId"] == variant.id
    rows = await vendor.data("GET", f"/inventory/stock?productId={product.id}&storeId={store}&variantId={variant.id}")
    assert [r["id"] for r in rows] == [answer["stock"]["id"]]


# --- sales, payments, customers -------------------------------------------------------------------------
async def test_checkout_totals_change_void_and_partial_return(vendor: Vendor) -> None:
    t = tenant(vendor)
    row = _plain_row(vendor)
    product = t.products[row.product_id]
    row.quantity = Decimal(10)
    customer = next(iter(t.customers.values()))
    points = customer.loyalty_points
    sale = await vendor.data("POST", "/sales/checkout", 201, json={
        "storeId": row.store_id, "customerId": customer.id,
        "items": [{"productId": product.id, "quantity": "3", "unitPrice": "2.00", "discount": "0.50"}],
        "payments": [{"method": "CASH", "amount": "20"}]})
    rate = product.tax_rate
    tax = ((Decimal("6.00") - Decimal("0.50")) * rate / 100).quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    total = Decimal("5.50") + tax
    assert (Decimal(sale["subtotal"]), Decimal(sale["discountTotal"]), Decimal(sale["taxTotal"])) == (6, Decimal("0.5"), tax)
    assert Decimal(sale["total"]) == total and Decimal(sale["changeAmount"]) == 20 - total
    assert sale["paymentStatus"] == "PAID" and Decimal(sale["paidAmount"]) == total
    assert row.quantity == 7 and customer.loyalty_points == points + int(total / 10)
    returned = await vendor.data("POST", f"/sales/{sale['id']}/return", json={
        "items": [{"saleItemId": sale["items"][0]["id"], "quantity": "1"}], "reason": "Damaged"})
    assert returned["status"] == "PARTIALLY_RETURNED" and row.quantity == 8
    assert Decimal(returned["returns"][0]["amount"]) == (total / 3).quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    too_many = await vendor.error("POST", f"/sales/{sale['id']}/return", 422, json={
        "items": [{"saleItemId": sale["items"][0]["id"], "quantity": "5"}]})
    assert too_many["code"] == "RETURN_EXCEEDS_SALE"
    not_voidable = await vendor.error("POST", f"/sales/{sale['id']}/void", 422, json={})
    assert not_voidable["code"] == "SALE_NOT_VOIDABLE"
    second = await vendor.data("POST", "/sales/checkout", 201, json={
        "storeId": row.store_id, "items": [{"productId": product.id, "quantity": "2"}],
        "payments": [{"method": "CARD", "amount": dec(Decimal(2) * product.selling_price * (1 + rate / 100))}]})
    assert row.quantity == 6
    voided = await vendor.data("POST", f"/sales/{second['id']}/void", json={"reason": "test"})
    assert voided["status"] == "VOIDED" and voided["voidReason"] == "test" and row.quantity == 8


async def test_checkout_business_errors(vendor: Vendor) -> None:
    t = tenant(vendor)
    row = _plain_row(vendor)
    row.quantity = Decimal(1)
    item = {"productId": row.product_id, "quantity": "2"}
    error = await vendor.error("POST", "/sales/checkout", 422, json={"storeId": row.store_id, "items": [item]})
    assert error["code"] == "INSUFFICIENT_STOCK"
    item["quantity"] = "1"
    unpaid = await vendor.error("POST", "/sales/checkout", 422, json={"storeId": row.store_id, "items": [item]})
    assert unpaid["code"] == "PAYMENT_REQUIRED"
    limited = next(c for c in t.customers.values() if c.credit_limit is not None)
    limited.balance = limited.credit_limit
    over = await vendor.error("POST", "/sales/checkout", 422, json={"storeId": row.store_id, "customerId": limited.id,
                                                                    "items": [item]})
    assert over["code"] == "CREDIT_LIMIT_EXCEEDED"
    open_account = next(c for c in t.customers.values() if c.credit_limit is None)
    sale = await vendor.data("POST", "/sales/checkout", 201, json={"storeId": row.store_id, "customerId": open_account.id,
                                                                   "items": [item]})
    assert sale["paymentStatus"] == "DUE" and Decimal(sale["dueAmount"]) == Decimal(sale["total"])
    payment = await vendor.data("POST", "/payments/collect-due", 201, json={"saleId": sale["id"], "method": "CARD",
                                                                            "amount": sale["total"]})
    assert payment["saleId"] == sale["id"]
    assert (await vendor.data("GET", f"/sales/{sale['id']}"))["paymentStatus"] == "PAID"
    assert open_account.balance == 0
    history = await vendor.data("GET", f"/payments/customer/{open_account.id}")
    assert payment["id"] in {p["id"] for p in history}


async def test_customers_groups_loyalty_and_duplicates(vendor: Vendor) -> None:
    groups = await vendor.data("GET", "/customers/groups")
    assert [g["name"] for g in groups] == ["Regular", "VIP", "Staff"]
    created = await vendor.data("POST", "/customers", 201, json={"name": "Noor", "email": "noor@example.com",
                                                                 "groupId": groups[1]["id"], "creditLimit": "250"})
    assert created["group"]["name"] == "VIP" and created["creditLimit"] == "250" and created["loyaltyPoints"] == 0
    dup = await vendor.error("POST", "/customers", 409, json={"name": "Other", "email": "noor@example.com"})
    assert dup["code"] == "DUPLICATE_CUSTOMER"
    adjusted = await vendor.data("POST", f"/customers/{created['id']}/loyalty/adjust", json={"points": 40, "reason": "promo"})
    assert adjusted["loyaltyPoints"] == 40
    short = await vendor.error("POST", f"/customers/{created['id']}/loyalty/adjust", 422,
                               json={"points": -41, "reason": "redeem"})
    assert short["code"] == "INSUFFICIENT_POINTS"
    history = await vendor.data("GET", f"/customers/{created['id']}/loyalty")
    assert history["points"] == 40 and [h["points"] for h in history["history"]] == [40]
    program = await vendor.data("GET", "/customers/loyalty/program")
    assert program["isActive"] is True


# --- faults, seeding, determinism ------------------------------------------------------------------------
async def test_rate_limit_fault_answers_429_with_retry_after_in_the_envelope(vendor: Vendor) -> None:
    await vendor.http.post("/_sandbox/faults", json={"rate_limit_every": 1, "rate_limit_burst": 1,
                                                     "rate_limit_retry_after": 7})
    assert (await vendor.call("GET", "/products")).status_code == 200
    limited = await vendor.call("GET", "/products")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert limited.json() == {"success": False, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}


async def test_seeding_is_deterministic_and_csv_seeding_works() -> None:
    first, second = create_app(products=8, seed=5), create_app(products=8, seed=5)
    ids = [sorted(a.state.tenantpos.tenants["demo"].products) for a in (first, second)]
    assert ids[0] == ids[1]
    app = create_app(seed_csv=CSV_PATH, products=25)
    demo = app.state.tenantpos.tenants["demo"]
    assert len(demo.products) == 25 and demo.customers
    assert all(isinstance(p.selling_price, Decimal) for p in demo.products.values())


async def test_changes_are_stamped_by_the_sandbox_clock() -> None:
    moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    app = create_app(products=3, customers=1, sales=0, clock=lambda: moment)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        v = Vendor(app, http)
        await v.login()
        created = await v.data("POST", "/customers", 201, json={"name": "Clocked"})
        assert created["createdAt"] == "2026-03-01T12:00:00.000Z"
