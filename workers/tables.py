"""Imports every module that declares a state table (bus and workers), so that
``BUS_METADATA`` and ``STATE_METADATA`` hold everything the state database has.

The migrations' environment imports this module (it is what autogenerate and the
models-versus-migrations test compare against).  Add one import line per module that
declares state tables.
"""

import bus.tables  # noqa: F401  (outbox, outbox_lease, inbox, exception_record)
import workers.api.idempotency  # noqa: F401  (api_idempotency, api_sequence)
import workers.api.trace  # noqa: F401  (api_inquiry)
import workers.checkpoints  # noqa: F401  (cdc_checkpoint)
import workers.crm.state  # noqa: F401  (crm_onboarding)
import workers.edi.store  # noqa: F401  (edi_interchange, edi_document, edi_counter, edi_event)
import workers.flags.audit  # noqa: F401  (flag_audit)
import workers.portal.endpoints  # noqa: F401  (portal_endpoint, _secret, _audit)
import workers.portal.store  # noqa: F401  (portal_delivery, portal_attempt, portal_object_state)
import workers.reconcile.checkpoint  # noqa: F401  (backfill_checkpoint)
import workers.reconcile.index  # noqa: F401  (reconcile_index, reconcile_bucket, reconcile_index_side)
import workers.reconcile.store  # noqa: F401  (reconcile_run, reconcile_finding)
import workers.router.lease  # noqa: F401  (capture_lease)
import workers.router.observed  # noqa: F401  (observed_revision)
import workers.router.state  # noqa: F401  (record_route)
import workers.router.waits  # noqa: F401  (repair_wait)
import workers.xref_sql  # noqa: F401  (xref)
