"""Reaching the real servers from tests, with a run-private namespace on each.

A test that needs a server calls ``need(name, reachable)``: it skips with a
reason when the server does not answer, and fails instead when
``COEXIST_REQUIRE_SERVICES=1`` (CI sets it) so a missing server can never turn
a red suite green.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess

import pytest

PG_ADMIN_URL = os.environ.get("COEXIST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("COEXIST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_HOST = os.environ.get("COEXIST_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("COEXIST_TEST_AMQP_PORT", "5672"))
AMQP_USER = os.environ.get("COEXIST_TEST_AMQP_USER", "guest")
AMQP_PASSWORD = os.environ.get("COEXIST_TEST_AMQP_PASSWORD", "guest")


def services_required() -> bool:
    return os.environ.get("COEXIST_REQUIRE_SERVICES") == "1"


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def need(name: str, reachable: bool) -> None:
    if reachable:
        return
    message = f"{name} is not reachable on loopback"
    if services_required():
        pytest.fail(f"{message} and COEXIST_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def rabbitmqctl(*args: str) -> str:
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def amqp_url(vhost: str) -> str:
    from urllib.parse import quote

    return f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@{AMQP_HOST}:{AMQP_PORT}/{quote(vhost, safe='')}"


@contextlib.contextmanager
def private_vhost(name: str):
    """Create vhost ``name`` with full permissions for the test user; delete it on exit."""
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, AMQP_USER, ".*", ".*", ".*")
        yield amqp_url(name)
    finally:
        rabbitmqctl("delete_vhost", name)


@contextlib.contextmanager
def private_redis_prefix(prefix: str):
    """Yield (url, prefix); delete every key under ``prefix`` on exit."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield REDIS_URL, prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
