#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (metadata in Cargo.toml): the
# release binary, the mount(8) helper, the systemd units, and the man pages
# and shell completions generated from the binary's command line. Prints the
# path of the .deb. Install it with `apt install ./datamesh_….deb`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
command -v cargo-deb >/dev/null || { echo "package-deb: cargo-deb is missing: run scripts/setup.sh" >&2; exit 1; }
ensure_built
out="$CARGO_TARGET_DIR/release/package"
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$DATAMESH_BIN" man "$out/man"
for shell in bash zsh fish; do
  "$DATAMESH_BIN" completions "$shell" > "$out/completions/datamesh.$shell"
done
cd "$REPO"
# The binary is stripped in the package (the build keeps line tables).
cargo deb --no-build --strip --locked --quiet 2>&1 | tail -1
