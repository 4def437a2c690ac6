"""What the API needs, as one object: built from the composition root's ``App`` in one line.

``ApiDeps.from_app(app, ApiSettings.from_env())`` takes the ERPs, flags, state
database and ``send`` of an ``App`` (``workers.bootstrap``) and adds the API's
own parts: consumers, the SoR reader with pins and foreign-key queries, the
inquiry cache.  Tests build ``ApiDeps`` from fakes with ``ApiDeps.build``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine

from coexistence.flags import FlagSource
from workers.api.auth import Consumers
from workers.api.idempotency import IDEMPOTENCY_TTL_S
from workers.api.limits import DEFAULT_BURST, DEFAULT_RATE_PER_S
from workers.api.service import Inquiry, OrderIntake
from workers.api.sor import InquiryCache, PinLookup, SorReader, sql_pins
from workers.api.trace import TRACE_MAX_PER_S, TRACE_RETENTION_H, TRACE_SAMPLE

#: Default time an inquiry answer is reused (its stated staleness bound).
CACHE_TTL_S = 2.0
#: Default oldest answer served, marked stale, while a SoR cannot be read (when enabled).
STALE_MAX_S = 300.0
#: Retry-After of a 503 when a SoR cannot be read.
RETRY_AFTER_S = 5
#: Portal order numbers start above this (digits only, so the legacy ERP can hold them).
ORDER_NUMBER_BASE = 70_000_000


class ApiConfigError(ValueError):
    """A COEXIST_API_* variable with a value that makes no sense (names it)."""


@dataclass(frozen=True)
class ApiSettings:
    consumers_file: str | None = None
    cache_ttl_s: float = CACHE_TTL_S
    serve_stale: bool = False
    stale_max_s: float = STALE_MAX_S
    retry_after_s: int = RETRY_AFTER_S
    order_number_base: int = ORDER_NUMBER_BASE
    idempotency_ttl_s: float = IDEMPOTENCY_TTL_S
    rate_per_s: float = DEFAULT_RATE_PER_S
    rate_burst: int = DEFAULT_BURST
    #: Shared rate-limit buckets (``workers.api.limits``); ``None``: in the process.
    redis_url: str | None = None
    redis_prefix: str = "coexist:"
    trace_sample: float = TRACE_SAMPLE
    trace_max_per_s: float = TRACE_MAX_PER_S
    trace_retention_h: float = TRACE_RETENTION_H

    @classmethod
    def from_settings(cls, s) -> ApiSettings:
        """The API's part of the one configuration (``workers.config.Settings``, the
        ``COEXIST_API_*`` variables); an unset value keeps the API's default."""
        def pick(value, default):
            return default if value is None else value

        ttl = pick(s.api_idempotency_ttl_s, IDEMPOTENCY_TTL_S)
        if ttl < IDEMPOTENCY_TTL_S:
            raise ApiConfigError("COEXIST_API_IDEMPOTENCY_TTL_S must be at least 86400 "
                                 "(keys are kept at least 24 h)")
        return cls(
            consumers_file=s.api_consumers,
            cache_ttl_s=pick(s.api_cache_ttl_s, CACHE_TTL_S),
            serve_stale=s.api_serve_stale,
            stale_max_s=pick(s.api_stale_max_s, STALE_MAX_S),
            retry_after_s=pick(s.api_retry_after_s, RETRY_AFTER_S),
            order_number_base=pick(s.api_order_number_base, ORDER_NUMBER_BASE),
            idempotency_ttl_s=ttl,
            rate_per_s=pick(s.api_rate_per_s, DEFAULT_RATE_PER_S),
            rate_burst=pick(s.api_rate_burst, DEFAULT_BURST),
            redis_url=s.redis_url, redis_prefix=s.redis_prefix,
            trace_sample=pick(s.api_trace_sample, TRACE_SAMPLE),
            trace_max_per_s=pick(s.api_trace_max_per_s, TRACE_MAX_PER_S),
            trace_retention_h=pick(s.api_trace_retention_h, TRACE_RETENTION_H),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        from workers.config import ConfigError, Settings

        try:
            return cls.from_settings(Settings.from_env(env))
        except ConfigError as exc:
            raise ApiConfigError(str(exc)) from None


@dataclass
class ApiDeps:
    inquiry: Inquiry
    intake: OrderIntake
    consumers: Consumers
    state: Engine
    settings: ApiSettings
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @classmethod
    def build(cls, *, erps: Mapping[str, Any], queries: Mapping[str, Any], flags: FlagSource,
              state: Engine, consumers: Consumers, settings: ApiSettings | None = None,
              send=None, pins: PinLookup | None = None,
              today: Callable[[], date] | None = None,
              now: Callable[[], datetime] | None = None) -> ApiDeps:
        settings = settings or ApiSettings()
        reader = SorReader(erps, queries, flags, pins or sql_pins(state))
        cache = InquiryCache(settings.cache_ttl_s, serve_stale=settings.serve_stale,
                             stale_max_s=settings.stale_max_s)
        now = now or (lambda: datetime.now(UTC))
        inquiry = Inquiry(reader, cache, today=today or (lambda: now().date()))
        intake = OrderIntake(reader, erps, flags, send or _no_send)
        return cls(inquiry, intake, consumers, state, settings, now)

    @classmethod
    def from_app(cls, app, settings: ApiSettings, consumers: Consumers | None = None,
                 queries: Mapping[str, Any] | None = None) -> ApiDeps:
        """The API over a bootstrapped ``App`` (its ERPs, flags, state and broker)."""
        return cls.build(erps=app.erps, queries=queries or queries_for(app.erps, app.settings),
                         flags=app.flags, state=app.state,
                         consumers=consumers or Consumers.from_file(settings.consumers_file),
                         settings=settings, send=app.send)


def queries_for(erps: Mapping[str, Any], settings) -> dict[str, Any]:
    """Foreign-key lookups for each configured ERP, by its kind."""
    from workers.api.queries import CloudQueries, LegacyQueries, MemoryQueries
    from workers.cloud_erp import CloudErp
    from workers.legacy_erp.adapter import LegacyErp

    out: dict[str, Any] = {}
    for system, erp in erps.items():
        if isinstance(erp, LegacyErp):
            out[system] = LegacyQueries(erp)
        elif isinstance(erp, CloudErp):
            out[system] = CloudQueries.from_settings(settings)
        else:
            out[system] = MemoryQueries(erp)
    return out


def _no_send(actor: str, queue: str, env) -> None:
    raise RuntimeError(f"no broker to send {actor} messages from the API")
