#!/usr/bin/env bash
# Install the database servers and clients that the tests start themselves
# (scripts/start-postgres.sh, scripts/start-mariadb.sh) on Debian 12:
#
#   postgresql      server 15 and client: initdb, pg_ctl, postgres, psql,
#                   pg_dump, pg_basebackup in /usr/lib/postgresql/15/bin
#   mariadb-server  mariadbd, mariadb-install-db
#   mariadb-client  mariadb, mariadb-dump, mariadb-admin
#   eatmydata       LD_PRELOAD that makes fsync a no-op (faster MariaDB start)
#   fuse3           fusermount3, with which `vault mount` mounts as non-root
#                   (tests/e2e/mount.rs; root mounts /dev/fuse directly)
#   openssl         a private CA and `openssl s_server` for the --cacert test
#   e2fsprogs       chattr, for the restore test over immutable files
#
# Idempotent: when every needed program is already there it does nothing and
# exits at once. Otherwise it runs `apt-get update` once and installs the
# missing packages with --no-install-recommends. No system-wide server is
# left running: while apt runs, a policy-rc.d (unless the machine already has
# one) forbids maintainer scripts to start services; the tests use their own
# data directories and random ports anyway.
#
# Also moto's S3 server and boto3 (`pip install 'moto[server]'`) for
# tests/e2e/object_lock.rs: moto implements S3 Object Lock, which Garage
# does not. Skipped when moto_server and boto3 are already there.
#
# Needs root (or sudo without a password) only when something is missing.
set -euo pipefail

log() { echo "install-test-deps: $*" >&2; }

pg_bin_ok() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] &&
            [ -x "$d/psql" ] && [ -x "$d/pg_dump" ] && [ -x "$d/pg_basebackup" ] &&
            return 0
    done
    return 1
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
pg_bin_ok || missing+=(postgresql postgresql-client)
{ have mariadbd && have mariadb-install-db; } || missing+=(mariadb-server)
{ have mariadb && have mariadb-dump && have mariadb-admin; } || missing+=(mariadb-client)
# Makes fsync a no-op for the throw-away MariaDB bootstrap (3-5 s -> ~1.5 s).
have eatmydata || missing+=(eatmydata)
# The setuid mount helper for FUSE (vault mount) when not root.
{ have fusermount3 || have fusermount; } || missing+=(fuse3)
# Used by the start scripts; part of every Debian system, but cheap to check.
have runuser || missing+=(util-linux)
# The --cacert test makes a private CA and serves TLS with `openssl s_server`;
# slim images leave the openssl program out.
have openssl || missing+=(openssl)
# chattr, for the restore test over immutable files (skipped where the file
# system lacks the flag).
have chattr || missing+=(e2fsprogs)

have_moto() { command -v moto_server >/dev/null 2>&1 && python3 -c 'import boto3, moto' 2>/dev/null; }
have_moto || python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)

install_moto() {
    have_moto && return 0
    log "installing moto[server] with pip"
    # Debian 12 marks its python as externally managed (PEP 668).
    "${SUDO[@]}" python3 -m pip install --quiet 'moto[server]' >&2 ||
        "${SUDO[@]}" python3 -m pip install --quiet --break-system-packages 'moto[server]' >&2
    have_moto || { log "moto_server is still missing after pip install" >&2; exit 1; }
}

SUDO=()
if [ "${#missing[@]}" -eq 0 ]; then
    log "postgresql and mariadb already installed"
    if ! have_moto && [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    fi
    install_moto
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        log "missing: ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "missing: ${missing[*]}; no apt-get here, install them by hand" >&2
    exit 1
fi

# Keep maintainer scripts from starting postgresql/mariadb system services.
policy=/usr/sbin/policy-rc.d
made_policy=0
cleanup() {
    if [ "$made_policy" -eq 1 ]; then
        "${SUDO[@]}" rm -f "$policy"
    fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from vault scripts/install-test-deps.sh\nexit 101\n' |
        "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 0755 "$policy"
    made_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
log "installing: ${missing[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "${missing[@]}" >&2

if ! pg_bin_ok || ! have mariadbd || ! have mariadb-install-db || ! have mariadb ||
    ! have mariadb-dump; then
    log "installation finished but some programs are still missing" >&2
    exit 1
fi
install_moto
log "done"
