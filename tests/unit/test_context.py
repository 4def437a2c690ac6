"""Correlation context and JSON log lines."""

from __future__ import annotations

import io
import json
import logging

from bus import context
from bus.context import JsonLogFormatter, configure_logging, correlation_scope


def _log_lines(fn) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("coexist.test.context")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        fn(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_log_line_carries_the_correlation_of_the_message_being_handled():
    def emit(logger):
        with correlation_scope(correlation="corr-7", message="msg-1"):
            logger.info("applied %s", "C001")
        logger.info("outside")

    inside, outside = _log_lines(emit)
    assert inside["message"] == "applied C001"
    assert inside["correlation_id"] == "corr-7"
    assert inside["message_id"] == "msg-1"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "coexist.test.context"
    assert "time" in inside
    assert "correlation_id" not in outside


def test_the_scope_restores_the_outer_context():
    with correlation_scope(correlation="outer", message="m1"):
        with correlation_scope(correlation="inner", message="m2", causation="m1"):
            assert context.current_ids() == {
                "correlation_id": "inner", "causation_id": "m1", "message_id": "m2"}
        assert context.correlation_id.get() == "outer"
    assert context.correlation_id.get() is None


def test_credentials_never_reach_a_log_line():
    def emit(logger):
        logger.warning("cannot reach amqp://coexist:s3cret@rabbit:5672/prod")
        logger.error("call failed", extra={"headers": {"auth": "Bearer abc.def"},
                                            "dsn": "postgresql://u:pw123@db/x"})
        try:
            raise RuntimeError("login with password=hunter2 refused")
        except RuntimeError:
            logger.exception("boom")

    lines = _log_lines(emit)
    text = json.dumps(lines)
    for secret in ("s3cret", "abc.def", "pw123", "hunter2"):
        assert secret not in text
    assert "amqp://coexist:***@rabbit" in lines[0]["message"]
    assert lines[2]["exc_type"] == "RuntimeError"


def test_extra_fields_are_written_as_json():
    lines = _log_lines(lambda logger: logger.info("relayed", extra={"rows": 3, "queue": "q"}))
    assert lines[0]["rows"] == 3 and lines[0]["queue"] == "q"


def test_configure_logging_installs_one_json_handler():
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("INFO", stream=stream)
        handler = configure_logging("info", stream=stream)
        assert root.level == logging.INFO
        assert sum(getattr(h, "_coexist_json", False) for h in root.handlers) == 1
        logging.getLogger("coexist.x").info("hello")
        assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "hello"
    finally:
        root.removeHandler(handler)
        for h in before:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)


# ---------------------------------------------------------------- one line per state change


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _limited(clock: _Clock):
    """(logger, lines) with a RepeatLimiter on a virtual clock in front of a JSON handler."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(context.RepeatLimiter(first_window_s=10, max_window_s=40, clock=clock))
    logger = logging.getLogger("dramatiq.worker.ConsumerThread(q1)")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    return logger, lines


def test_a_failure_repeated_by_every_consumer_and_attempt_is_one_line_then_backed_off():
    clock = _Clock()
    logger, lines = _limited(clock)
    others = [logging.getLogger(f"dramatiq.worker.ConsumerThread(q{n})") for n in range(2, 9)]
    for other in others:
        other.handlers[:] = logger.handlers
        other.propagate = False
    connection_lost = "Consumer encountered a connection error: %s"
    for second in range(0, 100):  # 8 consumers fail every second for 100 s
        clock.now = float(second)
        for each in (logger, *others):
            each.critical(connection_lost, "ConnectionRefusedError(111)")
    out = lines()
    # 800 records -> at 0 s, then each time the window (10, 20, 40, 40 s) has passed
    assert len(out) == 4
    assert {line["level"] for line in out} == {"WARNING"}  # not CRITICAL: it reconnects
    assert out[0]["message"] == ("Consumer encountered a connection error: "
                                 "ConnectionRefusedError(111)")
    assert out[1]["message"].endswith("(repeated 79 times in the last 10 s)")  # at 10 s
    assert out[2]["message"].endswith("(repeated 159 times in the last 20 s)")  # at 30 s
    assert out[3]["message"].endswith("(repeated 319 times in the last 40 s)")  # at 70 s
    for each in others:
        each.handlers[:] = []


def test_lines_that_differ_all_pass_and_a_quiet_spell_starts_afresh():
    clock = _Clock()
    logger, lines = _limited(clock)
    for n in range(5):  # five stray writes: five business events, five lines
        logger.warning("Message m%d failed (StrayWrite); recorded as business exception %d", n, n)
    logger.warning("feed down")
    clock.now = 5
    logger.warning("feed down")  # counted
    clock.now = 12
    logger.warning("feed down")  # the window has passed: one line, with the count
    clock.now = 100  # silent for more than two windows: the next one is news again
    logger.warning("feed down")
    assert [line["message"] for line in lines()][5:] == [
        "feed down", "feed down (repeated once in the last 10 s)", "feed down"]


def test_configure_logging_quiets_libraries_that_narrate_every_request_unless_debugging():
    stream = io.StringIO()
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        handler = configure_logging("INFO", stream=stream)
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("pika.adapters.base_connection").getEffectiveLevel() \
            == logging.CRITICAL
        logging.getLogger("httpx").info("HTTP Request: GET /changes 200 OK")
        assert stream.getvalue() == ""
        root.removeHandler(handler)
        handler = configure_logging("DEBUG", stream=stream)
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.DEBUG
    finally:
        root.removeHandler(handler)
        for h in before:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
        for name in context.QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
