"""Capture lag: changes the ERPs logged that the router has not routed yet.

A flag switch must not overtake them.  A person's edit of the legacy ERP at
10:00:00, captured at 10:00:02 after a switch at 10:00:01, would be judged
under the new flag: a stray write.  ``cutover set`` therefore waits, before it
commits the new flag, until both capture checkpoints have passed the feeds'
heads as they stood when it started.  A change that still slips into the
remaining window (milliseconds) is reported as a stray write, never dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from sqlalchemy import Engine

from coexistence.ports import ChangeFeed, FeedHead
from workers import checkpoints
from workers.router.capture import checkpoint_name as feed_name

#: Changes read per page while finding a feed's head.
HEAD_PAGE = 1000
#: Most pages read to find a head; beyond it the last cursor seen is the target.
HEAD_MAX_PAGES = 200


class CaptureBehind(Exception):
    """The router did not catch up with the feeds in time."""


def head_after(feed: ChangeFeed, cursor: int) -> int:
    """The last cursor in ``feed`` after ``cursor`` (``cursor`` itself when nothing is newer)."""
    if isinstance(feed, FeedHead):
        return max(cursor, int(feed.last_cursor()))
    head = cursor
    for _ in range(HEAD_MAX_PAGES):
        page = feed.read(head, HEAD_PAGE)
        if not page:
            break
        head = page[-1].cursor
    return head


def behind(engine: Engine, feeds: Mapping[str, ChangeFeed]) -> dict[str, tuple[int, int]]:
    """Per system: (checkpoint, head) for each feed that has unrouted changes."""
    out = {}
    for system, feed in feeds.items():
        at = checkpoints.get(engine, feed_name(system))
        head = head_after(feed, at)
        if head > at:
            out[system] = (at, head)
    return out


def wait_for_capture(engine: Engine, feeds: Mapping[str, ChangeFeed], timeout_s: float,
                     poll_s: float = 0.2) -> None:
    """Block until every feed's checkpoint reaches the head it had when this was called."""
    targets = {system: head for system, (_at, head) in behind(engine, feeds).items()}
    deadline = time.monotonic() + timeout_s
    while targets:
        targets = {s: h for s, h in targets.items()
                   if checkpoints.get(engine, feed_name(s)) < h}
        if not targets:
            return
        if time.monotonic() > deadline:
            detail = ", ".join(
                f"{s} {h - checkpoints.get(engine, feed_name(s))} change(s)"
                for s, h in sorted(targets.items()))
            raise CaptureBehind(
                f"the router has not routed everything the ERPs logged before this switch "
                f"({detail} behind after {timeout_s:g} s): is `coexist run` / `coexist "
                f"router` running?  Start it, or pass --no-wait to switch anyway (changes "
                f"still in the feed are then judged under the new flag)")
        time.sleep(poll_s)
