"""Start the CRM simulator as a real subprocess on a free loopback port, and stop it."""

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
class RunningCrmSimulator:
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

    def __enter__(self) -> RunningCrmSimulator:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_crm_simulator(
    db_path: str | Path,
    *,
    faults: dict | None = None,
    clients: dict[str, str] | None = None,
    daily_limit: int | None = None,
    session_ttl_s: float | None = None,
    retention_s: float | None = None,
    tls: tuple[str | Path, str | Path] | None = None,
    stderr=None,
) -> RunningCrmSimulator:
    """Run ``python -m workers.crm_sim`` and wait for its URL.

    ``clients`` maps OAuth client id -> secret; they go through the environment, never the
    command line.  ``tls`` is (certificate, key) PEM files to serve HTTPS.
    """
    args = [sys.executable, "-m", "workers.crm_sim", "--port", "0", "--db", str(db_path)]
    if faults:
        args += ["--faults", json.dumps(faults)]
    if daily_limit is not None:
        args += ["--daily-limit", str(daily_limit)]
    if session_ttl_s is not None:
        args += ["--session-ttl-s", str(session_ttl_s)]
    if retention_s is not None:
        args += ["--retention-s", str(retention_s)]
    if tls:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    env = dict(os.environ)
    if clients:
        env["COEXIST_CRM_SIM_CLIENTS"] = ",".join(f"{c}:{s}" for c, s in clients.items())
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(STARTUP_TIMEOUT_S)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith(("http://", "https://")):
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"CRM simulator did not start within {STARTUP_TIMEOUT_S}s "
            f"(exit code {proc.returncode}); run {' '.join(args)} to see why"
        )
    return RunningCrmSimulator(line, proc, Path(db_path))
