#!/usr/bin/env bash
# Set up (virtualenv + install) and run the main job on the embedded default:
# a phased cutover of every domain, no RabbitMQ, Redis or PostgreSQL needed.
# Options pass through to `coexist demo` (e.g. --customers 200).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec coexist demo "$@"
