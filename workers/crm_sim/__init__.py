"""A local reference CRM that answers like Salesforce's REST API (see ``app`` for routes).

Run it as ``python -m workers.crm_sim --port 0 --db PATH`` (or ``coexist crm-sim``); it
prints its bound URL as the first line on stdout.  ``start_crm_simulator`` does that from
Python (tests, demo) and stops it again; ``CrmSimulatorAdmin`` drives its test controls.
"""

from workers.crm_sim.process import RunningCrmSimulator, start_crm_simulator

__all__ = ["RunningCrmSimulator", "start_crm_simulator"]
