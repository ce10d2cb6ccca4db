#!/usr/bin/env bash
# Stop a test server started by scripts/start-mariadb.sh and remove its
# directory:
#
#   scripts/stop-mariadb.sh DIR
#
# SIGTERM (a normal shutdown), then SIGKILL if it is still there after 30 s.
# A DIR that is already gone is fine. A DIR that start-mariadb.sh did not
# create (no .vault-test-mariadb marker) is left alone.
set -euo pipefail

log() { echo "stop-mariadb: $*" >&2; }

DIR="${1:-}"
[ -n "$DIR" ] || {
    log "usage: $0 DIR"
    exit 2
}
if [ ! -e "$DIR" ]; then
    exit 0
fi
if [ ! -e "$DIR/.vault-test-mariadb" ]; then
    log "$DIR was not made by start-mariadb.sh (no .vault-test-mariadb); not touching it"
    exit 1
fi
DIR="$(cd "$DIR" && pwd -P)"
cd /

# The server's pid, if it is still running (and the pid was not reused).
# A zombie counts as gone: PID 1 of some containers reaps orphans late.
alive() {
    local st
    kill -0 "$1" 2>/dev/null || return 1
    st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || true
    case "$st" in Z | X) return 1 ;; esac
    case "$(readlink "/proc/$1/exe" 2>/dev/null || echo mariadbd)" in
    *mariadbd* | *mysqld*) return 0 ;;
    *) return 1 ;;
    esac
}

pid=""
if [ -s "$DIR/mariadbd.pid" ]; then
    pid="$(cat "$DIR/mariadbd.pid" 2>/dev/null || true)"
fi
if [ -n "$pid" ] && alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "mariadbd $pid did not stop; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
fi
rm -rf "$DIR"
