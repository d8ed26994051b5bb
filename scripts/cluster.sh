#!/usr/bin/env bash
# A local mesh for tests and demos: storage peers on 127.0.0.1, each with its own
# data directory, plus a home directory (volume + mesh key) they were invited to.
#
#   scripts/cluster.sh start N      start nodes 0..N-1 (ports BASE..BASE+N-1)
#   scripts/cluster.sh add I        start one more node I (joins with the token)
#   scripts/cluster.sh stop         stop every node (SIGTERM)
#   scripts/cluster.sh kill I       kill -9 node I
#   scripts/cluster.sh restart I    start node I again on its data dir and port
#   scripts/cluster.sh status       which nodes run
#
# Environment: DATAMESH_CLUSTER (dir, default /tmp/datamesh-cluster),
# DATAMESH_CLUSTER_PORT (base port, default 4700), DATAMESH_NODE_CAPACITY (a
# --capacity for nodes started by `add`), DATAMESH_BIN.
# After `start`, mount against it with the printed command; the home dir
# remembers the peers, so later commands need no flags.
set -euo pipefail
source "$(dirname "$0")/common.sh"
DIR="${DATAMESH_CLUSTER:-/tmp/datamesh-cluster}"
BASE="${DATAMESH_CLUSTER_PORT:-4700}"
HOME_DIR="$DIR/home"
ensure_built

die() { echo "cluster.sh: $*" >&2; exit 1; }
pid_of() { cat "$DIR/node$1.pid" 2>/dev/null || true; }
# Alive and not a zombie (a killed node is reaped by init, maybe not at once).
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
running() { local p; p=$(pid_of "$1"); [ -n "$p" ] && alive "$p"; }

# start_node I [EXTRA ARGS…]: starts node I and waits for its listening line.
start_node() {
  local i=$1; shift
  running "$i" && die "node $i is already running (pid $(pid_of "$i"))"
  local out="$DIR/node$i.out"
  : > "$out"
  local args=(node --data "$DIR/node$i" --listen "/ip4/127.0.0.1/tcp/$((BASE + i))")
  [ -f "$DIR/node$i/mesh.key" ] || args+=(--join "$(cat "$DIR/token")")
  if [ -f "$DIR/node0.addr" ] && [ "$i" != 0 ]; then args+=(--bootstrap "$(cat "$DIR/node0.addr")"); fi
  setsid "$DATAMESH_BIN" "${args[@]}" "$@" > "$out" 2>> "$DIR/node$i.log" < /dev/null &
  echo $! > "$DIR/node$i.pid"
  for _ in $(seq 200); do
    if grep -q '^datamesh node: listening on ' "$out"; then
      sed -n 's/^datamesh node: listening on //p' "$out" | head -1 > "$DIR/node$i.addr"
      echo "node $i: $(cat "$DIR/node$i.addr") (pid $(pid_of "$i"))"
      return 0
    fi
    running "$i" || die "node $i exited: $(tail -3 "$DIR/node$i.log")"
    sleep 0.05
  done
  die "node $i did not start listening within 10 s (see $DIR/node$i.log)"
}

cmd="${1:-}"
case "$cmd" in
  start)
    n="${2:?usage: cluster.sh start N}"
    mkdir -p "$DIR"
    [ -d "$HOME_DIR" ] || "$DATAMESH_BIN" --home "$HOME_DIR" init > /dev/null
    # A dev cluster lives long: its token stays good for the nodes added later.
    "$DATAMESH_BIN" --home "$HOME_DIR" invite --ttl 30d --uses 1000 | tail -1 > "$DIR/token"
    for i in $(seq 0 $((n - 1))); do start_node "$i"; done
    boot=$(for i in $(seq 0 $((n - 1))); do printf -- ' --bootstrap %s' "$(cat "$DIR/node$i.addr")"; done)
    echo "$boot" > "$DIR/bootstrap"
    echo "token: $(cat "$DIR/token")"
    echo "mount against it with:"
    echo "  $DATAMESH_BIN --home $HOME_DIR$boot mount /mnt/mesh"
    ;;
  add)
    i="${2:?usage: cluster.sh add I}"
    cap=()
    [ -n "${DATAMESH_NODE_CAPACITY:-}" ] && cap=(--capacity "$DATAMESH_NODE_CAPACITY")
    start_node "$i" "${cap[@]}"
    ;;
  restart)
    i="${2:?usage: cluster.sh restart I}"
    [ -d "$DIR/node$i" ] || die "node $i was never started"
    start_node "$i"
    ;;
  kill)
    i="${2:?usage: cluster.sh kill I}"
    running "$i" || die "node $i is not running"
    p=$(pid_of "$i")
    kill -9 "$p"
    for _ in $(seq 100); do alive "$p" || break; sleep 0.05; done
    echo "node $i: killed"
    ;;
  stop)
    for f in "$DIR"/node*.pid; do
      [ -e "$f" ] || continue
      p=$(cat "$f")
      kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 100); do alive "$p" || break; sleep 0.05; done
      kill -9 "$p" 2>/dev/null || true
      rm -f "$f"
    done
    echo "cluster stopped ($DIR kept; remove it to start over)"
    ;;
  status)
    for f in "$DIR"/node*.addr; do
      [ -e "$f" ] || continue
      i=$(basename "$f" .addr); i=${i#node}
      if running "$i"; then s=running; else s=down; fi
      echo "node $i: $s $(cat "$f")"
    done
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
