"""Property-based fuzzing of the whole public API from its own ``/openapi.json`` (schemathesis).

The app runs in process on a migrated SQLite file with one tenant and a seeded ``local``
connection (locations, categories, products with and without variants, customers, orders,
adjustments). Generated path parameters and body references (``product_id``, ``sku``,
``location_id``, ``line_id``, ...) are swapped, most of the time, for real ids, so requests
reach the handlers and the write paths succeed instead of all answering 404/422. Every response
must not be a 5xx and must use a documented status code, content type and schema; invalid
inputs (schemathesis' negative mode) go through the same checks. A last test asserts that every
operation answered 2xx at least once.

Bounded for CI: ``TILLGATE_FUZZ_EXAMPLES`` (default 40) examples per operation, no deadline.
Runs are random by default so repeated runs explore further; ``TILLGATE_FUZZ_SEED`` pins one.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import itertools
import os
import shutil
import tempfile
import threading
import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from gateway.api.app import create_app
from gateway.api.deps import Services
from gateway.services.tenants import create_tenant
from gateway.settings import Settings
from gateway.storage.db import Database
from gateway.storage.migrate import upgrade

FUZZ_EXAMPLES = int(os.environ.get("TILLGATE_FUZZ_EXAMPLES", "40"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _run_async(coro_factory):
    """Run a coroutine on a private event loop in a worker thread (never the test's loop)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro_factory())
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller)
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _ok(response, status: int = 201) -> dict:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    return response.json()


class Seed:
    """Real ids of the seeded tenant, used to steer generated requests onto existing objects."""

    def __init__(self) -> None:
        self.connection = ""
        self.patch_connections: list[str] = []
        self.delete_connections: list[str] = []
        self.locations: list[str] = []
        self.categories: list[str] = []
        self.products: list[str] = []          # stable: sold and adjusted
        self.mutable_products: list[str] = []  # patched and deleted by the fuzzer
        self.counted_products: list[str] = []  # absolute counts (PUT) set their stock
        self.variants: list[str] = []
        self.skus: list[str] = []
        self.customers: list[str] = []
        self.orders: list[str] = []       # refunded by the fuzzer
        self.void_orders: list[str] = []  # voided by the fuzzer (a refunded order cannot be voided)
        self.lines: list[str] = []
        self.order_lines: dict[str, list[str]] = {}
        self.references: list[dict[str, str]] = []  # what an order line or adjustment can name
        self.connectors = ["local"]
        self.currencies = ["GBP"]
        self.adjustments: list[str] = []
        self.inventory: list[str] = []
        self.endpoints: list[str] = []         # webhook endpoints (no worker runs: deliveries stay pending)
        self.delete_endpoints: list[str] = []
        self.deliveries: dict[str, list[str]] = {}
        self.links: list[str] = []             # inventory links between locations of spare connections
        self.delete_links: list[str] = []
        self.free_members: list[list[dict[str, str]]] = []  # pairs of locations in no link yet
        self.urls = ["https://hooks.example.com/tillgate", "https://erp.example.org/in/webhooks?src=pos"]

    def record_ids(self, entity: str) -> list[str]:
        return {
            "products": self.products + self.mutable_products + self.counted_products, "categories": self.categories,
            "locations": self.locations, "customers": self.customers, "orders": self.orders + self.void_orders,
            "inventory": self.inventory,
        }[entity]


def _seed(http) -> Seed:
    seed = Seed()
    con = _ok(http.post("/v1/connections", json={"connector": "local", "name": "Fuzz shop"}))["id"]
    seed.connection = con
    seed.patch_connections = [_ok(http.post("/v1/connections", json={"connector": "local", "name": f"P{n}"}))["id"]
                              for n in range(2)]
    seed.delete_connections = [_ok(http.post("/v1/connections", json={"connector": "local", "name": f"D{n}"}))["id"]
                               for n in range(3)]
    base = f"/v1/connections/{con}"
    for n in range(5):
        endpoint = _ok(http.post("/v1/webhook-endpoints", json={"url": seed.urls[n % 2], "events": ["*"]}))
        (seed.endpoints if n < 3 else seed.delete_endpoints).append(endpoint["id"])
    _ok(http.post(f"{base}/locations", json={"name": "Depot", "kind": "warehouse"}))
    seed.locations = [loc["id"] for loc in _ok(http.get(f"{base}/locations"), 200)["data"]]
    seed.categories = [_ok(http.post(f"{base}/categories", json={"name": "Kitchen"}))["id"]]
    seed.categories.append(_ok(http.post(f"{base}/categories", json={"name": "Mugs", "parent_id": seed.categories[0]}))["id"])
    products = [
        {"sku": "FZ-MUG", "name": "Mug", "price": "10.00", "tax_rate": "20", "tax_inclusive": True,
         "category_ids": [seed.categories[1]]},
        {"sku": "FZ-PAN", "name": "Pan", "price": "24.99", "taxes": [{"name": "GST", "rate": "5"},
                                                                      {"name": "QST", "rate": "9.975", "compound": True}]},
        {"sku": "FZ-TEE", "name": "Tee", "price": "15.00", "tax_rate": "20",
         "variants": [{"sku": "FZ-TEE-S", "name": "S", "options": {"size": "S"}},
                      {"sku": "FZ-TEE-M", "name": "M", "options": {"size": "M"}, "price": "16.00"}]},
        {"sku": "FZ-GIFT", "name": "Gift card", "price": "25.00", "track_inventory": False},
    ]
    for body in products:
        product = _ok(http.post(f"{base}/products", json=body))
        seed.products.append(product["id"])
        seed.skus.append(product["sku"])
        seed.variants += [v["id"] for v in product["variants"]]
        seed.skus += [v["sku"] for v in product["variants"]]
        levels = [(product["id"], v["id"]) for v in product["variants"]] or [(product["id"], None)]
        seed.references += [{"product_id": p, "variant_id": v} for p, v in levels] + [{"sku": product["sku"]}]
        if product["track_inventory"]:
            for product_id, variant_id in levels:
                adjustment = _ok(http.post(f"{base}/inventory/adjustments", headers={"Idempotency-Key": uuid.uuid4().hex},
                                           json={"product_id": product_id, "variant_id": variant_id,
                                                 "location_id": seed.locations[0], "delta": "1000000000",
                                                 "reason": "restock"}), 202)
                seed.adjustments.append(adjustment["id"])
    for n in range(6):
        product = _ok(http.post(f"{base}/products", json={"sku": f"FZ-TMP-{n}", "name": f"Temp {n}", "price": "1.00"}))
        seed.mutable_products.append(product["id"])
        product = _ok(http.post(f"{base}/products", json={"sku": f"FZ-CNT-{n}", "name": f"Count {n}", "price": "1.00"}))
        seed.counted_products.append(product["id"])
    seed.customers = [
        _ok(http.post(f"{base}/customers", json={"name": "Ada", "email": "ada@example.com"}))["id"],
        _ok(http.post(f"{base}/customers", json={"name": "Bob", "credit_limit": "500.00"}))["id"],
    ]
    for n in range(24):
        order = _ok(http.post(f"{base}/orders", json={
            "customer_id": seed.customers[n % 2],
            "lines": [{"sku": "FZ-MUG", "quantity": "2"}, {"product_id": seed.products[1], "quantity": "1"}],
            "payments": [{"method": "cash", "amount": "100.00"}],
        }))
        (seed.orders if n % 2 else seed.void_orders).append(order["id"])
        seed.order_lines[order["id"]] = [line["id"] for line in order["lines"]]
        seed.lines += seed.order_lines[order["id"]]
    seed.inventory = [level["id"] for level in _ok(http.get(f"{base}/inventory", params={"limit": 200}), 200)["data"]]
    members = []
    for n in range(10):
        spare = _ok(http.post("/v1/connections", json={"connector": "local", "name": f"Linked {n}"}))["id"]
        location = _ok(http.get(f"/v1/connections/{spare}/locations"), 200)["data"][0]["id"]
        members.append({"connection_id": spare, "location_id": location})
    for n in range(3):
        link = _ok(http.post("/v1/inventory-links", json={"members": members[2 * n:2 * n + 2], "match_by": "sku"}))
        (seed.links if n < 2 else seed.delete_links).append(link["id"])
    seed.free_members = [members[6:8], members[8:10]]
    for endpoint_id in seed.endpoints:
        log = _ok(http.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", params={"limit": 20}), 200)["data"]
        seed.deliveries[endpoint_id] = [d["id"] for d in log]
    return seed


# The app and its schema exist at import time (schemathesis parametrizes at collection); the
# database file is migrated and seeded by the ``fuzz_env`` fixture before the first request that
# needs it (loading /openapi.json touches no database).
_DB_DIR = tempfile.mkdtemp(prefix="tillgate-fuzz-")
atexit.register(shutil.rmtree, _DB_DIR, True)
DB_URL = f"sqlite:///{_DB_DIR}/fuzz.db"
SETTINGS = Settings(database_url=DB_URL, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                    api_rate_limit="1000000/minute")
APP = create_app(SETTINGS, services=Services.build(SETTINGS))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
if os.environ.get("TILLGATE_FUZZ_SEED"):
    schema.config.seed = int(os.environ["TILLGATE_FUZZ_SEED"])


@pytest.fixture(scope="module")
def fuzz_env():
    """The tenant's key and the seeded ids (migrates and seeds the app's database once)."""
    upgrade(DB_URL)

    async def make_tenant() -> str:
        db = Database(DB_URL)
        try:
            _, key = await create_tenant(db, "fuzz")
        finally:
            await db.dispose()
        return key.secret

    key = _run_async(make_tenant)
    # The app runs on schemathesis' own event loop thread, for the seeding too.
    with asgi.get_client(APP) as http:
        http.headers["Authorization"] = f"Bearer {key}"
        seed = _seed(http)
    return key, seed


#: Body fields that reference other objects, and the seeded pool their real values come from.
REFERENCE_FIELDS = {
    "product_id": "products", "variant_id": "variants", "location_id": "locations", "customer_id": "customers",
    "parent_id": "categories", "line_id": "lines", "sku": "skus", "connector": "connectors", "currency": "currencies",
    "url": "urls",
}
#: List fields steered to valid values as a whole.
LIST_FIELDS = {"events": [["*"], ["order.*", "inventory.updated"], ["product.created"]]}
#: Values that let a sale or stock change go through, for fields that are usually generated huge.
SMALL = {"quantity": ["1", "2", "0.5", "3"], "delta": ["1", "-1", "5", "-2", "0.25"],
         "on_hand": ["0", "7", "100000", "12.5"], "discount": ["0", "0.50"]}


class Steer:
    """Swaps reference fields of a generated body for real ids, gives a line or adjustment that
    names no product one, and shrinks quantities, so writes can succeed.

    A case is *tidy* (every swap made) or *wild* (each swap with probability 3/4). Every choice
    that steers is Hypothesis' simplest value (0, False), so explicit and shrunk examples are
    steered too.
    """

    def __init__(self, seed: Seed, data: st.DataObject, pools: dict[str, list[str]]) -> None:
        self.seed, self.data, self.pools = seed, data, pools
        self.tidy = not data.draw(st.booleans(), label="wild")

    def yes(self, label: str) -> bool:
        return self.tidy or self.data.draw(st.integers(0, 3), label=label) < 3

    def pick(self, pool: list[Any], label: str) -> Any:
        return self.data.draw(st.sampled_from(pool), label=label)

    def body(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.body(item) for item in value]
        if not isinstance(value, dict):
            return value
        out = {}
        for key, item in value.items():
            pool = self.pools.get(REFERENCE_FIELDS.get(key, ""))
            if pool and isinstance(item, str) and self.yes(f"steer {key}"):
                item = self.pick(pool, key)
            elif key in LIST_FIELDS and isinstance(item, list) and self.yes(f"steer {key}"):
                item = self.pick(LIST_FIELDS[key], key)
            elif key == "members" and isinstance(item, list) and self.yes("steer members"):
                item = self.pick(self.seed.free_members, key)
            elif key == "connection_ids" and isinstance(item, list) and self.yes("steer connection_ids"):
                item = [self.seed.connection]
            elif key in ("from_seq", "to_seq") and isinstance(item, int) and self.yes(f"small {key}"):
                item = self.pick([1, 5, 50, 10_000], key)
            elif key == "category_ids" and isinstance(item, list) and self.yes("steer categories"):
                item = self.data.draw(st.lists(st.sampled_from(self.seed.categories), max_size=2, unique=True), label=key)
            elif key in SMALL and isinstance(item, str) and self.yes(f"small {key}"):
                item = self.pick(SMALL[key], key)
            elif key == "method" and self.tidy and "amount" in value:
                item = "cash"  # other tenders may not overpay, and credit needs an account
            else:
                item = self.body(item)
            out[key] = item
        if ("quantity" in out and "line_id" not in out) or "delta" in out:
            if not out.get("product_id") and not out.get("sku") and self.yes("add reference"):
                out.update(self.pick(self.seed.references, "reference"))
        return out


KEYS = itertools.count(1)


def _steer(case, seed: Seed, data: st.DataObject) -> None:
    """Point path parameters and body references at seeded objects most of the time."""
    path, method = case.operation.path, case.method.upper()
    params = case.path_parameters or {}

    def real(name: str, pool: list[str]) -> None:
        if name in params and pool and data.draw(st.integers(0, 7), label=f"real {name}") < 7:
            params[name] = data.draw(st.sampled_from(pool), label=name)

    if path == "/v1/connections/{connection_id}" and method in ("PATCH", "DELETE"):
        real("connection_id", seed.patch_connections if method == "PATCH" else seed.delete_connections)
    else:
        real("connection_id", [seed.connection])
    if path.endswith("/{record_id}"):
        entity = path.split("/")[-2]
        pool = seed.mutable_products if entity == "products" and method != "GET" else seed.record_ids(entity)
        real("record_id", pool)
    real("order_id", seed.void_orders if path.endswith("/void") else seed.orders)
    real("adjustment_id", seed.adjustments)
    real("product_id", seed.counted_products)  # only PUT .../inventory/{product_id}/{location_id}
    real("location_id", seed.locations)
    real("endpoint_id", seed.delete_endpoints if method == "DELETE" else seed.endpoints)
    real("delivery_id", seed.deliveries.get(params.get("endpoint_id", ""), []))
    real("link_id", seed.delete_links if method == "DELETE" else seed.links)
    pools = {name: getattr(seed, name) for name in set(REFERENCE_FIELDS.values())}
    pools["lines"] = seed.order_lines.get(params.get("order_id", ""), seed.lines)
    steer = Steer(seed, data, pools)
    if isinstance(case.body, dict):
        case.body = steer.body(case.body)
    if steer.tidy and isinstance((case.headers or {}).get("Idempotency-Key"), str):
        # Generated keys repeat across cases (422 idempotency_key_reused); a tidy case gets a fresh one.
        case.headers["Idempotency-Key"] = f"fuzz-{next(KEYS)}"


@schema.parametrize()
@schema.given(data=st.data())
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_api_conforms_to_its_openapi_document(case, data, fuzz_env):
    """No 5xx, and every response's status, content type and body are the documented ones."""
    key, seed = fuzz_env
    _steer(case, seed, data)
    response = case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
    code = response.json().get("code") if response.status_code >= 400 else ""
    OUTCOMES.setdefault(case.operation.label, collections.Counter())[(response.status_code, code)] += 1


#: (status, problem code) counts per operation, for the reach check below and for debugging
#: (``TILLGATE_FUZZ_REPORT=1`` prints them).
OUTCOMES: dict[str, collections.Counter] = {}


def test_fuzzing_reached_every_handler():
    """Each operation fuzzed above answered 2xx at least once: the seeded ids steer requests past
    authentication and lookups, so the checks above saw real successes, not only 404s."""
    if os.environ.get("TILLGATE_FUZZ_REPORT"):
        for label, counter in sorted(OUTCOMES.items()):
            print(label, dict(counter.most_common(8)))
    never = sorted(label for label, counter in OUTCOMES.items() if not any(200 <= s < 300 for s, _ in counter))
    # The fuzzed app has only local connections, which keep their cache themselves: a sync or
    # reconcile request is always refused (422 operation_not_supported); tests/test_sync.py and
    # tests/test_reconcile.py cover their 202 paths. They
    # receive no vendor webhooks either (422); tests/test_webhooks_inbound.py covers /hooks' 200. Nor
    # do they have vendor receipts (422); tests/test_aipos_connector.py covers the PDF's 200.
    expected_never = {label for label in never if (label.startswith("POST")
                      and (label.endswith(("/sync", "/inventory/reconcile")) or "/hooks/" in label))
                      or (label.startswith("GET") and label.endswith("/receipt"))}
    assert not set(never) - expected_never, f"never answered 2xx: {never}"
