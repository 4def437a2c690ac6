"""Both reference ERPs' adapter benchmarks in one run: legacy change-log reading, then cloud
single and batch upserts.  Each prints its own JSON lines (name, records_per_s,
baseline_per_s, ratio) with its same-run baseline; see erps_legacy.py and erps_cloud.py.

    .venv/bin/python scripts/bench/erps.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = 0
    for script in ("erps_legacy.py", "erps_cloud.py"):
        failed |= subprocess.call([sys.executable, str(HERE / script), *sys.argv[1:]])
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
