#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every fuzz target in fuzz/ and runs each for
# a few seconds over its seed corpus (fuzz/corpus/<target>/), then replays
# the saved crash inputs in fuzz/regressions/<target>/. Fails on any crash,
# panic, sanitizer report, timeout or out-of-memory.
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 5)
#   FUZZ_TARGETS     space-separated subset of targets (default: all)
#   FUZZ_SANITIZER   address (default) or none
#   FUZZ_MALLOC_LIMIT_MB  fail on any single allocation above this many MB
#                    (default 64: no decoder may allocate far beyond its
#                    input; the two large-allocation findings in
#                    fuzz/README.md, now fixed, are replayed at this limit)
#   FUZZ_TARGET_DIR  where the instrumented build goes (default
#                    ~/.cache/vault/fuzz-target: a cold build with ASan
#                    takes 15-40 min on 2 cores, a rebuild after an engine
#                    change about 2; delete it freely, it is rebuilt)
#   CARGO_BUILD_JOBS build parallelism (cargo's own variable)
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer, sancov passes) to rustc;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-5}"
SANITIZER="${FUZZ_SANITIZER:-address}"
CARGO_FUZZ_VERSION="0.13.2"
ALL_TARGETS="pack_header index_file tree snapshot key_file compress config blob_from_pack"
read -r -a TARGETS <<<"${FUZZ_TARGETS:-$ALL_TARGETS}"
LIMITS=(-timeout=20 -rss_limit_mb=2048 -malloc_limit_mb="${FUZZ_MALLOC_LIMIT_MB:-64}")

export RUSTC_BOOTSTRAP=1
TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vault/fuzz-target}"
mkdir -p "$TARGET_DIR"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

cd "$FUZZ_DIR"
echo "fuzz-smoke: building ${#TARGETS[@]} targets (sanitizer: $SANITIZER)"
for t in "${TARGETS[@]}"; do
    cargo fuzz build --target-dir "$TARGET_DIR" --sanitizer "$SANITIZER" "$t"
done

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/vault-fuzz-smoke.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

failed=()
for t in "${TARGETS[@]}"; do
    seeds="$FUZZ_DIR/corpus/$t"
    if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
        echo "fuzz-smoke: $t has no seed corpus in $seeds" >&2
        failed+=("$t(no-corpus)")
        continue
    fi
    mkdir -p "$SCRATCH/$t" "$SCRATCH/artifacts/$t"
    echo "fuzz-smoke: running $t for ${SECONDS_PER_TARGET}s"
    # New inputs go to the scratch directory (listed first), so the committed
    # seed corpus is only read.
    if ! cargo fuzz run --target-dir "$TARGET_DIR" --sanitizer "$SANITIZER" "$t" "$SCRATCH/$t" "$seeds" -- \
        -max_total_time="$SECONDS_PER_TARGET" "${LIMITS[@]}" \
        -artifact_prefix="$SCRATCH/artifacts/$t/" -print_final_stats=1 \
        >"$SCRATCH/$t.log" 2>&1; then
        tail -n 60 "$SCRATCH/$t.log" >&2
        for a in "$SCRATCH/artifacts/$t"/*; do
            if [ -f "$a" ]; then
                echo "fuzz-smoke: $t crash input $(basename "$a") (hex, first 2 KiB): $(head -c 2048 "$a" | od -An -tx1 -v | tr -d ' \n')" >&2
            fi
        done
        failed+=("$t")
        continue
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|cov: ' "$SCRATCH/$t.log" | tail -n 3 || true

    regs="$FUZZ_DIR/regressions/$t"
    if [ -d "$regs" ] && [ -n "$(ls -A "$regs")" ]; then
        echo "fuzz-smoke: replaying $(ls -A "$regs" | wc -l) regression input(s) for $t"
        if ! cargo fuzz run --target-dir "$TARGET_DIR" --sanitizer "$SANITIZER" "$t" "$regs"/* -- \
            "${LIMITS[@]}" >"$SCRATCH/$t.regressions.log" 2>&1; then
            tail -n 60 "$SCRATCH/$t.regressions.log" >&2
            failed+=("$t(regression)")
        fi
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: all ${#TARGETS[@]} targets ran without crashes"
