"""coexist's long-running commands as OS processes, started the way supervisord starts them
(the installed ``coexist`` entry point, settings in the environment), for crash and standby
tests; and the waits those tests need (bounded, on state, never on elapsed time alone)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]


def coexist_executable() -> list[str]:
    """The ``coexist`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "coexist"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from workers.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def coexist_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a coexist process: ``COEXIST_*`` from ``settings`` (keys in lower
    case without the prefix), embedded defaults for the rest, nothing inherited from the
    test run's own ``COEXIST_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
    env.update({"COEXIST_HOME": str(home), "COEXIST_REDIS_URL": "", "COEXIST_BROKER_URL": ""})
    env.update({f"COEXIST_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


class Process:
    """One coexist command running as a child process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.log = args, log
        self._out = log.open("ab")
        self.popen = subprocess.Popen(coexist_executable() + args, env=env, cwd=ROOT,
                                      stdout=self._out, stderr=subprocess.STDOUT)
        self.pid = self.popen.pid

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in ``timeout_s``.  Returns the exit
        code (negative: the signal that ended it)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
                self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._dump_stacks()
                self.popen.kill()
                self.popen.wait(30)
        if not self._out.closed:
            self._out.close()
        return self.popen.returncode

    def _dump_stacks(self) -> None:
        """A process that does not stop on SIGTERM: its threads' stacks (py-spy, a dev
        dependency) go into its output before the SIGKILL, so the failure says where it
        hung instead of only that it did."""
        spy = _py_spy()
        if spy is None or self._out.closed:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            dump = subprocess.run([spy, "dump", "--pid", str(self.popen.pid)],
                                  capture_output=True, timeout=20)
            self._out.write(b"\n--- did not stop on SIGTERM; py-spy dump ---\n" +
                            dump.stdout + dump.stderr)
            self._out.flush()


def _py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else None


def wait_until(check: Callable[[], Any], timeout_s: float, what: str,
               poll_s: float = 0.1, *, alive: Sequence[subprocess.Popen] = ()) -> Any:
    """``check()``'s first truthy result within ``timeout_s``, else AssertionError naming
    ``what`` and the last value seen; also as soon as a process of ``alive`` has ended."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        for proc in alive:
            assert proc.poll() is None, f"a process ended ({proc.returncode}) before {what}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s (last: {last!r})")
        time.sleep(poll_s)


@contextlib.contextmanager
def extra_pg_schema(database_url: str) -> Iterator[str]:
    """One more schema in the run's PostgreSQL database (for a second database role, e.g.
    the legacy ERP beside coexist's state); yields its URL and drops it after."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{database_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


class LogTail:
    """The JSON log lines a process has written since the last ``poll`` (non-JSON lines,
    such as a start-up banner, are skipped; a line still being written waits)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self._rest = path, 0, b""

    def poll(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        out = []
        for line in lines:
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out
