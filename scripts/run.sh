#!/usr/bin/env bash
# Runs datamesh on the embedded default volume (this host is its own storage peer):
# stores a file, lists it, reads it back, and checks the volume.
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ -x "$DATAMESH_BIN" ] || (cd "$REPO" && cargo build --release --locked)
dm() { "$DATAMESH_BIN" "$@"; }

echo "datamesh: $DATAMESH_BIN (home: ${DATAMESH_HOME:-~/.local/share/datamesh})"
sample=$(mktemp)
trap 'rm -f "$sample" "$sample.back"' EXIT
head -c $((12 * 1024 * 1024)) /dev/urandom > "$sample"
set -x
dm mkdir -p /demo
dm put "$sample" /demo/sample.bin
dm put "$REPO/README.md" /demo/README.md
dm ls -l /demo
dm get /demo/sample.bin "$sample.back"
cmp "$sample" "$sample.back"
dm df
dm fsck
