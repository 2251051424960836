"""The HQ/Store POS connector (username + PIN JWT login, ``{success, data, error}`` envelope,
minor units, thousandths, basis points)."""

from connectors.hqstore.connector import HQStoreConnector

__all__ = ["HQStoreConnector"]
