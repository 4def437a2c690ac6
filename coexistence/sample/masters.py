"""Master data of the sample distributor: customers, products, prices, inventory.

Every record ``i`` of a domain is computed from ``(seed, i)`` (and the scale
it depends on) alone, through its own seeded RNG, so any slice can be
generated independently and memory stays flat whatever the scale.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, TypeVar

from coexistence.canonical.models import (
    ContractPrice,
    Customer,
    CustomerStatus,
    InventoryBalance,
    PaymentTerms,
    Product,
    ProductStatus,
    SiteKind,
    UnitOfMeasure,
)
from coexistence.legacy.models import MAX_PRICE_BREAKS
from coexistence.sample import words
from coexistence.sample.words import Country

#: Customer ``i`` has canonical key ``str(CUSTOMER_KEY_BASE + i)`` (numeric, like the legacy).
CUSTOMER_KEY_BASE = 10_000
#: Agreement ``i`` has canonical key ``str(AGREEMENT_KEY_BASE + i)`` (legacy CONTNO).
AGREEMENT_KEY_BASE = 1_000
#: Product ``j`` has SKU ``f"{family}-{PRODUCT_NUMBER_BASE + j}"``.
PRODUCT_NUMBER_BASE = 1_000
#: Every record of the sample is dated on or after this day.
EPOCH_DATE = date(2025, 1, 1)

#: Rough exchange rates from USD (the catalogue's currency) to each customer currency.
FX_FROM_USD: dict[str, Decimal] = {
    "USD": Decimal("1"), "CAD": Decimal("1.35"), "MXN": Decimal("17.1"),
    "EUR": Decimal("0.92"), "GBP": Decimal("0.79"),
}

# One RNG stream per domain (and per derived fact), so records never share draws.
STREAM_CUSTOMER, STREAM_PRODUCT, STREAM_PRICE, STREAM_PRICE_BASE, STREAM_INVENTORY = 1, 2, 3, 4, 5
STREAM_ORDER, STREAM_SHIPMENT, STREAM_INVOICE = 6, 7, 8
_INDEX_LIMIT = 1 << 40
#: Documents of one customer are generated together: a small cache makes their lookups of
#: the customer and the products cheap while memory stays bounded.
_FACTS_CACHE_SIZE = 2048

T = TypeVar("T")


def rng_for(seed: int, stream: int, i: int) -> random.Random:
    """The RNG of record ``i`` of ``stream``: a pure function of its arguments."""
    if seed < 0 or not 0 <= i < _INDEX_LIMIT:
        raise ValueError(f"seed must be >= 0 and index in [0, 2**40): seed={seed}, index={i}")
    return random.Random((seed << 48) | (stream << 40) | i)


def pick(rng: random.Random, seq: Sequence[T]) -> T:
    """``rng.choice`` at a fifth of its cost (53-bit float; bias irrelevant for sample data)."""
    return seq[int(rng.random() * len(seq))]


def between(rng: random.Random, low: int, high: int) -> int:
    """An int in ``[low, high)``, like ``rng.randrange(low, high)`` but cheaper."""
    return low + int(rng.random() * (high - low))


def cents(n: int) -> Decimal:
    return Decimal(n).scaleb(-2)


@lru_cache(maxsize=4096)
def ascii_slug(text: str, sep: str = "") -> str:
    """Lower-case ASCII letters and digits of ``text`` (accents folded), joined by ``sep``."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words_ = ["".join(c for c in w if c.isalnum()) for w in folded.lower().split()]
    return sep.join(w for w in words_ if w)


def customer_key(i: int) -> str:
    return str(CUSTOMER_KEY_BASE + i)


def sku(j: int) -> str:
    prefix, _, _ = words.PRODUCT_FAMILIES[j % len(words.PRODUCT_FAMILIES)]
    return f"{prefix}-{PRODUCT_NUMBER_BASE + j}"


def warehouse_code(w: int) -> str:
    return f"WH{w + 1:02d}"


# --------------------------------------------------------------------------- customer


def _postal_code(rng: random.Random, country: Country, prefix: str) -> str:
    if country.code == "CA":
        return f"{prefix} {between(rng, 0, 10)}{chr(65 + between(rng, 0, 26))}{between(rng, 0, 10)}"
    if country.code == "GB":
        letters = chr(65 + between(rng, 0, 26)) + chr(65 + between(rng, 0, 26))
        return f"{prefix} {between(rng, 1, 10)}{letters}"
    return f"{prefix}{between(rng, 0, 100):02d}"


def _site(rng: random.Random, country: Country, site_id: str, kind: SiteKind, name: str) -> dict:
    city, region, prefix = pick(rng, country.cities)
    return {
        "site_id": site_id,
        "kind": kind,
        "name": name,
        "line1": f"{between(rng, 1, 9999)} {pick(rng, country.streets)}",
        "line2": pick(rng, (None, None, None, f"Suite {between(rng, 100, 999)}", "Building 4")),
        "city": city,
        "region": region,
        "postal_code": _postal_code(rng, country, prefix),
        "country": country.code,
    }


@lru_cache(maxsize=_FACTS_CACHE_SIZE)
def customer_facts(seed: int, i: int) -> tuple[dict[str, Any], Country]:
    """The fields of customer ``i`` as a plain dict, and its country (for documents).

    Cached: callers must not mutate the dict.
    """
    rng = rng_for(seed, STREAM_CUSTOMER, i)
    country = rng.choices(words.COUNTRIES, weights=words.COUNTRY_WEIGHTS)[0]
    local = words.LOCAL_NAMES.get(country.code)
    if local and rng.random() < 0.6:
        name = pick(rng, local)
    else:
        parts = (pick(rng, words.NAME_FIRST), pick(rng, words.NAME_TRADE),
                 pick(rng, words.NAME_KIND), pick(rng, words.NAME_SUFFIX))
        name = " ".join(p for p in parts if p)
    status = rng.choices(
        (CustomerStatus.ACTIVE, CustomerStatus.INACTIVE, CustomerStatus.BLOCKED), (85, 10, 5)
    )[0]
    key = customer_key(i)
    first, last = pick(rng, words.FIRST_NAMES), pick(rng, words.LAST_NAMES)
    n = between(rng, 0, 10**11)
    digits = {"d2": n % 100, "d6": n % 10**6, "d7": n % 10**7, "d9": n % 10**9, "d11": n}
    # Site ids are scoped by customer (the legacy key is CUSTNO + SITENO, CHAR(8)).
    sites = [_site(rng, country, "B01", SiteKind.BILL_TO, name)]
    for s in range(between(rng, 1, 4)):
        ship = _site(rng, country, f"S{s + 1:02d}", SiteKind.SHIP_TO, name)
        ship["name"] = f"{name} - {ship['city']} {pick(rng, words.SITE_KINDS)}"
        sites.append(ship)
    mail_domain = ascii_slug(name, "-")[:24].strip("-")
    phone = f"{country.phone_prefix} {between(rng, 200, 999)} {between(rng, 1000, 9999)}"
    data = {
        "key": key,
        "name": name,
        "status": status,
        "currency": country.currency,
        "credit_limit": cents(pick(rng, (5_000, 10_000, 25_000, 50_000, 100_000, 250_000)) * 100),
        "credit_hold": status is CustomerStatus.BLOCKED or rng.random() < 0.03,
        "terms": rng.choices(tuple(PaymentTerms), (3, 2, 5, 50, 15, 20, 5))[0],
        "tax_id": country.tax_id_pattern.format(**digits) if rng.random() < 0.9 else None,
        "customer_group": pick(rng, words.CUSTOMER_GROUPS),
        "region": country.region,
        "contact_name": f"{first} {last}",
        "contact_email": f"{ascii_slug(first)}.{ascii_slug(last)}@{mail_domain}.example",
        "contact_phone": phone,
        "sites": sites,
    }
    return data, country


def customer(seed: int, i: int) -> Customer:
    """Customer ``i`` of the sample seeded ``seed`` (bill-to site first, then 1-3 ship-tos)."""
    return Customer.model_validate(customer_facts(seed, i)[0])


# --------------------------------------------------------------------------- product


@lru_cache(maxsize=_FACTS_CACHE_SIZE)
def product_facts(seed: int, j: int) -> dict[str, Any]:
    """The fields of product ``j`` as a plain dict.  Cached: callers must not mutate it."""
    rng = rng_for(seed, STREAM_PRODUCT, j)
    _, nouns, sizes = words.PRODUCT_FAMILIES[j % len(words.PRODUCT_FAMILIES)]
    noun, pack = pick(rng, nouns), pick(rng, words.PRODUCT_PACKS)
    description = " ".join(
        p for p in (pick(rng, words.PRODUCT_MATERIALS), noun, pick(rng, sizes)) if p
    ) + pack
    if "Box" in pack:
        unit = UnitOfMeasure.BOX
    elif "Case" in pack:
        unit = UnitOfMeasure.CASE
    elif "Pallet" in pack:
        unit = UnitOfMeasure.PALLET
    elif "Cable" in noun or "Câble" in noun:
        unit = UnitOfMeasure.METER
    else:
        unit = UnitOfMeasure.KILOGRAM if rng.random() < 0.05 else UnitOfMeasure.EACH
    # Log-uniform from $0.50 to $5,000: many cheap items, a few expensive ones.
    list_cents = int(10 ** rng.uniform(1.7, 5.7))
    return {
        "key": sku(j),
        "description": description,
        "unit": unit,
        "weight_kg": Decimal(between(rng, 5, 250_000)).scaleb(-3),
        "status": rng.choices(tuple(ProductStatus), (90, 8, 2))[0],
        "currency": "USD",
        "list_price": cents(list_cents),
        "standard_cost": cents(list_cents * between(rng, 55, 81) // 100),
    }


def product(seed: int, j: int) -> Product:
    """Product ``j``: SKU ``FAMILY-(1000+j)``, list price and standard cost in USD."""
    return Product.model_validate(product_facts(seed, j))


# --------------------------------------------------------------------------- price

_BREAK_QUANTITIES = (5, 10, 12, 24, 25, 50, 100, 250, 500, 1000)


def price_sku_index(seed: int, customer_index: int, j: int, products: int) -> int:
    """Product of the ``j``-th agreement of a customer (distinct for j < products)."""
    base = rng_for(seed, STREAM_PRICE_BASE, customer_index).randrange(products)
    return (base + j) % products


def contract_price(
    seed: int, i: int, *, products: int, prices_per_customer: int
) -> ContractPrice:
    """Agreement ``i``: customer ``i // prices_per_customer`` on one of its distinct products."""
    ci, j = divmod(i, prices_per_customer)
    pi = price_sku_index(seed, ci, j, products)
    rng = rng_for(seed, STREAM_PRICE, i)
    currency = customer_facts(seed, ci)[1].currency
    list_usd = product_facts(seed, pi)["list_price"]
    # Unit prices in 1/10,000 of the currency, the legacy price unit.
    unit = int(list_usd * FX_FROM_USD[currency] * 10_000 * between(rng, 70, 96) / 100) or 1
    quantities = [1, *sorted(rng.sample(_BREAK_QUANTITIES, between(rng, 0, MAX_PRICE_BREAKS)))]
    breaks = []
    for q in quantities:
        breaks.append({"min_quantity": q, "unit_price": Decimal(unit).scaleb(-4)})
        unit = max(unit * between(rng, 90, 99) // 100, 1)
    valid_from = EPOCH_DATE - timedelta(days=between(rng, 0, 730))
    open_ended = rng.random() < 0.4
    return ContractPrice.model_validate({
        "key": str(AGREEMENT_KEY_BASE + i),
        "customer_key": customer_key(ci),
        "sku": sku(pi),
        "currency": currency,
        "breaks": breaks,
        "valid_from": valid_from,
        "valid_to": None if open_ended else valid_from + timedelta(days=between(rng, 90, 1100)),
    })


# --------------------------------------------------------------------------- inventory


def inventory(seed: int, i: int, *, products: int) -> InventoryBalance:
    """Balance ``i``: warehouse ``i // products`` x product ``i % products``."""
    w, j = divmod(i, products)
    rng = rng_for(seed, STREAM_INVENTORY, i)
    on_hand = 0 if rng.random() < 0.1 else between(rng, 1, 5000)
    if rng.random() < 0.03:  # oversold: available-to-promise floors at zero
        allocated = on_hand + between(rng, 1, 50)
    else:
        allocated = between(rng, 0, on_hand + 1)
    return InventoryBalance(
        key=f"{warehouse_code(w)}:{sku(j)}",
        warehouse=warehouse_code(w),
        sku=sku(j),
        on_hand=on_hand,
        allocated=allocated,
    )
