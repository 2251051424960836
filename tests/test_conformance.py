"""The conformance suite (``gateway.testing.conformance``) instantiated for every connector.

``local`` has no vendor: it gets the checks that apply without one (valid records, write round
trips, idempotent adjustments). ``apex``, ``aipos``, ``hqstore`` and ``tenantpos`` run every
check against their seeded sandboxes, replayed from ``cassettes/<connector>/`` (``TILLGATE_RECORD_CASSETTES=1`` records them
again); the fault check runs live in process. Both run on SQLite and PostgreSQL (the ``db`` fixture).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx

from connectors.aipos import AIPOSConnector
from connectors.aipos.connector import STORE_ID
from connectors.aipos.sandbox import create_app as aipos_create_app
from connectors.aipos.sandbox import signature_header
from connectors.apex import ApexConnector
from connectors.apex.sandbox import create_app
from connectors.hqstore import HQStoreConnector
from connectors.hqstore.sandbox import create_app as hqstore_create_app
from connectors.local import LocalConnector
from connectors.tenantpos import TenantPOSConnector
from connectors.tenantpos.sandbox import SEEDED_AT as TENANTPOS_SEEDED_AT
from connectors.tenantpos.sandbox import create_app as tenantpos_create_app
from gateway.testing.conformance import ConnectorConformance, Harness, WebhookDelivery

CASSETTES = Path(__file__).resolve().parents[1] / "cassettes"


class TestLocalConformance(ConnectorConformance):
    connector = LocalConnector


def apex_sandbox() -> Any:
    """Small and seeded: products and customers span several 5-row pages."""
    return create_app(products=12, customers=7, invoices=3, warehouses=2, seed=0)


class TestApexConformance(ConnectorConformance):
    connector = ApexConnector
    credentials: ClassVar[dict[str, Any]] = {"api_key": "apx_sandbox_key"}
    bad_credentials: ClassVar[dict[str, Any] | None] = {"api_key": "apx_wrong"}
    settings: ClassVar[dict[str, Any]] = {"page_size": 5}
    sandbox = staticmethod(apex_sandbox)
    base_url = "http://apex.sandbox.test/rest_api/v1"
    cassette_dir = CASSETTES / "apex"
    samples: ClassVar[dict[str, dict[str, Any]]] = {"customers": {"name": "Sara Ali", "email": "sara@example.com", "phone": "+966509876543"}}

    def vendor_ids(self, app: Any, entity: str) -> set[str]:
        store = app.state.apex
        if entity == "locations":
            return {str(w) for w in store.warehouses}
        if entity == "categories":
            return {str(p.category_id) for p in store.products.values() if p.category_id is not None}
        if entity == "products":
            return {str(p) for p in store.products}
        if entity == "customers":
            return {str(c) for c in store.customers}
        if entity == "inventory":
            return {f"{p}:{w}" for p in store.products for w in store.warehouses}
        if entity == "orders":
            return {str(i) for i in store.invoices}
        raise AssertionError(entity)

    def delete_at_vendor(self, app: Any, entity: str) -> str:
        records = getattr(app.state.apex, entity)  # products or customers: dicts by integer id
        remote_id = max(records)
        del records[remote_id]
        return str(remote_id)


def hqstore_sandbox() -> Any:
    """Small and seeded: every list spans several 5-record pages. Access tokens live ten years so
    the tokens recorded in ``cassettes/hqstore/`` are still unexpired when they are replayed (a
    replay cannot refresh: the refresh request was never recorded)."""
    return hqstore_create_app(products=12, customers=7, sales=6, seed=0, token_ttl=10 * 365 * 24 * 3600)


class TestHQStoreConformance(ConnectorConformance):
    """Every check against the seeded HQ/Store sandbox, replayed from ``cassettes/hqstore/``;
    with a sync token, so the ``auto`` re-sync reads through ``GET /api/v1/sync/pull``."""

    connector = HQStoreConnector
    credentials: ClassVar[dict[str, Any]] = {"username": "admin", "pin": "1234", "sync_token": "hqs_sync_sandbox"}
    bad_credentials: ClassVar[dict[str, Any] | None] = {"username": "admin", "pin": "0000"}
    settings: ClassVar[dict[str, Any]] = {"page_size": 5}
    sandbox = staticmethod(hqstore_sandbox)
    base_url = "http://hqstore.sandbox.test"
    cassette_dir = CASSETTES / "hqstore"

    def vendor_ids(self, app: Any, entity: str) -> set[str]:
        store = app.state.hqstore
        if entity == "locations":
            return set(store.stores)
        if entity == "categories":
            return set(store.departments)
        if entity == "products":
            return set(store.products)
        if entity == "customers":
            return set(store.customers)
        if entity == "inventory":
            return {f"{product}:{location}" for product, location in store.levels}
        if entity == "orders":
            return set(store.sales)
        raise AssertionError(entity)

    def delete_at_vendor(self, app: Any, entity: str) -> str:
        """Purge one record at HQ (HQ/Store's own DELETE of a product only deactivates it)."""
        store = app.state.hqstore
        if entity == "products":
            remote_id = list(store.products)[-1]
            del store.products[remote_id]
            for key in [k for k in store.levels if k[0] == remote_id]:
                del store.levels[key]
            return remote_id
        remote_id = list(store.customers)[-1]
        del store.customers[remote_id]
        return remote_id


def aipos_sandbox() -> Any:
    """Small and seeded: every list spans several 5-record pages."""
    return aipos_create_app(products=12, customers=7, sales=6, seed=0)


#: when the webhook checks' sandbox changes happen (fixed: see ``webhook_deliveries``)
AIPOS_CHANGES_AT = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
#: a signing secret no AI POS endpoint of the checks has
AIPOS_WRONG_SECRET = "whsec_" + "0" * 32


class TestAIPOSConformance(ConnectorConformance):
    """Every check against the seeded AI POS sandbox, replayed from ``cassettes/aipos/``.

    AI POS declares webhooks, so it also gets the webhook checks: the sandbox signs and sends
    ``product.updated`` twice for one product and ``sale.created`` for a sale (see
    :meth:`webhook_deliveries`).
    """

    connector = AIPOSConnector
    credentials: ClassVar[dict[str, Any]] = {"api_key": "aipos_test_sandbox_key"}
    bad_credentials: ClassVar[dict[str, Any] | None] = {"api_key": "aipos_wrong"}
    settings: ClassVar[dict[str, Any]] = {"page_size": 5}
    sandbox = staticmethod(aipos_sandbox)
    base_url = "http://aipos.sandbox.test/aipos/api/v1"
    cassette_dir = CASSETTES / "aipos"
    samples: ClassVar[dict[str, dict[str, Any]]] = {
        "customers": {"name": "Asha Menon", "email": "asha.menon@example.in", "phone": "+919800000077"}}
    webhook_signature_header = "AIPOS-Signature"

    def vendor_ids(self, app: Any, entity: str) -> set[str]:
        store = app.state.aipos
        if entity == "locations":
            return {STORE_ID}
        if entity in ("products", "inventory"):
            return set(store.products)
        if entity == "customers":
            return set(store.customers)
        if entity == "orders":
            return set(store.sales)
        raise AssertionError(entity)

    def delete_at_vendor(self, app: Any, entity: str) -> str:
        store = app.state.aipos
        if entity == "products":
            product = store.products.pop(max(store.products))
            store.product_index.keys.remove((product.updated_at, product.id))
            store.inventory_index.keys.remove((product.stock_updated_at, product.id))
            return product.id
        customer = store.customers.pop(max(store.customers))
        store.customer_index.keys.remove((customer.updated_at, customer.id))
        return customer.id

    async def webhook_deliveries(self, harness: Harness) -> list[WebhookDelivery]:
        """Register the gateway in the sandbox's "dashboard" and PATCH the connection's
        ``webhook_secret`` with the secret it answers (the README's walk-through); then, at the
        sandbox, raise one product's price twice and sell another product to a customer, and
        capture the three signed deliveries the sandbox POSTs (a transport answering 200).

        The store's clock is fixed at :data:`AIPOS_CHANGES_AT` for these changes (the seeded data
        is older), so the bodies and the vendor records a later sync reads are the same on every
        run and the recorded cassettes replay; the deliveries are still signed with the real time
        (the sandbox's webhook clock), as the gateway checks them against it. The sale takes one
        unit of a product well above its low-stock threshold: no thin ``inventory.low`` follows.
        """
        store = harness.app.state.aipos
        store.clock = lambda: AIPOS_CHANGES_AT
        captured: list[httpx.Request] = []

        def receive(request: httpx.Request) -> httpx.Response:
            captured.append(request)
            return httpx.Response(200, json={"received": True})

        store.webhooks.transport = httpx.MockTransport(receive)
        endpoint = store.webhooks.register(harness.hook_url)
        with harness.api() as api:
            async with api() as http:
                patched = await http.patch(f"/v1/connections/{harness.connection_id}", json={
                    "credentials": {**self.credentials, "webhook_secret": endpoint.secret}})
        assert patched.status_code == 200, patched.text

        products = [store.products[pid] for pid in sorted(store.products)]
        changed = products[0]
        sold = next(p for p in products[1:] if p.stock > p.low_stock_threshold + 1)
        customer = sorted(store.customers)[0]
        first_price, second_price = changed.price + Decimal("5.00"), changed.price + Decimal("7.50")
        store.update_product(changed, {"price": first_price})
        store.update_product(changed, {"price": second_price})
        sale = store.create_sale(customer, [(sold.id, 1, None)], "upi")
        await store.drain()

        customer_id = (await harness.cached("customers"))[customer]["id"]
        changes = [
            ("products", changed.id, "product.updated", {"price": str(first_price)}),
            ("products", changed.id, "product.updated", {"price": str(second_price)}),
            ("orders", sale.id, "order.created", {"number": sale.id, "status": "completed",
                                                   "customer_id": customer_id, "total": str(sale.grand_total)}),
        ]
        events = list(store.events)
        assert [e.type for e in events] == ["product.updated", "product.updated", "sale.created"], events
        by_id = {request.headers["aipos-event-id"]: request for request in captured}
        assert sorted(by_id) == sorted(e.id for e in events) and len(captured) == len(events), captured
        deliveries = []
        for event, (entity, remote_id, gateway_event, expect) in zip(events, changes, strict=True):
            request = by_id[event.id]
            assert request.content == event.body
            headers = {k: v for k, v in request.headers.items()
                       if k in ("content-type", "user-agent", "aipos-event-id", "aipos-signature")}
            deliveries.append(WebhookDelivery(event_id=event.id, type=event.type, body=request.content,
                                              headers=headers, entity=entity, remote_id=remote_id,
                                              event=gateway_event, expect=expect))
        return deliveries

    def sign_webhook(self, harness: Harness, delivery: WebhookDelivery, *, timestamp: int,
                     event_id: str | None = None, wrong_secret: bool = False) -> WebhookDelivery:
        """API.md: ``AIPOS-Signature: t=<t>,v1=hex(HMAC-SHA256(secret, "<t>.<event id>.<body>"))``,
        made by the sandbox's own :func:`signature_header` with the registered endpoint's secret.
        A new event id is written into ``AIPOS-Event-Id`` and the body's ``id``."""
        (endpoint,) = harness.app.state.aipos.webhooks.endpoints.values()
        secret = AIPOS_WRONG_SECRET if wrong_secret else endpoint.secret
        body, new_id = delivery.body, delivery.event_id
        if event_id is not None:
            assert body.count(delivery.event_id.encode()) == 1, body
            body, new_id = body.replace(delivery.event_id.encode(), event_id.encode()), event_id
        headers = {**delivery.headers, "aipos-event-id": new_id,
                   "aipos-signature": signature_header([secret], timestamp, new_id, body)}
        return replace(delivery, event_id=new_id, body=body, headers=headers)


def tenantpos_sandbox() -> Any:
    """Small and seeded: every list spans several 5-record pages; every 4th product has variants.
    Seed 2 makes the first stock row (by id, the one the adjustment check adjusts) a product
    without variants: an adjustment of a product with variants must name one."""
    return tenantpos_create_app(products=12, customers=7, sales=6, stores=2, seed=2)


class TestTenantPOSConformance(ConnectorConformance):
    """Every check against the seeded TenantPOS sandbox (tenant ``demo``, logged in as its admin),
    replayed from ``cassettes/tenantpos/``. TenantPOS sends no webhooks (Socket.IO only)."""

    connector = TenantPOSConnector
    credentials: ClassVar[dict[str, Any]] = {"email": "admin@demo.test", "password": "sandbox-password",
                                             "tenant": "demo"}
    bad_credentials: ClassVar[dict[str, Any] | None] = {"email": "admin@demo.test", "password": "wrong-password",
                                                        "tenant": "demo"}
    settings: ClassVar[dict[str, Any]] = {"page_size": 5}
    volatile_body_fields: ClassVar[tuple[str, ...]] = ("reference",)  # tillgate-<adjustment id>
    sandbox = staticmethod(tenantpos_sandbox)
    base_url = "http://tenantpos.sandbox.test/api"
    cassette_dir = CASSETTES / "tenantpos"
    samples: ClassVar[dict[str, dict[str, Any]]] = {
        "products": {"name": "Conformance Latte", "sku": "CONF-0001", "price": "4.50", "barcode": "CONF-0001"},
        "customers": {"name": "Mia Conformance", "email": "mia@example.com", "phone": "+15550100"}}

    def vendor_ids(self, app: Any, entity: str) -> set[str]:
        tenant = app.state.tenantpos.tenants["demo"]
        if entity == "locations":
            return {s.id for s in tenant.stores.values() if s.deleted_at is None}
        if entity == "categories":
            return {c.id for c in tenant.categories.values() if c.deleted_at is None}
        if entity == "products":
            return {p.id for p in tenant.products.values() if p.deleted_at is None}
        if entity == "customers":
            return {c.id for c in tenant.customers.values() if c.deleted_at is None}
        if entity == "inventory":
            return {r.id for r in tenant.stock.values() if tenant.products[r.product_id].deleted_at is None
                    and (r.variant_id is None or tenant.products[r.product_id].variant(r.variant_id) is not None)}
        if entity == "orders":
            return set(tenant.sales)
        raise AssertionError(entity)

    def delete_at_vendor(self, app: Any, entity: str) -> str:
        """Soft-delete (as TenantPOS's DELETE does) the record with the greatest id, at a fixed time."""
        tenant = app.state.tenantpos.tenants["demo"]
        table = tenant.products if entity == "products" else tenant.customers
        record = table[max(k for k, v in table.items() if v.deleted_at is None)]
        record.deleted_at = record.updated_at = TENANTPOS_SEEDED_AT
        return record.id
