#!/usr/bin/env bash
# Set up (virtualenv + install) and run the whole test suite.
# Integration tests skip when a server is unreachable unless COEXIST_REQUIRE_SERVICES=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
# shellcheck source=scripts/browser.sh
source "$ROOT/scripts/browser.sh"
cd "$ROOT"
ruff check bus coexistence workers tests scripts migrations
mypy  # bus and coexistence (pyproject.toml [tool.mypy])
# Two workers (pytest-xdist, tests handed out as workers free up): most of the suite's time
# is spent waiting on processes and servers, and every test has its own database schema,
# RabbitMQ vhost, Redis prefix, ports and folders (tests/conftest.py, one set per worker).
# COEXIST_TEST_WORKERS=0 runs everything in this one process.
exec python -m pytest -q -p no:cacheprovider --durations=25 -n "${COEXIST_TEST_WORKERS:-2}" \
  --dist worksteal "$@"
