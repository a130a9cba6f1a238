#!/usr/bin/env bash
# Measures `kairos import`: generates N users (default 1,000,000; random
# timezones from a small list, birthdays) as NDJSON in a temporary directory,
# starts a release host on a fresh embedded PostgreSQL there with only the
# birthday type loaded, imports the file and prints users/s and events
# planned/s. Everything it makes is under the temporary directory, removed
# at the end. Usage: scripts/import-bench.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."

users="${1:-1000000}"
port="${KAIROS_BENCH_PORT:-$((18000 + RANDOM % 1000))}"
target="${CARGO_TARGET_DIR:-target}"

scripts/setup.sh >/dev/null
cargo build --release --bin kairos
kairos="$target/release/kairos"

tmp="$(mktemp -d -t kairos-import-bench.XXXXXX)"
host_pid=
cleanup() {
    if [ -n "$host_pid" ]; then
        kill -TERM "$host_pid" 2>/dev/null || true
        wait "$host_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
# Run as root, kairos runs the embedded cluster as `postgres`, which must
# reach its directory under this one.
chmod 0755 "$tmp"

mkdir -p "$tmp/plugins"
cp target/plugins/wasm32-wasip2/release/kairos_birthday.wasm "$tmp/plugins/birthday.wasm"

echo "==> generating $users users in $tmp"
awk -v n="$users" 'BEGIN {
    srand(42)
    split("Europe/London America/New_York Asia/Tokyo Australia/Sydney Asia/Kolkata America/Sao_Paulo Africa/Lagos Pacific/Auckland UTC", zones, " ")
    for (i = 1; i <= n; i++) {
        zone = zones[int(rand() * 9) + 1]
        year = 1940 + int(rand() * 80); month = 1 + int(rand() * 12); day = 1 + int(rand() * 28)
        printf "{\"first_name\":\"User%d\",\"last_name\":\"Bench\",\"timezone\":\"%s\",\"dates\":{\"birthday\":\"%04d-%02d-%02d\"},\"attributes\":{\"email\":\"user%d@example.com\"}}\n", i, zone, year, month, day, i
    }
}' >"$tmp/users.ndjson"
echo "    $(du -h "$tmp/users.ndjson" | cut -f1) of NDJSON"

echo "==> starting the host on 127.0.0.1:$port (embedded PostgreSQL under $tmp/data)"
KAIROS_DATA_DIR="$tmp/data" KAIROS_PLUGIN_DIR="$tmp/plugins" KAIROS_BIND="127.0.0.1:$port" \
    KAIROS_WATCH=false RUST_LOG="${RUST_LOG:-kairos=info}" \
    "$kairos" serve >"$tmp/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$host_pid" 2>/dev/null; then cat "$tmp/host.log"; exit 1; fi
    sleep 0.1
done

echo "==> importing"
start=$(date +%s.%N)
set +e
"$kairos" import "$tmp/users.ndjson" --url "http://127.0.0.1:$port" >"$tmp/summary.txt"
code=$?
set -e
end=$(date +%s.%N)
head -n 5 "$tmp/summary.txt"
if [ "$code" -ne 0 ]; then
    echo "kairos import exited $code" >&2
    tail -n 20 "$tmp/host.log" >&2
    exit 1
fi

read -r imported events < <(sed -n 's/^imported \([0-9]*\) users (\([0-9]*\) events planned).*/\1 \2/p' "$tmp/summary.txt")
awk -v u="$imported" -v e="$events" -v s="$start" -v f="$end" 'BEGIN {
    t = f - s
    printf "imported %d users and planned %d events in %.1f s: %d users/s, %d events planned/s\n", u, e, t, u / t, e / t
}'
grep -E "importing users|imported users" "$tmp/host.log" | sed 's/^/host: /' || true
