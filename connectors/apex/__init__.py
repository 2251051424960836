"""The Apex POS connector (``X-API-Key``, integer ids, float money, page/limit lists)."""

from connectors.apex.connector import ApexConnector

__all__ = ["ApexConnector"]
