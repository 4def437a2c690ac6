"""Where a backfill's wall time goes, on both sides of the cloud write: ``coexist
reconcile customer --repair --yes`` (its own OS process) into an empty simulator (its
own OS process), each sampled by py-spy for the whole run (``--idle``: waiting is
sampled too; ``--threads``: per thread), with each process's CPU from /proc.

Prints one JSON line: wall, CPU of each process (and per record, per batch of 200),
and for each thread of each process the share of its samples per top frame, split
into on-CPU (the frame py-spy saw running) and idle (waiting: a lock, a socket, a
queue, sleep), plus the py-spy flame files' paths (``--keep DIR``).

Usage: ``python scripts/bench/backfill_profile.py [--customers 30000] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

#: py-spy samples per second (low: the machine is shared and the profiler costs CPU too).
RATE_HZ = 67
#: Frames of a stack shown per summary line (innermost last).
FRAMES_SHOWN = 3
#: Summary lines kept per thread.
LINES_KEPT = 8


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else (shutil.which("py-spy") or "py-spy")


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarise(raw: Path) -> dict:
    """Per thread: samples, and the top (frames, state) shares of its samples."""
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    if not raw.exists():
        return {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread = frames[0]
        n = int(count)
        # py-spy --idle marks nothing itself; a stack whose leaf is a known wait is idle.
        leaf = frames[-1]
        idle = any(w in leaf for w in _WAITS)
        shown = ";".join(_short(f) for f in frames[1:][-FRAMES_SHOWN:])
        threads[thread][(shown, "idle" if idle else "cpu")] += n
        totals[thread] += n
    out = {}
    for thread, counter in threads.items():
        total = totals[thread]
        cpu = sum(n for (_, state), n in counter.items() if state == "cpu")
        out[_short_thread(thread)] = {
            "samples": total, "cpu_share": round(cpu / total, 3),
            "top": [[f"{state}: {frames}", round(n / total, 3)]
                    for (frames, state), n in counter.most_common(LINES_KEPT)]}
    return out


#: Leaf frames that wait rather than compute (py-spy shows the Python frame calling them).
_WAITS = ("wait (threading.py", "acquire", "select (selectors.py", "_read_raw",
          "recv_into", "readinto (socket.py", "sleep", "get (queue.py", "put (queue.py",
          "poll (selectors.py", "_run_once (asyncio", "select (asyncio", "read (ssl.py",
          "_wait_for_tstate_lock", "join (threading.py", "accept")


def _short(frame: str) -> str:
    # "fn (path/to/module.py:123)" -> "fn (module.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def _short_thread(thread: str) -> str:
    return thread.split(" ", 1)[-1] if thread.startswith("thread ") else thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--keep", default=None, help="keep the py-spy files in this directory")
    parser.add_argument("--gil", action="store_true",
                        help="sample only threads holding the GIL (py-spy --gil)")
    a = parser.parse_args()
    from backfill import build_legacy, fresh_state

    from workers.cloud_sim import start_simulator

    load0 = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-backfill-profile-") as tmp:
        dir_ = Path(a.keep) if a.keep else Path(tmp)
        dir_.mkdir(parents=True, exist_ok=True)
        work = Path(tmp)
        legacy_url = build_legacy(work, a.customers, 1)
        state_url = fresh_state(f"sqlite:///{work / 'state.db'}")
        mode = ["--gil"] if a.gil else ["--idle"]
        with start_simulator(work / "cloud.db") as sim:
            env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
            env.update(COEXIST_HOME=str(work), COEXIST_LEGACY_URL=legacy_url,
                       COEXIST_CLOUD_URL=sim.url, COEXIST_STATE_URL=state_url,
                       COEXIST_REDIS_URL="", COEXIST_BROKER_URL="", PYTHONPATH=str(ROOT))
            exe = Path(sys.executable).parent / "coexist"
            sim_raw, cli_raw = dir_ / "simulator.txt", dir_ / "cli.txt"
            sim_cpu0 = cpu_of(sim.process.pid)
            spy_sim = subprocess.Popen(
                [py_spy(), "record", "--format", "raw", "--threads", *mode, "-r", str(RATE_HZ),
                 "-o", str(sim_raw), "-p", str(sim.process.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter()
            # The command's JSON (up to 100k findings) to a file, not a pipe: py-spy's
            # child lost the end of a 50 MB stdout through a pipe (100k run, truncated).
            out_path, err_path = work / "cli.out", work / "cli.err"
            with out_path.open("w") as out_f, err_path.open("w") as err_f:
                cli = subprocess.Popen(
                    [py_spy(), "record", "--format", "raw", "--threads", *mode, "-r",
                     str(RATE_HZ), "-o", str(cli_raw), "--", str(exe), "reconcile", "customer",
                     "--repair", "--yes", "--format", "json", "--no-progress"],
                    env=env, stdout=out_f, stderr=err_f)
                cli.wait()
            out, err = out_path.read_text(), err_path.read_text()
            wall = time.perf_counter() - wall
            sim_cpu = cpu_of(sim.process.pid) - sim_cpu0
            spy_sim.send_signal(2)  # SIGINT: py-spy writes its file and exits
            spy_sim.wait(30)
        line = next((x for x in out.splitlines() if x.startswith("{")), None)
        if line is None:
            raise SystemExit(f"coexist reconcile failed ({cli.returncode}):\n{err[-3000:]}")
        body = json.loads(line)
        run = body["runs"][0]
        b = run.get("backfill") or {}
        batches = max(1, a.customers // 200)
        cli_cpu = b.get("cpu_s") or 0.0
        print(json.dumps({
            "name": "backfill_profile", "customers": a.customers, "mode": run["mode"],
            "wall_s": round(wall, 2), "backfill_phase_s": b.get("seconds"),
            "backfill_phase_per_s": b.get("records_per_s"),
            "cli_backfill_cpu_s": cli_cpu, "simulator_cpu_s": round(sim_cpu, 2),
            "cli_cpu_ms_per_batch": round(1000 * cli_cpu / batches, 1),
            "simulator_cpu_ms_per_batch": round(1000 * sim_cpu / batches, 1),
            "wall_ms_per_batch": round(1000 * (b.get("seconds") or wall) / batches, 1),
            "profiler": "gil" if a.gil else "idle", "rate_hz": RATE_HZ,
            "cli_threads": summarise(cli_raw), "simulator_threads": summarise(sim_raw),
            "files": [str(cli_raw), str(sim_raw)] if a.keep else None,
            "loadavg_start": load0, "loadavg": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
