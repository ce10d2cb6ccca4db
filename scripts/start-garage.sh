#!/usr/bin/env bash
# Starts a single-node Garage (the S3-compatible server the test suite runs
# against) on 127.0.0.1 with random free ports in a temporary directory:
# sqlite metadata, replication factor 1, layout assigned, one access key and
# the bucket `vault-test` it may read and write. About a second of start-up.
#
#   eval "$(scripts/start-garage.sh)"
#   vault init --repo "s3:$VAULT_TEST_S3_ENDPOINT/$VAULT_TEST_S3_BUCKET/demo"
#   kill "$GARAGE_PID"; rm -rf "$GARAGE_DIR"
#
# Prints export lines for VAULT_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION (garage), VAULT_TEST_S3_BUCKET,
# GARAGE_PID and GARAGE_DIR (see scripts/garage-cluster.sh, which does the
# work, for the rest and for VAULT_GARAGE_PARENT_PID).
set -euo pipefail
exec "$(dirname "$0")/garage-cluster.sh" --nodes 1 "$@"
