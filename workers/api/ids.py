"""Correlation ids of the governed API."""

from __future__ import annotations

import os
import random
import threading

#: Ids made at once (``_refill``); a request then takes one with a ``list.pop``.
POOL_SIZE = 1024

#: One id and its separator; ``-`` at 8, 13, 18, 23, the version (``4``) at 14.
_TEMPLATE = b"00000000-0000-4000-8000-000000000000\n"
#: Where the 31 random hex digits go (every position but the dashes and the version).
_DIGITS_AT = tuple(i for i, c in enumerate(_TEMPLATE[:36]) if c != ord("-") and i != 14)
#: The variant digit (position 19, RFC 9562: binary 10xx) from any hex digit.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")

_pool: list[bytes] = []
_refill_lock = threading.Lock()


def _refill() -> bytes:
    """``POOL_SIZE`` new ids, built column by column in C (slice assignment), not one by
    one; returns one of them and leaves the rest in the pool."""
    with _refill_lock:
        if not _pool:
            digits = random.randbytes(16 * POOL_SIZE).hex().encode()  # 32 digits per id
            out = bytearray(_TEMPLATE * POOL_SIZE)
            for k, at in enumerate(_DIGITS_AT):
                column = digits[k::32]
                out[at::len(_TEMPLATE)] = column.translate(_VARIANT) if at == 19 else column
            made = bytes(out).split(b"\n")
            made.pop()  # after the last separator
            _pool.extend(made)
    try:
        return _pool.pop()
    except IndexError:  # taken by other threads meanwhile
        return _refill()


def new_correlation_id_bytes() -> bytes:
    """A random (version 4, RFC 9562 variant) UUID as ASCII bytes, like
    ``str(uuid.uuid4()).encode()``.

    Made from ``random`` rather than ``os.urandom`` + ``uuid.UUID`` (``str(uuid.uuid4())``
    was 7 % of the API process's GIL time on the warm inquiry path, py-spy), and made
    ``POOL_SIZE`` at a time: formatting one id at a time (``getrandbits`` and five slices)
    was still 13 % of the warm path's own CPU.  A correlation id only has to be unique,
    never unguessable (it is no credential): each has 122 random bits, as a ``uuid4``.
    ``list.pop`` is atomic, so two threads never get the same id; a forked child starts
    with an empty pool (and ``random`` reseeded)."""
    try:
        return _pool.pop()
    except IndexError:
        return _refill()


def new_correlation_id() -> str:
    """``new_correlation_id_bytes()`` as text."""
    try:
        return _pool.pop().decode()
    except IndexError:
        return _refill().decode()


os.register_at_fork(after_in_child=_pool.clear)
