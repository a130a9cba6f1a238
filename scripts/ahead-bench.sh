#!/usr/bin/env bash
# Measures seeing ahead on N users (default 100,000; random timezones from a
# small list, each with a birthday and one in two with an anniversary):
# starts a release host on a fresh embedded PostgreSQL in a temporary
# directory with birthday and anniversary loaded, imports the users, then
# times (each run twice, the better one printed)
#   1. a dry run: `kairos plugin diff birthday` with a new send_at, which
#      compares the live and the candidate version for every user;
#   2. a one-year simulation: `kairos simulate` from now to a year on,
#      every type, into /dev/null.
# and prints users/s. Everything it makes is under the temporary directory,
# removed at the end. Usage: scripts/ahead-bench.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."

users="${1:-100000}"
port="${KAIROS_BENCH_PORT:-$((19000 + RANDOM % 1000))}"
target="${CARGO_TARGET_DIR:-target}"
token="ahead-bench-admin"

scripts/setup.sh >/dev/null
cargo build --release --bin kairos
kairos="$target/release/kairos"

tmp="$(mktemp -d -t kairos-ahead-bench.XXXXXX)"
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
cp target/plugins/wasm32-wasip2/release/kairos_anniversary.wasm "$tmp/plugins/anniversary.wasm"

echo "==> generating $users users in $tmp"
awk -v n="$users" 'BEGIN {
    srand(7)
    split("Europe/London America/New_York Asia/Tokyo Australia/Sydney Asia/Kolkata America/Sao_Paulo Africa/Lagos Pacific/Auckland Asia/Kathmandu UTC", zones, " ")
    for (i = 1; i <= n; i++) {
        zone = zones[int(rand() * 10) + 1]
        year = 1940 + int(rand() * 80); month = 1 + int(rand() * 12); day = 1 + int(rand() * 28)
        anniversary = ""
        if (i % 2 == 0) {
            anniversary = sprintf(",\"anniversary\":\"%04d-%02d-%02d\"", 1990 + int(rand() * 30), 1 + int(rand() * 12), 1 + int(rand() * 28))
        }
        printf "{\"first_name\":\"User%d\",\"last_name\":\"Bench\",\"timezone\":\"%s\",\"dates\":{\"birthday\":\"%04d-%02d-%02d\"%s}}\n", i, zone, year, month, day, anniversary
    }
}' >"$tmp/users.ndjson"

echo "==> starting the host on 127.0.0.1:$port (embedded PostgreSQL under $tmp/data)"
KAIROS_DATA_DIR="$tmp/data" KAIROS_PLUGIN_DIR="$tmp/plugins" KAIROS_BIND="127.0.0.1:$port" \
    KAIROS_ADMIN_TOKEN="$token" KAIROS_WATCH=false KAIROS_CLAIMER=false \
    RUST_LOG="${RUST_LOG:-kairos=warn}" \
    "$kairos" serve >"$tmp/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$host_pid" 2>/dev/null; then cat "$tmp/host.log"; exit 1; fi
    sleep 0.1
done
url="http://127.0.0.1:$port"

echo "==> importing"
"$kairos" import "$tmp/users.ndjson" --url "$url" | head -n 1

# Seconds taken by the command given, its output going to $tmp/out.
timed() {
    local start end
    start=$(date +%s.%N)
    "$@" >"$tmp/out"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }'
}
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'; }

echo "==> dry run: birthday with send_at=10:00, compared for every user"
set +e
first=$(timed "$kairos" plugin diff birthday "$tmp/plugins/birthday.wasm" --config send_at=10:00 --url "$url" --token "$token")
second=$(timed "$kairos" plugin diff birthday "$tmp/plugins/birthday.wasm" --config send_at=10:00 --url "$url" --token "$token")
set -e
head -n 2 "$tmp/out"
preview=$(best "$first" "$second")

from=$(date -u +%Y-%m-%dT%H:%M:%SZ)
to=$(date -u -d "+1 year" +%Y-%m-%dT%H:%M:%SZ)
echo "==> simulation: $from to $to, every type"
first=$(timed "$kairos" simulate --from "$from" --to "$to" --url "$url")
second=$(timed "$kairos" simulate --from "$from" --to "$to" --url "$url")
lines=$(wc -l <"$tmp/out")
simulation=$(best "$first" "$second")

echo
awk -v n="$users" -v p="$preview" -v s="$simulation" -v l="$lines" 'BEGIN {
    printf "preview    %d users in %.2f s: %d users/s\n", n, p, n / p
    printf "simulation %d users, one year, %d messages in %.2f s: %d users/s, %d messages/s\n", n, l, s, n / s, l / s
}'
