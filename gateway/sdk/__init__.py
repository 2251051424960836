"""What connector plugins build on.

A connector is a package ``connectors/<name>/`` with a ``manifest.json`` (validated by
``schemas/connector-manifest.schema.json``) and a :class:`Connector` subclass registered under
the entry-point group ``tillgate.connectors``.
"""

from gateway.sdk.connector import ConnectionContext, Connector, load_manifest
from gateway.sdk.registry import ConnectorRegistry, ManifestInvalid, UnknownConnector

__all__ = [
    "ConnectionContext",
    "Connector",
    "ConnectorRegistry",
    "ManifestInvalid",
    "UnknownConnector",
    "load_manifest",
]
