"""Imports every module that declares a ``BusTable``, so ``BUS_METADATA`` holds them all.

Migrations (and tests that build a bus-only database) import this module; add one
import line per module that declares bus tables.
"""

import bus.exception_store  # noqa: F401  (exception_record, exception_action)
import bus.inbox  # noqa: F401  (inbox)
import bus.outbox  # noqa: F401  (outbox, outbox_lease)
