#!/usr/bin/env bash
# Starts moto's S3 server (an S3 emulator that, unlike Garage, implements
# Object Lock and versioning) on 127.0.0.1 with a random free port, and
# creates the bucket `vault-lock` with Object Lock enabled
# (ObjectLockEnabledForBucket, which also turns versioning on) and the
# bucket `vault-plain` without it. About a second of start-up.
#
#   eval "$(scripts/start-moto.sh)"
#   vault init --object-lock-days 1 \
#       --repo "s3:$VAULT_TEST_S3_ENDPOINT/$VAULT_TEST_LOCK_BUCKET/demo"
#   kill "$MOTO_PID"; rm -rf "$MOTO_DIR"
#
# Prints export lines for VAULT_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION, VAULT_TEST_LOCK_BUCKET,
# VAULT_TEST_PLAIN_BUCKET, MOTO_PID and MOTO_DIR. With
# VAULT_MOTO_PARENT_PID set, a watchdog stops the server once that process
# exits (the e2e tests pass their own pid, so nothing outlives them).
# Needs moto_server and boto3 (`pip install 'moto[server]'`, done by
# scripts/install-test-deps.sh).
set -euo pipefail

command -v moto_server >/dev/null || { echo "start-moto.sh: moto_server not found (pip install 'moto[server]')" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/vault-moto.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# setsid: the server must not die with the shell that evals our output.
setsid moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$dir/pid"
endpoint="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('$endpoint/moto-api/')" 2>/dev/null; then break; fi
    kill -0 "$pid" 2>/dev/null || { cat "$dir/moto.log" >&2; exit 1; }
    sleep 0.05
done

export AWS_ACCESS_KEY_ID=vault-test AWS_SECRET_ACCESS_KEY=vault-test-secret AWS_REGION=us-east-1
python3 - "$endpoint" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.create_bucket(Bucket="vault-lock", ObjectLockEnabledForBucket=True)
s3.create_bucket(Bucket="vault-plain")
PY

if [ -n "${VAULT_MOTO_PARENT_PID:-}" ]; then
    parent="$VAULT_MOTO_PARENT_PID"
    (
        trap '' HUP INT
        while kill -0 "$parent" 2>/dev/null; do sleep 1; done
        kill "$pid" 2>/dev/null || true
        rm -rf "$dir"
    ) >/dev/null 2>&1 </dev/null &
    disown || true
fi

cat <<OUT
export VAULT_TEST_S3_ENDPOINT=$endpoint
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_REGION=$AWS_REGION
export VAULT_TEST_LOCK_BUCKET=vault-lock
export VAULT_TEST_PLAIN_BUCKET=vault-plain
export MOTO_PID=$pid
export MOTO_DIR=$dir
OUT
