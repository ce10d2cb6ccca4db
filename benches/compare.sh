#!/usr/bin/env bash
# Side-by-side comparison of vault, restic and borg on the same data, all in
# one run (BENCHMARKS.md has results and how to read them).
#
#   benches/compare.sh [WORKDIR]
#
# WORKDIR (default /var/tmp/vault-compare) receives the corpora, the three
# repositories and the restore targets: about 8 GB free space is needed. It
# is reused between runs: the pg_dump pair is kept (delete WORKDIR/corpus/
# pgbench-*.sql to rebuild it), everything else is rebuilt.
#
# What it does:
#  1. installs restic, borgbackup and GNU time with apt-get if missing
#     (Debian packages: restic 0.14, borg 1.2.4 on Debian 12), and the
#     PostgreSQL server via scripts/install-test-deps.sh if missing;
#  2. builds vault in release mode (cargo build --release -p vault-cli);
#  3. builds the corpora: a copy of one Rust toolchain directory from this
#     machine's rustup home (VAULT_BENCH_TREE overrides it; the stable
#     toolchain is ~1.3 GB in ~52k files), and the pg_dump output of a
#     pgbench database at scale 30 before and after `pgbench -t 3000`,
#     from a throw-away server started with scripts/start-postgres.sh;
#  3b. measures the primitive ceiling on a sample of the tree's files
#     (criterion, benches/primitives.rs: one thread, and every core at once);
#  4. runs every step for vault, restic and borg in turn (so slow drift of a
#     shared machine hits all three alike), each under `/usr/bin/time -v`:
#       tree-1     first backup of the tree (read from page cache), ROUNDS
#                  times, each into a new repository, like restore
#       tree-2     backup after ~2% of the files changed (every 50th file:
#                  half get a line appended, half get bytes overwritten
#                  in place)
#       tree-3     unchanged re-backup
#       dump-1     first pg_dump via stdin
#       dump-2     second pg_dump via stdin (repository growth reported)
#       restore    full restore of the tree's last snapshot into an empty
#                  tmpfs (when run as root; else an empty directory);
#                  ROUNDS times (default 3), tools taking turns, median
#                  reported
#       restore-disk the same into an empty directory on WORKDIR's disk
#       check      check with full data read (vault check --verify,
#                  restic check --read-data, borg check --verify-data);
#                  ROUNDS times like restore
#  5. prints a table of wall time, CPU time (user+sys), peak RSS and
#     repository size per step and tool, with vault's ratio to each other
#     tool, and writes it to WORKDIR/results.md (raw numbers: results.tsv).
#
# Settings: vault defaults (zstd-3, 1 MiB average chunks, default argon2id);
# restic defaults with repository version 2 (compression auto); borg
# `--compression zstd,3`, `repokey-blake2` encryption. All repositories are
# local directories on the same file system as WORKDIR. Caches (restic,
# borg) live in WORKDIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/var/tmp/vault-compare}"
ROUNDS="${ROUNDS:-3}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd -P)"
log() { echo "compare: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# --- 1. tools ------------------------------------------------------------------
need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
command -v borg >/dev/null || need_apt+=(borgbackup)
[ -x /usr/bin/time ] || need_apt+=(time)
if [ "${#need_apt[@]}" -gt 0 ]; then
    log "installing ${need_apt[*]}"
    SUDO=()
    [ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >&2
fi
if ! ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1; then
    "$ROOT/scripts/install-test-deps.sh" >&2
fi

# --- 2. vault --------------------------------------------------------------------
log "building vault (release)"
(cd "$ROOT" && cargo build --release -q -p vault-cli) >&2
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
VAULT="$TARGET_DIR/release/vault"
[ -x "$VAULT" ] || die "no vault binary at $VAULT"

# --- 3. corpora ------------------------------------------------------------------
CORPUS="$WORK/corpus"
mkdir -p "$CORPUS"
if [ -z "${VAULT_BENCH_TREE:-}" ]; then
    RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
    for d in "$RUSTUP_HOME"/toolchains/stable-* "$RUSTUP_HOME"/toolchains/*; do
        if [ -d "$d" ] && [ ! -L "$d" ]; then
            VAULT_BENCH_TREE="$d"
            break
        fi
    done
fi
[ -d "${VAULT_BENCH_TREE:-}" ] || die "no tree corpus: set VAULT_BENCH_TREE to a directory"
TREE="$CORPUS/tree"
log "copying $VAULT_BENCH_TREE to $TREE"
rm -rf "$TREE"
cp -a "$VAULT_BENCH_TREE/." "$TREE/"
TREE_FILES=$(find "$TREE" -type f | wc -l)
TREE_BYTES=$(find "$TREE" -type f -printf '%s\n' | awk '{s += $1} END {print s}')

DUMP1="$CORPUS/pgbench-1.sql"
DUMP2="$CORPUS/pgbench-2.sql"
if [ ! -s "$DUMP1" ] || [ ! -s "$DUMP2" ]; then
    log "building the pgbench dumps (scale 30, then pgbench -t 3000)"
    PGOUT="$("$ROOT/scripts/start-postgres.sh")"
    eval "$PGOUT"
    trap '"$ROOT/scripts/stop-postgres.sh" "$VAULT_TEST_PG_DIR" || true' EXIT
    export PGPASSFILE="$VAULT_TEST_PG_PASSFILE"
    "$VAULT_TEST_PG_BIN/pgbench" -q -i -s 30 "$VAULT_TEST_PG_CONN dbname=vault_test" >&2
    "$VAULT_TEST_PG_BIN/pg_dump" "$VAULT_TEST_PG_CONN dbname=vault_test" >"$DUMP1.tmp"
    "$VAULT_TEST_PG_BIN/pgbench" -t 3000 "$VAULT_TEST_PG_CONN dbname=vault_test" >&2
    "$VAULT_TEST_PG_BIN/pg_dump" "$VAULT_TEST_PG_CONN dbname=vault_test" >"$DUMP2.tmp"
    mv "$DUMP1.tmp" "$DUMP1"
    mv "$DUMP2.tmp" "$DUMP2"
    "$ROOT/scripts/stop-postgres.sh" "$VAULT_TEST_PG_DIR"
    trap - EXIT
fi
DUMP1_BYTES=$(stat -c %s "$DUMP1")
DUMP2_BYTES=$(stat -c %s "$DUMP2")

# --- 3b. primitive ceiling on this tree ---------------------------------------------
# chunk + keyed BLAKE3 + zstd-3 + seal, one thread, over a sample of the tree's
# own files (benches/primitives.rs); times the core count, it is the most a
# backup of this tree could do here. Measured in this run, beside the tools.
log "measuring the primitive ceiling on the tree (criterion)"
(cd "$ROOT" && VAULT_BENCH_TREE="$TREE" cargo bench -q -p vault-engine --bench primitives -- \
    'ceiling/chunk_hash_zstd3_seal_(1thread|allcores)_tree' >"$WORK/ceiling.log" 2>&1) ||
    die "ceiling benchmark failed (log: $WORK/ceiling.log)"
ceiling_mbps() {
    python3 - "$TARGET_DIR/criterion/ceiling/chunk_hash_zstd3_seal_$1_tree/new" <<'PY'
import json, sys
d = sys.argv[1]
bytes_ = json.load(open(f"{d}/benchmark.json"))["throughput"]["Bytes"]
median_ns = json.load(open(f"{d}/estimates.json"))["median"]["point_estimate"]
print(f"{bytes_ / (median_ns / 1e9) / 1e6:.0f}")
PY
}
CEILING_MBPS=$(ceiling_mbps 1thread)
CEILING_ALL_MBPS=$(ceiling_mbps allcores)

# --- 4. runs -----------------------------------------------------------------------
REPOS="$WORK/repos"
RESTORES="$WORK/restore"
# A tmpfs an earlier run left mounted (it stopped mid-restore) first.
if [ -d "$RESTORES" ]; then
    awk -v d="$RESTORES/" 'index($2, d) == 1 { print $2 }' /proc/mounts | xargs -r -n1 umount
fi
rm -rf "$REPOS" "$RESTORES" "$WORK/cache" "$WORK/borg-home" "$WORK/logs"
mkdir -p "$REPOS" "$RESTORES" "$WORK/cache" "$WORK/borg-home" "$WORK/logs"
(umask 077 && printf 'benchmark-password\n' >"$WORK/password")
export VAULT_PASSWORD_FILE="$WORK/password"
export RESTIC_PASSWORD_FILE="$WORK/password" RESTIC_CACHE_DIR="$WORK/cache/restic"
export BORG_PASSPHRASE="benchmark-password" BORG_BASE_DIR="$WORK/borg-home"
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=no BORG_RELOCATED_REPO_ACCESS_IS_OK=no
V_REPO="$REPOS/vault"
R_REPO="$REPOS/restic"
B_REPO="$REPOS/borg"
TOOLS=(vault restic borg)

init_repo() { # TOOL: a new, empty repository (the old one removed)
    case "$1" in
    vault)
        rm -rf "$V_REPO"
        "$VAULT" --repo "$V_REPO" init -q >&2
        ;;
    restic)
        rm -rf "$R_REPO" "$WORK/cache/restic"
        restic -r "$R_REPO" init --repository-version 2 -q >&2
        ;;
    borg)
        rm -rf "$B_REPO" "$WORK/borg-home"
        mkdir -p "$WORK/borg-home"
        borg init -e repokey-blake2 "$B_REPO" >&2
        ;;
    esac
}

RESULTS="$WORK/results.tsv"
printf 'tool\tstep\twall_s\tuser_s\tsys_s\tmaxrss_kib\trepo_bytes\tinput_bytes\n' >"$RESULTS"

repo_of() {
    case "$1" in
    vault) echo "$V_REPO" ;;
    restic) echo "$R_REPO" ;;
    borg) echo "$B_REPO" ;;
    esac
}

# measure TOOL STEP INPUT_BYTES STDIN_FILE -- COMMAND...
measure() {
    local tool="$1" step="$2" input="$3" stdin="$4"
    shift 5
    local out="$WORK/logs/$tool-$step"
    log "$tool $step"
    if ! /usr/bin/time -v -o "$out.time" "$@" <"$stdin" >"$out.out" 2>"$out.err"; then
        cat "$out.err" >&2
        die "$tool $step failed (logs in $out.*)"
    fi
    local wall user sys rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$out.time")
    user=$(awk -F': ' '/User time/ {print $2}' "$out.time")
    sys=$(awk -F': ' '/System time/ {print $2}' "$out.time")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out.time")
    sync
    local size
    size=$(du -sb "$(repo_of "$tool")" | cut -f1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$step" "$wall" "$user" "$sys" "$rss" "$size" "$input" >>"$RESULTS"
}

backup_tree() { # TOOL STEP
    case "$1" in
    vault) measure vault "$2" "$TREE_BYTES" /dev/null -- "$VAULT" --repo "$V_REPO" backup --tag tree "$TREE" ;;
    restic) measure restic "$2" "$TREE_BYTES" /dev/null -- restic -r "$R_REPO" backup --tag tree "$TREE" ;;
    borg) measure borg "$2" "$TREE_BYTES" /dev/null -- borg create --stats --compression zstd,3 "$B_REPO::$2" "$TREE" ;;
    esac
}

backup_dump() { # TOOL STEP FILE BYTES
    case "$1" in
    vault) measure vault "$2" "$4" "$3" -- "$VAULT" --repo "$V_REPO" backup --tag dump --stdin --stdin-filename pgbench.sql ;;
    restic) measure restic "$2" "$4" "$3" -- restic -r "$R_REPO" backup --tag dump --stdin --stdin-filename pgbench.sql ;;
    borg) measure borg "$2" "$4" "$3" -- borg create --stats --compression zstd,3 --stdin-name pgbench.sql "$B_REPO::$2" - ;;
    esac
}

warm_tree() { find "$TREE" -type f -print0 | xargs -0 cat >/dev/null; }

change_files() {
    # Every 50th file in name order: even ones get a line appended (new
    # size), odd ones get 16 bytes overwritten in the middle (same size).
    local i=0 n=0
    while IFS= read -r -d '' f; do
        i=$((i + 1))
        [ $((i % 50)) -eq 0 ] || continue
        n=$((n + 1))
        if [ $((n % 2)) -eq 0 ]; then
            printf 'changed by compare.sh %d\n' "$n" >>"$f"
        else
            local size off
            size=$(stat -c %s "$f")
            off=$((size / 2))
            printf 'CHANGED%09d' "$n" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
        fi
    done < <(find "$TREE" -type f -print0 | sort -z)
    echo "$n"
}

warm_tree
# The first backup runs ROUNDS times too, the tools taking turns, each into
# a new repository; the last round's repositories go on to the next steps.
# With one round, the same backup code measured 1.92x restic and 3.78x
# borg in one run, 1.65x and 2.58x in the next.
for round in $(seq "$ROUNDS"); do
    for t in "${TOOLS[@]}"; do
        init_repo "$t"
        backup_tree "$t" tree-1
    done
done
CHANGED=$(change_files)
log "changed $CHANGED of $TREE_FILES files"
warm_tree
for t in "${TOOLS[@]}"; do backup_tree "$t" tree-2; done
for t in "${TOOLS[@]}"; do backup_tree "$t" tree-3; done
cat "$DUMP1" "$DUMP2" >/dev/null
for t in "${TOOLS[@]}"; do backup_dump "$t" dump-1 "$DUMP1" "$DUMP1_BYTES"; done
for t in "${TOOLS[@]}"; do backup_dump "$t" dump-2 "$DUMP2" "$DUMP2_BYTES"; done

restore_tree() { # TOOL STEP DEST
    case "$1" in
    vault) measure vault "$2" "$TREE_BYTES" /dev/null -- "$VAULT" --repo "$V_REPO" restore latest --tag tree --target "$3" ;;
    restic) measure restic "$2" "$TREE_BYTES" /dev/null -- restic -r "$R_REPO" restore latest --tag tree --target "$3" ;;
    borg) measure borg "$2" "$TREE_BYTES" /dev/null -- sh -c 'cd "$1" && borg extract "$2::tree-3"' sh "$3" "$B_REPO" ;;
    esac
}

# Restores go to a fresh tmpfs per tool when we may mount one, so the step
# measures the tool rather than the file system's state. On ext4 without a
# journal (these VMs) every inode allocation skips inodes deleted in the last
# ~35 s (fs/ext4/ialloc.c, recently_deleted), so a tool restoring right after
# another tool's restore was deleted paid up to 2x for it: the same vault
# restore measured 7.5 s and 14.3 s depending only on that. The disk restore
# (restore-disk) is kept, each tool after a sync and a 40 s pause; it is
# bound by the kernel's inode allocation for every tool.
TMPFS_OK=0
probe="$RESTORES/probe"
mkdir -p "$probe"
if [ "$(id -u)" -eq 0 ] && mount -t tmpfs -o size=64m tmpfs "$probe" 2>/dev/null; then
    umount "$probe"
    TMPFS_OK=1
fi
rmdir "$probe"
# Restore and check only read the repositories, so they run ROUNDS times,
# the tools taking turns within each round, and the report takes each
# tool's median: single runs on this shared VM moved ratios by up to 25%.
for round in $(seq "$ROUNDS"); do
    for t in "${TOOLS[@]}"; do
        dest="$RESTORES/$t"
        mkdir -p "$dest"
        if [ "$TMPFS_OK" = 1 ]; then
            # mode=755: as root, vault refuses a target every user may
            # write (tmpfs's default 1777), as it would a real one.
            mount -t tmpfs -o size=$((TREE_BYTES * 2 + (1 << 30))),mode=755 tmpfs "$dest"
        else
            log "not root or no tmpfs: restore step goes to disk"
            sync
            sleep 40
        fi
        restore_tree "$t" restore "$dest"
        if [ "$t" = vault ] && [ "$round" = 1 ]; then
            # Not timed against the others: the restore must be exact, and a
            # second restore over it with --overwrite if-changed writes nothing.
            diff -r --no-dereference "$TREE" "$dest$TREE" >&2 || die "vault restore differs from the source"
            measure vault restore-if-changed "$TREE_BYTES" /dev/null -- "$VAULT" --repo "$V_REPO" restore latest --tag tree --target "$dest" --overwrite if-changed
        fi
        if [ "$TMPFS_OK" = 1 ]; then
            umount "$dest"
        else
            rm -rf "$dest"
        fi
        rmdir "$dest" 2>/dev/null || true
    done
done
for t in "${TOOLS[@]}"; do
    dest="$RESTORES/$t-disk"
    mkdir -p "$dest"
    sync
    sleep 40
    restore_tree "$t" restore-disk "$dest"
    rm -rf "$dest"
done

for round in $(seq "$ROUNDS"); do
    for t in "${TOOLS[@]}"; do
        case "$t" in
        vault) measure vault check 0 /dev/null -- "$VAULT" --repo "$V_REPO" check --verify ;;
        restic) measure restic check 0 /dev/null -- restic -r "$R_REPO" check --read-data ;;
        borg) measure borg check 0 /dev/null -- borg check --verify-data "$B_REPO" ;;
        esac
    done
done

# --- 5. report ---------------------------------------------------------------------
python3 - "$RESULTS" "$WORK/results.md" "$TREE_FILES" "$TREE_BYTES" "$CHANGED" "$DUMP1_BYTES" "$DUMP2_BYTES" "$(nproc)" "$CEILING_MBPS" "$CEILING_ALL_MBPS" <<'PY'
import sys, collections, statistics
results, out_md, files, tree_bytes, changed, d1, d2, cores, ceiling, ceiling_all = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(results)][1:]
runs = collections.OrderedDict()
for tool, step, wall, user, sys_, rss, repo, inp in rows:
    runs.setdefault(step, collections.OrderedDict()).setdefault(tool, []).append(
        dict(wall=float(wall), cpu=float(user) + float(sys_), rss=int(rss) / 1024,
             repo=int(repo), input=int(inp)))
# A step run several times (tree-1, restore, check) reports its median-time run.
data = collections.OrderedDict(
    (step, {tool: sorted(rs, key=lambda r: r["wall"])[len(rs) // 2] for tool, rs in by.items()})
    for step, by in runs.items())
rounds = max(len(rs) for by in runs.values() for rs in by.values())
def speedup(step, tool):
    """other/vault wall time; over rounds, the median of each round's ratio
    (a round's runs are minutes apart, so drift of the machine cancels)."""
    o, v = runs[step][tool], runs[step]["vault"]
    if len(o) == len(v) > 1:
        return statistics.median(a["wall"] / b["wall"] for a, b in zip(o, v))
    return data[step][tool]["wall"] / data[step]["vault"]["wall"]
MB = 1e6
def mbps(d):
    return f"{d['input'] / MB / d['wall']:.0f} MB/s" if d["input"] and d["wall"] > 0 else ""
lines = []
p = lines.append
p(f"Tree: {int(files)} files, {int(tree_bytes) / MB:.0f} MB ({int(changed)} files changed for tree-2); "
  f"dumps: {int(d1) / MB:.0f} MB and {int(d2) / MB:.0f} MB; {cores} cores.")
p("")
p("Time ratios are other/vault (above 1: vault faster); RSS and size ratios are vault/other (below 1: vault smaller).")
if rounds > 1:
    p(f"The first backup, restore and check ran {rounds} times, the tools taking turns: each row is the tool's "
      f"median-time run, each speed-up the median of the {rounds} rounds' ratios.")
p("")
p("| step | tool | wall s | throughput | CPU s | CPU % | peak RSS MiB | repo MB | vault speed-up | vault RSS ratio |")
p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for step, by in data.items():
    v = by.get("vault")
    for tool in ("vault", "restic", "borg"):
        d = by.get(tool)
        if d is None:
            continue
        speed = rss = ""
        if v and tool != "vault" and v["wall"] > 0:
            speed = f"{speedup(step, tool):.2f}x"
            rss = f"{v['rss'] / d['rss']:.2f}"
        cpu_pct = f"{100 * d['cpu'] / d['wall']:.0f}%" if d["wall"] > 0 else ""
        p(f"| {step} | {tool} | {d['wall']:.2f} | {mbps(d)} | {d['cpu']:.2f} | {cpu_pct} | {d['rss']:.0f} | "
          f"{d['repo'] / MB:.1f} | {speed} | {rss} |")
p("")
p("| repository | vault | restic | borg | vault/restic | vault/borg |")
p("|---|---:|---:|---:|---:|---:|")
def size(step, tool):
    return data.get(step, {}).get(tool, {}).get("repo")
def row(name, vals):
    v, r, b = vals
    def f(x): return f"{x / MB:.1f} MB" if x is not None else "?"
    def q(a, b): return f"{a / b:.2f}" if a is not None and b else ""
    p(f"| {name} | {f(v)} | {f(r)} | {f(b)} | {q(v, r)} | {q(v, b)} |")
row("after both tree backups (tree-2)", [size("tree-2", t) for t in ("vault", "restic", "borg")])
growth = []
for t in ("vault", "restic", "borg"):
    a, b = size("dump-1", t), size("dump-2", t)
    growth.append(b - a if a is not None and b is not None else None)
row("growth from the second dump", growth)
row("final (all steps)", [size("dump-2", t) for t in ("vault", "restic", "borg")])
peak = {t: max(d[t]["rss"] for d in data.values() if t in d) for t in ("vault", "restic", "borg")}
p("")
p(f"Peak RSS over all steps: vault {peak['vault']:.0f} MiB, restic {peak['restic']:.0f} MiB, borg {peak['borg']:.0f} MiB.")
t1 = data.get("tree-1", {}).get("vault")
if t1 and t1["wall"] > 0:
    speed = t1["input"] / MB / t1["wall"]
    total = float(ceiling) * int(cores)
    p("")
    p(f"Primitive ceiling on this tree (chunk + hash + zstd-3 + seal, one thread, criterion): "
      f"{float(ceiling):.0f} MB/s per core, {total:.0f} MB/s for {cores} cores; "
      f"vault's first backup: {speed:.0f} MB/s = {100 * speed / total:.0f}% of it. "
      f"The same work on {cores} threads at once: {float(ceiling_all):.0f} MB/s "
      f"({float(ceiling_all) / total:.2f} of {cores} x one thread); "
      f"vault's first backup = {100 * speed / float(ceiling_all):.0f}% of that.")
text = "\n".join(lines) + "\n"
open(out_md, "w").write(text)
print(text)
PY
log "results in $WORK/results.md and $RESULTS"
