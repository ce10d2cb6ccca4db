#!/usr/bin/env bash
# Everything CI checks, in order. Run from anywhere: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# A few seconds of libFuzzer per decoder of stored bytes, and the saved
# crash inputs replayed (scripts/fuzz-smoke.sh; VAULT_SKIP_FUZZ=1 skips it
# in a quick local loop; its instrumented build is cached in ~/.cache).
if [ -z "${VAULT_SKIP_FUZZ:-}" ]; then
    FUZZ_SECONDS="${FUZZ_SECONDS:-4}" scripts/fuzz-smoke.sh
fi
