"""The TenantPOS connector (multi-tenant POS: JWT login/refresh/logout, variants, category tree,
per-store stock with delta adjust and absolute set, sales checkout/void/return)."""

from connectors.tenantpos.connector import TenantPOSConnector

__all__ = ["TenantPOSConnector"]
