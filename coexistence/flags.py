"""Cutover flags: per-domain mode, rollout and version, and their evaluation.

A domain is in one of four modes (see "Cutover modes" in the design):

======== ====== =============== =============
mode     SoR    legacy written  cloud written
======== ====== =============== =============
legacy   legacy yes             no
shadow   legacy yes             yes (shadow)
cloud    cloud  yes (shadow)    yes
cloud_only cloud no             yes
======== ====== =============== =============

A **rollout** moves part of a domain first.  A ``FlagState`` therefore says
``mode`` (where records selected by the rollout are), ``base_mode`` (where the
others stay) and ``rollout`` (which records are selected).  With a full rollout
``mode == base_mode`` and every record is in ``mode``.

Selection: a record is selected when it matches every segment constraint
(repeating a segment name means "any of these values"; different names must
all match; a record without the attribute does not match) **and** its sticky
bucket is below the percentage.  The bucket is a stable hash of
``"domain:key"`` (blake2b, never Python's randomised ``hash()``) into
``PERCENT_SCALE`` buckets, so raising the percentage only ever adds records.

Evaluation is the router's hot path: ``FlagState`` precomputes what it can and
``mode_for``/``route_for`` cost about a microsecond (a dict lookup when the
rollout is full).  This module is pure: storage lives in ``workers.flags``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cache, lru_cache
from hashlib import blake2b
from types import MappingProxyType
from typing import Any

from coexistence.canonical import DOMAINS
from coexistence.errors import CoexistError


class FlagError(CoexistError):
    """A flag value or a requested change that makes no sense (names the field and value)."""


class Mode(StrEnum):
    LEGACY = "legacy"
    SHADOW = "shadow"
    CLOUD = "cloud"
    CLOUD_ONLY = "cloud_only"

    @property
    def step(self) -> int:
        """Position on the cutover path: legacy 0 ... cloud_only 3."""
        return _STEP[self]


MODES: tuple[Mode, ...] = (Mode.LEGACY, Mode.SHADOW, Mode.CLOUD, Mode.CLOUD_ONLY)
_STEP = {m: i for i, m in enumerate(MODES)}


class System(StrEnum):
    LEGACY = "legacy"
    CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class Route:
    """Which system is the SoR for a record, which one (if any) gets shadow writes."""

    mode: Mode
    sor: System
    shadow: System | None

    @property
    def writes(self) -> tuple[System, ...]:
        """Systems written, SoR first (the order the router must write in)."""
        return (self.sor,) if self.shadow is None else (self.sor, self.shadow)


#: The design's table of modes, precomputed once.
ROUTES: Mapping[Mode, Route] = MappingProxyType({
    Mode.LEGACY: Route(Mode.LEGACY, System.LEGACY, None),
    Mode.SHADOW: Route(Mode.SHADOW, System.LEGACY, System.CLOUD),
    Mode.CLOUD: Route(Mode.CLOUD, System.CLOUD, System.LEGACY),
    Mode.CLOUD_ONLY: Route(Mode.CLOUD_ONLY, System.CLOUD, None),
})

#: Record attributes a rollout may select on (the router passes them in ``attrs``).
SEGMENT_KEYS: tuple[str, ...] = ("warehouse", "region", "customer_group")

#: Sticky buckets per domain: percentages have a resolution of 0.01 %.
PERCENT_SCALE = 10_000

_EMPTY: Mapping[str, str] = MappingProxyType({})
_NO_SEGMENTS: Mapping[str, frozenset[str]] = MappingProxyType({})


#: Sticky buckets of recently seen keys: routers see the same hot records again and again.
BUCKET_CACHE_SIZE = 1 << 16


@cache
def _domain_hasher(domain: str):
    return blake2b(f"{domain}:".encode(), digest_size=8)


@lru_cache(maxsize=BUCKET_CACHE_SIZE)
def bucket(domain: str, key: str) -> int:
    """The record's sticky bucket in ``[0, PERCENT_SCALE)``: same input, same bucket, always.

    blake2b of ``"domain:key"`` (the domain prefix is hashed once and copied).
    """
    h = _domain_hasher(domain).copy()
    h.update(key.encode())
    return int.from_bytes(h.digest(), "big") % PERCENT_SCALE


def parse_mode(value: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise FlagError(
            f"mode {value!r} is not one of {', '.join(m.value for m in MODES)}"
        ) from None


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise FlagError(f"domain {domain!r} is not one of {', '.join(DOMAINS)}")
    return domain


def percent_to_buckets(percent: float) -> int:
    """``12.5`` -> 1250 buckets; refuses values outside 0..100 or finer than 0.01 %."""
    if not 0 <= percent <= 100:
        raise FlagError(f"percent {percent!r} must be between 0 and 100")
    buckets = round(percent * PERCENT_SCALE / 100)
    if abs(buckets - percent * PERCENT_SCALE / 100) > 1e-6:
        raise FlagError(f"percent {percent!r} is finer than the 0.01 % resolution")
    return buckets


def parse_segments(items: Iterable[str]) -> dict[str, frozenset[str]]:
    """``["region=WEST", "region=EAST", "warehouse=W01"]`` -> {region: {WEST, EAST}, ...}."""
    out: dict[str, set[str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise FlagError(f"segment {item!r} must look like NAME=VALUE, e.g. region=WEST")
        if name not in SEGMENT_KEYS:
            raise FlagError(
                f"segment {item!r}: {name!r} is not one of {', '.join(SEGMENT_KEYS)}"
            )
        out.setdefault(name, set()).add(value)
    return {k: frozenset(v) for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class Rollout:
    """Which records of a domain a partial move selects (see the module docstring)."""

    percent_buckets: int = PERCENT_SCALE
    segments: Mapping[str, frozenset[str]] = field(default_factory=lambda: _NO_SEGMENTS)

    def __post_init__(self) -> None:
        if not 0 <= self.percent_buckets <= PERCENT_SCALE:
            raise FlagError(f"rollout percent_buckets {self.percent_buckets} out of range")
        for name, values in self.segments.items():
            if name not in SEGMENT_KEYS:
                raise FlagError(f"rollout segment {name!r} is not one of {SEGMENT_KEYS}")
            if not values:
                raise FlagError(f"rollout segment {name!r} has no values")
        # Immutable and canonically ordered, so equal rollouts compare and hash equal.
        frozen = {k: frozenset(self.segments[k]) for k in sorted(self.segments)}
        object.__setattr__(self, "segments", MappingProxyType(frozen))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Rollout)
            and self.percent_buckets == other.percent_buckets
            and dict(self.segments) == dict(other.segments)
        )

    def __hash__(self) -> int:
        return hash((self.percent_buckets, tuple(self.segments.items())))

    @property
    def percent(self) -> float:
        return self.percent_buckets * 100 / PERCENT_SCALE

    @property
    def is_full(self) -> bool:
        return self.percent_buckets == PERCENT_SCALE and not self.segments

    def selects(self, domain: str, key: str, attrs: Mapping[str, str] = _EMPTY) -> bool:
        for name, values in self.segments.items():
            if attrs.get(name) not in values:
                return False
        if self.percent_buckets == PERCENT_SCALE:
            return True
        return bucket(domain, key) < self.percent_buckets

    def covers(self, other: Rollout) -> bool:
        """True when every record ``other`` selects is also selected by ``self``."""
        if self.percent_buckets < other.percent_buckets:
            return False
        return all(
            name in other.segments and other.segments[name] <= values
            for name, values in self.segments.items()
        )

    def describe(self) -> str:
        if self.is_full:
            return "all"
        parts = [f"{self.percent:g}%"] if self.percent_buckets < PERCENT_SCALE else []
        parts += [f"{k} in {','.join(sorted(v))}" for k, v in self.segments.items()]
        return " and ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "percent": self.percent,
            "segments": {k: sorted(v) for k, v in self.segments.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        return cls(
            percent_to_buckets(float(data.get("percent", 100))),
            {k: frozenset(v) for k, v in (data.get("segments") or {}).items()},
        )


FULL = Rollout()


@dataclass(frozen=True, slots=True)
class FlagState:
    """One domain's flag at one version.  Evaluate with ``mode_for``/``route_for``."""

    domain: str
    mode: Mode
    base_mode: Mode
    rollout: Rollout
    version: int
    changed_at: datetime | None = None
    #: Precomputed: the mode of every record when the rollout is full, else None.
    _uniform: Mode | None = field(init=False, repr=False, compare=False, default=None)
    #: Precomputed for ``mode_for``: segment constraints as a tuple, percent in buckets.
    _segments: tuple = field(init=False, repr=False, compare=False, default=())
    _buckets: int = field(init=False, repr=False, compare=False, default=PERCENT_SCALE)

    def __post_init__(self) -> None:
        check_domain(self.domain)
        if self.version < 0:
            raise FlagError(f"{self.domain}: flag version {self.version} must be >= 0")
        if self.rollout.is_full and self.base_mode != self.mode:
            raise FlagError(
                f"{self.domain}: a full rollout has no base mode (mode {self.mode}, "
                f"base_mode {self.base_mode})"
            )
        if not self.rollout.is_full and self.base_mode.step >= self.mode.step:
            raise FlagError(
                f"{self.domain}: a rollout moves records forward; base_mode {self.base_mode} "
                f"must come before mode {self.mode}"
            )
        object.__setattr__(self, "_uniform", self.mode if self.rollout.is_full else None)
        object.__setattr__(self, "_segments", tuple(self.rollout.segments.items()))
        object.__setattr__(self, "_buckets", self.rollout.percent_buckets)

    @classmethod
    def initial(cls, domain: str) -> FlagState:
        """The state of a domain nobody has touched: all legacy, version 0."""
        return cls(domain, Mode.LEGACY, Mode.LEGACY, FULL, 0)

    @property
    def is_partial(self) -> bool:
        return self._uniform is None

    @property
    def level(self) -> Mode:
        """The least advanced mode any record of the domain is in."""
        return self.base_mode

    def mode_for(self, key: str, attrs: Mapping[str, str] = _EMPTY) -> Mode:
        # Hot path: the same logic as ``Rollout.selects``, on precomputed fields.
        uniform = self._uniform
        if uniform is not None:
            return uniform
        for name, values in self._segments:
            if attrs.get(name) not in values:
                return self.base_mode
        buckets = self._buckets
        if buckets < PERCENT_SCALE and bucket(self.domain, key) >= buckets:
            return self.base_mode
        return self.mode

    def route_for(self, key: str, attrs: Mapping[str, str] = _EMPTY) -> Route:
        return ROUTES[self.mode_for(key, attrs)]

    def sor_for(self, key: str, attrs: Mapping[str, str] = _EMPTY) -> System:
        return ROUTES[self.mode_for(key, attrs)].sor

    def writes_for(self, key: str, attrs: Mapping[str, str] = _EMPTY) -> tuple[System, ...]:
        return ROUTES[self.mode_for(key, attrs)].writes

    def describe(self) -> str:
        if not self.is_partial:
            return str(self.mode)
        return f"{self.mode} for {self.rollout.describe()}, else {self.base_mode}"

    def same_setting(self, other: FlagState) -> bool:
        """Equal mode, base mode and rollout (versions and times aside)."""
        return (self.mode, self.base_mode, self.rollout) == (
            other.mode, other.base_mode, other.rollout
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "mode": self.mode.value,
            "base_mode": self.base_mode.value,
            "rollout": self.rollout.to_dict(),
            "version": self.version,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlagState:
        try:
            changed = data.get("changed_at")
            return cls(
                domain=data["domain"],
                mode=parse_mode(data["mode"]),
                base_mode=parse_mode(data.get("base_mode") or data["mode"]),
                rollout=Rollout.from_dict(data.get("rollout") or {}),
                version=int(data["version"]),
                changed_at=datetime.fromisoformat(changed) if changed else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FlagError(f"malformed flag state {dict(data)!r}: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> FlagState:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise FlagError(f"malformed flag state JSON {text!r}: {exc}") from None
        return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class RolloutImpact:
    """What a flag change would do to the records of its domain, as they are now."""

    #: Records of the domain that were looked at.
    records: int
    #: Records whose mode the change would change (they would move SoR or shadow).
    moving: int
    #: Per segment name, every value the domain's records carry (the known segments).
    segment_values: Mapping[str, frozenset[str]]


def rollout_impact(current: FlagState, proposed: FlagState,
                   records: Iterable[tuple[str, Mapping[str, str]]]) -> RolloutImpact:
    """Count the records (``(key, segment attributes)``) whose mode ``proposed`` changes."""
    n = moving = 0
    values: dict[str, set[str]] = {}
    for key, attrs in records:
        n += 1
        for name, value in attrs.items():
            values.setdefault(name, set()).add(value)
        if current.mode_for(key, attrs) != proposed.mode_for(key, attrs):
            moving += 1
    return RolloutImpact(n, moving, {k: frozenset(v) for k, v in values.items()})


def check_segment_values(domain: str, rollout: Rollout,
                         known: Mapping[str, frozenset[str]]) -> None:
    """Refuse a rollout segment that no record of ``domain`` has (``region=NOWHERE``),
    naming the known ones: such a rollout would silently select nothing."""
    for name, values in rollout.segments.items():
        if name not in known:
            have = ", ".join(sorted(known)) or "none"
            raise FlagError(f"segment {name}: {domain} records have no {name} (their "
                            f"segments: {have})")
        unknown = sorted(values - known[name])
        if unknown:
            raise FlagError(f"segment {name}={','.join(unknown)}: no {domain} record has "
                            f"{'this value' if len(unknown) == 1 else 'these values'}; known "
                            f"{name} values: {', '.join(sorted(known[name]))}")


def initial_flags() -> dict[str, FlagState]:
    """Every domain at version 0 in ``legacy``."""
    return {d: FlagState.initial(d) for d in DOMAINS}


class FlagSource:
    """A read-only view of the current flags, as the router sees them.

    Implementations (``workers.flags``) keep ``states`` current from their store;
    reading it is a dict lookup.  Domains never set are in their initial state.
    """

    def __init__(self, states: Mapping[str, FlagState] | None = None) -> None:
        self.states: dict[str, FlagState] = initial_flags()
        if states:
            self.states.update(states)

    def state(self, domain: str) -> FlagState:
        return self.states[domain]

    def route_for(self, domain: str, key: str, attrs: Mapping[str, str] = _EMPTY) -> Route:
        return self.states[domain].route_for(key, attrs)
