"""A local simulator of the cloud ERP's HTTP API (see ``app`` for the routes).

Run it as ``python -m workers.cloud_sim --port 0 --db PATH [--faults ...]``; it
prints its bound URL as the first line on stdout.  ``start_simulator`` does
that from Python (tests, demo) and stops it again.
"""

from workers.cloud_sim.process import RunningSimulator, start_simulator

__all__ = ["RunningSimulator", "start_simulator"]
