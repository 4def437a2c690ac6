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
