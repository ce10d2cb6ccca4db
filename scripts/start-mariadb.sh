#!/usr/bin/env bash
# Start a throw-away MariaDB server for tests.
#
#   scripts/start-mariadb.sh [DIR [OPTION=VALUE ...]]
#
# Creates a fresh data directory in DIR (default: a new `mktemp -d` in
# /dev/shm or $TMPDIR or /tmp, see default_base below; DIR may
# be "" to get the default and still pass options; an existing DIR must be
# empty) with mariadb-install-db, and starts mariadbd in the background
# listening only on 127.0.0.1 at a free random port, with its socket and pid
# file in DIR. It creates vault_test@'127.0.0.1' and vault_test@'localhost'
# with a random password and ALL PRIVILEGES ... WITH GRANT OPTION; MariaDB's
# root@localhost (and mysql@localhost when run as root) can log in only
# through unix_socket authentication as that OS user. Extra OPTION=VALUE arguments are added to the [mysqld] section
# of DIR/server.cnf before the first start (e.g. log-bin=binlog).
#
# stdout is only `export NAME='VALUE'` lines (values never contain a quote),
# so `eval "$(scripts/start-mariadb.sh)"` works; everything else goes to
# stderr. Stop and remove it with scripts/stop-mariadb.sh DIR.
#
# Layout of DIR:
#   data/          the data directory
#   server.cnf     the server's only option file (mariadbd --defaults-file)
#   my.cnf         client defaults, mode 0600, owned by the caller:
#                  [client] user, password, host=127.0.0.1, port, socket
#   mysqld.sock    unix socket
#   mariadbd.pid   pid file
#   error.log      server log
#
# Run as root, mariadbd runs as the `mysql` system user (or `nobody` when
# there is none); DIR then belongs to that user and its parent directories
# must let it through.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "start-mariadb: $*" >&2; }
die() {
    log "$*"
    exit 1
}

find_prog() {
    local p d
    for p in "$@"; do
        command -v "$p" 2>/dev/null && return
        for d in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
            [ -x "$d/$p" ] && {
                echo "$d/$p"
                return
            }
        done
    done
    die "none of $* found; run scripts/install-test-deps.sh"
}
MARIADBD="$(find_prog mariadbd mysqld)"
INSTALL_DB="$(find_prog mariadb-install-db mysql_install_db)"
ADMIN="$(find_prog mariadb-admin mysqladmin)"
CLIENT="$(find_prog mariadb mysql)"
# MariaDB fsyncs after every DDL statement, even with the relaxed InnoDB
# settings below: bootstrapping the system tables does ~1000 fsyncs (3-5 s on
# a VM disk). eatmydata (installed by install-test-deps.sh) turns fsync into a
# no-op for the bootstrap and the server; durability across a power loss does
# not matter for a throw-away test server. VAULT_TEST_MY_FSYNC=1 keeps fsync.
NOSYNC=()
if [ "${VAULT_TEST_MY_FSYNC:-0}" != 1 ] && command -v eatmydata >/dev/null 2>&1; then
    NOSYNC=(eatmydata --)
fi

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
# A zombie counts as gone: PID 1 of some containers reaps orphans late.
alive() {
    local st
    kill -0 "$1" 2>/dev/null || return 1
    st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || true
    case "$st" in Z | X) return 1 ;; esac
    return 0
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
    DIR="$(mktemp -d "$(default_base)/vault-my.XXXXXX")"
else
    mkdir -p "$DIR"
    [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty"
fi
DIR="$(cd "$DIR" && pwd -P)"
case "$DIR" in *"'"* | *'"'* | *\\* | *'#'* | *[[:space:]]*) die "DIR must not contain quotes, backslashes, '#' or spaces: $DIR" ;; esac
# A unix socket path is at most 107 bytes.
[ "${#DIR}" -le 80 ] || die "DIR path too long for a unix socket (max 80 characters): $DIR"
touch "$DIR/.vault-test-mariadb" # marks DIR as ours for stop-mariadb.sh
OPTIONS=()
for o in "$@"; do OPTIONS+=("$o"); done

CALLER_UID="$(id -u)"
CALLER_GID="$(id -g)"
OS_USER="$(id -un)"
RUN=()
if [ "$CALLER_UID" -eq 0 ]; then
    if id -u mysql >/dev/null 2>&1; then
        OS_USER=mysql
    else
        OS_USER=nobody
    fi
    RUN=(runuser -u "$OS_USER" --)
    chown "$OS_USER:$(id -gn "$OS_USER")" "$DIR" "$DIR/.vault-test-mariadb"
    chmod 0700 "$DIR"
    "${RUN[@]}" test -w "$DIR" ||
        die "$OS_USER cannot write to $DIR (a parent directory does not let it through)"
fi
cd "$DIR"
umask 077

PASSWORD="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
SOCKET="$DIR/mysqld.sock"
PIDFILE="$DIR/mariadbd.pid"
DATA="$DIR/data"

write_server_cnf() {
    {
        echo "# written by scripts/start-mariadb.sh"
        echo "[mysqld]"
        [ "$CALLER_UID" -eq 0 ] && echo "user = $OS_USER"
        echo "datadir = $DATA"
        echo "socket = $SOCKET"
        echo "pid-file = $PIDFILE"
        echo "log-error = $DIR/error.log"
        echo "port = $1"
        echo "bind-address = 127.0.0.1"
        echo "skip-name-resolve"
        echo "tmpdir = $DIR/tmp"
        echo "character-set-server = utf8mb4"
        echo "collation-server = utf8mb4_general_ci"
        # A small, fast, throw-away server.
        echo "innodb-buffer-pool-size = 64M"
        echo "innodb-log-file-size = 16M"
        echo "innodb-flush-log-at-trx-commit = 2"
        echo "innodb-doublewrite = 0"
        echo "max-connections = 50"
        echo "performance-schema = off"
        for o in "${OPTIONS[@]}"; do echo "$o"; done
    } >"$DIR/server.cnf"
    chmod 0644 "$DIR/server.cnf"
}

# --- data directory -----------------------------------------------------------
t0=$(date +%s.%N)
"${RUN[@]}" mkdir -p "$DIR/tmp"
write_server_cnf 0
INIT_SQL="$DIR/.init.sql"
cat >"$INIT_SQL" <<EOF
FLUSH PRIVILEGES;
CREATE USER 'vault_test'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO 'vault_test'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER 'vault_test'@'localhost' IDENTIFIED BY '$PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO 'vault_test'@'localhost' WITH GRANT OPTION;
EOF
[ "$CALLER_UID" -eq 0 ] && chown "$OS_USER" "$INIT_SQL"
INSTALL_ARGS=(--defaults-file="$DIR/server.cnf" --skip-test-db --skip-name-resolve
    --auth-root-authentication-method=socket --extra-file="$INIT_SQL")
[ "$CALLER_UID" -eq 0 ] && INSTALL_ARGS+=(--user="$OS_USER")
if ! "${NOSYNC[@]}" "$INSTALL_DB" "${INSTALL_ARGS[@]}" >"$DIR/install-db.log" 2>&1; then
    cat "$DIR/install-db.log" >&2
    rm -f "$INIT_SQL"
    die "mariadb-install-db failed"
fi
rm -f "$INIT_SQL"

# --- client defaults, owned by the caller ---------------------------------------
write_client_cnf() {
    cat >"$DIR/my.cnf" <<EOF
[client]
user = vault_test
password = $PASSWORD
host = 127.0.0.1
port = $1
socket = $SOCKET
EOF
    chmod 0600 "$DIR/my.cnf"
    chown "$CALLER_UID:$CALLER_GID" "$DIR/my.cnf"
}

# --- start, retrying on a port someone else took ----------------------------
PORT=""
PID=""
child=""
# Leave no server behind when this script fails after starting one.
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -n "$child" ] && alive "$child"; then
        kill -KILL "$child" 2>/dev/null || true
    fi
    exit "$rc"
}
trap on_exit EXIT
for attempt in 1 2 3 4 5 6 7 8; do
    PORT="$(pick_port)"
    write_server_cnf "$PORT"
    write_client_cnf "$PORT"
    : >"$DIR/mariadbd.out"
    [ "$CALLER_UID" -eq 0 ] && { : | "${RUN[@]}" tee "$DIR/error.log" >/dev/null; }
    # Started as the caller (root drops to `user` itself). No inherited
    # stdout/stderr: a caller that reads our output to EOF must not wait for it.
    "${NOSYNC[@]}" "$MARIADBD" --defaults-file="$DIR/server.cnf" </dev/null >>"$DIR/mariadbd.out" 2>&1 &
    child=$!
    ok=0
    for _ in $(seq 1 600); do # 60 s
        if ! alive "$child"; then
            break
        fi
        if [ -S "$SOCKET" ] && "$ADMIN" --defaults-file="$DIR/my.cnf" --connect-timeout=2 \
            --protocol=tcp ping >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.1
    done
    if [ "$ok" -eq 1 ]; then
        PID="$child"
        break
    fi
    if alive "$child"; then
        cat "$DIR/error.log" "$DIR/mariadbd.out" >&2 || true
        die "mariadbd did not answer within 60 s (files in $DIR)"
    fi
    if grep -qE 'Address already in use|Do you already have another .* running|Can.t start server: Bind' \
        "$DIR/error.log" "$DIR/mariadbd.out" 2>/dev/null; then
        log "port $PORT taken (attempt $attempt), trying another"
        PORT=""
        continue
    fi
    cat "$DIR/error.log" "$DIR/mariadbd.out" >&2 || true
    die "mariadbd exited (see above; files in $DIR)"
done
[ -n "$PORT" ] || die "could not bind a port after 8 attempts"
# The pid file is written before the server answers; mariadbd is our child.
if [ -s "$PIDFILE" ]; then
    PID="$(cat "$PIDFILE")"
fi
# `ping` answers even when the login is refused: check that it is accepted.
"$CLIENT" --defaults-file="$DIR/my.cnf" -N -e "SELECT 1" >/dev/null ||
    die "vault_test cannot log in (files in $DIR)"

t1=$(date +%s.%N)
log "$("$MARIADBD" --version | awk '{print $2, $3}') up on 127.0.0.1:$PORT in $DIR ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s)"

# Watchdog: stop and remove the server once VAULT_TEST_PARENT_PID exits (a
# test passes its own pid, so nothing outlives a crashed or killed run). It
# ends by itself when DIR goes away through a normal stop-mariadb.sh.
if [ -n "${VAULT_TEST_PARENT_PID:-}" ]; then
    parent="$VAULT_TEST_PARENT_PID"
    stop_script="$SCRIPT_DIR/stop-mariadb.sh"
    (
        trap '' HUP INT
        while [ -e "$DIR/.vault-test-mariadb" ] && kill -0 "$parent" 2>/dev/null &&
            [ "$(sed 's/.*) //' "/proc/$parent/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; do
            sleep 1
        done
        [ -e "$DIR/.vault-test-mariadb" ] && "$stop_script" "$DIR"
    ) </dev/null >/dev/null 2>&1 &
    disown
fi

cat <<EOF
export VAULT_TEST_MY_DIR='$DIR'
export VAULT_TEST_MY_DEFAULTS_FILE='$DIR/my.cnf'
export VAULT_TEST_MY_HOST='127.0.0.1'
export VAULT_TEST_MY_PORT='$PORT'
export VAULT_TEST_MY_USER='vault_test'
export VAULT_TEST_MY_SOCKET='$SOCKET'
export VAULT_TEST_MY_PID='$PID'
EOF
