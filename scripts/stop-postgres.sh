#!/usr/bin/env bash
# Stop a test server started by scripts/start-postgres.sh and remove its
# directory:
#
#   scripts/stop-postgres.sh DIR
#
# Fast shutdown (pg_ctl stop -m fast), then SIGKILL if it is still there
# after 30 s. A DIR that is already gone is fine. A DIR that start-postgres.sh
# did not create (no .vault-test-postgres marker) is left alone.
set -euo pipefail

log() { echo "stop-postgres: $*" >&2; }

DIR="${1:-}"
[ -n "$DIR" ] || {
    log "usage: $0 DIR"
    exit 2
}
if [ ! -e "$DIR" ]; then
    exit 0
fi
if [ ! -e "$DIR/.vault-test-postgres" ]; then
    log "$DIR was not made by start-postgres.sh (no .vault-test-postgres); not touching it"
    exit 1
fi
DIR="$(cd "$DIR" && pwd -P)"
cd /
DATA="$DIR/data"

find_pg_ctl() {
    if [ -x "$DIR/pg_ctl" ]; then
        echo "$DIR/pg_ctl" # wrapper: right binary, OS user and -D
        return
    fi
    local d
    for d in "${VAULT_TEST_PG_BIN:-}" /usr/lib/postgresql/*/bin; do
        [ -n "$d" ] && [ -x "$d/pg_ctl" ] && {
            echo "$d/pg_ctl"
            return
        }
    done
    command -v pg_ctl || true
}

# The postmaster's pid, if it is still running (and the pid was not reused).
# A zombie counts as gone: PID 1 of some containers reaps orphans late.
alive() {
    local st
    kill -0 "$1" 2>/dev/null || return 1
    st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || true
    case "$st" in Z | X) return 1 ;; esac
    case "$(readlink "/proc/$1/exe" 2>/dev/null || echo postgres)" in
    *postgres*) return 0 ;;
    *) return 1 ;;
    esac
}
pid=""
if [ -f "$DATA/postmaster.pid" ]; then
    pid="$(head -n1 "$DATA/postmaster.pid" 2>/dev/null || true)"
fi
if [ -n "$pid" ] && alive "$pid"; then
    PG_CTL="$(find_pg_ctl)"
    if [ "$PG_CTL" = "$DIR/pg_ctl" ]; then
        "$PG_CTL" stop -m fast >/dev/null 2>&1 || true
    elif [ -n "$PG_CTL" ]; then
        owner="$(stat -c %U "$DATA")"
        if [ "$(id -u)" -eq 0 ] && [ "$owner" != root ]; then
            runuser -u "$owner" -- "$PG_CTL" -D "$DATA" -w -t 60 stop -m fast >/dev/null 2>&1 || true
        else
            "$PG_CTL" -D "$DATA" -w -t 60 stop -m fast >/dev/null 2>&1 || true
        fi
    fi
    # pg_ctl waits; this covers a failed pg_ctl or a hung shutdown.
    for i in $(seq 1 300); do
        alive "$pid" || break
        if [ "$i" -eq 1 ]; then kill -INT "$pid" 2>/dev/null || true; fi
        sleep 0.1
    done
    if alive "$pid"; then
        log "postmaster $pid did not stop; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
fi
rm -rf "$DIR"
