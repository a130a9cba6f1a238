#!/usr/bin/env bash
# Installs what kairos needs on a fresh Debian/Ubuntu machine and builds the
# bundled plugins into dist/plugins. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    say "adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
fi

have_postgres() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
if ! have_postgres; then
    say "installing the PostgreSQL server binaries (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    # The Debian package starts a system cluster of its own; kairos does not use it.
    $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
fi

# The example types in JavaScript and Python (plugins/examples/build.sh, and
# the tests that build them and `kairos plugin new --lang js|python`) need
# Node.js with npm, and Python 3 with its venv module.
wanted=()
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    wanted+=(nodejs npm)
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    wanted+=(python3 python3-venv)
fi
if [ ${#wanted[@]} -gt 0 ]; then
    say "installing ${wanted[*]} (apt), for event types in JavaScript and Python"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${wanted[@]}" >/dev/null
fi

say "building the bundled plugins (wasm32-wasip2)"
cargo build --release --target wasm32-wasip2 --target-dir target/plugins \
    -p kairos-birthday -p kairos-anniversary
mkdir -p dist/plugins
for type in birthday anniversary; do
    # Copy, then rename into place: a running host watching dist/plugins never
    # sees half a file.
    cp "target/plugins/wasm32-wasip2/release/kairos_${type}.wasm" "dist/plugins/.${type}.wasm.tmp"
    mv "dist/plugins/.${type}.wasm.tmp" "dist/plugins/${type}.wasm"
done
say "plugins ready in dist/plugins: $(ls dist/plugins | tr '\n' ' ')"
