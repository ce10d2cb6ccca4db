#!/usr/bin/env bash
# Everything CI checks, in order. Run from anywhere: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
