#!/usr/bin/env bash
# Create .venv (if missing or stale) and install coexist's locked dependencies, then coexist.
# Sourced by demo.sh and test.sh so each README command does all its own set-up.
#
# requirements.lock pins every package (runtime and the dev extra) for every supported
# Python; it is installed as is, then coexist itself without resolving anything (--no-deps),
# so CI and a new user test the same versions.  The venv is refreshed whenever
# pyproject.toml or the lock changes (their digest is kept in the stamp file).
# Regenerate the lock with scripts/lock.sh after changing dependencies in pyproject.toml.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$candidate"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "coexist needs Python >= 3.11 (set PYTHON=...)" >&2; exit 2; }
VENV="$ROOT/.venv"
STAMP="$VENV/.coexist-installed"
LOCK="$ROOT/requirements.lock"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
WANT="$(cat "$ROOT/pyproject.toml" "$LOCK" | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install -q -r "$LOCK"
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  "$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check >&2; exit 2; }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
