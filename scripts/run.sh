#!/usr/bin/env bash
# Sets up a fresh machine and runs kairos on the embedded PostgreSQL with the
# bundled plugins. Extra arguments go to `kairos serve`; configuration comes
# from the environment (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run -p kairos -- serve "$@"
