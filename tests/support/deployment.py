"""A coexist deployment for process tests: a state database at the schema's head, a legacy
ERP with its schema, the ``coexist`` processes started on them (``tests.support.processes``),
and a clean-up that ends every process and returns their logs' tails.  The switch, drain and
standby tests subclass ``Deployment`` with what each of them looks at."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from bus.db import create_state_engine
from tests.support.processes import Process, wait_until
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema

#: Longest wait for a process to start (a bound, not a figure).
START_S = 60.0

D = TypeVar("D", bound="Deployment")


def prepare(state_url: str, legacy_url: str) -> None:
    """The legacy ERP's schema, and the state database upgraded to the head revision."""
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    engine.dispose()
    state = create_state_engine(state_url)
    upgrade_schema(state)
    state.dispose()


class Deployment:
    """Engines on the deployment's state and legacy databases, and its processes."""

    def __init__(self, home: Path, env: dict[str, str], state_url: str, legacy_url: str,
                 **legacy_engine_options: Any) -> None:
        self.home = self.tmp_path = home
        self.env, self.state_url = env, state_url
        self.state = create_state_engine(state_url)
        self.legacy_engine = create_legacy_engine(legacy_url, **legacy_engine_options)
        self.legacy = LegacyErp(self.legacy_engine)
        self.procs: list[Process] = []

    def spawn(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> Process:
        """Start ``coexist ARGS`` (its output in ``home/log_name``), not waiting for it."""
        proc = Process(args, self.env if env is None else env, self.home / log_name)
        self.procs.append(proc)
        return proc

    @staticmethod
    def started(proc: Process, timeout_s: float = START_S) -> Process:
        """``proc`` once it logged ``coexist bootstrapped``; fails if it ended instead."""
        wait_until(lambda: '"coexist bootstrapped"' in proc.output() or not proc.alive(),
                   timeout_s, f"coexist {proc.args[0]} starts")
        assert proc.alive(), proc.output()[-3000:]
        return proc

    def close(self, tail: int = 3000) -> str:
        """End every process (whatever happened to the one before), dispose the engines;
        the last ``tail`` characters of each process's log."""
        logs = []
        for proc in self.procs:
            try:
                proc.stop()
            except BaseException:  # noqa: BLE001 - every process must still be ended
                proc.popen.kill()
                proc.popen.wait(10)
            logs.append(f"--- {proc.log.name}\n{proc.output()[-tail:]}")
        self.state.dispose()
        self.legacy_engine.dispose()
        return "\n".join(logs)


@contextlib.contextmanager
def running(deployment: D) -> Iterator[D]:
    """Yield ``deployment``; close it after, printing its processes' logs (pytest shows them
    when the test fails)."""
    try:
        yield deployment
    finally:
        print(deployment.close())
