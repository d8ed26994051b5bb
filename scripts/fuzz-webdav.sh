#!/usr/bin/env bash
# The WebDAV request fuzz (tests/it/webdav_fuzz.rs) for MINUTES (default
# 60): runs of 2 000 built requests and 2 000 raw byte strings each, every
# run on a fresh volume with a fresh random seed, until the time is spent.
# Stops at the first failure (a panic, a hang, a 500, a volume that does
# not check clean), which proptest prints shrunk. Prints runs and requests.
#
# The test binary is copied first, so a build meanwhile changes nothing.
set -euo pipefail
minutes=${1:-60}
source "$(dirname "$0")/common.sh"
cd "$REPO"
exe=$(it_test_binary)
work=$(mktemp -d /var/tmp/fuzz-webdav.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$exe" "$work/it"
cases=2000
start=$(date +%s)
runs=0
while (( $(date +%s) - start < minutes * 60 )); do
  DATAMESH_FUZZ_CASES=$cases "$work/it" webdav_fuzz --nocapture --test-threads 1 \
    > "$work/run.log" 2>&1 || { cat "$work/run.log"; echo "fuzz-webdav: FAILED in run $((runs + 1))"; exit 1; }
  runs=$((runs + 1))
  grep 'answers by class' "$work/run.log" || true
done
echo "fuzz-webdav: $runs runs, $((runs * cases * 2)) requests, $(( ($(date +%s) - start) / 60 )) minutes, no failure"
