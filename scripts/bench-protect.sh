#!/usr/bin/env bash
# Namespace protection benchmark: for volumes of N files (each on a fresh
# 6-peer cluster on this machine, scripts/cluster.sh), measures
#   - a full checkpoint: time and bytes shipped (the first round of a mount
#     whose protection state was cleared),
#   - the increment shipped after 1 000 more creates,
#   - the create rate through the mount with protection off (protect_secs = 0)
#     and at its most eager (protect_secs = 1), interleaved off/on/off/on,
#     best of each, and their ratio (goal >= 0.9),
#   - `recover --kit` of the whole volume into a new home,
#   - `snapshot create` (when the binary has it).
# Prints one table. Needs FUSE and python3.
# Usage: scripts/bench-protect.sh ["N1 N2 …", default "10000 100000"] [SCRATCH, default /var/tmp]
set -euo pipefail
source "$(dirname "$0")/common.sh"
counts="${1:-10000 100000}"
scratch="${2:-/var/tmp}"
command -v bc >/dev/null || { echo "bench-protect: bc is missing: run scripts/setup.sh" >&2; exit 1; }
ensure_built

work=$(mktemp -d "$scratch/datamesh-benchprotect.XXXXXX")
export DATAMESH_CLUSTER="$work/cluster" DATAMESH_CLUSTER_PORT="${DATAMESH_CLUSTER_PORT:-4990}"
export RUST_LOG="${RUST_LOG:-warn,datamesh::protect=info}"
mnt="$work/mnt"
mkdir -p "$mnt"
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && { fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt"; }
  sleep 0.3
  "$REPO/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# creates DIR N: N empty files in directories of 1 000, timed; prints files/s.
creates() {
  python3 - "$1" "$2" <<'EOF'
import os, sys, time
top, n = sys.argv[1], int(sys.argv[2])
t = time.monotonic()
for i in range(n):
    d = os.path.join(top, "d%d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "f%d" % i), "w").close()
print("%.0f" % (n / (time.monotonic() - t)))
EOF
}

set_protect_secs() { # set_protect_secs HOME SECS
  sed -i '/^protect_secs/d' "$1/config.toml"
  echo "protect_secs = $2" >> "$1/config.toml"
}

mount_it() { "$DATAMESH_BIN" --home "$1" mount "$mnt" >/dev/null; }
umount_it() { "$DATAMESH_BIN" --home "$1" umount "$mnt" >/dev/null; }

# The last "namespace protected" line of the mount's log.
last_round() { grep 'namespace protected' "$1/mount.log" | tail -1; }

# Waits for a round after the log had LINES lines of them; prints its line.
wait_round() { # wait_round HOME LINES
  for _ in $(seq 1200); do
    local n; n=$(grep -c 'namespace protected' "$1/mount.log" || true)
    if [ "$n" -gt "$2" ]; then last_round "$1"; return; fi
    sleep 0.1
  done
  echo "bench-protect: no protection round in 120 s" >&2; exit 1
}
rounds() { grep -c 'namespace protected' "$1/mount.log" 2>/dev/null || true; }
field() { # field LINE WORD-BEFORE: the number before WORD in a round's line
  echo "$1" | grep -o "[0-9]* $2" | head -1 | cut -d' ' -f1
}

printf '%-9s %11s %11s %11s %13s %10s %10s %6s %10s %10s\n' \
  files "ckpt ms" "db bytes" shipped "incr/1k new" "off /s" "on /s" ratio "recover s" "snap ms"
for n in $counts; do
  "$REPO/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  rm -rf "$DATAMESH_CLUSTER"
  "$REPO/scripts/cluster.sh" start 6 >/dev/null
  home="$DATAMESH_CLUSTER/home"
  # shellcheck disable=SC2046
  "$DATAMESH_BIN" --home "$home" $(cat "$DATAMESH_CLUSTER/bootstrap") status >/dev/null
  set_protect_secs "$home" 0
  mount_it "$home"
  creates "$mnt/base" "$n" >/dev/null
  umount_it "$home"

  # A full checkpoint: no state, so nothing is taken as shipped already.
  set_protect_secs "$home" 3600
  rm -f "$home/protect"
  : > "$home/mount.log"
  mount_it "$home"
  full=$(wait_round "$home" 0)
  # The increment after 1 000 creates (an fsync wakes the round).
  before=$(rounds "$home")
  creates "$mnt/incr" 1000 >/dev/null
  python3 -c "import os; f=os.open('$mnt/incr/d0/f0', os.O_WRONLY); os.fsync(f)"
  incr=$(wait_round "$home" "$before")
  umount_it "$home"

  # Create rate, protection off and at its most eager, interleaved.
  declare -A best=([0]=0 [1]=0)
  for run in 1 2; do
    for secs_ in 0 1; do
      set_protect_secs "$home" "$secs_"
      mount_it "$home"
      r=$(creates "$mnt/rate$run-$secs_" 20000)
      umount_it "$home"
      [ "$r" -gt "${best[$secs_]}" ] && best[$secs_]=$r
    done
  done

  # Recovery of the whole volume.
  "$DATAMESH_BIN" --home "$home" kit export > "$work/kit.txt" 2>/dev/null
  rm -rf "$work/recovered"
  t=$(now)
  "$DATAMESH_BIN" --home "$work/recovered" recover --kit "$work/kit.txt" >/dev/null 2>&1
  rec=$(secs "$t")

  snap=-
  if "$DATAMESH_BIN" snapshot --help >/dev/null 2>&1; then
    t=$(now)
    "$DATAMESH_BIN" --home "$work/recovered" snapshot create bench >/dev/null
    snap=$(printf '%.0f' "$(echo "($(now) - $t) * 1000" | bc -l)")
  fi
  rm -rf "$work/recovered"

  printf '%-9s %11s %11s %11s %13s %10s %10s %6.2f %10.2f %10s\n' \
    "$n" "$(field "$full" ms)" "$(echo "$full" | grep -o 'of [0-9]*' | cut -d' ' -f2)" \
    "$(field "$full" 'bytes shipped')" "$(field "$incr" 'bytes shipped')" \
    "${best[0]}" "${best[1]}" "$(echo "${best[1]} / ${best[0]}" | bc -l)" "$rec" "$snap"
done
