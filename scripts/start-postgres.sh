#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for tests.
#
#   scripts/start-postgres.sh [DIR [SETTING=VALUE ...]]
#
# Creates a fresh cluster in DIR (default: a new `mktemp -d` in /dev/shm or
# $TMPDIR or /tmp, see default_base below; DIR may be ""
# to get the default and still pass settings; an existing DIR must be empty),
# listening only on 127.0.0.1 at a free random port, with its unix socket in
# DIR. The only role is the superuser vault_test with a random password;
# every connection (TCP, socket, replication) authenticates with
# scram-sha-256. Extra SETTING=VALUE arguments go into the server
# configuration before the first start (e.g. archive_mode=on
# "archive_command='cp %p /some/dir/%f'").
#
# stdout is only `export NAME='VALUE'` lines (values never contain a quote),
# so `eval "$(scripts/start-postgres.sh)"` works; everything else goes to
# stderr. Stop and remove it with scripts/stop-postgres.sh DIR.
#
# Layout of DIR:
#   data/              the cluster (PGDATA); data/conf.d/*.conf is included
#   data/vault_test.conf  settings written by this script (port etc.)
#   pgpass             PGPASSFILE, mode 0600, owned by the caller
#   server.log         server log
#   .s.PGSQL.PORT      unix socket
#   pg_ctl             wrapper: "$DIR/pg_ctl" restart|stop|reload|status runs
#                      the real pg_ctl as the right OS user with -D data
#
# Run as root, the server runs as the `postgres` system user (or `nobody`
# when there is none), since initdb and postgres refuse to run as root; DIR
# then belongs to that user and its parent directories must let it through.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "start-postgres: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# --- where the binaries are -------------------------------------------------
find_pg_bin() {
    if [ -n "${VAULT_TEST_PG_BIN:-}" ]; then
        echo "$VAULT_TEST_PG_BIN"
        return
    fi
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && best="$d"
    done
    if [ -z "$best" ] && command -v pg_ctl >/dev/null 2>&1; then
        best="$(dirname "$(command -v pg_ctl)")"
    fi
    [ -n "$best" ] || die "no PostgreSQL server binaries found; run scripts/install-test-deps.sh"
    # /usr/lib/postgresql/*/bin sorts 10 before 9: prefer the highest version.
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            local v="${d#/usr/lib/postgresql/}" bv="${best#/usr/lib/postgresql/}"
            v="${v%%/*}"
            bv="${bv%%/*}"
            if [[ "$v" =~ ^[0-9]+$ && "$bv" =~ ^[0-9]+$ ]] && [ "$v" -gt "$bv" ]; then
                best="$d"
            fi
        fi
    done
    echo "$best"
}
PG_BIN="$(find_pg_bin)"
for p in initdb pg_ctl postgres psql pg_dump pg_basebackup; do
    [ -x "$PG_BIN/$p" ] || die "$PG_BIN/$p missing; run scripts/install-test-deps.sh"
done

# --- free ports ---------------------------------------------------------------
# A random port below the usual ephemeral range (32768-60999) that no socket
# on this machine uses now. Another process may still take it before the
# server binds it: the start is retried with a new port when binding fails.
port_in_use() {
    local hex files=() f
    hex="$(printf ':%04X' "$1")"
    for f in /proc/net/tcp /proc/net/tcp6; do [ -r "$f" ] && files+=("$f"); done
    [ "${#files[@]}" -gt 0 ] || return 1
    awk -v p="$hex" 'FNR > 1 && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' "${files[@]}"
}
pick_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        if ! port_in_use "$port"; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

# --- directory and users ------------------------------------------------------
# Where the default DIR goes: $VAULT_TEST_DB_TMPDIR, else $TMPDIR, else
# /dev/shm when it is a writable tmpfs, not noexec, with at least 4 GiB free
# (no disk writes: the start takes about a second less), else /tmp.
default_base() {
    if [ -n "${VAULT_TEST_DB_TMPDIR:-}" ]; then
        echo "$VAULT_TEST_DB_TMPDIR"
    elif [ -n "${TMPDIR:-}" ]; then
        echo "$TMPDIR"
    elif [ -d /dev/shm ] && [ -w /dev/shm ] && [ -x /dev/shm ] &&
        ! awk '$2 == "/dev/shm" && $4 ~ /(^|,)noexec(,|$)/ { f = 1 } END { exit !f }' /proc/mounts 2>/dev/null &&
        [ "$(df -P -k /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')" -ge 4194304 ] 2>/dev/null; then
        echo /dev/shm
    else
        echo /tmp
    fi
}
DIR="${1:-}"
[ "$#" -gt 0 ] && shift
if [ -z "$DIR" ]; then
    DIR="$(mktemp -d "$(default_base)/vault-pg.XXXXXX")"
else
    mkdir -p "$DIR"
    [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty"
fi
DIR="$(cd "$DIR" && pwd -P)"
case "$DIR" in *"'"* | *'"'* | *\\* | *[[:space:]]*) die "DIR must not contain quotes, backslashes or spaces: $DIR" ;; esac
# A unix socket path is at most 107 bytes: DIR/.s.PGSQL.NNNNN.lock
[ "${#DIR}" -le 80 ] || die "DIR path too long for a unix socket (max 80 characters): $DIR"
touch "$DIR/.vault-test-postgres" # marks DIR as ours for stop-postgres.sh

CALLER_UID="$(id -u)"
CALLER_GID="$(id -g)"
RUN=()
OS_USER="$(id -un)"
if [ "$CALLER_UID" -eq 0 ]; then
    if id -u postgres >/dev/null 2>&1; then
        OS_USER=postgres
    else
        OS_USER=nobody
    fi
    RUN=(runuser -u "$OS_USER" --)
    chown "$OS_USER:$(id -gn "$OS_USER")" "$DIR" "$DIR/.vault-test-postgres"
    chmod 0700 "$DIR"
    "${RUN[@]}" test -w "$DIR" ||
        die "$OS_USER cannot write to $DIR (a parent directory does not let it through)"
fi
# The server's working directory must be readable by it (root's may not be).
cd "$DIR"

PGDATA_DIR="$DIR/data"
PASSWORD="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
umask 077

# --- initdb -------------------------------------------------------------------
t0=$(date +%s.%N)
PWFILE="$DIR/.initdb-pw"
printf '%s\n' "$PASSWORD" >"$PWFILE"
[ "$CALLER_UID" -eq 0 ] && chown "$OS_USER" "$PWFILE"
if ! "${RUN[@]}" env LC_ALL=C "$PG_BIN/initdb" -D "$PGDATA_DIR" -U vault_test \
    --pwfile="$PWFILE" --auth=scram-sha-256 --encoding=UTF8 --locale=C \
    --no-sync >"$DIR/initdb.log" 2>&1; then
    cat "$DIR/initdb.log" >&2
    rm -f "$PWFILE"
    die "initdb failed"
fi
rm -f "$PWFILE"

# Only our settings file and conf.d/ are added to the stock postgresql.conf;
# ALTER SYSTEM (postgresql.auto.conf) still overrides both.
"${RUN[@]}" mkdir -p "$PGDATA_DIR/conf.d"
"${RUN[@]}" tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<'EOF'

# --- vault test server (scripts/start-postgres.sh) ---
include 'vault_test.conf'
include_dir 'conf.d'
EOF
"${RUN[@]}" tee "$PGDATA_DIR/pg_hba.conf" >/dev/null <<'EOF'
# TYPE  DATABASE     USER        ADDRESS          METHOD
local   all          vault_test                   scram-sha-256
host    all          vault_test  127.0.0.1/32     scram-sha-256
local   replication  vault_test                   scram-sha-256
host    replication  vault_test  127.0.0.1/32     scram-sha-256
EOF

write_conf() {
    {
        echo "# written by scripts/start-postgres.sh"
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $1"
        echo "unix_socket_directories = '$DIR'"
        echo "password_encryption = 'scram-sha-256'"
        # WAL-archiving and base-backup tests: archive_mode needs a restart,
        # so pass it as a SETTING argument or ALTER SYSTEM + "$DIR/pg_ctl" restart.
        echo "wal_level = replica"
        echo "max_wal_senders = 10"
        echo "max_replication_slots = 10"
        echo "archive_mode = off"
        echo "archive_timeout = 0"
        # A small, fast, throw-away server.
        echo "shared_buffers = 32MB"
        echo "max_connections = 50"
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = on"
        echo "dynamic_shared_memory_type = mmap"
        echo "logging_collector = off"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        echo "cluster_name = 'vault_test'"
        for s in "${SETTINGS[@]}"; do
            echo "$s"
        done
    } | "${RUN[@]}" tee "$PGDATA_DIR/vault_test.conf" >/dev/null
}
SETTINGS=()
for s in "$@"; do
    [[ "$s" == *=* ]] || die "setting must be NAME=VALUE: $s"
    SETTINGS+=("$s")
done

# pg_ctl wrapper for tests (restart after ALTER SYSTEM, stop, status, ...).
{
    echo '#!/bin/sh'
    echo "# pg_ctl for the test server in $DIR (generated by scripts/start-postgres.sh)"
    echo 'cd / || exit 1'
    if [ "$CALLER_UID" -eq 0 ]; then
        # shellcheck disable=SC2016 # expanded by the wrapper, not here
        echo 'if [ "$(id -u)" -eq 0 ]; then'
        echo "    exec runuser -u '$OS_USER' -- '$PG_BIN/pg_ctl' -D '$PGDATA_DIR' -l '$DIR/server.log' -w -t 60 \"\$@\""
        echo 'fi'
    fi
    echo "exec '$PG_BIN/pg_ctl' -D '$PGDATA_DIR' -l '$DIR/server.log' -w -t 60 \"\$@\""
} >"$DIR/pg_ctl"
chmod 0755 "$DIR/pg_ctl"

# --- start, retrying on a port someone else took ----------------------------
[ "$CALLER_UID" -eq 0 ] && touch "$DIR/server.log" && chown "$OS_USER" "$DIR/server.log"
PORT=""
STARTED=0
# Leave no server behind when this script fails after starting one.
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ "$STARTED" -eq 1 ]; then
        "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap on_exit EXIT
for attempt in 1 2 3 4 5 6 7 8; do
    PORT="$(pick_port)"
    write_conf "$PORT"
    : | "${RUN[@]}" tee "$DIR/server.log" >/dev/null
    STARTED=1
    if "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$DIR/server.log" -w -t 60 \
        start >"$DIR/pg_ctl.log" 2>&1; then
        break
    fi
    if grep -qE 'could not (bind|create any TCP/IP)|Address already in use' "$DIR/server.log"; then
        log "port $PORT taken (attempt $attempt), trying another"
        PORT=""
        continue
    fi
    cat "$DIR/pg_ctl.log" "$DIR/server.log" >&2
    die "server did not start (see above; files in $DIR)"
done
[ -n "$PORT" ] || die "could not bind a port after 8 attempts"

# --- client files, owned by the caller -----------------------------------------
PASSFILE="$DIR/pgpass"
{
    echo "127.0.0.1:$PORT:*:vault_test:$PASSWORD"
    echo "localhost:$PORT:*:vault_test:$PASSWORD"
    echo "$DIR:$PORT:*:vault_test:$PASSWORD"
} >"$PASSFILE"
chmod 0600 "$PASSFILE"
chown "$CALLER_UID:$CALLER_GID" "$PASSFILE"

# A database named like the user, so that VAULT_TEST_PG_CONN works as it is
# (libpq's default dbname is the user name); this also proves the password
# login over TCP.
PGPASSFILE="$PASSFILE" "$PG_BIN/psql" -X -q -w -v ON_ERROR_STOP=1 \
    "host=127.0.0.1 port=$PORT user=vault_test dbname=postgres" \
    -c "CREATE DATABASE vault_test" >&2 || die "cannot log in as vault_test over TCP (files in $DIR)"

t1=$(date +%s.%N)
log "PostgreSQL $("$PG_BIN/postgres" -V | awk '{print $3}') up on 127.0.0.1:$PORT in $DIR ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s)"

# Watchdog: stop and remove the server once VAULT_TEST_PARENT_PID exits (a
# test passes its own pid, so nothing outlives a crashed or killed run). It
# ends by itself when DIR goes away through a normal stop-postgres.sh.
if [ -n "${VAULT_TEST_PARENT_PID:-}" ]; then
    parent="$VAULT_TEST_PARENT_PID"
    stop_script="$SCRIPT_DIR/stop-postgres.sh"
    (
        trap '' HUP INT
        while [ -e "$DIR/.vault-test-postgres" ] && kill -0 "$parent" 2>/dev/null &&
            [ "$(sed 's/.*) //' "/proc/$parent/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; do
            sleep 1
        done
        [ -e "$DIR/.vault-test-postgres" ] && "$stop_script" "$DIR"
    ) </dev/null >/dev/null 2>&1 &
    disown
fi

cat <<EOF
export VAULT_TEST_PG_DIR='$DIR'
export VAULT_TEST_PG_DATA='$PGDATA_DIR'
export VAULT_TEST_PG_HOST='127.0.0.1'
export VAULT_TEST_PG_PORT='$PORT'
export VAULT_TEST_PG_USER='vault_test'
export VAULT_TEST_PG_PASSFILE='$PASSFILE'
export VAULT_TEST_PG_BIN='$PG_BIN'
export VAULT_TEST_PG_CONN='host=127.0.0.1 port=$PORT user=vault_test'
export VAULT_TEST_PG_CTL='$DIR/pg_ctl'
export VAULT_TEST_PG_OS_USER='$OS_USER'
EOF
