"""Read-only queries behind ``coexist trace`` and ``coexist status``.

Nothing here writes: these functions read coexist's state database (outbox,
exception store, flag audit, routing state, xref, reconciliation runs) and,
where reachable, the two ERPs' change feeds, and return plain data that the
CLI prints as a table or as JSON.  A source that cannot be read is named as
unavailable in the result instead of failing the whole report.
"""

from workers.observe.sources import SourceNote, parse_since
from workers.observe.status import StatusReport, Thresholds, collect_status
from workers.observe.trace import Trace, TraceEvent, TraceInputError, build_trace, parse_target

__all__ = [
    "SourceNote", "StatusReport", "Thresholds", "Trace", "TraceEvent", "TraceInputError",
    "build_trace", "collect_status", "parse_since", "parse_target",
]
