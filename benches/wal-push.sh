#!/usr/bin/env bash
# Throughput of `vault wal push` as PostgreSQL's archive_command runs it:
# one process per 16 MiB segment, one after the other, each exiting only
# once its segment is durable.
#
#   benches/wal-push.sh [SEGMENTS [WORKDIR]]
#
# SEGMENTS (default 40) synthetic segments are generated once into WORKDIR
# (default /var/tmp/vault-wal-push): each is 16 MiB, pg-like in being
# mostly compressible (record-like text with varying numbers) with a
# quarter of random bytes (full-page images of incompressible data), and
# unique, so nothing deduplicates across segments.
#
# vault is built in release mode (VAULT_BIN overrides it). Each case pushes
# every segment into a fresh repository and prints segments/s and MiB/s:
#   local/default      local directory, repository created with the default
#                      argon2id parameters (what `vault init` does)
#   local/cheap        the only key made with --kdf-memory-mib 8
#                      --kdf-iterations 1 (what key derivation costs)
#   local/archive-key  default key, plus a second key for archive_command
#                      (`vault key add` with a 256-bit random password file
#                      and the light parameters), pushes opening with it
#   s3/...             the same on a fresh single-node Garage
#                      (scripts/start-garage.sh)
# It also times `vault snapshots` on the filled repository: the fixed cost
# of a process that opens the repository and does nothing else.
# Results: docs/pitr.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-40}"
WORK="${2:-/var/tmp/vault-wal-push}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd -P)"
log() { echo "wal-push: $*" >&2; }

if [ -z "${VAULT_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p vault-cli)
    VAULT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/vault"
fi
[ -x "$VAULT_BIN" ] || {
    log "no vault binary at $VAULT_BIN"
    exit 1
}

# --- segments -----------------------------------------------------------------
SEGS="$WORK/segments-$N"
if [ ! -f "$SEGS/.done" ]; then
    log "generating $N segments in $SEGS"
    rm -rf "$SEGS"
    mkdir -p "$SEGS"
    python3 - "$SEGS" "$N" <<'EOF'
import os, random, sys
out, n = sys.argv[1], int(sys.argv[2])
seg = 16 * 1024 * 1024
for i in range(1, n + 1):
    rng = random.Random(i)
    parts, size = [], 0
    while size < seg:
        if rng.random() < 0.25:
            block = os.urandom(8192)
        else:
            rows = "".join(
                f"INSERT rel=16384 blk={rng.randrange(1 << 20)} xid={i * 100000 + k} "
                f"tuple=(id={rng.randrange(1 << 30)}, name='customer {rng.randrange(1000)}')\n"
                for k in range(80)
            ).encode()
            block = (rows * (8192 // len(rows) + 1))[:8192]
        parts.append(block)
        size += len(block)
    name = f"00000001{i // 256:08X}{i % 256:08X}"
    with open(os.path.join(out, name), "wb") as f:
        f.write(b"".join(parts)[:seg])
EOF
    touch "$SEGS/.done"
fi

# --- S3 server ----------------------------------------------------------------
GARAGE_STARTED=""
cleanup() {
    if [ -n "$GARAGE_STARTED" ]; then
        kill "$GARAGE_PID" 2>/dev/null || true
        rm -rf "$GARAGE_DIR"
    fi
}
trap cleanup EXIT
if [ -z "${VAULT_TEST_S3_ENDPOINT:-}" ]; then
    if command -v garage >/dev/null || [ -x "$HOME/.cargo/bin/garage" ]; then
        eval "$(PATH="$PATH:$HOME/.cargo/bin" "$ROOT/scripts/start-garage.sh")"
        GARAGE_STARTED=1
    else
        log "garage not installed: skipping the S3 cases"
    fi
fi

printf 'x\n' >"$WORK/password"
chmod 600 "$WORK/password"
export VAULT_PASSWORD_FILE="$WORK/password"
unset VAULT_PASSWORD VAULT_CONFIG

now() { date +%s.%N; }
# A long random password for the archive key: stretching it adds nothing.
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$WORK/archive-password"
echo >>"$WORK/archive-password"
chmod 600 "$WORK/archive-password"

# run_case NAME REPO default|cheap|archive-key
run_case() {
    local name="$1" repo="$2" mode="$3"
    export VAULT_REPOSITORY="$repo" VAULT_PASSWORD_FILE="$WORK/password"
    case "$mode" in
    cheap) "$VAULT_BIN" init -q --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null ;;
    *) "$VAULT_BIN" init -q >/dev/null ;;
    esac
    if [ "$mode" = archive-key ]; then
        "$VAULT_BIN" key add -q --new-password-file "$WORK/archive-password" \
            --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null
        export VAULT_PASSWORD_FILE="$WORK/archive-password"
    fi
    local t0 t1 f
    t0=$(now)
    for f in "$SEGS"/0*; do
        "$VAULT_BIN" wal push --source bench "$f"
    done
    t1=$(now)
    local o0 o1
    o0=$(now)
    "$VAULT_BIN" snapshots >/dev/null
    o1=$(now)
    awk -v n="$N" -v a="$t0" -v b="$t1" -v c="$o0" -v d="$o1" -v name="$name" 'BEGIN {
        s = b - a
        printf "%-18s %4d segments in %6.1f s: %6.2f segments/s, %6.1f MiB/s, %4.0f ms per push; open-only process %4.0f ms\n",
            name, n, s, n / s, n * 16 / s, 1000 * s / n, 1000 * (d - c)
    }'
    "$VAULT_BIN" wal list bench | tail -n 1 >&2
}

log "vault: $VAULT_BIN"
for mode in default cheap archive-key; do
    rm -rf "$WORK/repo-$mode"
    run_case "local/$mode" "$WORK/repo-$mode" "$mode"
    rm -rf "$WORK/repo-$mode"
done
if [ -n "${VAULT_TEST_S3_ENDPOINT:-}" ]; then
    bucket="${VAULT_TEST_S3_BUCKET:-vault-test}"
    prefix="wal-bench-$(date +%s)-$$"
    for mode in default cheap archive-key; do
        run_case "s3/$mode" "s3:$VAULT_TEST_S3_ENDPOINT/$bucket/$prefix-$mode" "$mode"
    done
fi
