#!/usr/bin/env bash
# The benchmark, in one run on this machine (release build; everything it
# makes is under target/ or a temporary directory):
#   1. host/benches/throughput.rs: plugin call p50/p99; the plain-client POST
#      rate into a loopback receiver and kairos's delivery rate into the same
#      receiver, with their ratio; due -> received latency of 1,000 events due
#      at one instant on an idle host;
#   2. scripts/import-bench.sh: `kairos import` of IMPORT_USERS users
#      (default 1,000,000): users/s and events planned/s;
#   3. scripts/ahead-bench.sh: a dry run and a one-year simulation over
#      AHEAD_USERS users (default 100,000): users/s.
# Arguments go to the first part: --events N (default 100,000), --calls N,
# --with-pass. IMPORT_USERS=0 skips the second, AHEAD_USERS=0 the third.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo bench -p kairos --bench throughput -- "$@"
if [ "${IMPORT_USERS:-1000000}" != 0 ]; then
    echo
    scripts/import-bench.sh "${IMPORT_USERS:-1000000}"
fi
if [ "${AHEAD_USERS:-100000}" != 0 ]; then
    echo
    scripts/ahead-bench.sh "${AHEAD_USERS:-100000}"
fi
