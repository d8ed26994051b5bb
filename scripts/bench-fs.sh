#!/usr/bin/env bash
# Filesystem benchmark, one run: datamesh against bindfs (FUSE passthrough over the
# same disk, the floor any FUSE filesystem pays) and gocryptfs (encrypted FUSE),
# each mounted over a fresh directory in SCRATCH. Prints a table with the ratios
# and the peak RSS of each mount process. Needs root for drop_caches (reads are
# measured cold); without it reads may come from the page cache.
# Usage: scripts/bench-fs.sh [SEQ SIZE, default 1G] [SCRATCH DIR, default /var/tmp]
set -euo pipefail
source "$(dirname "$0")/common.sh"
size="${1:-1G}"
scratch="${2:-/var/tmp}"
for tool in fio bindfs gocryptfs perl git sqlite3 fusermount3; do
  command -v "$tool" >/dev/null || { echo "bench-fs: $tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
ensure_built

work=$(mktemp -d "$scratch/datamesh-benchfs.XXXXXX")
pids=()
cleanup() {
  for m in "$work"/*/mnt; do
    mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
  done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

# A real source tree: the RocksDB crate cargo fetched for the build.
tarball=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name 'librocksdb-sys-*.crate' | head -1)
[ -n "$tarball" ] || { echo "bench-fs: no librocksdb-sys crate in the cargo cache: build datamesh first" >&2; exit 1; }

# mount_fs NAME → mounts NAME at $work/NAME/mnt and sets $pid to the mount process.
mount_fs() {
  local name=$1 dir="$work/$1"
  mkdir -p "$dir/mnt" "$dir/back"
  case $name in
    bindfs)
      bindfs "$dir/back" "$dir/mnt"
      pid=$(pgrep -n -f "bindfs $dir/back")
      ;;
    gocryptfs)
      gocryptfs -q -init -extpass "echo bench-password" -scryptn 10 "$dir/back" >/dev/null
      gocryptfs -q -extpass "echo bench-password" "$dir/back" "$dir/mnt"
      pid=$(pgrep -n -f "gocryptfs.*$dir/back")
      ;;
    datamesh)
      "$DATAMESH_BIN" --home "$dir/back" mount "$dir/mnt" >/dev/null
      pid=$(head -1 "$dir/back/mount.pid")
      ;;
  esac
}

umount_fs() {
  local name=$1 dir="$work/$1"
  if [ "$name" = datamesh ]; then
    "$DATAMESH_BIN" --home "$dir/back" umount "$dir/mnt" >/dev/null
  else
    fusermount3 -u "$dir/mnt"
  fi
}

fio_run() { # fio_run DIR ARGS... → terse output line
  fio --minimal --directory="$1" --ioengine=psync --group_reporting "${@:2}"
}

# The sqlite transactions: one row each, autocommitted.
for i in $(seq 500); do echo "INSERT INTO t VALUES (randomblob(200));"; done > "$work/txns.sql"

declare -A R
bench() {
  local name=$1 m="$work/$1/mnt" t
  mount_fs "$name"
  echo "bench-fs: $name" >&2

  # Sequential: write 1 GiB with a final fsync, then read it cold.
  R[$name,seqw]=$(fio_run "$m" --name=seq --rw=write --bs=1M --size="$size" --end_fsync=1 |
    awk -F';' '{ printf "%.0f", $48 / 1024 }')
  drop_caches
  R[$name,seqr]=$(fio_run "$m" --name=seq --rw=read --bs=1M --size="$size" |
    awk -F';' '{ printf "%.0f", $7 / 1024 }')
  rm -f "$m"/seq.*

  # 4 KiB random 70/30 read/write over a 256 MiB file for 15 s.
  R[$name,rand]=$(fio_run "$m" --name=rand --rw=randrw --rwmixread=70 --bs=4k --size=256M \
    --time_based --runtime=15 | awk -F';' '{ printf "%.0f", $8 + $49 }')
  rm -f "$m"/rand.*

  # 4 KiB random reads of a cold 256 MiB file, and 4 KiB random writes with
  # a final fsync, 10 s each.
  fio_run "$m" --name=cold --rw=write --bs=1M --size=256M --end_fsync=1 >/dev/null
  drop_caches
  R[$name,rread]=$(fio_run "$m" --name=cold --rw=randread --bs=4k --size=256M \
    --time_based --runtime=10 | awk -F';' '{ printf "%.0f", $8 }')
  R[$name,rwrite]=$(fio_run "$m" --name=cold --rw=randwrite --bs=4k --size=256M \
    --time_based --runtime=10 --end_fsync=1 | awk -F';' '{ printf "%.0f", $49 }')
  rm -f "$m"/cold.*

  # sqlite: 500 one-row transactions, each ending in fsyncs, with a rollback
  # journal (DELETE) and with a write-ahead log (WAL).
  for j in delete wal; do
    sqlite3 "$m/db.$j" "PRAGMA journal_mode=$j; CREATE TABLE t(x);" >/dev/null
    t=$(now); sqlite3 "$m/db.$j" < "$work/txns.sql"; R[$name,sql$j]=$(secs "$t")
    rm -f "$m/db.$j"*
  done

  # fcntl lock+unlock pairs on one byte for 3 s: one process alone, then
  # two taking turns (each lock waits for the other's unlock).
  read -r "R[$name,lock1]" "R[$name,lock2]" < <(python3 "$REPO/scripts/lock-rate.py" "$m/lockrate" 3)
  rm -f "$m/lockrate"

  # fsync after every 4 MiB written while another program fills the same
  # disk (3 GiB): a barrier should wait for this file's data, not the
  # neighbour's.
  sync
  dd if=/dev/zero of="$work/neighbour" bs=1M count=3072 status=none &
  local dd=$!
  sleep 1
  R[$name,busy]=$(fio_run "$m" --name=busy --rw=write --bs=1M --size=64M --fsync=4 |
    awk -F';' '{ printf "%.0f", $48 / 1024 }')
  kill "$dd" 2>/dev/null || true
  wait "$dd" 2>/dev/null || true
  rm -f "$work/neighbour" "$m"/busy.*
  sync

  # 4 KiB file creates (fs_mark style, one directory, no fsync per file), then syncfs.
  mkdir "$m/creates"
  t=$(now)
  perl -e 'my $b = "x" x 4096; for my $i (1..$ARGV[1]) {
      open(my $f, ">", "$ARGV[0]/f$i") or die "f$i: $!"; print $f $b; close($f) or die "f$i: $!" }' \
    "$m/creates" 5000
  sync -f "$m/creates"
  R[$name,creates]=$(echo "5000 / $(secs "$t")" | bc -l | xargs printf '%.0f')
  rm -rf "$m/creates"

  # ls -l and stat over 10 000 entries, cold.
  mkdir "$m/many"
  perl -e 'for my $i (1..10000) { open(my $f, ">", "$ARGV[0]/entry$i") or die "$!"; close($f) }' "$m/many"
  drop_caches
  t=$(now); ls -l "$m/many" >/dev/null; R[$name,ls]=$(secs "$t")
  drop_caches
  t=$(now); (cd "$m/many" && stat -- * >/dev/null); R[$name,stat]=$(secs "$t")
  rm -rf "$m/many"

  # Extract a real source tarball, then remove it.
  mkdir "$m/src"
  t=$(now); tar xzf "$tarball" -C "$m/src"; sync -f "$m/src"; R[$name,extract]=$(secs "$t")
  t=$(now); rm -rf "$m/src"; R[$name,rm]=$(secs "$t")

  # git clone of a local repository (this one), no hardlinks.
  t=$(now); git clone -q --no-hardlinks "$REPO" "$m/clone"; R[$name,clone]=$(secs "$t")
  rm -rf "$m/clone"

  R[$name,rss]=$(hwm "$pid")
  umount_fs "$name"
}

for fs in bindfs gocryptfs datamesh; do bench $fs; done

ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
printf '\n%-32s %10s %10s %10s %9s %9s   %s\n' workload datamesh bindfs gocryptfs "dm/bind" "dm/gocr" goal
row() { # row LABEL KEY FORMAT GOAL
  local d=${R[datamesh,$2]} b=${R[bindfs,$2]} g=${R[gocryptfs,$2]}
  printf "%-32s $3 $3 $3 %9s %9s   %s\n" "$1" "$d" "$b" "$g" "$(ratio "$d" "$b")" "$(ratio "$d" "$g")" "$4"
}
row "seq write $size, MiB/s" seqw '%10.0f' "≥ 1.0× gocryptfs"
row "seq read $size (cold), MiB/s" seqr '%10.0f' "≥ 0.8× bindfs"
row "4K randrw 70/30, IOPS" rand '%10.0f' ""
row "4K random read (cold), IOPS" rread '%10.0f' "≥ 1.0× gocryptfs"
row "4K random write, IOPS" rwrite '%10.0f' "≥ 1.0× gocryptfs"
row "write+fsync/4M, busy disk, MiB/s" busy '%10.0f' "≥ 1.0× gocryptfs"
row "sqlite 500 txns, DELETE, s" sqldelete '%10.2f' "≤ 2× gocryptfs"
row "sqlite 500 txns, WAL, s" sqlwal '%10.2f' "≤ 2× gocryptfs"
row "lock+unlock, one process, /s" lock1 '%10.0f' "(theirs kernel-local)"
row "lock+unlock, two in turn, /s" lock2 '%10.0f' "(theirs kernel-local)"
row "4K creates, files/s" creates '%10.0f' "≥ 0.5× bindfs"
row "ls -l 10k entries, s" ls '%10.2f' "≤ 1.0× gocryptfs"
row "stat 10k entries, s" stat '%10.2f' "≤ 1.0× gocryptfs"
row "extract $(basename "$tarball"), s" extract '%10.2f' "≤ 2× bindfs"
row "rm -rf the tree, s" rm '%10.2f' "≤ 2× bindfs"
row "git clone (local), s" clone '%10.2f' ""
row "peak RSS of the mount, MiB" rss '%10.0f' "datamesh < 400"
