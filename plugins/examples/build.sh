#!/usr/bin/env bash
# Builds the example event types written in other languages than Rust:
#
#   target/examples/work-anniversary.wasm   from work-anniversary-js/ (componentize-js)
#   target/examples/name-day.wasm           from name-day-py/         (componentize-py)
#
# The tools are installed at pinned versions into target/polyglot/ of this
# checkout (never globally, never into the source tree); a component is
# rebuilt only when its sources, the WIT or this script are newer than it.
# Safe to run again.
#
#   plugins/examples/build.sh [--only js|python]
set -euo pipefail

COMPONENTIZE_JS_VERSION=0.23.0
COMPONENTIZE_PY_VERSION=0.25.1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
tools=$root/target/polyglot
out=$root/target/examples
wit=$root/wit

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'build.sh: %s\n' "$*" >&2
    exit 1
}

only=all
while [ $# -gt 0 ]; do
    case $1 in
        --only)
            [ $# -ge 2 ] || die "--only needs js or python"
            only=$2
            shift 2
            ;;
        --only=*)
            only=${1#--only=}
            shift
            ;;
        -h | --help)
            sed -n '2,12s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *) die "unknown argument: $1 (usage: build.sh [--only js|python])" ;;
    esac
done
case $only in
    all | js | python) ;;
    *) die "--only takes js or python, not '$only'" ;;
esac

# True when $1 is missing or any of the other files (or files under the
# other directories) is newer than it.
stale() {
    local target=$1
    shift
    [ -e "$target" ] || return 0
    [ -n "$(find "$@" -newer "$target" -type f -print -quit)" ]
}

# Seconds since $1 (from `date +%s.%N`), to one decimal.
since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

size_of() { awk -v b="$(wc -c <"$1")" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

mkdir -p "$out"

build_js() {
    command -v node >/dev/null 2>&1 || die "node is missing: install Node.js (v20 is tested) and npm, e.g. apt-get install nodejs npm"
    command -v npm >/dev/null 2>&1 || die "npm is missing: install it (apt-get install npm)"
    local prefix=$tools/node
    local pkg=$prefix/node_modules/@bytecodealliance/componentize-js/package.json
    local have=
    [ -f "$pkg" ] && have=$(node -p "require('$pkg').version")
    if [ "$have" != "$COMPONENTIZE_JS_VERSION" ]; then
        say "installing componentize-js $COMPONENTIZE_JS_VERSION into ${prefix#"$root"/}"
        local t0
        t0=$(date +%s.%N)
        mkdir -p "$prefix"
        npm install --prefix "$prefix" --save-exact --no-audit --no-fund --loglevel=error \
            "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION"
        say "installed componentize-js in $(since "$t0") s"
    fi

    local src=$here/work-anniversary-js
    local wasm=$out/work-anniversary.wasm
    if stale "$wasm" "$src" "$wit" "$here/build.sh" "$pkg"; then
        say "building ${wasm#"$root"/} from ${src#"$root"/}/app.js"
        local t0
        t0=$(date +%s.%N)
        # `-d http fetch-event`: leave out the wasi:http imports componentize-js
        # adds by default; the host links no wasi:http.
        "$prefix/node_modules/.bin/componentize-js" "$src/app.js" \
            --wit "$wit" --world-name event-plugin -d http fetch-event \
            -o "$wasm.tmp"
        mv "$wasm.tmp" "$wasm"
        say "built ${wasm#"$root"/} ($(size_of "$wasm")) in $(since "$t0") s"
    else
        say "${wasm#"$root"/} is up to date"
    fi
}

build_python() {
    command -v python3 >/dev/null 2>&1 || die "python3 is missing: install Python 3 with its venv module (3.11 is tested), e.g. apt-get install python3 python3-venv"
    local venv=$tools/venv
    local have=
    [ -x "$venv/bin/componentize-py" ] && have=$("$venv/bin/python" -c \
        'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null || true)
    if [ "$have" != "$COMPONENTIZE_PY_VERSION" ]; then
        say "installing componentize-py $COMPONENTIZE_PY_VERSION into ${venv#"$root"/}"
        local t0
        t0=$(date +%s.%N)
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv" ||
            die "python3 -m venv failed: install the venv module (apt-get install python3-venv)"
        "$venv/bin/python" -m pip install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
        say "installed componentize-py in $(since "$t0") s"
    fi

    local src=$here/name-day-py
    local wasm=$out/name-day.wasm
    if stale "$wasm" "$src/app.py" "$wit" "$here/build.sh" "$venv/bin/componentize-py"; then
        say "building ${wasm#"$root"/} from ${src#"$root"/}/app.py"
        local t0
        t0=$(date +%s.%N)
        # componentize-py writes __pycache__ next to the module it imports:
        # build from a copy so the source tree stays clean.
        local stage=$tools/stage/name-day-py
        rm -rf "$stage" && mkdir -p "$stage" && cp "$src/app.py" "$stage/"
        "$venv/bin/componentize-py" -d "$wit" -w event-plugin \
            componentize -p "$stage" app -o "$wasm.tmp"
        mv "$wasm.tmp" "$wasm"
        say "built ${wasm#"$root"/} ($(size_of "$wasm")) in $(since "$t0") s"
    else
        say "${wasm#"$root"/} is up to date"
    fi
}

[ "$only" = python ] || build_js
[ "$only" = js ] || build_python
