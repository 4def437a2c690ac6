"""What our brokers share: queue naming and the "redeliver, do not ack" request.

Queue naming (both brokers)
---------------------------
* ``<name>``      the work queue an actor consumes (dramatiq's ``queue_name``).
* ``<name>.DQ``   RabbitMQ only: dramatiq's delay queue, where retries wait for
                  their eta.  The embedded broker keeps delayed rows in the same
                  table with a ``visible_at_ms`` in the future instead.
* ``<name>.XQ``   RabbitMQ only: dead letters (rejected, undecodable, or over the
                  quorum delivery limit).  No TTL: ``bus.dlq_drain`` moves them into
                  the SQL exception store.  The embedded broker's equivalent is the
                  ``bus_dead_letters`` table in its SQLite file.

Redelivery request
------------------
dramatiq's worker can only ack or nack (= dead-letter) a message once
middleware is done with it.  Neither is right when a failure could not be
recorded durably (the retry could not be enqueued, the exception store was
down): acking loses the message, dead-lettering turns a passing outage into a
dead letter.  ``request_redelivery`` marks the message; our consumers then
hand it back to the queue (RabbitMQ ``basic_nack(requeue=True)``, SQLite: lease
released) instead of dead-lettering it.
"""

from __future__ import annotations

from typing import Any

_REDELIVER_ATTR = "_coexist_redeliver"


def request_redelivery(message: Any) -> None:
    """Have the consumer give ``message`` back to its queue instead of acking it.

    ``message`` is the ``MessageProxy`` middleware receives; it is failed so
    that dramatiq's worker routes it to ``Consumer.nack``, where our consumers
    read the mark.  A consumer that does not know the mark dead-letters the
    message, which still loses nothing.
    """
    setattr(message, _REDELIVER_ATTR, True)
    message.fail()


def redelivery_requested(message: Any) -> bool:
    """True when middleware asked for ``message`` to go back to its queue."""
    return bool(getattr(message, _REDELIVER_ATTR, False))
