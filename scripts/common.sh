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
