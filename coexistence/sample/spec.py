"""The scale of a sample and the one place that maps (domain, index) to a record."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from coexistence.canonical import DOMAINS, CanonicalRecord
from coexistence.sample import documents, masters


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """How big the sample is.  Counts of every domain follow from these numbers."""

    customers: int
    seed: int = 0
    products: int = 100
    warehouses: int = 3
    #: Contract price agreements per customer, each on a distinct product.
    prices_per_customer: int = 2
    orders_per_customer: int = 3
    #: Lines per order are drawn from 1..max_order_lines (capped by ``products``).
    max_order_lines: int = 4

    def __post_init__(self) -> None:
        for name in ("customers", "seed", "prices_per_customer", "orders_per_customer"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("products", "warehouses", "max_order_lines"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prices_per_customer > self.products:
            raise ValueError(
                f"prices_per_customer ({self.prices_per_customer}) cannot exceed products "
                f"({self.products}): each agreement of a customer is on a distinct product"
            )
        if self.warehouses > 99:
            raise ValueError(f"warehouses must be <= 99, got {self.warehouses}")

    @property
    def orders(self) -> int:
        return self.customers * self.orders_per_customer

    def count(self, domain: str) -> int:
        """How many records of ``domain`` the sample holds."""
        counts = {
            "customer": self.customers,
            "product": self.products,
            "price": self.customers * self.prices_per_customer,
            "inventory": self.warehouses * self.products,
            "order": self.orders,
            "shipment": documents.shipment_count(self.orders),
            "invoice": documents.invoice_count(self.orders),
        }
        try:
            return counts[domain]
        except KeyError:
            raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}") from None

    def record(self, domain: str, i: int) -> CanonicalRecord:
        """Record ``i`` of ``domain`` (0 <= i < count(domain))."""
        n = self.count(domain)
        if not 0 <= i < n:
            raise IndexError(f"{domain} index {i} out of range 0..{n - 1}")
        seed = self.seed
        if domain == "customer":
            return masters.customer(seed, i)
        if domain == "product":
            return masters.product(seed, i)
        if domain == "price":
            return masters.contract_price(
                seed, i, products=self.products, prices_per_customer=self.prices_per_customer
            )
        if domain == "inventory":
            return masters.inventory(seed, i, products=self.products)
        scale = {"products": self.products, "orders_per_customer": self.orders_per_customer,
                 "max_lines": self.max_order_lines}
        if domain == "order":
            return documents.order(seed, i, **scale)
        if domain == "shipment":
            return documents.shipment(seed, i, warehouses=self.warehouses, **scale)
        return documents.invoice(seed, i, **scale)

    def iter(
        self, domain: str, start: int = 0, stop: int | None = None
    ) -> Iterator[CanonicalRecord]:
        """Records ``start`` to ``stop - 1`` (default: all) of ``domain``, generated lazily."""
        n = self.count(domain)
        stop = n if stop is None else min(stop, n)
        for i in range(max(start, 0), stop):
            yield self.record(domain, i)

    def iter_all(self) -> Iterator[CanonicalRecord]:
        """Every record of every domain, in cutover dependency order."""
        for domain in DOMAINS:
            yield from self.iter(domain)
