#!/usr/bin/env bash
# A hostile member device against a real home (tests/it/hostile.rs) for
# MINUTES (default 30): as many runs of hostile calls as fit, each followed
# by the checks (the home answers, honest files read back, fsck clean), then
# gc --grace 0 and every honest file read back. Prints the runs done, the
# calls answered and refused, and each refusal's text once.
#
# The binaries are copied first, so a build meanwhile changes nothing.
set -euo pipefail
minutes=${1:-30}
source "$(dirname "$0")/common.sh"
cd "$REPO"
cargo build --release --bin datamesh
exe=$(it_test_binary)
work=$(mktemp -d /var/tmp/hostile.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$CARGO_TARGET_DIR/release/datamesh" "$exe" "$work/"
start=$(date +%s)
DATAMESH_BIN="$work/datamesh" \
  DATAMESH_HOSTILE_CASES=$((minutes * 60 * 4)) \
  DATAMESH_HOSTILE_MINUTES="$minutes" \
  "$work/$(basename "$exe")" hostile --nocapture --test-threads 1
echo "hostile member: $(( ($(date +%s) - start) / 60 )) minutes"
