# Shared by the scripts: where the build lives and how to reach the binary.
# The cargo target dir sits outside the clone so a fresh clone reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datamesh/target}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A DATAMESH_BIN given by the caller is used as it is; otherwise the scripts
# run the build of this checkout, brought up to date first (ensure_built).
DATAMESH_BIN_GIVEN="${DATAMESH_BIN:+yes}"
DATAMESH_BIN="${DATAMESH_BIN:-$CARGO_TARGET_DIR/release/datamesh}"

# Builds the release binary unless DATAMESH_BIN was given: a no-op when it is
# fresh, so a script never measures or runs a stale build.
ensure_built() {
  if [ -n "$DATAMESH_BIN_GIVEN" ]; then
    [ -x "$DATAMESH_BIN" ] || { echo "DATAMESH_BIN=$DATAMESH_BIN is not an executable" >&2; exit 1; }
    return
  fi
  (cd "$REPO" && cargo build --release --locked --quiet) >&2
}

# The traffic a repair's output reports ("repair traffic: 32.0 MiB fetched,
# 8.0 MiB placed (…)"), as "FETCHED PLACED" in MiB; "0 0" without that line.
repair_traffic_mib() {
  local line; line=$(grep '^repair traffic:' <<< "$1" || true)
  [ -n "$line" ] || { echo "0 0"; return; }
  awk '{ printf "%.1f %.1f\n", mib($3, $4), mib($6, $7) }
    function mib(v, u) { return v * ((u == "GiB") ? 1024 : (u == "KiB") ? 1/1024 : (u == "B") ? 1/1048576 : 1) }' <<< "$line"
}

# Timing and memory helpers shared by the benchmark scripts.
now() { date +%s.%N; }
# Seconds since a time `now` printed.
secs() { echo "$(now) - $1" | bc -l; }
# Drops the page cache (root only; without it reads may come from the cache).
drop_caches() { sync; [ "$(id -u)" -eq 0 ] && echo 3 > /proc/sys/vm/drop_caches || true; }
# Peak RSS of a process in MiB (0 once it has gone).
hwm() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
# The path of the integration-test binary (tests/it), built first if stale.
it_test_binary() {
  (cd "$REPO" && cargo test --release --test it --no-run --message-format=json 2>/dev/null) |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])'
}
