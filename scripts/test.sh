#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: plugin unit tests on the host
# target, host unit tests, and the end-to-end suite (real PostgreSQL cluster,
# real plugin components, real webhook receiver), then format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
echo "==> cargo test --workspace"
cargo test --workspace
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> all checks passed in $(( $(date +%s) - start ))s"
