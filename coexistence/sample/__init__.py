"""Deterministic sample data of a distributor, for the demo, tests and benchmarks.

Everything is a pure function of a seed, a record index and the scale::

    spec = SampleSpec(customers=1_000, seed=7)
    for record in spec.iter("order"):          # streams; memory stays flat
        ...
    spec.record("invoice", 42)                 # any record, independently
    spec.iter("customer", start=500, stop=600) # any slice, independently

or, for the master domains, ``iter_customers(n, seed)``, ``iter_products(n, seed)``.

Every record is a validated canonical model.  References hold: prices,
orders and invoices name existing customers and SKUs, orders existing ship-to
sites, shipments existing orders and their lines, invoices existing orders.
Any 16 consecutive orders cover every ``OrderStatus``; their shipments every
milestone stage and their invoices every ``InvoiceStatus`` (see
``documents.LIFECYCLE``).  Customers are never ``PROSPECT``: the sample
describes the legacy estate, and the legacy ERP has no prospect code.
"""

from __future__ import annotations

from collections.abc import Iterator

from coexistence.canonical.models import Customer, Product
from coexistence.sample.masters import MAX_PRICE_BREAKS, customer, product
from coexistence.sample.spec import SampleSpec

__all__ = ["MAX_PRICE_BREAKS", "SampleSpec", "iter_customers", "iter_products"]


def iter_customers(n: int, seed: int = 0, *, start: int = 0) -> Iterator[Customer]:
    """Customers ``start`` to ``n - 1`` of the sample seeded ``seed``."""
    for i in range(start, n):
        yield customer(seed, i)


def iter_products(n: int, seed: int = 0, *, start: int = 0) -> Iterator[Product]:
    """Products ``start`` to ``n - 1`` of the sample seeded ``seed``."""
    for j in range(start, n):
        yield product(seed, j)
