#!/usr/bin/env bash
# Runs datamesh on the embedded default volume (this host is its own storage peer):
# a short CLI round trip, then the main job: the volume mounted at MOUNTPOINT
# (default /mnt/mesh as root, ~/mesh otherwise), serving in the background.
# Usage: scripts/run.sh [MOUNTPOINT]
set -euo pipefail
source "$(dirname "$0")/common.sh"
ensure_built
dm() { "$DATAMESH_BIN" "$@"; }
if [ "$(id -u)" -eq 0 ]; then default_mnt=/mnt/mesh; else default_mnt="$HOME/mesh"; fi
mnt="${1:-$default_mnt}"

echo "datamesh: $DATAMESH_BIN (home: ${DATAMESH_HOME:-~/.local/share/datamesh})"
if mountpoint -q "$mnt" 2>/dev/null; then
  echo "datamesh: $mnt is already mounted; unmount it with: $DATAMESH_BIN umount $mnt"
  exit 0
fi
sample=$(mktemp)
trap 'rm -f "$sample" "$sample.back"' EXIT
head -c $((12 * 1024 * 1024)) /dev/urandom > "$sample"
(
  set -x
  dm mkdir -p /demo
  dm put "$sample" /demo/sample.bin
  dm ls -l /demo
  dm get /demo/sample.bin "$sample.back"
  cmp "$sample" "$sample.back"
  dm fsck
)
if [ ! -e /dev/fuse ]; then
  echo "datamesh: no /dev/fuse here: use the CLI (datamesh ls/put/get/…) instead of a mount"
  exit 0
fi
mkdir -p "$mnt"
(
  set -x
  dm mount "$mnt"
  cp "$REPO/README.md" "$mnt/demo/README.md"
  ls -l "$mnt/demo"
  cmp "$sample" "$mnt/demo/sample.bin"
  # The CLI goes on working beside the mount, through the mount's daemon.
  dm ls -l /demo
)
echo "datamesh: the volume is mounted at $mnt; use any tool on it, and the CLI beside it."
echo "datamesh: stop with: $DATAMESH_BIN umount $mnt"
