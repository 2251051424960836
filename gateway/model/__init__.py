"""The unified model v1 as pydantic models.

``schemas/*.json`` (JSON Schema 2020-12) is the canonical contract; these models agree with it
(``tests/test_schemas.py`` checks both ways). Resource models describe what the API returns;
``*Create`` / ``*Update`` models describe request bodies.
"""

from gateway.model.catalog import (
    Category,
    CategoryCreate,
    Product,
    ProductCreate,
    ProductTax,
    ProductUpdate,
    Variant,
    VariantCreate,
)
from gateway.model.common import Address, ListPage, Record
from gateway.model.connections import Connection, ConnectionCreate, ConnectionUpdate, Connector, SyncRequest
from gateway.model.customers import Customer, CustomerCreate, CustomerUpdate
from gateway.model.events import Event, EventPage
from gateway.model.inventory import (
    Adjustment,
    AdjustmentCreate,
    CountSet,
    InventoryLevel,
    InventoryLink,
    InventoryLinkCreate,
    InventoryLinkMember,
    InventoryLinkUpdate,
)
from gateway.model.locations import Location, LocationCreate
from gateway.model.orders import (
    LineTax,
    Order,
    OrderCreate,
    OrderLine,
    OrderLineCreate,
    Payment,
    PaymentCreate,
    Refund,
    RefundCreate,
    RefundLine,
    RefundLineCreate,
    VoidCreate,
)
from gateway.model.problem import Problem
from gateway.model.webhooks import (
    DeliveryAttempt,
    ReplayRequest,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointUpdate,
)

ENTITY_MODELS = {
    "products": Product,
    "categories": Category,
    "locations": Location,
    "customers": Customer,
    "orders": Order,
    "inventory": InventoryLevel,
}

__all__ = [
    "ENTITY_MODELS",
    "Address",
    "Adjustment",
    "AdjustmentCreate",
    "Category",
    "CategoryCreate",
    "Connection",
    "ConnectionCreate",
    "ConnectionUpdate",
    "Connector",
    "CountSet",
    "Customer",
    "CustomerCreate",
    "CustomerUpdate",
    "DeliveryAttempt",
    "Event",
    "EventPage",
    "InventoryLevel",
    "InventoryLink",
    "InventoryLinkCreate",
    "InventoryLinkMember",
    "InventoryLinkUpdate",
    "LineTax",
    "ListPage",
    "Location",
    "LocationCreate",
    "Order",
    "OrderCreate",
    "OrderLine",
    "OrderLineCreate",
    "Payment",
    "PaymentCreate",
    "Problem",
    "Product",
    "ProductCreate",
    "ProductTax",
    "ProductUpdate",
    "Record",
    "Refund",
    "RefundCreate",
    "RefundLine",
    "RefundLineCreate",
    "ReplayRequest",
    "SyncRequest",
    "Variant",
    "VariantCreate",
    "VoidCreate",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEndpointCreate",
    "WebhookEndpointUpdate",
]
