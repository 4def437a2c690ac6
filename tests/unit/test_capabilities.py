"""The optional adapter capabilities are Protocols the real adapters satisfy (and a plain
object does not), so callers test ``isinstance`` instead of probing attribute names."""

from __future__ import annotations

from coexistence.ports import BulkReader, Closeable, FeedHead
from workers.cloud_erp import CloudErp
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.cdc import LegacyChangeFeed
from workers.router.lag import head_after


def test_the_adapters_say_what_they_can_do():
    assert issubclass(LegacyErp, BulkReader)
    assert issubclass(CloudErp, Closeable)
    assert issubclass(LegacyChangeFeed, FeedHead)
    assert not isinstance(object(), BulkReader | Closeable | FeedHead)


def test_a_feed_without_a_head_is_read_page_by_page():
    class Pages:
        def __init__(self):
            self.reads = 0

        def read(self, after, limit):
            self.reads += 1
            return []

    class Head(Pages):
        def last_cursor(self):
            return 41

    pages, head = Pages(), Head()
    assert head_after(pages, 7) == 7 and pages.reads == 1
    assert head_after(head, 7) == 41 and head.reads == 0
