"""One instance per test session (per xdist worker) of a fixture that many modules import.

pytest makes a separate session-scoped fixture for every module that imports a fixture
function (``simulator, sim = cloud_sim.simulator, cloud_sim.sim``), each kept until the
session ends: without this, each such module started its own simulator subprocess."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

#: key -> [value, modules using it, stop]
_instances: dict[str, list[Any]] = {}


@contextlib.contextmanager
def shared(key: str, start: Callable[[], tuple[Any, Callable[[], None]]]) -> Iterator[Any]:
    """The running instance named ``key``, made by ``start()`` (which returns it and how to
    stop it) for its first user; stopped when its last user is done."""
    entry = _instances.get(key)
    if entry is None:
        value, stop = start()
        entry = _instances[key] = [value, 0, stop]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _instances[key]
            entry[2]()
