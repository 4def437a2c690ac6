"""Errors raised by the domain package.

Every domain error is a business or a technical error from ``bus.errors`` so
that the failure-class middleware routes it without knowing the domain.
"""

from __future__ import annotations

from typing import Any

from bus.errors import BusinessError, TechnicalError

__all__ = [
    "BusinessError",
    "TechnicalError",
    "CoexistError",
    "TranslationError",
    "StaleWrite",
    "UnknownRecord",
]


class CoexistError(BusinessError):
    """Base class of the domain's business errors."""


class TranslationError(CoexistError):
    """A record that cannot be translated between models.

    Names the domain, the record key, the field and the offending value so that
    a user reading the exception store knows exactly what to fix and where.
    """

    def __init__(self, domain: str, key: str | None, field: str, value: Any, reason: str):
        self.domain = domain
        self.key = key
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(
            f"cannot translate {domain} {key or '<no key>'}: field {field}={value!r}: {reason}"
        )


class UnknownRecord(CoexistError):
    """A reference to a record that does not exist (unknown customer, SKU...)."""


class StaleWrite(CoexistError):
    """A write whose source version is not newer than the one already applied."""
