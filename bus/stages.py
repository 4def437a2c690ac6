"""Stage timestamps of routed messages, for latency breakdowns (off unless asked for).

With ``COEXIST_STAGE_TRACE`` naming a file, each process appends one JSON line per
batch and stage to it: ``{"s": stage, "p": pid, "t": epoch seconds, "k": [keys]}`` (one
time for the batch) or ``{"s": stage, "p": pid, "tk": [[epoch seconds, key], ...]}`` (a
time per key).  Keys are ``domain:key``.  ``scripts/bench/router.py --stages`` joins the
lines of every process (same host, same clock) into per-stage latencies of its light-load
changes.  The stages, in the order a routed change passes them:

* ``capture_read``: the router's capture read the change from the ERP's change log;
* ``outbox_commit``: the capture batch's state transaction (its outbox rows) committed;
* ``published``: the relay's batch was confirmed by the broker and marked sent;
* ``received``: a batch consumer took the delivery from the broker;
* ``batch_start``: its batch was complete (after the linger) and handed to the handler;
* ``written``: the ERP writer's conditioned write request returned;
* ``acked``: the batch's claims/effects committed and its deliveries were acked.

Besides the stages of keys, :func:`span` writes what a process was doing from one time
to another (``{"s": name, "p": pid, "t0": start, "t1": end, ...}``: the router's capture
runs, with their system and changes read), so a change's wait can be set against them.

Off (the default) it costs one attribute test per call.  Lines are small and written
with one ``write`` each on a file opened for appending, so processes can share the file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable

ENV = "COEXIST_STAGE_TRACE"

_lock = threading.Lock()
_file = None
_path = os.environ.get(ENV) or None


def enabled() -> bool:
    return _path is not None


def enable(path: str | None) -> None:
    """Trace to ``path`` from now on (``None``: stop), in this process only."""
    global _path, _file
    with _lock:
        if _file is not None:
            _file.close()
        _file, _path = None, path


def _write(line: dict) -> None:
    global _file
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    with _lock:
        if _path is None:
            return
        if _file is None:
            _file = open(_path, "ab", buffering=0)  # noqa: SIM115 - kept open while tracing
        _file.write(data)


def mark(stage: str, keys: Iterable[str], at: float | None = None) -> None:
    """``keys`` (``domain:key``) passed ``stage`` at ``at`` (default: now)."""
    if _path is None:
        return
    keys = list(keys)
    if keys:
        _write({"s": stage, "p": os.getpid(), "t": time.time() if at is None else at,
                "k": keys})


def mark_each(stage: str, timed: Iterable[tuple[float, str]]) -> None:
    """Each ``(time, domain:key)`` passed ``stage`` at its own time."""
    if _path is None:
        return
    pairs = [[t, k] for t, k in timed]
    if pairs:
        _write({"s": stage, "p": os.getpid(), "tk": pairs})


def span(name: str, start: float, end: float, **fields) -> None:
    """This process did ``name`` from ``start`` to ``end`` (epoch seconds); ``fields``
    (JSON values) say more."""
    if _path is None:
        return
    _write({"s": name, "p": os.getpid(), "t0": start, "t1": end, **fields})


def message_key(message) -> str:
    """``domain:key`` of a dramatiq message carrying an envelope dict (``?`` if none)."""
    args = getattr(message, "args", None) or ()
    env = args[0] if args and isinstance(args[0], dict) else {}
    return f"{env.get('domain', '?')}:{env.get('key', '?')}"
