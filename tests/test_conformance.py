"""The conformance suite (``gateway.testing.conformance``) instantiated for every connector.

``local`` has no vendor: it gets the checks that apply without one (valid records, write round
trips, idempotent adjustments). ``apex`` and ``aipos`` run every check against their seeded
sandboxes, replayed from ``cassettes/<connector>/`` (``TILLGATE_RECORD_CASSETTES=1`` records them
again); the fault check runs live in process. Both run on SQLite and PostgreSQL (the ``db`` fixture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from connectors.aipos import AIPOSConnector
from connectors.aipos.connector import STORE_ID
from connectors.aipos.sandbox import create_app as aipos_create_app
from connectors.apex import ApexConnector
from connectors.apex.sandbox import create_app
from connectors.local import LocalConnector
from gateway.testing.conformance import ConnectorConformance

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


def aipos_sandbox() -> Any:
    """Small and seeded: every list spans several 5-record pages."""
    return aipos_create_app(products=12, customers=7, sales=6, seed=0)


class TestAIPOSConformance(ConnectorConformance):
    """Every check against the seeded AI POS sandbox, replayed from ``cassettes/aipos/``."""

    connector = AIPOSConnector
    credentials: ClassVar[dict[str, Any]] = {"api_key": "aipos_test_sandbox_key"}
    bad_credentials: ClassVar[dict[str, Any] | None] = {"api_key": "aipos_wrong"}
    settings: ClassVar[dict[str, Any]] = {"page_size": 5}
    sandbox = staticmethod(aipos_sandbox)
    base_url = "http://aipos.sandbox.test/aipos/api/v1"
    cassette_dir = CASSETTES / "aipos"
    samples: ClassVar[dict[str, dict[str, Any]]] = {
        "customers": {"name": "Asha Menon", "email": "asha.menon@example.in", "phone": "+919800000077"}}

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
