"""Reading a record from the system of record the cutover flag names, and a short cache.

``SorReader.get(domain, key)`` answers from the SoR of that record:

* the flag's mode for the record (``coexistence.router.placement``: per record
  for a percentage rollout, by the record's segments for a segment rollout);
* an open document pinned to the SoR it was created in is read there
  (``workers.router.state``), whatever the flag says now;
* for a segment rollout the record's segments are read from the base mode's
  SoR first (where the record lived before the rollout started moving it);
  when that system does not hold the record, from the other one.

``find(domain, field, value)`` looks records up by a foreign key in every
system that may be the SoR of some of them (documents: both, since pins keep
old documents where they were) and keeps each record only from its own SoR.

Every answer carries its ``Source``s: which system answered, in which mode,
under which flag version, pinned or not.  A system that cannot be read raises
``SorUnavailable``: never a partial or a guessed answer.

``InquiryCache`` keeps answers for ``ttl_s`` per flag version (a switch misses
at once) and, when configured, serves an answer up to ``stale_max_s`` old when
the SoR cannot be read, marked stale.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from bus.errors import TechnicalError
from coexistence.canonical import DOCUMENT_DOMAINS, CanonicalRecord
from coexistence.errors import TranslationError
from coexistence.flags import ROUTES, FlagSource
from coexistence.router import CLOUD, LEGACY, placement, segment_attrs

#: Errors that mean "this system cannot be read now" (not "the record is bad").
UNAVAILABLE = (TechnicalError, OSError, httpx.HTTPError, DBAPIError, TimeoutError)


class SorUnavailable(Exception):
    """A system of record could not be read; the answer would be a guess."""

    def __init__(self, system: str, domain: str, cause: BaseException):
        super().__init__(f"{system} ERP could not be read for {domain}: "
                         f"{type(cause).__name__}")
        self.system = system
        self.domain = domain


class SorBadRecord(Exception):
    """The SoR holds a record that cannot be translated (names the field)."""

    def __init__(self, system: str, error: TranslationError):
        super().__init__(f"{system} ERP holds a {error.domain} the API cannot read: "
                         f"field {error.field}: {error.reason}")
        self.system = system
        self.field = error.field


@dataclass(frozen=True, slots=True)
class Source:
    domain: str
    system: str
    flag_version: int
    mode: str
    pinned: bool

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "system": self.system, "flag_version": self.flag_version,
                "mode": self.mode, "pinned": self.pinned}


#: (domain, keys) -> {key: pinned SoR or None}
PinLookup = Callable[[str, Iterable[str]], Mapping[str, str | None]]


def sql_pins(engine: Engine) -> PinLookup:
    """Pins from ``record_route`` in coexist's state database."""
    from workers.router.state import get_routes

    def pins(domain: str, keys: Iterable[str]) -> dict[str, str | None]:
        with engine.connect() as conn:
            return {k: r.pinned_sor for k, r in get_routes(conn, domain, keys).items()}

    return pins


def no_pins(domain: str, keys: Iterable[str]) -> dict[str, str | None]:
    return {}


class SorReader:
    def __init__(self, erps: Mapping[str, Any], queries: Mapping[str, Any], flags: FlagSource,
                 pins: PinLookup = no_pins) -> None:
        self.erps = erps
        self.queries = queries
        self.flags = flags
        self.pins = pins

    def _read(self, system: str, domain: str, key: str) -> CanonicalRecord | None:
        erp = self.erps.get(system)
        if erp is None:
            raise SorUnavailable(system, domain, LookupError(f"no {system} ERP configured"))
        try:
            return erp.get(domain, key)
        except TranslationError as exc:
            raise SorBadRecord(system, exc) from None
        except UNAVAILABLE as exc:
            raise SorUnavailable(system, domain, exc) from None

    def _find(self, system: str, domain: str, field: str, value: str) -> list[CanonicalRecord]:
        queries = self.queries.get(system)
        if queries is None:
            raise SorUnavailable(system, domain, LookupError(f"no {system} ERP configured"))
        try:
            return queries.find(domain, field, value)
        except TranslationError as exc:
            raise SorBadRecord(system, exc) from None
        except UNAVAILABLE as exc:
            raise SorUnavailable(system, domain, exc) from None

    def _pin(self, domain: str, keys: Iterable[str]) -> Mapping[str, str | None]:
        if domain not in DOCUMENT_DOMAINS:
            return {}
        try:
            return self.pins(domain, keys)
        except UNAVAILABLE as exc:
            raise SorUnavailable("state", domain, exc) from None

    def get(self, domain: str, key: str) -> tuple[CanonicalRecord | None, Source]:
        flag = self.flags.state(domain)
        pinned_sor = self._pin(domain, [key]).get(key)
        if flag.is_partial and flag.rollout.segments and pinned_sor is None:
            base = str(ROUTES[flag.base_mode].sor)
            other = CLOUD if base == LEGACY else LEGACY
            seen = {base: self._read(base, domain, key)}
            if seen[base] is None and other in self.erps:
                seen[other] = self._read(other, domain, key)
            probe = seen[base] if seen[base] is not None else seen.get(other)
            mode, sor, _, pinned = placement(domain, key, flag, segment_attrs(probe), None)
            record = seen[sor] if sor in seen else self._read(sor, domain, key)
        else:
            mode, sor, _, pinned = placement(domain, key, flag, {}, pinned_sor)
            record = self._read(sor, domain, key)
        return record, Source(domain, sor, flag.version, mode, pinned)

    def find(self, domain: str, field: str, value: str
             ) -> tuple[list[CanonicalRecord], list[Source]]:
        flag = self.flags.state(domain)
        if domain not in DOCUMENT_DOMAINS and not flag.is_partial:
            systems = [str(ROUTES[flag.mode].sor)]
        else:
            systems = [s for s in (LEGACY, CLOUD) if s in self.erps]
        held: dict[str, dict[str, CanonicalRecord]] = {}
        for system in systems:
            for record in self._find(system, domain, field, value):
                held.setdefault(record.key, {})[system] = record
        pins = self._pin(domain, list(held)) if held else {}
        base = str(ROUTES[flag.base_mode].sor)
        out: list[CanonicalRecord] = []
        sources: dict[tuple, Source] = {}
        for key in sorted(held):
            copies = held[key]
            probe = copies.get(base) or next(iter(copies.values()))
            mode, sor, _, pinned = placement(domain, key, flag, segment_attrs(probe),
                                             pins.get(key))
            if sor in copies:
                out.append(copies[sor])
                src = Source(domain, sor, flag.version, mode, pinned)
                sources[(src.system, src.mode, src.pinned)] = src
        if not sources:
            sources = {(s,): Source(domain, s, flag.version, flag.describe(), False)
                       for s in systems}
        return out, list(sources.values())


@dataclass(frozen=True, slots=True)
class Cached:
    value: Any
    stored_at: float
    flag_versions: tuple[int, ...]


class InquiryCache:
    """A small LRU of inquiry answers; entries live ``ttl_s`` under one set of flag versions."""

    def __init__(self, ttl_s: float, *, serve_stale: bool = False, stale_max_s: float = 300.0,
                 max_entries: int = 20_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.serve_stale = serve_stale
        self.stale_max_s = stale_max_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple, Cached] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, key: tuple, flag_versions: tuple[int, ...]) -> Cached | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if (entry.flag_versions != flag_versions
                    or self.clock() - entry.stored_at >= self.ttl_s):
                return None
            self._entries.move_to_end(key)
            return entry

    def stale(self, key: tuple) -> Cached | None:
        """An entry no older than ``stale_max_s`` for a fallback, if serving stale is on."""
        if not self.serve_stale:
            return None
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or self.clock() - entry.stored_at > self.stale_max_s:
            return None
        return entry

    def put(self, key: tuple, flag_versions: tuple[int, ...], value: Any) -> Cached:
        entry = Cached(value, self.clock(), flag_versions)
        if self.ttl_s <= 0 and not self.serve_stale:
            return entry
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry

    def age_s(self, entry: Cached) -> float:
        return max(self.clock() - entry.stored_at, 0.0)
