#!/usr/bin/env bash
# Member-device benchmark, one run: the same operations on the home node
# (its mount, and its CLI over volume.sock) and on a member device (its mount
# and its CLI over /datamesh/meta/1, file bytes to the storage peers itself),
# with the same 6 storage peers on this machine (scripts/cluster.sh). Runs are
# interleaved home, member, home, member and the better of each pair is kept.
# Prints a table with member/home ratios. Needs FUSE, python3, and root for
# drop_caches (reads through the home's mount are measured cold).
# Usage: scripts/bench-members.sh [SEQ SIZE, default 1G] [SCRATCH DIR, default /var/tmp]
set -euo pipefail
source "$(dirname "$0")/common.sh"
size="${1:-1G}"
scratch="${2:-/var/tmp}"
for tool in bc numfmt; do
  command -v "$tool" >/dev/null || { echo "bench-members: $tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
ensure_built

work=$(mktemp -d "$scratch/datamesh-benchmembers.XXXXXX")
export DATAMESH_CLUSTER="$work/cluster" DATAMESH_CLUSTER_PORT="${DATAMESH_CLUSTER_PORT:-4940}"
cleanup() {
  "$DATAMESH_BIN" --home "$work/member" umount "$work/mmnt" >/dev/null 2>&1 || true
  "$DATAMESH_BIN" --home "$DATAMESH_CLUSTER/home" umount "$work/hmnt" >/dev/null 2>&1 || true
  for m in "$work/hmnt" "$work/mmnt"; do
    mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
  done
  sleep 0.5
  "$REPO/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

"$REPO/scripts/cluster.sh" start 6 >/dev/null
home="$DATAMESH_CLUSTER/home"
port=$((DATAMESH_CLUSTER_PORT + 50))
listen="/ip4/127.0.0.1/tcp/$port"
mkdir -p "$work/hmnt" "$work/mmnt"
# The home's daemon is its mount, listening for members.
# shellcheck disable=SC2046
"$DATAMESH_BIN" --home "$home" $(cat "$DATAMESH_CLUSTER/bootstrap") mount --listen "$listen" "$work/hmnt" >/dev/null
sleep 1
member="$work/member"
"$DATAMESH_BIN" --home "$member" join "$("$DATAMESH_BIN" --home "$home" invite --member --address "$listen" | tail -1)" --name bench >/dev/null
"$DATAMESH_BIN" --home "$member" mount "$work/mmnt" >/dev/null
declare -A MNT=([H]="$work/hmnt" [M]="$work/mmnt")

H() { "$DATAMESH_BIN" --home "$home" "$@"; }
M() { "$DATAMESH_BIN" --home "$member" "$@"; }
best() { # best LOWER_IS_BETTER A B
  if [ "$1" = low ]; then echo "if ($2 < $3) $2 else $3" | bc -l; else echo "if ($2 > $3) $2 else $3" | bc -l; fi
}

declare -A R
# Namespace calls timed inside one process (what a command pays per call).
meta_round() { # meta_round WHO DIR
  local out
  out=$($1 bench-meta --stats 2000 --creates 300 "$2")
  R[$1,stat50]=$(best low "${R[$1,stat50]:-1000000000}" "$(echo "$out" | awk '/stat_median_us/ {print $2}')")
  R[$1,stat99]=$(best low "${R[$1,stat99]:-1000000000}" "$(echo "$out" | awk '/stat_p99_us/ {print $2}')")
  R[$1,creates]=$(best high "${R[$1,creates]:-0}" "$(echo "$out" | awk '/creates_per_s/ {print $2}')")
}
H mkdir -p /bench
for round in 1 2; do
  meta_round H "/bench/h$round"
  meta_round M "/bench/m$round"
done

# ls -l of 10 000 entries (made once, through the home's daemon).
H bench-meta --stats 0 --creates 10000 /many >/dev/null
for round in 1 2; do
  for who in H M; do
    t=$(now); $who ls -l /many | wc -l >/dev/null; s=$(secs "$t")
    R[$who,ls]=$(best low "${R[$who,ls]:-1000000000}" "$s")
  done
done

# Sequential put and get of one file of random bytes.
bytes=$(numfmt --from=iec "$size")
head -c "$bytes" /dev/urandom > "$work/src"
mib=$(echo "$bytes / 1048576" | bc -l)
for round in 1 2; do
  for who in H M; do
    t=$(now); $who put "$work/src" "/seq-$who"; s=$(secs "$t")
    R[$who,put]=$(best high "${R[$who,put]:-0}" "$(echo "$mib / $s" | bc -l)")
    t=$(now); $who get "/seq-$who" "$work/back"; s=$(secs "$t")
    R[$who,get]=$(best high "${R[$who,get]:-0}" "$(echo "$mib / $s" | bc -l)")
    cmp -s "$work/src" "$work/back" || { echo "bench-members: $who read back different bytes" >&2; exit 1; }
    rm -f "$work/back"
  done
done

# Through the mounts: stat latency (one file, 3000 stats), creates of 4 KiB
# files, ls -l of the 10 000 entries, and a sequential write and cold read.
for round in 1 2; do
  for who in H M; do
    m=${MNT[$who]}
    out=$(python3 - "$m" "$who$round" <<'PY'
import os, sys, time
m, tag = sys.argv[1], sys.argv[2]
d = os.path.join(m, "mc-" + tag)
os.mkdir(d)
body = b"z" * 4096
t = time.perf_counter()
for i in range(500):
    with open(os.path.join(d, "f%d" % i), "wb") as f:
        f.write(body)
creates = 500 / (time.perf_counter() - t)
p = os.path.join(d, "f0")
lat = []
for _ in range(3000):
    t = time.perf_counter()
    os.stat(p)
    lat.append((time.perf_counter() - t) * 1e6)
lat.sort()
print(f"{lat[len(lat)//2]:.1f} {lat[int(len(lat)*0.99)]:.1f} {creates:.1f}")
PY
)
    read -r s50 s99 cr <<<"$out"
    R[$who,mstat50]=$(best low "${R[$who,mstat50]:-1000000000}" "$s50")
    R[$who,mstat99]=$(best low "${R[$who,mstat99]:-1000000000}" "$s99")
    R[$who,mcreates]=$(best high "${R[$who,mcreates]:-0}" "$cr")
    t=$(now); ls -l "$m/many" | wc -l >/dev/null; s=$(secs "$t")
    R[$who,mls]=$(best low "${R[$who,mls]:-1000000000}" "$s")
    t=$(now); dd if="$work/src" of="$m/mseq-$who" bs=1M conv=fsync status=none; s=$(secs "$t")
    R[$who,mput]=$(best high "${R[$who,mput]:-0}" "$(echo "$mib / $s" | bc -l)")
    drop_caches
    t=$(now); cat "$m/mseq-$who" > /dev/null; s=$(secs "$t")
    R[$who,mget]=$(best high "${R[$who,mget]:-0}" "$(echo "$mib / $s" | bc -l)")
    rm -f "$m/mseq-$who"
    # Lock+unlock pairs per second: one process alone, two taking turns.
    read -r l1 l2 < <(python3 "$REPO/scripts/lock-rate.py" "$m/lockrate-$who" 3)
    R[$who,lock1]=$(best high "${R[$who,lock1]:-0}" "$l1")
    R[$who,lock2]=$(best high "${R[$who,lock2]:-0}" "$l2")
    rm -f "$m/lockrate-$who"
  done
done

row() { # row LABEL KEY UNIT
  printf '%-34s %12.2f %12.2f %8.2f\n' "$1" "${R[H,$2]}" "${R[M,$2]}" "$(echo "${R[M,$2]} / ${R[H,$2]}" | bc -l)"
}
printf '%-34s %12s %12s %8s\n' "metric (6 peers on this machine)" "home" "member" "m/h"
echo "-- through the mount"
row "stat median (us)" mstat50
row "stat p99 (us)" mstat99
row "creates of 4 KiB files (/s)" mcreates
row "ls -l of 10000 entries (s)" mls
row "seq write $size, fsync (MiB/s)" mput
row "seq read $size, cold (MiB/s)" mget
row "lock+unlock, one process (/s)" lock1
row "lock+unlock, two in turn (/s)" lock2
echo "-- through the CLI (one process, calls timed inside it)"
row "stat median (us)" stat50
row "stat p99 (us)" stat99
row "creates of 4 KiB files (/s)" creates
row "ls -l of 10000 entries (s)" ls
row "put $size (MiB/s)" put
row "get $size (MiB/s)" get
