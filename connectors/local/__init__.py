"""The local POS engine: the embedded default connector and the reference connector."""

from connectors.local.connector import LocalConnector

__all__ = ["LocalConnector"]
