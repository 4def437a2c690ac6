"""The cloud export's documents validated and digested in a helper process.

On a full stream (a cold run, ``--deep``, the backfill's cloud side) the cloud side's
parse and digest (``item_of_json``: pydantic's validation of the cloud document, the
fast digest) costs about as much CPU as everything else the run does together: the
legacy pass, the merge, the comparison and the index rebuild.  ``Digester`` hands
chunks of export lines to one helper process, which answers (key, digest, natural-key
hash, error) per line, while the calling process goes on with the legacy side; the
items come back in stream order.  The calling process keeps the raw lines, so a record
a comparison needs is parsed there (``Item.record``), from the same line.

The helper only runs the same ``item_of_json`` on the same text: its items are the
ones the calling process would have made (tests/integration/test_reconcile_pipeline.py
holds them equal).  It starts only after ``INLINE_RECORDS`` records, so a small run
pays no process start; memory holds at most ``AHEAD_CHUNKS`` chunks of lines.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial

from coexistence.reconcile.engine import Item
from coexistence.reconcile.tolerances import normalise
from coexistence.translate.cloud import canonical_from_json

#: Records digested in the calling process before the helper process is started (a
#: process start, ~1 s of CPU for its imports, is not worth it below this).
INLINE_RECORDS = 20_000
#: Export lines per chunk sent to the helper, and chunks in flight at once (memory:
#: about ``CHUNK_LINES * AHEAD_CHUNKS`` lines of ~1.3 KB).
CHUNK_LINES = 1000
AHEAD_CHUNKS = 4


def digest_lines(make_item: Callable[[str, str], Item], stop: type[Exception], domain: str,
                 lines: list[str]) -> list[tuple]:
    """(key, digest, nk, error) per line, as ``make_item`` makes them (in the helper
    process); a line on which it raises ``stop`` answers ``(None, message)`` and ends the
    chunk (the caller raises ``stop`` there, as the inline path would)."""
    out: list[tuple] = []
    for line in lines:
        try:
            item = make_item(domain, line)
        except stop as exc:
            out.append((None, str(exc)))
            return out  # the stream ends there
        out.append((item.key, item.digest, item.nk, item.error))
    return out


def _load(domain: str, line: str):
    return normalise(canonical_from_json(domain, line))


class Digester:
    """Items of export lines, in order: ``make_item(domain, line)`` inline for the first
    ``inline_records``, then the same in one helper process (``processes=0``: always
    inline).  ``make_item`` and ``stop`` (the error that ends a stream) must be importable
    by name (the helper is spawned)."""

    def __init__(self, domain: str, make_item: Callable[[str, str], Item],
                 stop: type[Exception], *, processes: int = 1,
                 inline_records: int = INLINE_RECORDS, chunk_lines: int = CHUNK_LINES,
                 ahead_chunks: int = AHEAD_CHUNKS) -> None:
        self.domain = domain
        self.make_item, self.stop = make_item, stop
        self.processes = processes
        self.inline_records = inline_records
        self.chunk_lines = chunk_lines
        self.ahead_chunks = ahead_chunks
        #: Records the helper process digested (the rest were digested inline).
        self.offloaded = 0
        self._seen = 0
        self._chunk: list[str] = []
        self._pending: deque[tuple[list[str], Future]] = deque()
        self._pool: ProcessPoolExecutor | None = None

    def feed(self, line: str) -> Iterator[Item]:
        """Items ready after ``line`` (none, one, or a chunk's worth)."""
        self._seen += 1
        if self.processes <= 0 or self._seen <= self.inline_records:
            yield self.make_item(self.domain, line)
            return
        self._chunk.append(line)
        if len(self._chunk) >= self.chunk_lines:
            self._submit()
            while len(self._pending) > self.ahead_chunks:
                yield from self._take()

    def flush(self) -> Iterator[Item]:
        """Every item still in flight, in order."""
        if self._chunk:
            self._submit()
        while self._pending:
            yield from self._take()

    def close(self) -> None:
        """Stop the helper process (items in flight are dropped)."""
        self._chunk = []
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self) -> None:
        if self._pool is None:
            # spawn, not fork: the caller may hold threads, sockets and database connections.
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"))
        lines, self._chunk = self._chunk, []
        self._pending.append((lines, self._pool.submit(
            digest_lines, self.make_item, self.stop, self.domain, lines)))

    def _take(self) -> Iterator[Item]:
        lines, future = self._pending.popleft()
        answers = future.result()
        domain = self.domain
        for line, answer in zip(lines, answers, strict=False):
            if answer[0] is None:
                raise self.stop(answer[1])
            key, digest, nk, error = answer
            self.offloaded += 1
            if error is not None:
                yield Item(key, digest, nk, error=error)
            else:
                yield Item(key, digest, nk, load=partial(_load, domain, line))
