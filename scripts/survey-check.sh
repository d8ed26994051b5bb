#!/usr/bin/env bash
# Whether status and repair count the same thing every time on a large local
# mesh: N peers (default 60), 40 files of 1–8 MiB, `status --json` five times
# in a row, then two peers killed, `repair`, and `status` five times again,
# each set checked against `fsck`. Prints each run's counts and how long it
# took; exits 1 if two runs of a set differ or a count disagrees with fsck.
#
#   scripts/survey-check.sh [N] [FILES]
#
# Environment: DATAMESH_CLUSTER (default /tmp/datamesh-survey-check),
# DATAMESH_CLUSTER_PORT (default 5200), DATAMESH_BIN.
set -euo pipefail
source "$(dirname "$0")/common.sh"
n="${1:-60}"
files="${2:-40}"
export DATAMESH_CLUSTER="${DATAMESH_CLUSTER:-/tmp/datamesh-survey-check}"
export DATAMESH_CLUSTER_PORT="${DATAMESH_CLUSTER_PORT:-5200}"
ensure_built
export DATAMESH_BIN
cluster() { "$REPO/scripts/cluster.sh" "$@"; }
dm() { "$DATAMESH_BIN" --home "$DATAMESH_CLUSTER/home" "$@"; }

cluster stop >/dev/null 2>&1 || true
rm -rf "$DATAMESH_CLUSTER"
trap 'cluster stop >/dev/null 2>&1 || true' EXIT
cluster start "$n" >/dev/null
src="$DATAMESH_CLUSTER/src"
mkdir -p "$src"
for i in $(seq 1 "$files"); do
  head -c $(( (1 + i % 8) * 1000000 )) /dev/urandom > "$src/f$i.bin"
done
# shellcheck disable=SC2046
dm $(cat "$DATAMESH_CLUSTER/bootstrap") put -r "$src" / >/dev/null

field() { sed -n "s/^ *\"$1\": \([0-9]*\).*/\1/p" | head -1; }
counts() {
  local j="$1" out=""
  for k in chunks full reduced critical lost unknown; do
    out+="$k=$(field "$k" <<< "$j") "
  done
  echo "${out% }"
}

failed=0
check_set() {
  local label="$1" first="" i t0 json c
  for i in 1 2 3 4 5; do
    t0=$(date +%s.%N)
    json=$(dm status --json || true)
    c=$(counts "$json")
    printf '%-24s run %d  %5.1f s  %s\n' "$label" "$i" "$(echo "$(date +%s.%N) - $t0" | bc)" "$c"
    if [ -z "$first" ]; then first="$c"; elif [ "$c" != "$first" ]; then
      echo "  differs from run 1"; failed=1
    fi
  done
  local chunks full
  chunks=$(sed 's/.*chunks=\([0-9]*\).*/\1/' <<< "$first")
  full=$(sed 's/.*full=\([0-9]*\).*/\1/' <<< "$first")
  local fsck
  if fsck=$(dm fsck 2>&1); then
    echo "$label: fsck clean; $full of $chunks chunks full"
  else
    echo "$label: fsck found problems:"; tail -5 <<< "$fsck"; failed=1
  fi
}

check_set "after put, $n peers"
cluster kill 3 >/dev/null
cluster kill 11 >/dev/null
t0=$(date +%s.%N)
repair_out=$(dm repair) || { echo "repair exited 1:"; echo "$repair_out"; failed=1; }
printf 'repair after 2 kills       %5.1f s  %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" \
  "$(tail -2 <<< "$repair_out" | tr '\n' ' ')"
check_set "after repair, $((n - 2)) live"
[ "$failed" = 0 ] && echo "survey-check: every run agreed" || echo "survey-check: FAILED"
exit "$failed"
