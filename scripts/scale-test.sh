#!/usr/bin/env bash
# The mesh past 64 storage peers, on one machine: PEERS storage peers
# (default 70) as separate processes, SIZE (default 2G) of mixed files
# written through a FUSE mount (a few large files, a few hundred of 1-8 MiB,
# a few thousand of 1-64 KiB).
#
# 4+2: 10 % of the peers are lost in waves of m = 2 with a repair after each,
# then 2 more at once with no repair; every file must read back identical
# through a fresh mount and status must count nothing unreadable; after a
# last repair fsck must be clean. 10+4: a fresh volume over as many fresh
# peers, the same files, 4 peers killed at once; the same checks.
# Prints peak RSS of the home (the mount) and of the nodes, repair time and
# bytes moved. Exits non-zero at the first check that fails.
# Usage: scripts/scale-test.sh [PEERS] [SIZE]
set -euo pipefail
source "$(dirname "$0")/common.sh"
n="${1:-70}"
size="${2:-2G}"
ensure_built
say() { echo "scale-test: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
work=$(mktemp -d /var/tmp/datamesh-scale.XXXXXX)
export DATAMESH_CLUSTER="$work/cluster" DATAMESH_CLUSTER_PORT=$((23000))
stop_all() {
  if [ -d "$work/cluster/home" ]; then
    "$DATAMESH_BIN" --home "$work/cluster/home" umount "$work/mnt" >/dev/null 2>&1 || true
  fi
  mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -uz "$work/mnt"
  "$REPO/scripts/cluster.sh" stop >/dev/null 2>&1 || true
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT

# The files: a quarter in large files, half in 1-8 MiB files, a quarter in
# 1-64 KiB files (deterministic sizes, random contents).
bytes=$(numfmt --from=iec "$size")
src="$work/src"
mkdir -p "$src/large" "$src/medium" "$src/small/a" "$src/small/b"
say "making $size of files in $src"
left=$((bytes / 4)); i=0
while [ "$left" -gt 0 ]; do
  s=$((left < 160 << 20 ? left : 160 << 20))
  head -c "$s" /dev/urandom > "$src/large/f$i.bin"; left=$((left - s)); i=$((i + 1))
done
left=$((bytes / 2)); i=0
while [ "$left" -gt 0 ]; do
  s=$(( ((i * 2654435761) % 7 + 1) << 20 )); s=$((s > left ? left : s))
  head -c "$s" /dev/urandom > "$src/medium/f$i.bin"; left=$((left - s)); i=$((i + 1))
done
left=$((bytes / 4)); i=0
head -c $((left + (64 << 10))) /dev/urandom > "$work/pool"
off=0
while [ "$left" -gt 0 ]; do
  s=$(( ((i * 40503) % 64 + 1) << 10 )); s=$((s > left ? left : s))
  d=a; [ $((i % 2)) -eq 0 ] || d=b
  dd if="$work/pool" of="$src/small/$d/$i.bin" bs=1K skip=$((off >> 10)) count=$((s >> 10)) \
    status=none || fail "dd"
  off=$((off + s)); left=$((left - s)); i=$((i + 1))
done
rm -f "$work/pool"
files=$(find "$src" -type f | wc -l)
mkdir -p "$work/mnt"
declare -A R

# run K M: one volume of K+M over n fresh peers; KILL_WAVES ("2 2 2 1") are
# lost with a repair after each, then FINAL more at once.
run() {
  local k=$1 m=$2 waves=$3 final=$4 tag="$1+$2"
  rm -rf "$work/cluster"
  mkdir -p "$work/cluster"
  "$DATAMESH_BIN" --home "$work/cluster/home" init --data-shards "$k" --parity-shards "$m" >/dev/null
  say "$tag: starting $n peers"
  local t; t=$(now)
  "$REPO/scripts/cluster.sh" start "$n" >/dev/null
  R[$tag,start]=$(secs "$t")
  local home="$work/cluster/home" boot
  read -r -a boot < "$work/cluster/bootstrap"
  dm() { "$DATAMESH_BIN" --home "$home" "$@"; }
  dm "${boot[@]}" mount "$work/mnt" >/dev/null
  say "$tag: writing $files files"
  t=$(now)
  cp -r "$src/." "$work/mnt/"
  sync -f "$work/mnt"
  R[$tag,write]=$(echo "$bytes / 1048576 / $(secs "$t")" | bc -l)
  local json; json=$(dm status --json 2>/dev/null || true)
  local used; used=$(grep -o '"shards": [1-9][0-9]*' <<< "$json" | wc -l)
  R[$tag,used]=$used
  [ "$used" -gt 63 ] || [ "$n" -le 63 ] || fail "$tag: only $used of $n peers hold shards"
  local killed=0 rt=0 fetched=0 placed=0 victim=$((n - 1))
  for w in $waves; do
    for _ in $(seq "$w"); do
      "$REPO/scripts/cluster.sh" kill "$victim" >/dev/null; victim=$((victim - 3)); killed=$((killed + 1))
    done
    say "$tag: $killed peers lost; repairing"
    t=$(now)
    local out; out=$(dm repair 2>&1) || fail "$tag: repair after $killed lost: $out"
    rt=$(echo "$rt + $(secs "$t")" | bc -l)
    read -r f p < <(repair_traffic_mib "$out")
    fetched=$(echo "$fetched + $f" | bc -l) placed=$(echo "$placed + $p" | bc -l)
  done
  R[$tag,waves]=$killed R[$tag,repair]=$rt R[$tag,fetched]=$fetched R[$tag,placed]=$placed
  for _ in $(seq "$final"); do
    "$REPO/scripts/cluster.sh" kill "$victim" >/dev/null; victim=$((victim - 3)); killed=$((killed + 1))
  done
  R[$tag,final]=$final
  R[$tag,home]=$(hwm "$(head -1 "$home/mount.pid")")
  dm umount "$work/mnt" >/dev/null
  drop_caches
  say "$tag: $killed peers lost in all; reading every file back through a fresh mount"
  dm mount "$work/mnt" >/dev/null
  t=$(now)
  diff -r --no-dereference "$src" "$work/mnt" > "$work/diff" 2>&1 || fail "$tag: files differ: $(head -5 "$work/diff")"
  R[$tag,read]=$(echo "$bytes / 1048576 / $(secs "$t")" | bc -l)
  json=$(dm status --json 2>/dev/null || true)
  local lost; lost=$(grep -o '"lost": [0-9]*' <<< "$json" | grep -o '[0-9]*$' || echo "?")
  [ "$lost" = 0 ] || fail "$tag: $lost chunks unreadable after the losses"
  R[$tag,lost]=$lost
  dm umount "$work/mnt" >/dev/null
  # fsck counts the shards the last losses took until a repair puts them back.
  t=$(now)
  dm repair > "$work/repair" 2>&1 || fail "$tag: last repair: $(tail -5 "$work/repair")"
  R[$tag,lastrepair]=$(secs "$t")
  dm fsck > "$work/fsck" 2>&1 || fail "$tag: fsck: $(tail -5 "$work/fsck")"
  local node=0 sum=0 cnt=0
  for f in "$work"/cluster/node*.pid; do
    local r; r=$(hwm "$(cat "$f")"); r=${r:-0}
    [ "$r" -gt 0 ] || continue
    [ "$r" -gt "$node" ] && node=$r
    sum=$((sum + r)); cnt=$((cnt + 1))
  done
  R[$tag,nmax]=$node R[$tag,nmean]=$((cnt > 0 ? sum / cnt : 0))
  stop_all
  say "$tag: every file identical, fsck clean"
}

# 4+2: 10 % in waves of 2 with repair between, then 2 more at once.
lose=$(( n / 10 > 0 ? n / 10 : 1 ))
waves=""; left=$lose
while [ "$left" -gt 0 ]; do w=$((left < 2 ? left : 2)); waves="$waves $w"; left=$((left - w)); done
run 4 2 "$waves" 2
run 10 4 "" 4

printf '\n%-46s%14s%14s\n' "$n storage peers, $size in $files files" "4+2" "10+4"
row() { printf '%-46s' "$1"; for t in 4+2 10+4; do printf "%14$3" "${R[$t,$2]}"; done; echo; }
row "peers started, s" start .1f
row "peers holding shards" used d
row "write through the mount, MiB/s" write .0f
row "peers lost in waves with repair" waves d
row "repair time, all waves, s" repair .1f
row "repair: shards fetched, MiB" fetched .1f
row "repair: shards placed, MiB" placed .1f
row "then lost at once" final d
row "read back after the losses (cold), MiB/s" read .0f
row "chunks unreadable" lost d
row "repair after the last losses, s" lastrepair .1f
row "peak RSS of the home (mount), MiB" home d
row "peak RSS of a node, largest, MiB" nmax d
row "peak RSS of a node, mean, MiB" nmean d
