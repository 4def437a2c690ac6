"""Reading the cloud ERP for reconciliation: checksums, key ranges, or the full export.

With the simulator's ``/reconcile`` endpoints (``workers.cloud_sim.checksum``)
the cloud side answers segment checksums and only differing ranges travel;
a cloud ERP without them is read in full through ``CloudErp.stream`` (the
NDJSON export).  Records are brought into legacy normal form (the declared
tolerances) before they are digested and compared.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx

from coexistence.canonical import CanonicalRecord
from coexistence.errors import CoexistError
from coexistence.reconcile.digest import natural_key, natural_key_hash, record_digest
from coexistence.reconcile.engine import Item
from coexistence.reconcile.fast import CLOUD_DIGESTS, JSON_DIGESTS, record_of_rows
from coexistence.reconcile.segments import Segment
from coexistence.reconcile.tolerances import normalise
from coexistence.translate.cloud import (
    RESOURCES,
    canonical_from_json,
    parse_document,
    translator_for,
)
from workers.cloud_erp import CloudErp, CloudTechnicalError
from workers.reconcile.pipeline import Digester


def _ndjson_lines(response: httpx.Response) -> Iterator[bytes]:
    """The non-empty lines of an NDJSON body as bytes, split from the raw chunks in bulk:
    httpx's ``iter_lines`` decodes the text and splits it in Python per line (a few
    microseconds a line of the calling process's CPU at a million lines).  A line is
    whole before it is handed out: a cut stream loses only its unfinished last line."""
    rest = b""
    for chunk in response.iter_bytes():
        lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line and not line.isspace():
                yield line
    if rest and not rest.isspace():
        yield rest


class CloudUnavailable(CloudTechnicalError):
    """The cloud ERP could not be reached or answered something unusable."""


def item_of(record: CanonicalRecord) -> Item:
    """A cloud record as an ``Item``: legacy-normalised, digested, natural key hashed."""
    record = normalise(record)
    return Item(record.key, record_digest(record, normalised=True),
                natural_key_hash(natural_key(record)), record=record)


#: The digest of a cloud record that does not translate: it matches no legacy record.
UNTRANSLATABLE_DIGEST = 0


def _normalised(domain: str, doc) -> CanonicalRecord:
    return normalise(translator_for(domain).to_canonical(doc))


def item_of_json(domain: str, line: bytes | str | dict) -> Item:
    """A cloud document as an ``Item``; one the canonical model cannot hold (a
    150-character name, a negative price) becomes an item carrying its error, so
    the run reports it and goes on.

    Where the domain has one, the digest comes from the decoded JSON document without
    pydantic's validation (``fast.JSON_DIGESTS``), else from the validated document without
    building the canonical record (``coexistence.reconcile.fast``; the record is built
    only when a comparison asks for it); a document the fast path cannot vouch for
    takes the canonical path (``item_of_slow``), which names its defect."""
    from_json = JSON_DIGESTS.get(domain)
    if from_json is not None:
        # The decoded JSON first, without pydantic (``fast._customer_json``): most
        # documents need nothing else; the record is validated only if compared.
        try:
            decoded = line if isinstance(line, dict) else json.loads(line)
        except (ValueError, RecursionError):
            decoded = None
        got = from_json(decoded) if decoded is not None else None
        if got is not None:
            return Item(got[0], got[1], got[2], load=partial(record_of_rows, domain, got[3]))
    fast = CLOUD_DIGESTS.get(domain)
    if fast is not None:
        try:
            doc = parse_document(domain, line)
        except CoexistError:
            doc = None
        got = fast(doc) if doc is not None else None
        if got is not None:
            return Item(doc.number, got[0], got[1], load=partial(_normalised, domain, doc))
    return item_of_slow(domain, line)


def item_of_slow(domain: str, line: bytes | str | dict) -> Item:
    """``item_of_json`` through the canonical record (the oracle of the fast path)."""
    try:
        return item_of(canonical_from_json(domain, line))
    except CoexistError as exc:
        error = str(exc)
    try:
        number = (line if isinstance(line, dict) else json.loads(line)).get("number")
    except (ValueError, AttributeError):
        number = None
    if not isinstance(number, str) or not number:
        raise CloudUnavailable(f"cloud ERP answered an unexpected shape for {domain}: a "
                               f"document without a number: {_clip(line)}")
    return Item(number, UNTRANSLATABLE_DIGEST, None, error=error)


def _clip(value: Any, n: int = 200) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _segment_rows(body: Any, path: str, key: str = "segments") -> list:
    """``body[key]`` checked to be ``[[lo, count, sum], ...]`` (str, int >= 0, int)."""
    rows = body.get(key) if isinstance(body, dict) else None
    if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
            and _int(r[1]) and r[1] >= 0 and _int(r[2]) for r in rows):
        raise CloudUnavailable(f"cloud ERP answered an unexpected shape on {path}: "
                               f"{_clip(body)}")
    return rows


#: Helper processes digesting a full stream's cloud documents (one: the calling process
#: has the legacy side, the merge and the index to do, about as much CPU).
DIGEST_PROCESSES = 1

#: How long the first checksum request may take, in seconds: the cloud digests every
#: record written since the last run before it answers (minutes on a first run of
#: millions of records).
SEGMENTS_TIMEOUT_S = 3600.0


class CloudReader:
    """The cloud side of a reconciliation, over a ``CloudErp``'s HTTP client."""

    system = "cloud"

    def __init__(self, erp: CloudErp, *, segments_timeout_s: float = SEGMENTS_TIMEOUT_S,
                 digest_processes: int = DIGEST_PROCESSES) -> None:
        """``digest_processes``: helper processes that validate and digest a full
        stream's documents (0: all in this process)."""
        self.erp = erp
        self.digest_processes = digest_processes
        #: The last ``stream``'s digester (how many records its helper digested).
        self.digester: Digester | None = None
        self.http = erp.http
        self.segments_timeout_s = segments_timeout_s
        #: Requests and records that crossed the network, for the report.
        self.requests = 0
        self.records_fetched = 0

    def _get(self, path: str, params: dict, timeout_s: float | None = None) -> httpx.Response:
        self.requests += 1
        try:
            if timeout_s is None:
                return self.http.get(path, params=params)
            return self.http.get(path, params=params,
                                 timeout=httpx.Timeout(self.http.timeout.connect or 10.0,
                                                       read=timeout_s))
        except httpx.HTTPError as exc:
            raise CloudUnavailable(f"cloud ERP {self.http.base_url}{path}: "
                                   f"{type(exc).__name__}: {exc}") from None

    def segments(self, domain: str, size: int) -> tuple[list[Segment], list[list[str]]] | None:
        """Checksums of runs of ``size`` records and the cloud's duplicate groups, or
        ``None`` when the cloud ERP offers no checksums (read it in full then)."""
        response = self._get(f"/reconcile/{RESOURCES[domain]}/segments", {"size": size},
                             self.segments_timeout_s)
        if response.status_code in (404, 405, 501):
            return None
        path = response.request.url.path
        body = self._json(response)
        segs = _segment_rows(body, path)
        dups = body.get("duplicates")
        if not isinstance(dups, list) or not all(
                isinstance(g, list) and all(isinstance(k, str) for k in g) for g in dups):
            raise CloudUnavailable(f"cloud ERP answered an unexpected shape on {path}: "
                                   f"{_clip(body)}")
        out = [Segment(lo, segs[i + 1][0] if i + 1 < len(segs) else None, count, total)
               for i, (lo, count, total) in enumerate(segs)]
        return out, dups

    def split(self, domain: str, lo: str, hi: str | None, parts: int) -> list[Segment]:
        """The cloud's checksums of up to ``parts`` pieces of ``[lo, hi)``."""
        params = {"from": lo, "parts": parts}
        if hi is not None:
            params["to"] = hi
        response = self._get(f"/reconcile/{RESOURCES[domain]}/segments", params)
        segs = _segment_rows(self._json(response), response.request.url.path)
        return [Segment(s_lo, segs[i + 1][0] if i + 1 < len(segs) else hi, count, total)
                for i, (s_lo, count, total) in enumerate(segs)]

    def split_many(self, domain: str, ranges: list[tuple[str, str | None]],
                   parts: int) -> list[list[Segment]]:
        """``split`` of many ranges in one request."""
        self.requests += 1
        try:
            response = self.http.post(f"/reconcile/{RESOURCES[domain]}/segments",
                                      json={"ranges": ranges, "parts": parts})
        except httpx.HTTPError as exc:
            raise CloudUnavailable(f"cloud ERP {self.http.base_url}: splitting {domain} "
                                   f"segments: {type(exc).__name__}: {exc}") from None
        path = response.request.url.path
        body = self._json(response)
        answers = body.get("segments") if isinstance(body, dict) else None
        if not isinstance(answers, list) or len(answers) != len(ranges):
            raise CloudUnavailable(f"cloud ERP answered an unexpected shape on {path}: "
                                   f"{_clip(body)}")
        answers = [_segment_rows({"segments": a}, path) for a in answers]
        return [[Segment(s_lo, segs[i + 1][0] if i + 1 < len(segs) else hi, count, total)
                 for i, (s_lo, count, total) in enumerate(segs)]
                for (_, hi), segs in zip(ranges, answers, strict=True)]

    def records_many(self, domain: str, ranges: list[tuple[str, str | None]]
                     ) -> Iterator[Item]:
        """The cloud's records in many sorted, disjoint ranges, in one request."""
        yield from self._ndjson(domain, "POST", {"json": {"ranges": ranges}},
                                f"{len(ranges)} ranges")

    def records(self, domain: str, lo: str, hi: str | None) -> Iterator[Item]:
        """The cloud's records in ``[lo, hi)``, sorted by key."""
        params = {"from": lo}
        if hi is not None:
            params["to"] = hi
        yield from self._ndjson(domain, "GET", {"params": params}, f"[{lo!r}, {hi!r})")

    def _ndjson(self, domain: str, method: str, kwargs: dict, what: str) -> Iterator[Item]:
        self.requests += 1
        try:
            with self.http.stream(method, f"/reconcile/{RESOURCES[domain]}/records",
                                  **kwargs) as response:
                if response.status_code != 200:
                    response.read()
                    raise CloudUnavailable(f"cloud ERP answered {response.status_code} for "
                                           f"{domain} records {what}")
                for line in response.iter_lines():
                    if line:
                        self.records_fetched += 1
                        yield item_of_json(domain, line)
        except httpx.HTTPError as exc:
            raise CloudUnavailable(f"cloud ERP {self.http.base_url}: reading {domain}: "
                                   f"{type(exc).__name__}: {exc}") from None

    def stream(self, domain: str, after: str = "", upto: str | None = None) -> Iterator[Item]:
        """Every record with ``after < key`` (and ``key <= upto``) through the cloud's
        export, sorted by key (works against any cloud ERP).  Like ``CloudErp.stream``,
        but a document that does not translate is an item carrying its error, not the
        end of the run; a cut stream resumes behind the last item, within the
        adapter's retry budget.  Past the first records the documents are validated
        and digested in a helper process (``workers.reconcile.pipeline``)."""
        path = f"/export/{RESOURCES[domain]}"
        failures = 0
        digester = Digester(domain, item_of_json, CloudUnavailable,
                            processes=self.digest_processes)
        self.digester = digester
        try:
            while True:
                self.requests += 1
                cut: httpx.TransportError | None = None
                try:
                    self.erp.limiter.acquire()
                    with self.http.stream("GET", path, params={"after": after}) as response:
                        if response.status_code != 200:
                            response.read()
                            raise CloudUnavailable(f"cloud ERP answered {response.status_code} "
                                                   f"on {path}: {response.text[:200]}")
                        try:
                            for line in _ndjson_lines(response):
                                for item in digester.feed(line):
                                    if upto is not None and item.key > upto:
                                        return
                                    after = item.key
                                    self.records_fetched += 1
                                    yield item
                        except httpx.TransportError as exc:
                            cut = exc  # the lines read whole before the cut are still good
                except httpx.TransportError as exc:
                    cut = exc
                except httpx.HTTPError as exc:
                    raise CloudUnavailable(f"cloud ERP {self.http.base_url}{path}: "
                                           f"{type(exc).__name__}: {exc}") from None
                for item in digester.flush():
                    if upto is not None and item.key > upto:
                        return
                    after = item.key
                    self.records_fetched += 1
                    yield item
                if cut is None:
                    return
                failures += 1
                if failures >= self.erp.attempts:
                    raise CloudUnavailable(f"cloud ERP {self.http.base_url}{path}: export of "
                                           f"{domain} failed {failures} times: "
                                           f"{type(cut).__name__}: {cut}") from None
        finally:
            digester.close()

    def get(self, domain: str, key: str) -> CanonicalRecord | None:
        """The record as the cloud holds it now (for repairs), or ``None``."""
        return self.erp.get(domain, key)

    #: Reads per ``$batch`` request (the OData batch limit the adapter writes with too).
    BATCH_READS = 200

    def items_of(self, domain: str, keys: list[str]) -> dict[str, Item]:
        """The cloud's current records of ``keys`` (absent ones left out) through its
        ordinary read API: GETs by number, up to ``BATCH_READS`` in one ``$batch``; a
        cloud that refuses ``$batch`` is asked one record at a time."""
        out: dict[str, Item] = {}
        for start in range(0, len(keys), self.BATCH_READS):
            chunk = keys[start:start + self.BATCH_READS]
            answers = self._batch_get(domain, chunk) if self._batch_ok else None
            if answers is None:
                self._batch_ok = False
                for key in chunk:
                    self.requests += 1
                    try:
                        record = self.erp.get(domain, key)
                    except CoexistError as exc:
                        out[key] = Item(key, UNTRANSLATABLE_DIGEST, None, error=str(exc))
                        continue
                    if record is not None:
                        out[key] = item_of(record)
                continue
            for key, (status, doc) in zip(chunk, answers, strict=True):
                if status == 404:
                    continue
                if status != 200 or not isinstance(doc, dict):
                    raise CloudUnavailable(f"cloud ERP answered {status} reading {domain} "
                                           f"{key}: {_clip(doc)}")
                out[key] = item_of_json(domain, doc)
        self.records_fetched += len(out)
        return out

    _batch_ok = True

    def _batch_get(self, domain: str, keys: list[str]) -> list[tuple[int, Any]] | None:
        entity_set = RESOURCES[domain]
        ops = [{"id": str(i), "method": "GET",
                "url": f"{entity_set}(number='{quote(k.replace(chr(39), chr(39) * 2), safe='')}')"}
               for i, k in enumerate(keys)]
        self.requests += 1
        try:
            limiter = self.erp.limiter
            limiter.acquire(min(len(ops), int(getattr(limiter, "burst", len(ops)))))
            response = self.http.post("/$batch", json={"requests": ops})
        except httpx.HTTPError as exc:
            raise CloudUnavailable(f"cloud ERP {self.http.base_url}/$batch: "
                                   f"{type(exc).__name__}: {exc}") from None
        if response.status_code in (400, 404, 405, 501):
            return None
        body = self._json(response)
        answers = body.get("responses") if isinstance(body, dict) else None
        if not isinstance(answers, list) or len(answers) != len(ops):
            raise CloudUnavailable(f"cloud ERP answered an unexpected shape on /$batch: "
                                   f"{_clip(body)}")
        by_id = {str(a.get("id")): a for a in answers if isinstance(a, dict)}
        if len(by_id) != len(ops):
            raise CloudUnavailable(f"cloud ERP answered an unexpected shape on /$batch: "
                                   f"{_clip(body)}")
        return [(by_id[str(i)].get("status"), by_id[str(i)].get("body"))
                for i in range(len(ops))]

    def _json(self, response: httpx.Response) -> dict:
        if response.status_code != 200:
            raise CloudUnavailable(f"cloud ERP answered {response.status_code} on "
                                   f"{response.request.url.path}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise CloudUnavailable(f"cloud ERP sent no JSON on {response.request.url.path}"
                                   ) from None
