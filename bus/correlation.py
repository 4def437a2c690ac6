"""dramatiq middleware that carries the correlation id through every hop.

While an actor handles a message, the correlation context (``bus.context``)
holds the message's correlation id, its id and its cause, so every log line the
handler writes carries them and every envelope it creates with
``new_envelope`` inherits them.  Messages enqueued while handling that do not
carry an envelope get the ids stamped into their options
(``correlation_id``, ``causation_id``) so the next hop continues the chain.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import dramatiq

from bus import context

_handled_dramatiq_id: ContextVar[str | None] = ContextVar("coexist_dramatiq_id", default=None)

#: Option names under which correlation travels in a dramatiq message.
CORRELATION_OPTION = "correlation_id"
CAUSATION_OPTION = "causation_id"


class CorrelationMiddleware(dramatiq.Middleware):
    """Set the correlation context from the envelope (or options) of the message handled."""

    def before_process_message(self, broker, message) -> None:
        correlation, causation, message_id = ids_of(message)
        context.correlation_id.set(correlation)
        context.causation_id.set(causation)
        context.message_id.set(message_id)
        _handled_dramatiq_id.set(message.message_id)

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        _clear()

    def after_skip_message(self, broker, message) -> None:
        _clear()

    def before_enqueue(self, broker, message, delay) -> None:
        correlation = context.correlation_id.get()
        if correlation is None or CORRELATION_OPTION in message.options:
            return
        # A retry of the message being handled keeps its own ids; only new messages are stamped.
        if message.message_id == _handled_dramatiq_id.get():
            return
        message.options[CORRELATION_OPTION] = correlation
        message.options[CAUSATION_OPTION] = context.message_id.get()


def ids_of(message: Any) -> tuple[str, str | None, str]:
    """(correlation id, causation id, message id) of a dramatiq message, envelope first.

    The envelope's message id wins over dramatiq's (the outbox makes them equal;
    a message sent directly gets a fresh dramatiq id), because it is the id the
    inbox, the exception store and downstream causation ids refer to.

    Never raises: a message without an envelope (or with a broken one, which the
    actor will report as undecodable) still gets a correlation: its own id.
    """
    args = getattr(message, "args", None) or ()
    env = args[0] if args and isinstance(args[0], dict) else {}
    options = getattr(message, "options", None) or {}
    correlation = _str(env.get("correlation_id")) or _str(options.get(CORRELATION_OPTION))
    causation = _str(env.get("causation_id")) or _str(options.get(CAUSATION_OPTION))
    mid = _str(env.get("message_id")) or message.message_id
    return correlation or mid, causation, mid


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _clear() -> None:
    _handled_dramatiq_id.set(None)
    context.correlation_id.set(None)
    context.causation_id.set(None)
    context.message_id.set(None)
