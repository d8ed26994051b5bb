#!/usr/bin/env bash
# The test command: installs what the tests need, then formatting, lints and tests.
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$REPO/scripts/setup.sh"
cd "$REPO"
# RocksDB's C++ is compiled by setup.sh's build; lints and tests must reuse
# it. A librocksdb.a built after this point means some build asked for
# librocksdb-sys with other features or build-script inputs (see Cargo.toml's
# [build-dependencies]): that costs ~12 minutes and is a bug.
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
cargo fmt --all -- --check
# Release profile throughout, so RocksDB is compiled once for build, lints and tests.
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo test --release --locked --workspace
rebuilt=$(find "$CARGO_TARGET_DIR/release/build" -path '*/librocksdb-sys-*/out/*' \
  -name 'librocksdb.a' -newer "$stamp" 2>/dev/null || true)
if [ -n "$rebuilt" ]; then
  echo "test.sh: RocksDB was compiled again after setup.sh's build: $rebuilt" >&2
  exit 1
fi
