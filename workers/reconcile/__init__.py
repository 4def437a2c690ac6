"""Reconciliation I/O: readers of both ERPs, the run store, the repair step.

The pure logic is ``coexistence.reconcile``; the command is ``coexist reconcile``
(``workers.cli.reconcile``).
"""
