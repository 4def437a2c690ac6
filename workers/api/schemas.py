"""The API's request and response bodies (they make the OpenAPI document).

Every body carries ``schema_version`` (``API_SCHEMA_VERSION``).  Within ``/v1``
fields are only ever added; see "Versions and deprecation" in the README.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Version of every response body's format under /v1.
API_SCHEMA_VERSION = 1

KeyStr = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


class Problem(BaseModel):
    """Every 4xx/5xx body (RFC 9457 problem details, plus ``code`` and ``field``)."""

    schema_version: int = API_SCHEMA_VERSION
    type: str = Field(description="A URI reference naming the problem: /problems/<code>.")
    title: str
    status: int
    code: str = Field(description="Stable, machine-readable problem code.")
    detail: str
    field: str | None = Field(default=None, description="The request field at fault, if any.")
    correlation_id: str | None = None


class SourceModel(BaseModel):
    domain: str
    system: Literal["legacy", "cloud", "state"]
    flag_version: int
    mode: str
    pinned: bool


class Meta(BaseModel):
    """Who answered, under which flag version, and how fresh the answer is."""

    answered_by: list[SourceModel]
    cached: bool
    stale: bool = Field(description="True when the SoR could not be read and a cached answer "
                                    "older than max_age_s is served instead.")
    age_s: float
    max_age_s: float


class Break(BaseModel):
    min_quantity: int
    unit_price: str


class Credit(BaseModel):
    customer_key: str
    currency: str | None = None
    credit_limit: str | None = None
    credit_hold: bool | None = None
    exposure: str = Field(description="Open invoice balances plus open, not yet invoiced "
                                      "orders, in the customer's currency.")
    available_credit: str | None = None
    open_orders: int
    open_invoices: int


class Price(BaseModel):
    customer_key: str
    sku: str
    quantity: int
    currency: str
    unit_price: str
    applied_break: Break
    agreement_key: str
    valid_from: date
    valid_to: date | None = None
    breaks: list[Break]


class Balance(BaseModel):
    warehouse: str
    sku: str
    on_hand: int | None = None
    allocated: int | None = None
    available_to_promise: int | None = None


class Availability(BaseModel):
    sku: str
    warehouse: str | None = None
    available_to_promise: int
    balances: list[Balance]


class OrderView(BaseModel):
    """The order, its shipments and invoices, each with the fields the caller may see."""

    order: dict[str, Any]
    shipments: list[dict[str, Any]]
    invoices: list[dict[str, Any]]


class CreditAnswer(BaseModel):
    schema_version: int = API_SCHEMA_VERSION
    data: Credit
    meta: Meta


class PriceAnswer(BaseModel):
    schema_version: int = API_SCHEMA_VERSION
    data: Price
    meta: Meta


class AvailabilityAnswer(BaseModel):
    schema_version: int = API_SCHEMA_VERSION
    data: Availability
    meta: Meta


class OrderAnswer(BaseModel):
    schema_version: int = API_SCHEMA_VERSION
    data: OrderView
    meta: Meta


class OrderLineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line_no: int | None = Field(default=None, ge=1, le=9999)
    sku: str = KeyStr
    quantity: int = Field(ge=1, le=1_000_000)


class OrderRequest(BaseModel):
    """A portal order.  Prices, status and the order number are the SoR's and coexist's."""

    model_config = ConfigDict(extra="forbid")

    customer_key: str = KeyStr
    ship_to_site_id: str | None = Field(default=None, min_length=1, max_length=40,
                                        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    customer_po: str | None = Field(default=None, max_length=22)
    requested_date: date | None = None
    lines: list[OrderLineRequest] = Field(min_length=1, max_length=200)


class AcceptedLine(BaseModel):
    line_no: int
    sku: str
    quantity: int
    unit_price: str


class OrderAccepted(BaseModel):
    order_key: str
    status: Literal["accepted"]
    system: Literal["legacy", "cloud"]
    mode: str
    flag_version: int
    currency: str
    total: str
    lines: list[AcceptedLine]


class OrderAcceptedAnswer(BaseModel):
    schema_version: int = API_SCHEMA_VERSION
    data: OrderAccepted
    correlation_id: str
