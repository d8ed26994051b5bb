# Shared by the scripts: where the build lives and how to reach the binary.
# The cargo target dir sits outside the clone so a fresh clone reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datamesh/target}"
DATAMESH_BIN="${DATAMESH_BIN:-$CARGO_TARGET_DIR/release/datamesh}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
