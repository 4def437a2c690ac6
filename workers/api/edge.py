"""The warm inquiry path without the framework: whole answers kept per caller and URL.

A profile of a warm ``GET /v1/customers/{key}/credit`` (py-spy ``--gil``, the ASGI app
driven in-process) put 65 % of its CPU in FastAPI/Starlette (dependency solving, the
middleware stack, routing) and 25 % in recomputing the answer from cached reads and
encoding it.  ``EdgeCache`` keeps the answer the full path produced, keyed by the
caller's exact ``Authorization`` header, the path and the query string, and
``GovernedApi.__call__`` serves a hit before FastAPI sees the request.

What makes a hit the same answer the full path would give:

* only a ``200`` computed from fresh (never stale) reads is kept;
* it expires when its oldest read would (``max_age_s - age_s`` after it was made), and is
  ignored as soon as any domain it read has a new flag version (a switch misses at once,
  as the read cache does);
* the body, with ``meta.cached = true``, is encoded once when kept; each hit splices
  ``meta.age_s`` of now into those bytes (the same bytes ``json.dumps`` would give), with
  the same ``Cache-Control``/``Age`` headers, and the request's ``X-Correlation-Id`` (or a new
  one) like every answer;
* the key holds the exact credential that the full path authenticated (consumers are fixed
  for the life of the process), so a hit is never served to another caller.

Everything else (misses, errors, other methods, ``COEXIST_API_CACHE_TTL_S=0``) goes through
FastAPI unchanged.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coexistence.flags import FlagSource
from workers.api.ids import new_correlation_id_bytes

#: Answers kept (LRU).
MAX_ENTRIES = 20_000
_CORRELATION = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


#: Stands for ``meta.age_s`` in a kept answer's encoding; split out at ``put``.
_AGE = "\x00coexist-age\x00"
_AGE_JSON = json.dumps(_AGE).encode()


_JSON_TYPE = (b"content-type", b"application/json")
#: ``Age`` headers of whole seconds up to an hour, made once.
_AGE_HEADERS = tuple((b"age", b"%d" % n) for n in range(3600))


def age_of(age_s: float) -> tuple[float, bytes]:
    """``round(age_s, 3)`` and its JSON text (``repr``), as ``json.dumps`` writes it.

    From whole milliseconds (``m / 1000`` is the double nearest to the 3-decimal value,
    exactly what ``round`` gives) unless ``age_s`` lies within a millionth of a
    millisecond of a half (then ``round`` itself decides the tie); the text of a kept
    millisecond count is remembered.  ``round`` and ``repr`` of a float each work through
    a decimal conversion: together they were the warm answer's dearest step."""
    ms = age_s * 1000.0
    m = int(ms + 0.5)
    if not 0.0 <= ms < 1e9 or abs(m - ms - 0.5) < 1e-6 or abs(m - ms + 0.5) < 1e-6:
        age = round(age_s, 3)
        return age, repr(age).encode()
    text = _AGE_TEXT.get(m)
    if text is None:
        text = repr(m / 1000).encode()
        if len(_AGE_TEXT) < AGE_TEXTS_MAX:
            _AGE_TEXT[m] = text
    return m / 1000, text


#: Millisecond counts whose text is remembered: ages up to a minute (a few MB at most).
AGE_TEXTS_MAX = 60_000
_AGE_TEXT: dict[int, bytes] = {}


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Entry:
    body: dict[str, Any]
    #: (domain, flag version) of every read the answer made.
    versions: tuple[tuple[str, int], ...]
    stored_at: float
    base_age_s: float
    expires_at: float
    #: The answer as sent (``meta.cached`` true), encoded once: the bytes before and after
    #: the value of ``meta.age_s``, which ``serve`` puts between them.
    head: bytes = b""
    tail: bytes = b""
    #: The ``Cache-Control`` header as sent.
    cache_control: tuple[bytes, bytes] = (b"cache-control", b"")


class EdgeCache:
    def __init__(self, flags: FlagSource, clock: Callable[[], float],
                 max_entries: int = MAX_ENTRIES) -> None:
        self.flags = flags
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()
        self._lock = threading.Lock()
        #: Whether ``flags.state(d)`` is ``flags.states[d]`` (``FlagSource``'s own): a hit
        #: then reads the dict (read anew each time) instead of calling per domain.
        self._plain_states = getattr(type(flags), "state", None) is FlagSource.state

    @staticmethod
    def key(scope, authorization: bytes | None = None) -> tuple | None:
        auth = authorization
        if auth is None:
            for name, value in scope["headers"]:
                if name == b"authorization":
                    auth = value
                    break
        if auth is None:
            return None
        return (auth, scope["path"], scope.get("query_string", b""))

    def put(self, scope, body: dict[str, Any]) -> None:
        meta = body["meta"]
        if meta["stale"] or meta["max_age_s"] <= 0:
            return
        key = self.key(scope)
        if key is None:
            return
        head, marker, tail = _encode(
            {**body, "meta": {**meta, "cached": True, "age_s": _AGE}}).rpartition(_AGE_JSON)
        if not marker or _AGE_JSON in head:
            return  # the answer itself holds the marker: not kept (never spliced wrongly)
        versions = tuple(sorted({(s["domain"], s["flag_version"])
                                 for s in meta["answered_by"]}))
        now = self.clock()
        entry = Entry(body, versions, now, meta["age_s"],
                      now + max(meta["max_age_s"] - meta["age_s"], 0.0), head, tail,
                      (b"cache-control", f"max-age={int(meta['max_age_s'])}".encode()))
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, scope, authorization: bytes | None = None) -> Entry | None:
        auth = authorization
        if auth is None:
            for name, value in scope["headers"]:
                if name == b"authorization":
                    auth = value
                    break
            if auth is None:
                return None
        key = (auth, scope["path"], scope.get("query_string", b""))
        # One C call, atomic under the GIL: a read needs no lock (writers take it).
        entry = self._entries.get(key)
        if entry is None:
            return None
        fresh = self.clock() < entry.expires_at
        if fresh:
            if self._plain_states:
                states = self.flags.states
                for domain, version in entry.versions:  # a loop, not any(genexpr)
                    if states[domain].version != version:
                        fresh = False
                        break
            else:
                state = self.flags.state
                for domain, version in entry.versions:
                    if state(domain).version != version:
                        fresh = False
                        break
        if not fresh:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            return None
        return entry

    def response(self, entry: Entry, correlation_id: bytes | None,
                 headers: list[tuple[bytes, bytes]] | tuple = ()
                 ) -> tuple[dict, dict, bytes, float]:
        """The kept answer's two ASGI messages (with ``headers`` added: the rate-limit
        fields), its correlation id (``correlation_id`` when valid, else new) and the
        ``meta.age_s`` it carries.  The body is the kept encoding with the age spliced in:
        what ``json.dumps`` of the answer would give; the headers are the route's
        (``JSONResponse`` with ``Cache-Control`` and ``Age``, then the correlation id, then
        ``headers``), in its order."""
        elapsed = self.clock() - entry.stored_at
        age, text = age_of(entry.base_age_s + elapsed if elapsed > 0.0 else entry.base_age_s)
        cid = correlation_id
        if cid is None or not _CORRELATION.match(cid):
            cid = new_correlation_id_bytes()
        raw = entry.head + text + entry.tail
        whole = int(age)
        return ({"type": "http.response.start", "status": 200, "headers": [
                    entry.cache_control,
                    _AGE_HEADERS[whole] if whole < len(_AGE_HEADERS) else (b"age", b"%d" % whole),
                    (b"content-length", b"%d" % len(raw)), _JSON_TYPE,
                    (b"x-correlation-id", cid), *headers]},
                {"type": "http.response.body", "body": raw}, cid, age)

    async def serve(self, entry: Entry, scope, send, *, correlation_id: bytes | None = None,
                    headers: list[tuple[bytes, bytes]] | tuple = ()
                    ) -> tuple[bytes, float]:
        """Send ``response`` (the correlation id the request's, found in ``scope`` when not
        given); its correlation id and ``meta.age_s``."""
        cid = correlation_id
        if cid is None:
            for name, value in scope["headers"]:
                if name == b"x-correlation-id":
                    cid = value
                    break
        start, body, cid, age = self.response(entry, cid, headers)
        await send(start)
        await send(body)
        return cid, age

    @staticmethod
    def meta(entry: Entry, age: float) -> dict[str, Any]:
        """The ``meta`` a served answer carried (for the inquiry trace)."""
        return {**entry.body["meta"], "cached": True, "age_s": age}
