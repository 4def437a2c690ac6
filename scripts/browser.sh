#!/usr/bin/env bash
# Set up what the console's browser test needs: Debian's chromium (as root, from Debian's
# packages) and playwright-core (npm, pinned by tests/browser/package-lock.json) to drive it.
# Sourced by test.sh; never fatal: without them the browser test skips with its reason, or
# fails under COEXIST_REQUIRE_SERVICES=1 (CI), which says what is missing.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing Debian's chromium for the console's browser test" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "test.sh: could not install chromium; the browser test will say so" >&2
fi
if command -v npm >/dev/null 2>&1 && [ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]; then
  (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund --silent >/dev/null 2>&1) \
    || echo "test.sh: npm ci in tests/browser failed; the browser test will say so" >&2
fi
