"""``coexist crm-sim``: run the reference CRM (Salesforce REST semantics) for the demo and tests.

The command itself lives with the simulator (``workers.crm_sim.serve``) so that
``python -m workers.crm_sim`` and ``coexist crm-sim`` are the same program.
"""

from __future__ import annotations

from workers.crm_sim.serve import main as crm_sim

__all__ = ["crm_sim"]
