"""Catalog objects: Product (with Variants and tax components) and Category."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gateway.model.common import Record
from gateway.model.types import Currency, LongText, Money, NonNegativeMoney, Rate, ShortText, Text

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Barcode = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Unit = Annotated[str, StringConstraints(pattern=r"^[a-z]{1,12}$")]


class ProductTax(BaseModel):
    """One tax component of a product. ``compound`` taxes apply to the price plus earlier taxes."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText
    rate: Rate
    compound: bool = False


class Variant(BaseModel):
    """A sellable variant of a product (size, colour, ...). ``price``/``cost`` null inherit the product's."""

    model_config = ConfigDict(extra="forbid")

    id: str
    remote_id: str
    sku: str | None
    barcode: str | None
    name: str
    options: dict[str, str]
    price: Money | None
    cost: Money | None
    active: bool


class Product(Record):
    """A catalog product.

    ``price`` and ``cost`` are in ``currency``'s major unit; ``tax_rate`` is the effective percent
    (compound components combined); ``taxes`` lists the components; ``tax_inclusive`` says whether
    ``price`` already includes tax. ``translations`` maps a language code to translated fields,
    e.g. ``{"ar": {"name": "..."}}``.
    """

    sku: str | None
    barcode: str | None
    name: str
    description: str | None
    translations: dict[str, dict[str, str]]
    category_ids: list[str]
    price: Money
    cost: Money | None
    currency: Currency
    tax_rate: Rate
    tax_inclusive: bool
    taxes: list[ProductTax]
    unit: str
    track_inventory: bool
    active: bool
    variants: list[Variant]


class VariantCreate(BaseModel):
    """A variant in a product write; ``id`` names an existing variant to update."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    sku: Sku | None = None
    barcode: Barcode | None = None
    name: Text
    options: dict[Annotated[str, StringConstraints(min_length=1, max_length=40)], Annotated[str, StringConstraints(max_length=80)]] = Field(default_factory=dict, max_length=10)
    price: NonNegativeMoney | None = None
    cost: NonNegativeMoney | None = None
    active: bool = True


class ProductCreate(BaseModel):
    """``POST .../products``. ``currency`` defaults to the connection's; ``tax_rate`` to ``"0"``.

    Give either ``tax_rate`` (one component named "Tax") or ``taxes`` (several, possibly compound).
    """

    model_config = ConfigDict(extra="forbid")

    sku: Sku | None = None
    barcode: Barcode | None = None
    name: Text
    description: LongText | None = None
    translations: dict[Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")], dict[Annotated[str, StringConstraints(min_length=1, max_length=40)], Annotated[str, StringConstraints(max_length=500)]]] = Field(default_factory=dict, max_length=20)
    category_ids: list[str] = Field(default_factory=list, max_length=50)
    price: NonNegativeMoney
    cost: NonNegativeMoney | None = None
    currency: Currency | None = None
    tax_rate: Rate | None = None
    tax_inclusive: bool = False
    taxes: list[ProductTax] | None = Field(default=None, max_length=5)
    unit: Unit = "each"
    track_inventory: bool = True
    active: bool = True
    low_stock_threshold: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,12}(\.[0-9]{1,3})?$")] | None = None
    variants: list[VariantCreate] = Field(default_factory=list, max_length=100)


class ProductUpdate(BaseModel):
    """``PATCH .../products/{id}``: only the fields given change; ``variants`` replaces the list."""

    model_config = ConfigDict(extra="forbid")

    sku: Sku | None = None
    barcode: Barcode | None = None
    name: Text | None = None
    description: LongText | None = None
    translations: dict[Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")], dict[Annotated[str, StringConstraints(min_length=1, max_length=40)], Annotated[str, StringConstraints(max_length=500)]]] | None = Field(default=None, max_length=20)
    category_ids: list[str] | None = Field(default=None, max_length=50)
    price: NonNegativeMoney | None = None
    cost: NonNegativeMoney | None = None
    tax_rate: Rate | None = None
    tax_inclusive: bool | None = None
    taxes: list[ProductTax] | None = Field(default=None, max_length=5)
    unit: Unit | None = None
    track_inventory: bool | None = None
    active: bool | None = None
    variants: list[VariantCreate] | None = Field(default=None, max_length=100)


class Category(Record):
    """A catalog category; ``parent_id`` builds a tree."""

    name: str
    parent_id: str | None


class CategoryCreate(BaseModel):
    """``POST .../categories`` (local connections)."""

    model_config = ConfigDict(extra="forbid")

    name: Text
    parent_id: str | None = None
