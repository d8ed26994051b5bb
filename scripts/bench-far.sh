#!/usr/bin/env bash
# A member device over a slow link: the workloads of a checkout, a listing, a
# backup and a cleanup on the home node's mount and on a member's mount whose
# connection to the home passes a delaying TCP proxy (fs-tests' delay-proxy:
# every byte held RTT/2 each way; the kernel's netem is not available here),
# storage peers reached directly. For each workload and round-trip time:
# the time, and the member's calls to its home per tree entry (from its
# `home_calls` metrics, by kind), with the FUSE operations behind them.
#
# Usage: scripts/bench-far.sh [RTTS in ms, default "0 2 20"] [TREE, default /usr/share/doc/git]
# Needs FUSE and python3. One run; the counts do not depend on the RTT.
set -euo pipefail
source "$(dirname "$0")/common.sh"
rtts="${1:-0 2 20}"
tree="${2:-/usr/share/doc/git}"
ensure_built
(cd "$REPO" && cargo build --release --locked --quiet -p fs-tests --bin delay-proxy) >&2
proxy_bin="$CARGO_TARGET_DIR/release/delay-proxy"

work=$(mktemp -d /var/tmp/datamesh-benchfar.XXXXXX)
export DATAMESH_CLUSTER="$work/cluster" DATAMESH_CLUSTER_PORT="${DATAMESH_CLUSTER_PORT:-5140}"
proxy_pid=""
cleanup() {
  for m in "$work"/mm-*; do
    [ -d "$m" ] || continue
    "$DATAMESH_BIN" --home "$work/member-${m##*/mm-}" umount "$m" >/dev/null 2>&1 || true
  done
  "$DATAMESH_BIN" --home "$DATAMESH_CLUSTER/home" umount "$work/hmnt" >/dev/null 2>&1 || true
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  for m in "$work/hmnt" "$work"/mm-*; do
    mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
  done
  sleep 0.5
  "$REPO/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

tar -C "$(dirname "$tree")" -cf "$work/tree.tar" "$(basename "$tree")"
entries=$(tar -tf "$work/tree.tar" | wc -l)
# A local git repository of 1 000 small files in 20 directories.
python3 - "$work/repo" <<'PY'
import os, sys
for i in range(1000):
    d = os.path.join(sys.argv[1], f"d{i % 20}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"file {i}\n" * (1 + i % 50))
PY
git -C "$work/repo" init -q && git -C "$work/repo" add -A \
  && git -C "$work/repo" -c user.name=b -c user.email=b@b commit -qm files
"$REPO/scripts/cluster.sh" start 6 >/dev/null
home="$DATAMESH_CLUSTER/home"
port=$((DATAMESH_CLUSTER_PORT + 50))
mkdir -p "$work/hmnt"
# shellcheck disable=SC2046
"$DATAMESH_BIN" --home "$home" $(cat "$DATAMESH_CLUSTER/bootstrap") \
  mount --listen "/ip4/127.0.0.1/tcp/$port" "$work/hmnt" >/dev/null
sleep 1

# The workloads, each in MOUNT/w: prints "NAME SECONDS" per workload.
workloads() { # workloads MOUNT METRICS_URL|-
  python3 - "$1" "$2" "$work/tree.tar" "$(basename "$tree")" "$work/repo" <<'PY'
import os, subprocess, sys, time, urllib.request
mnt, metrics, tar, top, repo = sys.argv[1:6]
d = os.path.join(mnt, "w")
os.makedirs(os.path.join(d, "c"), exist_ok=True)
def counts():
    if metrics == "-":
        return {}
    out = {}
    for l in urllib.request.urlopen(metrics, timeout=30).read().decode().splitlines():
        for fam in ("datamesh_home_calls_total{", "datamesh_fuse_ops_total{"):
            if l.startswith(fam):
                label = l[len(fam):].split('"')[1]
                out[(fam[9:13], label)] = float(l.split()[-1])
    return out
def run(name, cmd):
    before = counts()
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, cwd=d, stdout=subprocess.DEVNULL)
    s = time.perf_counter() - t
    after = counts()
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = {k[1]: int(v) for k, v in diff.items() if k[0] == "home" and v > 0}
    fuse = {k[1]: int(v) for k, v in diff.items() if k[0] == "fuse" and v > 0}
    def top5(c):
        return ",".join(f"{k}:{v}" for k, v in sorted(c.items(), key=lambda x: -x[1])[:6]) or "-"
    print(f"{name} {s:.3f} {sum(calls.values())} {top5(calls)} {top5(fuse)}", flush=True)
run("untar", f"tar -xf {tar}")
run("ls-lR", f"ls -lR {top}")
run("creates", "for i in $(seq 200); do echo x > c/f$i; done")
run("stat", f"find {top} -exec stat {{}} +")
run("cat", f"find {top} -type f -exec cat {{}} +")
run("rm-rf", f"rm -rf {top} c")
run("clone", f"git clone -q --no-hardlinks {repo} clone")
run("status", "git -C clone status --porcelain")
run("rm-clone", "rm -rf clone")
run("sqlite", "sqlite3 db 'PRAGMA journal_mode=DELETE; CREATE TABLE t(n)' && "
    "for i in $(seq 50); do echo \"INSERT INTO t VALUES($i);\"; done | sqlite3 db && rm db")
PY
}

declare -A T C K F X XOK
while read -r name s _ _ _; do T[home,$name]=$s; done < <(workloads "$work/hmnt" -)
names="untar ls-lR creates stat cat rm-rf clone status rm-clone sqlite"
for rtt in $rtts; do
  one_way=$(echo "$rtt / 2" | bc)
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  coproc PROXY { exec "$proxy_bin" "127.0.0.1:$port" "$one_way"; }
  proxy_pid=$PROXY_PID
  read -r pport <&"${PROXY[0]}"
  member="$work/member-$rtt"
  mnt="$work/mm-$rtt"
  mkdir -p "$mnt"
  "$DATAMESH_BIN" --home "$member" join \
    "$("$DATAMESH_BIN" --home "$home" invite --member --address "/ip4/127.0.0.1/tcp/$pport" | tail -1)" \
    --name "far$rtt" >/dev/null
  mport=$((DATAMESH_CLUSTER_PORT + 60 + rtt))
  "$DATAMESH_BIN" --home "$member" mount --metrics "127.0.0.1:$mport" "$mnt" >/dev/null
  while read -r name s calls kinds fuse; do
    T[$rtt,$name]=$s; C[$name]=$calls; K[$name]=$kinds; F[$name]=$fuse
  done < <(workloads "$mnt" "http://127.0.0.1:$mport/metrics")
  # Another host's listing of a directory the member is writing in: its
  # time, and whether it shows every file the member closed before it asked.
  read -r X[$rtt] XOK[$rtt] < <(python3 - "$mnt" "$work/hmnt" <<'PY'
import os, sys, threading, time
member, other = sys.argv[1:3]
d = "x%d" % time.time_ns()
os.makedirs(os.path.join(member, d))
closed, stop = [0], [False]
def writer():
    i = 0
    while not stop[0]:
        with open(os.path.join(member, d, f"f{i}"), "w") as f:
            f.write("x" * 100)
        i += 1
        closed[0] = i
t = threading.Thread(target=writer)
t.start()
worst, missed = 0.0, 0
for _ in range(10):
    time.sleep(0.3)
    before = closed[0]
    t0 = time.perf_counter()
    names = set(os.listdir(os.path.join(other, d)))
    worst = max(worst, time.perf_counter() - t0)
    missed += sum(f"f{i}" not in names for i in range(before))
stop[0] = True
t.join()
print(f"{worst:.3f} {'all' if missed == 0 else f'{missed}-missing'}")
PY
)
  "$DATAMESH_BIN" --home "$member" umount "$mnt" >/dev/null
done

echo
echo "Far member: $entries entries ($tree), 6 storage peers; the member's link to its home through a delaying proxy"
printf '%-9s %10s' workload "home s"
for rtt in $rtts; do printf ' %13s' "member@${rtt}ms"; done
printf ' %9s  %s\n' "calls/ent" "home calls by kind (FUSE ops behind them)"
for n in $names; do
  printf '%-9s %10.3f' "$n" "${T[home,$n]}"
  for rtt in $rtts; do printf ' %13.3f' "${T[$rtt,$n]}"; done
  per=$entries; [ "$n" = creates ] && per=200
  case $n in clone | status | rm-clone) per=1000 ;; sqlite) per=50 ;; esac
  printf ' %9.1f  %s (%s)\n' "$(echo "${C[$n]} / $per" | bc -l)" "${K[$n]}" "${F[$n]}"
done
printf '%-9s %10s' "ls of B" "-"
for rtt in $rtts; do printf ' %13s' "${X[$rtt]}"; done
printf '  another host lists a directory the member writes in (worst of 10; files closed before: %s)\n' \
  "$(for rtt in $rtts; do printf '%s ' "${XOK[$rtt]}"; done)"
echo "Goals at 20 ms: untar <= 3x home + 1 s; creates <= 1 s; rm-rf <= 2 s; clone, status <= 3x home + 1 s;"
echo "  ls of B <= 2 RTT + 100 ms with every closed file; at 0 ms creates >= 0.8x home."
