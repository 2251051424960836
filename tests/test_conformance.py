"""The conformance suite (``gateway.testing.conformance``) instantiated for every connector.

``local`` has no vendor: it gets the checks that apply without one (valid records, write round
trips, idempotent adjustments). ``apex`` runs every check against its seeded sandbox, replayed
from ``cassettes/apex/`` (``TILLGATE_RECORD_CASSETTES=1`` records them again); the fault check
runs live in process. Both run on SQLite and PostgreSQL (the ``db`` fixture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

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
