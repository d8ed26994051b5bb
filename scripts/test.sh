#!/usr/bin/env bash
# The test command: installs what the tests need, then formatting, lints and tests.
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$REPO/scripts/setup.sh"
cd "$REPO"
cargo fmt --all -- --check
# Release profile throughout, so RocksDB is compiled once for build, lints and tests.
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo test --release --locked --workspace
