#!/usr/bin/env bash
# The WebDAV soak (scripts/soak-webdav.py): curl, rclone and davfs2 against
# the gateway for MINUTES (default 30) with an attacker beside them; prints
# requests served and refused, peak RSS, and fails if anything was lost.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ensure_built
export DATAMESH_BIN
exec python3 "$REPO/scripts/soak-webdav.py" "${1:-30}"
