#!/usr/bin/env bash
# Engine benchmark, one run: the pipeline's parts and the whole write and read
# pipelines on one core and all cores (`datamesh bench`), then a 2 GiB `put` with
# its peak RSS against plain `cat` to a file on the same disk as the baseline.
# Usage: scripts/bench-engine.sh [SIZE, default 1G] [SCRATCH DIR, default /var/tmp]
set -euo pipefail
source "$(dirname "$0")/common.sh"
size="${1:-1G}"
scratch="${2:-/var/tmp}"
ensure_built

"$DATAMESH_BIN" bench --size "$size" --dir "$scratch"

work=$(mktemp -d "$scratch/datamesh-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/src"
head -c $((2 * 1024 * 1024 * 1024)) /dev/urandom > "$src"
sync

measure() { # label command... → "label seconds peak_rss_kib"
  local label=$1; shift
  local t0 t1 rss
  t0=$(date +%s.%N)
  rss=$( { /usr/bin/time -f %M "$@" >/dev/null; } 2>&1 | tail -1)
  t1=$(date +%s.%N)
  echo "$label $(echo "$t1 - $t0" | bc) $rss"
}
read -r _ base_s base_rss < <(measure cat sh -c "cat '$src' > '$work/copy' && sync")
read -r _ put_s put_rss < <(measure put "$DATAMESH_BIN" --home "$work/home" put "$src" /big)
read -r _ get_s get_rss < <(measure get "$DATAMESH_BIN" --home "$work/home" get /big "$work/back")
cmp "$src" "$work/back"

printf '\n%-30s %10s %10s %12s\n' "2 GiB file" "seconds" "MB/s" "peak RSS MiB"
row() { printf '%-30s %10.2f %10.0f %12d\n' "$1" "$2" "$(echo "2147.483648 / $2" | bc -l)" "$(( $3 / 1024 ))"; }
row "baseline: cat to file + sync" "$base_s" "$base_rss"
row "datamesh put" "$put_s" "$put_rss"
row "datamesh get" "$get_s" "$get_rss"
