"""What connector plugins build on.

A connector is a package ``connectors/<name>/`` with a ``manifest.json`` (validated by
``schemas/connector-manifest.schema.json``) and a :class:`Connector` subclass registered under
the entry-point group ``tillgate.connectors``.
"""

from gateway.sdk.auth import ApiKeyHeader, AuthFlowFailed, BearerToken, LoginWithRefresh, TokenSet
from gateway.sdk.connector import ConnectionContext, Connector, InboundEvent, load_manifest
from gateway.sdk.http import (
    BreakerPolicy,
    RetryPolicy,
    VendorCircuitOpen,
    VendorClient,
    VendorNotFound,
    VendorRequestRejected,
)
from gateway.sdk.pagination import CursorPaginator, OffsetPaginator, Page, PageNumberPaginator, PaginationLoop
from gateway.sdk.registry import ConnectorRegistry, ManifestInvalid, UnknownConnector

__all__ = [
    "ApiKeyHeader",
    "AuthFlowFailed",
    "BearerToken",
    "BreakerPolicy",
    "ConnectionContext",
    "Connector",
    "ConnectorRegistry",
    "CursorPaginator",
    "InboundEvent",
    "LoginWithRefresh",
    "ManifestInvalid",
    "OffsetPaginator",
    "Page",
    "PageNumberPaginator",
    "PaginationLoop",
    "RetryPolicy",
    "TokenSet",
    "UnknownConnector",
    "VendorCircuitOpen",
    "VendorClient",
    "VendorNotFound",
    "VendorRequestRejected",
    "load_manifest",
]
