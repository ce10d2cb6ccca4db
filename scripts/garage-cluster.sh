#!/usr/bin/env bash
# Starts a Garage cluster of N nodes (default 3, replication factor 3) on
# 127.0.0.1 with random free ports in a fresh temporary directory, assigns
# the layout, creates an access key and a bucket the key may use, and prints
# shell `export` lines describing it:
#
#   eval "$(scripts/garage-cluster.sh)"          # 3 nodes
#   eval "$(scripts/garage-cluster.sh --nodes 1)" # what scripts/start-garage.sh does
#
# Exports: VAULT_TEST_S3_ENDPOINT (node 1's S3 API), AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION=garage, VAULT_TEST_S3_BUCKET,
# GARAGE_PID (node 1), GARAGE_DIR, GARAGE_NODES, and per node i:
# GARAGE_NODE<i>_PID, GARAGE_NODE<i>_CONFIG, GARAGE_NODE<i>_ENDPOINT.
# A node is restarted with `garage -c "$GARAGE_NODE<i>_CONFIG" server`.
#
# Stop: kill the GARAGE_NODE<i>_PID processes and remove GARAGE_DIR. If
# VAULT_GARAGE_PARENT_PID is set, a watchdog does both once that process
# exits (the e2e tests pass their own pid, so nothing outlives them); it
# kills the pids in GARAGE_DIR/node<i>/pid, so whoever restarts a node
# writes the new pid there.
#
# Environment: GARAGE_BIN (default: `garage` on PATH, else ~/.cargo/bin/garage).
# Progress and errors go to stderr; only the export lines go to stdout.
set -euo pipefail

nodes=3
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes="$2"; shift 2 ;;
        --nodes=*) nodes="${1#--nodes=}"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "garage-cluster.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$nodes" in
    ''|*[!0-9]*) echo "garage-cluster.sh: --nodes needs a number" >&2; exit 2 ;;
esac
[ "$nodes" -ge 1 ] || { echo "garage-cluster.sh: --nodes must be at least 1" >&2; exit 2; }

garage="${GARAGE_BIN:-}"
if [ -z "$garage" ]; then
    if command -v garage >/dev/null 2>&1; then
        garage="$(command -v garage)"
    elif [ -x "$HOME/.cargo/bin/garage" ]; then
        garage="$HOME/.cargo/bin/garage"
    else
        echo "garage-cluster.sh: garage is not installed (cargo install garage --locked --no-default-features --features bundled-libs,sqlite)" >&2
        exit 127
    fi
fi

log() { echo "garage-cluster.sh: $*" >&2; }
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

dir="$(mktemp -d "${TMPDIR:-/tmp}/vault-garage.XXXXXX")"
pids=()
cleanup_on_error() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        for i in $(seq 1 "$nodes"); do
            [ -f "$dir/node$i/garage.log" ] && { log "node $i log:"; tail -20 "$dir/node$i/garage.log" >&2; }
        done
        rm -rf "$dir"
    fi
}
trap cleanup_on_error EXIT

# A port nobody listens on now, not handed out before in this run. Garage
# binding it can still race with another process: start-up is retried.
used_ports=" "
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        case "$used_ports" in *" $port "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            used_ports="$used_ports$port "
            echo "$port"
            return
        fi
    done
}

rpc_secret="$(hex 32)"
replication=$(( nodes < 3 ? nodes : 3 ))

write_config() { # node-number
    local i=$1 ndir="$dir/node$1"
    local rpc s3 admin
    rpc=$(free_port); s3=$(free_port); admin=$(free_port)
    mkdir -p "$ndir/meta" "$ndir/data"
    cat >"$ndir/garage.toml" <<EOF
metadata_dir = "$ndir/meta"
data_dir = "$ndir/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false

replication_factor = $replication

rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$rpc_secret"

[s3_api]
api_bind_addr = "127.0.0.1:$s3"
s3_region = "garage"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
EOF
    echo "$rpc $s3" >"$ndir/ports"
}

start_node() { # node-number; sets node_pid
    local ndir="$dir/node$1"
    # Detached from our stdout/stderr so callers capturing them are not
    # kept waiting by the server.
    "$garage" -c "$ndir/garage.toml" server >>"$ndir/garage.log" 2>&1 </dev/null &
    node_pid=$!
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts node i, retrying with fresh ports if they were taken meanwhile.
for i in $(seq 1 "$nodes"); do
    for attempt in 1 2 3 4 5; do
        write_config "$i"
        start_node "$i"
        read -r rpc s3 <"$dir/node$i/ports"
        ok=
        for _ in $(seq 1 200); do
            if ! kill -0 "$node_pid" 2>/dev/null; then break; fi
            if port_open "$s3" && port_open "$rpc"; then ok=1; break; fi
            sleep 0.05
        done
        if [ -n "$ok" ]; then break; fi
        kill "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
        log "node $i did not start (attempt $attempt), retrying with other ports"
        rm -rf "${dir:?}/node$i"
        node_pid=
    done
    [ -n "$node_pid" ] || { log "node $i failed to start"; exit 1; }
    pids+=("$node_pid")
    echo "$node_pid" >"$dir/node$i/pid"
done

g() { "$garage" -c "$dir/node1/garage.toml" "$@"; }

node_id() { # node-number -> full node id
    local out
    for _ in $(seq 1 100); do
        if out="$("$garage" -c "$dir/node$1/garage.toml" node id -q 2>/dev/null)"; then
            echo "${out%%@*}"
            return
        fi
        sleep 0.1
    done
    log "cannot get the id of node $1"
    return 1
}

ids=()
for i in $(seq 1 "$nodes"); do
    ids+=("$(node_id "$i")")
done
for i in $(seq 2 "$nodes"); do
    read -r rpc _ <"$dir/node$i/ports"
    g node connect "${ids[$((i - 1))]}@127.0.0.1:$rpc" >/dev/null
done
# Wait until node 1 sees every node.
for _ in $(seq 1 100); do
    seen=$(g status 2>/dev/null | grep -c '127\.0\.0\.1:' || true)
    [ "$seen" -ge "$nodes" ] && break
    sleep 0.1
done

for i in $(seq 1 "$nodes"); do
    g layout assign -z "dc$i" -c 1G "${ids[$((i - 1))]}" >/dev/null
done
g layout apply --version 1 >/dev/null

key_id="GK$(hex 12)"
secret="$(hex 32)"
bucket="vault-test"
g key import --yes -n vault-test "$key_id" "$secret" >/dev/null
# The layout takes a moment to propagate; bucket creation needs it.
for attempt in $(seq 1 100); do
    if g bucket create "$bucket" >/dev/null 2>&1; then break; fi
    [ "$attempt" -eq 100 ] && { g bucket create "$bucket"; exit 1; }
    sleep 0.1
done
g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null

if [ -n "${VAULT_GARAGE_PARENT_PID:-}" ]; then
    parent="$VAULT_GARAGE_PARENT_PID"
    (
        trap '' HUP INT
        while kill -0 "$parent" 2>/dev/null; do sleep 1; done
        # Node pids are in node<i>/pid (a caller restarting a node writes
        # the new one there); kill only processes still running that config.
        for i in $(seq 1 "$nodes"); do
            p=$(cat "$dir/node$i/pid" 2>/dev/null || true)
            [ -n "$p" ] || continue
            if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$dir/node$i/garage.toml"; then
                kill "$p" 2>/dev/null || true
            fi
        done
        sleep 1
        rm -rf "$dir"
    ) </dev/null >/dev/null 2>&1 &
    disown
fi

read -r _ s3 <"$dir/node1/ports"
trap - EXIT
cat <<EOF
export VAULT_TEST_S3_ENDPOINT=http://127.0.0.1:$s3
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=garage
export VAULT_TEST_S3_BUCKET=$bucket
export GARAGE_PID=${pids[0]}
export GARAGE_DIR=$dir
export GARAGE_NODES=$nodes
EOF
for i in $(seq 1 "$nodes"); do
    read -r _ s3 <"$dir/node$i/ports"
    cat <<EOF
export GARAGE_NODE${i}_PID=${pids[$((i - 1))]}
export GARAGE_NODE${i}_CONFIG=$dir/node$i/garage.toml
export GARAGE_NODE${i}_ENDPOINT=http://127.0.0.1:$s3
EOF
done
