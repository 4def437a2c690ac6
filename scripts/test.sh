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
exec python -m pytest -q -p no:cacheprovider --durations=25 "$@"
