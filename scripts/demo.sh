#!/usr/bin/env bash
# One command for the tour: install what is needed, then `weft demo` (namespace hosts on
# this machine, removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec weft demo "$@"
