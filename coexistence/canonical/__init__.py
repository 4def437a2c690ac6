"""Canonical model registry: the seven domains, their classes and dependencies."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from coexistence.canonical.models import (
    CanonicalModel,
    CanonicalRecord,
    ContractPrice,
    Customer,
    InventoryBalance,
    Invoice,
    Order,
    Product,
    Shipment,
)
from coexistence.canonical.upcast import upcast
from coexistence.errors import TranslationError

#: Domain name -> canonical class, in cutover dependency order.
MODELS: dict[str, type[CanonicalModel]] = {
    "customer": Customer,
    "product": Product,
    "price": ContractPrice,
    "inventory": InventoryBalance,
    "order": Order,
    "shipment": Shipment,
    "invoice": Invoice,
}

DOMAINS: tuple[str, ...] = tuple(MODELS)

#: Domain -> the domains that must have moved at least as far before it may move.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "customer": (),
    "product": (),
    "price": ("customer", "product"),
    "inventory": ("product",),
    "order": ("customer", "product", "price", "inventory"),
    "shipment": ("order",),
    "invoice": ("order",),
}

#: Documents stay pinned to the SoR they were created in until they close.
DOCUMENT_DOMAINS: frozenset[str] = frozenset({"order", "shipment", "invoice"})


def model_for(domain: str) -> type[CanonicalModel]:
    try:
        return MODELS[domain]
    except KeyError:
        raise TranslationError(domain, None, "domain", domain, "unknown domain") from None


def decode(domain: str, payload: dict[str, Any]) -> CanonicalRecord:
    """Validate a canonical payload of any known schema version into today's model."""
    model = model_for(domain)
    data = upcast(domain, dict(payload), model.current_schema_version)
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        raise TranslationError(
            domain, data.get("key"), field, err.get("input"), err["msg"]
        ) from None


__all__ = [
    "MODELS", "DOMAINS", "UPSTREAM", "DOCUMENT_DOMAINS", "model_for", "decode",
    "CanonicalModel", "CanonicalRecord", "Customer", "Product", "ContractPrice",
    "InventoryBalance", "Order", "Shipment", "Invoice",
]
