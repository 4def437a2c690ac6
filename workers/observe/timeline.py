"""The shapes of a trace: what is traced (``Target``), one timeline line (``TraceEvent``)
and the whole result (``Trace``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workers.observe.sources import SourceNote


class TraceInputError(ValueError):
    """The argument is neither a correlation id nor a valid ``domain:key``."""


@dataclass(frozen=True)
class Target:
    """What to trace: a correlation id, or a domain and canonical key."""

    correlation_id: str | None = None
    domain: str | None = None
    key: str | None = None

    def describe(self) -> str:
        if self.correlation_id:
            return f"correlation {self.correlation_id}"
        return f"{self.domain}:{self.key}"


def legacy_key(domain: str, key: str) -> str:
    """The legacy ERP's key of a canonical key (its change log's ``CHGKEY``);
    ``TranslationError`` when ``key`` is not a key of ``domain``."""
    from workers.legacy_erp.schema import translator

    return translator(domain).legacy_key(key)


@dataclass
class TraceEvent:
    """One line of the timeline."""

    at: datetime
    #: Where it happened: legacy, cloud, cutover, exception store, reconcile, or a queue's target.
    system: str
    what: str
    #: Person, writer or component that did it.
    who: str = ""
    flag_version: int | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    #: outbox, exception, inbox, flag_audit, reconcile, chglog, cloud_feed.
    source: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    #: The audit row of ``flag_version`` (filled in by ``build_trace``).
    flag: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "system": self.system, "what": self.what,
                "who": self.who, "flag_version": self.flag_version, "flag": self.flag,
                "message_id": self.message_id, "correlation_id": self.correlation_id,
                "source": self.source, "detail": self.detail}


@dataclass
class Trace:
    target: Target
    domain: str | None
    key: str | None
    events: list[TraceEvent] = field(default_factory=list)
    route: dict[str, Any] | None = None
    xref: dict[str, Any] | None = None
    sources: list[SourceNote] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.describe(), "correlation_id": self.target.correlation_id,
                "domain": self.domain, "key": self.key, "route": self.route, "xref": self.xref,
                "events": [e.to_dict() for e in self.events],
                "sources": [s.to_dict() for s in self.sources]}


