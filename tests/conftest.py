"""Fixtures shared by every tier.

Integration fixtures give each test run its own RabbitMQ vhost, Redis key
prefix and PostgreSQL database (and a schema per test), and remove them after.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import settings

from tests.support import services

# Property tests judge results, not speed: hypothesis's default 200 ms deadline per example
# failed a pure-Python onboarding property at load 25 (308 ms once, 3.7 ms when re-run).
settings.register_profile("coexist", deadline=None)
settings.load_profile("coexist")

RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def pg_database_url():
    """A PostgreSQL database private to this test run, dropped at the end."""
    pytest.importorskip("psycopg")
    services.need("PostgreSQL", services.port_open("127.0.0.1", 5432))
    from sqlalchemy import create_engine, text

    admin = create_engine(services.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"coexist_test_{RUN_ID}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = services.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_database_url):
    """A fresh schema in the run's database, selected through ``search_path``."""
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(pg_database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{pg_database_url}?options=-csearch_path%3D{schema}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session")
def rabbit_vhost():
    """A RabbitMQ vhost private to this test run; yields its AMQP URL."""
    services.need("RabbitMQ", services.port_open(services.AMQP_HOST, services.AMQP_PORT))
    with services.private_vhost(f"coexist_test_{RUN_ID}") as url:
        yield url


@pytest.fixture
def fresh_rabbit_vhost():
    """A vhost for one test (costs about a second); yields (amqp_url, vhost name)."""
    services.need("RabbitMQ", services.port_open(services.AMQP_HOST, services.AMQP_PORT))
    vhost = f"coexist_test_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    with services.private_vhost(vhost) as url:
        yield url, vhost


@pytest.fixture
def redis_prefix():
    """(redis URL, key prefix) private to one test; every key under it is deleted after."""
    services.need("Redis", services.port_open("127.0.0.1", 6379))
    with services.private_redis_prefix(f"coexist_test:{RUN_ID}:{uuid.uuid4().hex[:6]}:") as pair:
        yield pair
