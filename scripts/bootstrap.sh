#!/usr/bin/env bash
# Set up everything waxflow needs on a fresh Debian machine: system packages (as root),
# the Python virtual environment in .venv with waxflow and its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

install_system_packages() {
    mapfile -t wanted < <(grep -v '^\s*#' scripts/apt-packages.txt | tr -d ' ' | grep -v '^$' || true)
    [ "${#wanted[@]}" -eq 0 ] && return 0
    local missing=()
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && { log "system packages present"; return 0; }
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pick_python() {
    for candidate in python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null &&
           "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
            echo "$candidate"; return 0
        fi
    done
    echo "waxflow needs Python 3.11 or 3.12 (Bytewax 0.21.1 has no wheel for 3.13)" >&2
    return 1
}

create_venv() {
    local python
    python=$(pick_python)
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv with $python"
        "$python" -m venv .venv
    fi
    log "installing waxflow, the local broker and test tools into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev,test]"
}

build_console() {
    # The web console (console/, TypeScript) is bundled into connectors/http/console, which the
    # outlet serves at /. Node and npm: the machine's, else Debian's.
    if ! command -v npm >/dev/null; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        log "installing nodejs and npm (Debian) to build the console"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    log "building the console (npm ci, npm run build)"
    (cd console && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run --silent build)
}

install_system_packages
create_venv
build_console
for hook in scripts/setup-*.sh; do
    [ -x "$hook" ] || continue
    if [ "$(id -u)" -ne 0 ]; then
        log "skipping $hook (needs root); the inlet falls back to classic BPF balancing"
        continue
    fi
    log "running $hook"
    "$hook"
done
log "ready: .venv/bin/waxflow --help"
