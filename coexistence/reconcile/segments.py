"""Segment checksums and bisection over abstract checksum callables (pure).

A segment is a key range ``[lo, hi)`` (``hi`` ``None``: to the end; ``lo``
``""``: from the start) with the count and the sum modulo 2**64 of its
records' digests.  The *remote* side (the cloud, over HTTP) chooses
boundaries from its own keys and answers checksums for them; the *local* side
(the legacy rows, streamed here) computes the same figures for the same
ranges from the items it holds.  A range whose figures agree holds the same
records on both sides; one that differs is split again (``parts`` pieces per
request) until it holds at most ``min_records`` records, and only those
ranges are fetched and compared record by record - as data-diff does, with
the difference that only one side has to be asked over the network.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coexistence.reconcile.digest import add_digest
from coexistence.reconcile.engine import Item


@dataclass(frozen=True, slots=True)
class Segment:
    """A key range and the checksum of the records in it on one side."""

    lo: str
    hi: str | None
    count: int
    total: int

    def holds(self, key: str) -> bool:
        return key >= self.lo and (self.hi is None or key < self.hi)


#: [(lo, hi), ...], parts -> for each range, the remote side's segments covering it.
RemoteSplitMany = Callable[[list[tuple[str, "str | None"]], int], list[list[Segment]]]


def checksum(items: Sequence[Item]) -> tuple[int, int]:
    """(count, digest sum) of items."""
    total = 0
    for item in items:
        total = add_digest(total, item.digest)
    return len(items), total


def same(segment: Segment, items: Sequence[Item]) -> bool:
    """Do ``items`` (the local records of the segment's range) match its checksum?"""
    return len(items) == segment.count and checksum(items) == (segment.count, segment.total)


def split_boundaries(keys: Sequence[str], lo: str, parts: int) -> list[str]:
    """Lower bounds of up to ``parts`` ranges with about equal numbers of ``keys``
    (sorted); the first bound is ``lo``.  What the remote side does with its keys."""
    if not keys or parts <= 1:
        return [lo]
    step = max(1, -(-len(keys) // parts))
    return [lo] + [keys[i] for i in range(step, len(keys), step)]


def partition(items: Sequence[Item], segments: Sequence[Segment]) -> list[list[Item]]:
    """Local items (sorted, all inside the segments' span) split along the segments."""
    keys = [item.key for item in items]
    out = []
    for seg in segments:
        start = bisect_left(keys, seg.lo)
        stop = len(keys) if seg.hi is None else bisect_left(keys, seg.hi)
        out.append(list(items[start:stop]))
    return out


def bisect_window(
    window: Sequence[tuple[Segment, Sequence[Item]]], remote: RemoteSplitMany, *,
    parts: int = 8, min_records: int = 32,
) -> list[tuple[Segment, list[Item], bool]]:
    """Narrow the differing segments of a window down, level by level, so that each
    level costs the remote side one request whatever the number of segments.

    ``window`` holds consecutive segments with their local items.  Returns every
    range of the window once, sorted by key: (range, local items, differs).
    Ranges that agree hold equal records on both sides; ranges that still
    differ at ``min_records`` or below, or that the remote side cannot split
    further, are to be fetched and compared record by record.
    """
    done: list[tuple[Segment, list[Item], bool]] = []
    pending: list[tuple[Segment, list[Item]]] = []
    for seg, items in window:
        if same(seg, items):
            done.append((seg, list(items), False))
        elif max(seg.count, len(items)) <= min_records:
            done.append((seg, list(items), True))
        else:
            pending.append((seg, list(items)))
    while pending:
        answers = remote([(seg.lo, seg.hi) for seg, _ in pending], parts)
        next_level: list[tuple[Segment, list[Item]]] = []
        for (seg, items), subs in zip(pending, answers, strict=True):
            if len(subs) <= 1:
                done.append((seg, items, True))
                continue
            for sub, sub_items in zip(subs, partition(items, subs), strict=True):
                if same(sub, sub_items):
                    done.append((sub, sub_items, False))
                elif max(sub.count, len(sub_items)) <= min_records:
                    done.append((sub, sub_items, True))
                else:
                    next_level.append((sub, sub_items))
        pending = next_level
    done.sort(key=lambda d: d[0].lo)
    return done
