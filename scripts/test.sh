#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: plugin unit tests on the host
# target, host unit tests, and the end-to-end suite (real PostgreSQL cluster,
# real plugin components, real webhook receiver), then format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
# The status page's test drives a real browser: Debian's Chromium.
if ! command -v chromium >/dev/null 2>&1; then
    echo "==> installing chromium (apt), for the status page's browser test"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "==> cargo test --workspace"
cargo test --workspace
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> all checks passed in $(( $(date +%s) - start ))s"
