#!/usr/bin/env bash
# One command for the whole test suite: install what is needed, then run every tier
# (unit, hypothesis properties, fuzz harnesses, simulator, real hosts in namespaces).
# Slow soak tests run in a bounded form unless WEFT_SOAK=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 -m pytest -q -p no:cacheprovider "$@" tests
