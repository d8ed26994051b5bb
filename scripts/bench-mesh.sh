#!/usr/bin/env bash
# Mesh benchmark, one run: the same volume workload through a mount on the
# embedded local store, then through a mount whose shards go to 6 storage peers
# (scripts/cluster.sh, on this machine), then the mesh with 2 peers killed.
# Prints throughput and the mount process's CPU seconds per GiB (what counts when
# the peers are other machines: here they share this machine's cores).
# Needs root for drop_caches (reads are measured cold).
# Usage: scripts/bench-mesh.sh [SEQ SIZE, default 1G] [SCRATCH DIR, default /var/tmp]
set -euo pipefail
source "$(dirname "$0")/common.sh"
size="${1:-1G}"
scratch="${2:-/var/tmp}"
for tool in fio perl fusermount3 bc; do
  command -v "$tool" >/dev/null || { echo "bench-mesh: $tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
ensure_built

work=$(mktemp -d "$scratch/datamesh-benchmesh.XXXXXX")
export DATAMESH_CLUSTER="$work/cluster" DATAMESH_CLUSTER_PORT="${DATAMESH_CLUSTER_PORT:-4900}"
cleanup() {
  for m in "$work"/*/mnt; do
    mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
  done
  "$REPO/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
gib=$(echo "$(numfmt --from=iec "$size") / 1073741824" | bc -l)

fio_run() { # fio_run DIR ARGS... → terse output line
  fio --minimal --directory="$1" --ioengine=psync --group_reporting "${@:2}"
}

# mount_dm NAME [FLAGS…]: mounts home $work/NAME/home at $work/NAME/mnt; sets $pid.
mount_dm() {
  local name=$1; shift
  mkdir -p "$work/$name/mnt"
  "$DATAMESH_BIN" --home "$work/$name/home" "$@" mount "$work/$name/mnt" >/dev/null
  pid=$(head -1 "$work/$name/home/mount.pid")
}
umount_dm() { "$DATAMESH_BIN" --home "$work/$1/home" umount "$work/$1/mnt" >/dev/null; }

declare -A R
# seq_read NAME KEY: cold sequential read of the file `seq` wrote, with CPU.
seq_read() {
  local m="$work/$1/mnt" c
  drop_caches
  c=$(ticks "$pid")
  R[$2]=$(fio_run "$m" --name=seq --rw=read --bs=1M --size="$size" | awk -F';' '{ printf "%.0f", $7 / 1024 }')
  R[$2,cpu]=$(echo "($(ticks "$pid") - $c) / $hz / $gib" | bc -l)
}

bench() {
  local name=$1 m="$work/$1/mnt" c t
  echo "bench-mesh: $name" >&2
  c=$(ticks "$pid")
  R[$name,seqw]=$(fio_run "$m" --name=seq --rw=write --bs=1M --size="$size" --end_fsync=1 |
    awk -F';' '{ printf "%.0f", $48 / 1024 }')
  R[$name,seqw,cpu]=$(echo "($(ticks "$pid") - $c) / $hz / $gib" | bc -l)
  seq_read "$name" "$name,seqr"
  # 4 KiB random reads of that file, cold, for 10 s: a read needs one segment
  # of one shard (a range asked of one peer).
  drop_caches
  R[$name,rread]=$(fio_run "$m" --name=seq --rw=randread --bs=4k --size="$size" \
    --time_based --runtime=10 | awk -F';' '{ printf "%.0f", $8 }')
  # 1 000 files of 64 KiB (above the inline limit, so each is sharded), each
  # closed before the next is written, then a syncfs.
  mkdir "$m/small"
  t=$(now)
  perl -e 'open(my $r, "<", "/dev/urandom") or die; for my $i (1..1000) {
      read($r, my $b, 65536) == 65536 or die;
      open(my $f, ">", "$ARGV[0]/f$i") or die "f$i: $!"; print $f $b; close($f) or die "f$i: $!" }' "$m/small"
  sync -f "$m/small"
  R[$name,small]=$(echo "1000 / $(secs "$t")" | bc -l)
  # 1 000 files of 4 KiB: inline in the metadata, so no peer is involved.
  mkdir "$m/tiny"
  t=$(now)
  perl -e 'my $b = "x" x 4096; for my $i (1..1000) {
      open(my $f, ">", "$ARGV[0]/f$i") or die "f$i: $!"; print $f "$i$b"; close($f) or die "f$i: $!" }' "$m/tiny"
  sync -f "$m/tiny"
  R[$name,tiny]=$(echo "1000 / $(secs "$t")" | bc -l)
  R[$name,rss]=$(awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$pid/status")
}

# Embedded: shards in the home's own store.
mount_dm embedded
bench embedded
umount_dm embedded

# Six storage peers on this machine.
"$REPO/scripts/cluster.sh" start 6 >/dev/null
# shellcheck disable=SC2046
mount_dm cluster $(cat "$DATAMESH_CLUSTER/bootstrap")
bench cluster
umount_dm cluster

# Two peers killed: a fresh mount (no caches) reads what the six stored.
"$REPO/scripts/cluster.sh" kill 1 >/dev/null
"$REPO/scripts/cluster.sh" kill 4 >/dev/null
mount_dm cluster
seq_read cluster degraded
umount_dm cluster

ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
f0() { printf '%.0f' "$1"; }
f2() { printf '%.2f' "$1"; }
printf '\n%-34s %10s %10s %8s   %s\n' workload embedded "6 peers" ratio goal
printf '%-34s %10s %10s %8s   %s\n' "seq write $size, MiB/s" "$(f0 "${R[embedded,seqw]}")" "$(f0 "${R[cluster,seqw]}")" \
  "$(ratio "${R[cluster,seqw]}" "${R[embedded,seqw]}")" "≥ 0.5×"
printf '%-34s %10s %10s %8s   %s\n' "seq read $size (cold), MiB/s" "$(f0 "${R[embedded,seqr]}")" "$(f0 "${R[cluster,seqr]}")" \
  "$(ratio "${R[cluster,seqr]}" "${R[embedded,seqr]}")" "≥ 0.6×"
printf '%-34s %10s %10s %8s   %s\n' "4K random read (cold), IOPS" "$(f0 "${R[embedded,rread]}")" "$(f0 "${R[cluster,rread]}")" \
  "$(ratio "${R[cluster,rread]}" "${R[embedded,rread]}")" ""
printf '%-34s %10s %10s %8s   %s\n' "seq read, 2 of 6 peers killed" "" "$(f0 "${R[degraded]}")" \
  "$(ratio "${R[degraded]}" "${R[cluster,seqr]}")" "≥ 0.5× healthy read"
printf '%-34s %10s %10s %8s   %s\n' "1 000 × 64 KiB files, files/s" "$(f0 "${R[embedded,small]}")" "$(f0 "${R[cluster,small]}")" \
  "$(ratio "${R[cluster,small]}" "${R[embedded,small]}")" "≥ 0.6×"
printf '%-34s %10s %10s %8s   %s\n' "1 000 × 4 KiB files (inline), /s" "$(f0 "${R[embedded,tiny]}")" "$(f0 "${R[cluster,tiny]}")" \
  "$(ratio "${R[cluster,tiny]}" "${R[embedded,tiny]}")" ""
printf '%-34s %10s %10s %8s   %s\n' "mount CPU s per GiB written" "$(f2 "${R[embedded,seqw,cpu]}")" "$(f2 "${R[cluster,seqw,cpu]}")" \
  "$(ratio "${R[cluster,seqw,cpu]}" "${R[embedded,seqw,cpu]}")" "≤ 1.5×"
printf '%-34s %10s %10s %8s   %s\n' "mount CPU s per GiB read" "$(f2 "${R[embedded,seqr,cpu]}")" "$(f2 "${R[cluster,seqr,cpu]}")" \
  "$(ratio "${R[cluster,seqr,cpu]}" "${R[embedded,seqr,cpu]}")" "≤ 1.5×"
printf '%-34s %10s %10s\n' "  … with 2 peers killed" "" "$(f2 "${R[degraded,cpu]}")"
printf '%-34s %10s %10s\n' "peak RSS of the mount, MiB" "${R[embedded,rss]}" "${R[cluster,rss]}"
