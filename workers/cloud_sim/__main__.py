"""``python -m workers.cloud_sim``: the same as ``coexist cloud-sim`` (see
``workers.cli.cloud_sim``); kept for ``start_simulator``, which runs it as a subprocess."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from workers.cli import cli

    cli.main(args=["cloud-sim", *sys.argv[1:]], prog_name="coexist")
