#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (runtime + the dev extra), for every
# platform and Python >= 3.11, from PyPI.  Run after changing a dependency; commit the lock;
# scripts/bootstrap.sh then refreshes every .venv from it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$(mktemp -d)"
trap 'rm -rf "$TOOLS"' EXIT
python3 -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/python" -m pip install -q uv
cd "$ROOT"
"$TOOLS/venv/bin/uv" pip compile pyproject.toml --extra dev --universal \
  --python-version 3.11 --no-header --annotation-style line --index-url https://pypi.org/simple \
  -o requirements.lock "$@"
