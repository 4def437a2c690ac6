"""Start the simulator as a real subprocess on a free loopback port, and stop it."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: How long the simulator may take to print its URL, in seconds.
STARTUP_TIMEOUT_S = 15.0


@dataclass
class RunningSimulator:
    url: str
    process: subprocess.Popen
    db_path: Path

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_simulator(
    db_path: str | Path,
    *,
    faults: dict | str | None = None,
    rate_per_s: float = 0.0,
    burst: float = 0.0,
    tokens: dict[str, str] | None = None,
    stderr=None,
) -> RunningSimulator:
    """Run ``python -m workers.cloud_sim`` and wait for its URL.

    ``tokens`` maps client id -> bearer token; they are passed through the
    environment, never the command line.
    """
    args = [sys.executable, "-m", "workers.cloud_sim", "--port", "0", "--db", str(db_path)]
    if faults:
        args += ["--faults", faults if isinstance(faults, str) else json.dumps(faults)]
    if rate_per_s:
        args += ["--rate-limit", str(rate_per_s)]
    if burst:
        args += ["--burst", str(burst)]
    env = dict(os.environ)
    if tokens:
        env["COEXIST_SIM_TOKENS"] = ",".join(f"{c}:{t}" for c, t in tokens.items())
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(STARTUP_TIMEOUT_S)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("http://"):
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"cloud simulator did not start within {STARTUP_TIMEOUT_S}s "
            f"(exit code {proc.returncode}); run {' '.join(args)} to see why"
        )
    return RunningSimulator(line, proc, Path(db_path))
