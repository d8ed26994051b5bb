#!/usr/bin/env bash
# The mesh at 6, 20 and 50 storage peers (separate processes on this machine,
# 4+2): for each, a FUSE mount of a fresh volume writes SIZE and reads it back
# cold; then the time from `mount` to the first byte of that file, the mount's
# peak RSS and the largest node's, `status` latency, and the repair after
# losing 10 % of the peers (at least one), lost in waves of m = 2 with a
# repair after each (more at once loses chunks with 4+2), with its time and
# traffic. With 6 peers a fresh peer replaces the lost one (5 cannot hold 6
# shards apart).
# Usage: scripts/bench-scale.sh [SIZE, default 512M] ["PEER COUNTS", default "6 20 50"]
set -euo pipefail
source "$(dirname "$0")/common.sh"
size="${1:-512M}"
counts="${2:-6 20 50}"
ensure_built
declare -A R
for n in $counts; do
  work=$(mktemp -d /var/tmp/datamesh-benchscale.XXXXXX)
  export DATAMESH_CLUSTER="$work/cluster" DATAMESH_CLUSTER_PORT=$((21000 + n * 10))
  cleanup() {
    "$DATAMESH_BIN" --home "$work/cluster/home" umount "$work/mnt" >/dev/null 2>&1 || true
    mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -uz "$work/mnt"
    "$REPO/scripts/cluster.sh" stop >/dev/null 2>&1 || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  echo "bench-scale: $n peers" >&2
  "$REPO/scripts/cluster.sh" start "$n" >/dev/null
  home="$work/cluster/home"
  read -r -a boot < "$work/cluster/bootstrap"
  dm() { "$DATAMESH_BIN" --home "$home" "${boot[@]}" "$@"; }
  mkdir -p "$work/mnt"
  head -c "$size" /dev/urandom > "$work/big"
  bytes=$(stat -c %s "$work/big")
  dm mount "$work/mnt" >/dev/null
  t=$(now); cp "$work/big" "$work/mnt/big"; sync -f "$work/mnt/big"; R[$n,write]=$(echo "$bytes / 1048576 / $(secs "$t")" | bc -l)
  drop_caches
  t=$(now); cat "$work/mnt/big" > /dev/null; R[$n,read]=$(echo "$bytes / 1048576 / $(secs "$t")" | bc -l)
  R[$n,rss]=$(hwm "$(head -1 "$home/mount.pid")")
  t=$(now); dm status > /dev/null || true; R[$n,status]=$(secs "$t")
  dm umount "$work/mnt" >/dev/null
  drop_caches
  t=$(now); dm mount "$work/mnt" >/dev/null; head -c 1 "$work/mnt/big" > /dev/null; R[$n,ttfb]=$(secs "$t")
  # Lose 10 % (at least one), m at a time, repairing after each wave.
  lose=$(( n / 10 > 0 ? n / 10 : 1 ))
  killed=0 rt=0 fetched=0 placed=0
  while [ "$killed" -lt "$lose" ]; do
    wave=$(( lose - killed < 2 ? lose - killed : 2 ))
    for _ in $(seq "$wave"); do
      "$REPO/scripts/cluster.sh" kill $((n - 1 - killed)) >/dev/null
      killed=$((killed + 1))
    done
    if [ "$n" -le 6 ]; then
      "$REPO/scripts/cluster.sh" add "$n" >/dev/null
      # Repair only once the mount uses the newcomer.
      for _ in $(seq 60); do dm status 2>/dev/null | grep -q " $n reachable" && break; sleep 0.5; done
    fi
    t=$(now); out=$(dm repair 2>/dev/null); rt=$(echo "$rt + $(secs "$t")" | bc -l)
    read -r f p < <(repair_traffic_mib "$out")
    fetched=$(echo "$fetched + $f" | bc -l) placed=$(echo "$placed + $p" | bc -l)
  done
  R[$n,lost]=$lose R[$n,repair]=$rt R[$n,fetched]=$fetched R[$n,placed]=$placed
  R[$n,health]=$(dm status 2>/dev/null | grep -o 'survives the loss of any [0-9]*' | grep -o '[0-9]*$' || echo "?")
  node_rss=0
  for f in "$work"/cluster/node*.pid; do
    p=$(cat "$f"); r=$(hwm "$p"); r=${r:-0}   # a killed node has none
    [ "$r" -gt "$node_rss" ] && node_rss=$r
  done
  R[$n,nrss]=$node_rss
  cleanup
  trap - EXIT
done
printf '\n%-44s' "mesh of N storage peers (4+2, $size)"
for n in $counts; do printf '%12s' "$n"; done; echo
row() { # row LABEL KEY FORMAT
  printf '%-44s' "$1"
  for n in $counts; do printf "%12$3" "${R[$n,$2]}"; done; echo
}
row "write through the mount, MiB/s" write .0f
row "read through the mount (cold), MiB/s" read .0f
row "mount to first byte, s" ttfb .2f
row "status, s" status .2f
row "peak RSS of the mount, MiB" rss d
row "peak RSS of the largest node, MiB" nrss d
row "peers lost (in waves of 2)" lost d
row "repair time, all waves, s" repair .1f
row "repair: shards fetched, MiB" fetched .1f
row "repair: shards placed, MiB" placed .1f
row "then survives the loss of any" health s
