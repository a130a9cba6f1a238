#!/usr/bin/env bash
# Builds the plugins and prints rough figures for plugin call latency and
# delivery throughput (release build, fresh PostgreSQL cluster under
# target/bench). Extra arguments go to the benchmark: --events N, --calls N, --with-pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo bench -p kairos --bench throughput -- "$@"
