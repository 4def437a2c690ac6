"""Failure classes for everything that travels on the bus.

The split is the whole point: a ``BusinessError`` is a fact about the message
(bad data, stray write, unknown customer) and retrying it can never help, so it
goes straight to the exception store.  A ``TechnicalError`` is a fact about the
world (timeout, 5xx, broker loss) and is retried with capped backoff.
Exceptions outside this hierarchy are treated as technical.

This module imports nothing but the standard library so that every package,
including the pure domain package, can raise these classes.
"""

from __future__ import annotations


class BusError(Exception):
    """Base class of every error raised by coexist code."""


class BusinessError(BusError):
    """Never retried: the message itself is wrong for the business."""

    retryable = False


class TechnicalError(BusError):
    """Always retried (up to the retry policy): the world was unavailable.

    ``retry_after_s``: the least wait the failing service asked for (``Retry-After``);
    the bus's next delivery waits at least that long (up to its backoff cap)."""

    retryable = True
    retry_after_s: float | None = None


class MessageDecodeError(BusinessError):
    """Raw bytes on the bus that are not a valid envelope."""


def is_business(exc: BaseException) -> bool:
    """True when ``exc`` must not be retried."""
    return isinstance(exc, BusinessError) or getattr(exc, "retryable", True) is False
