#!/usr/bin/env bash
# Installs what datamesh needs to build and test on Debian, then builds it.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# clang/libclang: RocksDB's bindgen; fuse3: mounts; the rest: tests and benchmarks
# (bindfs and gocryptfs are the baselines of the filesystem benchmark; chromium
# and its driver load the web dashboard; openssl makes the TLS test's certificate;
# davfs2 mounts the WebDAV gateway; stress-ng's lock stressors and python3's fcntl and sqlite3 test locks;
# protobuf-compiler: the etcd client's build; etcd-server: the etcd engine's tests).
packages=(clang libclang-dev pkg-config protobuf-compiler libprotobuf-dev etcd-server etcd-client
  fuse3 time rsync sqlite3 attr diffutils b3sum bc
  git vim restic borgbackup fio bindfs gocryptfs acl man-db curl rclone openssl davfs2
  chromium chromium-driver stress-ng python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust 1.88 or newer" >&2; exit 1; }
# The Debian package (scripts/package-deb.sh) is built with cargo-deb.
if ! command -v cargo-deb >/dev/null; then
  echo "setup: installing cargo-deb (a few minutes)"
  cargo install cargo-deb --locked --quiet
fi

echo "setup: building (the first RocksDB build takes ~12 minutes on 2 cores)"
cd "$REPO"
cargo build --release --locked
echo "setup: datamesh is at $DATAMESH_BIN"
