#!/usr/bin/env bash
# The main job, end to end on a local repository (no S3 needed):
# build vault, create the default repository with a generated password file
# if there is none, back up a directory, restore it elsewhere and compare.
#
#   scripts/demo.sh [DIRECTORY]     (default: this checkout's engine/ sources)
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(realpath "${1:-engine}")

cargo build --release --quiet
vault=$PWD/target/release/vault

config_dir=${XDG_CONFIG_HOME:-$HOME/.config}/vault
export VAULT_PASSWORD_FILE=${VAULT_PASSWORD_FILE:-$config_dir/password}
if [ ! -f "$VAULT_PASSWORD_FILE" ]; then
    mkdir -p "$(dirname "$VAULT_PASSWORD_FILE")"
    (umask 077 && head -c 24 /dev/urandom | base64 > "$VAULT_PASSWORD_FILE")
    echo "generated a password in $VAULT_PASSWORD_FILE: keep a copy somewhere safe"
fi

if ! "$vault" snapshots --quiet >/dev/null 2>&1; then
    "$vault" init
fi
"$vault" backup "$src" --tag demo
"$vault" snapshots --tag demo
target=$(mktemp -d)
"$vault" restore latest --tag demo --target "$target"
diff -r "$src" "$target$src"
echo "restored $src into $target$src: identical"
