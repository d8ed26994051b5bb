#!/usr/bin/env bash
# WebDAV gateway vs the FUSE mount of the same volume, in one run (the
# embedded store, this machine): 1 GiB PUT/GET with curl vs cp through the
# mount, 1 000 small files with rclone vs cp -r into the mount, PROPFIND depth
# 1 on 10 000 entries vs ls -l, the daemon's peak RSS during a 2 GiB PUT, and
# 1 GiB PUT/GET over HTTPS vs plain HTTP (needs openssl for the certificate).
# (rclone paces its WebDAV requests 10 ms apart, so its small-file rate is
# its own; one curl process with 1 000 uploads on one connection shows the
# gateway's.) Runs are interleaved (WebDAV, mount, WebDAV, mount); the better of each
# pair is kept. Needs FUSE, curl and rclone (scripts/setup.sh).
# Usage: scripts/bench-webdav.sh [SCRATCH, default /var/tmp]
set -euo pipefail
source "$(dirname "$0")/common.sh"
scratch="${1:-/var/tmp}"
for tool in curl rclone bc; do
  command -v "$tool" >/dev/null || { echo "bench-webdav: $tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
ensure_built
work=$(mktemp -d "$scratch/datamesh-benchwebdav.XXXXXX")
home="$work/home" mnt="$work/mnt" port="${DATAMESH_WEBDAV_PORT:-18480}"
url="http://127.0.0.1:$port/dav"
mkdir -p "$mnt" "$work/small"
cleanup() {
  "$DATAMESH_BIN" --home "$home" umount "$mnt" >/dev/null 2>&1 || true
  mountpoint -q "$mnt" 2>/dev/null && fusermount3 -uz "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT
"$DATAMESH_BIN" --home "$home" init >/dev/null
"$DATAMESH_BIN" --home "$home" mount --webdav "127.0.0.1:$port" "$mnt" >/dev/null
pid=$(cat "$home/mount.pid" | head -1)
head -c 1G /dev/urandom > "$work/big"
for i in $(seq 1000); do head -c $((i * 7 % 9000 + 100)) /dev/urandom > "$work/small/f$i"; done
best() { echo "if ($1 < $2) $1 else $2" | bc -l; }
declare -A T
for run in 1 2; do
  t=$(now); curl -sf -T "$work/big" "$url/big.dav"; w=$(secs "$t")
  t=$(now); cp "$work/big" "$mnt/big.fuse"; sync; m=$(secs "$t")
  T[put_w]=$(best "${T[put_w]:-999999}" "$w"); T[put_m]=$(best "${T[put_m]:-999999}" "$m")
  drop_caches; t=$(now); curl -sf "$url/big.fuse" -o /dev/null; w=$(secs "$t")
  drop_caches; t=$(now); cat "$mnt/big.dav" > /dev/null; m=$(secs "$t")
  T[get_w]=$(best "${T[get_w]:-999999}" "$w"); T[get_m]=$(best "${T[get_m]:-999999}" "$m")
  t=$(now); rclone copy "$work/small" ":webdav,url='$url/':small-dav-$run" 2>/dev/null; w=$(secs "$t")
  curl -sf -X MKCOL "$url/small-curl-$run/"
  for i in $(seq 1000); do printf 'upload-file = "%s"\nurl = "%s"\n' "$work/small/f$i" "$url/small-curl-$run/f$i"; done > "$work/curl.cfg"
  t=$(now); curl -sf -K "$work/curl.cfg" -o /dev/null; c=$(secs "$t")
  t=$(now); cp -r "$work/small" "$mnt/small-fuse-$run"; sync; m=$(secs "$t")
  T[small_w]=$(best "${T[small_w]:-999999}" "$w"); T[small_m]=$(best "${T[small_m]:-999999}" "$m")
  T[small_c]=$(best "${T[small_c]:-999999}" "$c")
done
mkdir "$mnt/many"
python3 -c "
import os
for i in range(10000): open(os.path.join('$mnt/many', 'f%d' % i), 'w').close()"
for run in 1 2; do
  t=$(now); curl -sf -X PROPFIND -H 'Depth: 1' "$url/many/" -o /dev/null; w=$(secs "$t")
  t=$(now); ls -l "$mnt/many" > /dev/null; m=$(secs "$t")
  T[list_w]=$(best "${T[list_w]:-999999}" "$w"); T[list_m]=$(best "${T[list_m]:-999999}" "$m")
done
"$DATAMESH_BIN" --home "$home" umount "$mnt" >/dev/null
"$DATAMESH_BIN" --home "$home" serve --webdav "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
spid=$!
for _ in $(seq 100); do curl -sf -X PROPFIND -H 'Depth: 0' "$url/" -o /dev/null && break; sleep 0.1; done
head -c 2G /dev/urandom | curl -sf -T - "$url/two" 
rss=$(awk '/VmHWM/ {print $2}' "/proc/$spid/status")
# The same 1 GiB over HTTP and HTTPS from the same kind of daemon, interleaved.
tls=()
if command -v openssl >/dev/null; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key.pem" \
    -out "$work/cert.pem" -days 1 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null
  tls=(--webdav-cert "$work/cert.pem" --webdav-key "$work/key.pem")
fi
kill "$spid"; wait "$spid" 2>/dev/null || true
if [ ${#tls[@]} -gt 0 ]; then
  sport=$((port + 1)); surl="https://127.0.0.1:$sport/dav"
  "$DATAMESH_BIN" --home "$home" serve --webdav "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
  p1=$!
  for _ in $(seq 100); do curl -sf -X PROPFIND -H 'Depth: 0' "$url/" -o /dev/null && break; sleep 0.1; done
  for run in 1 2; do
    t=$(now); curl -sf -T "$work/big" "$url/big.http"; w=$(secs "$t")
    drop_caches; t=$(now); curl -sf "$url/big.http" -o /dev/null; g=$(secs "$t")
    T[hput]=$(best "${T[hput]:-999999}" "$w"); T[hget]=$(best "${T[hget]:-999999}" "$g")
    kill "$p1"; wait "$p1" 2>/dev/null || true
    "$DATAMESH_BIN" --home "$home" serve --webdav "127.0.0.1:$sport" "${tls[@]}" > "$work/serve.log" 2>&1 &
    p1=$!
    for _ in $(seq 100); do curl -sf --cacert "$work/cert.pem" -X PROPFIND -H 'Depth: 0' "$surl/" -o /dev/null && break; sleep 0.1; done
    t=$(now); curl -sf --cacert "$work/cert.pem" -T "$work/big" "$surl/big.https"; w=$(secs "$t")
    drop_caches; t=$(now); curl -sf --cacert "$work/cert.pem" "$surl/big.https" -o /dev/null; g=$(secs "$t")
    T[sput]=$(best "${T[sput]:-999999}" "$w"); T[sget]=$(best "${T[sget]:-999999}" "$g")
    kill "$p1"; wait "$p1" 2>/dev/null || true
    "$DATAMESH_BIN" --home "$home" serve --webdav "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
    p1=$!
    for _ in $(seq 100); do curl -sf -X PROPFIND -H 'Depth: 0' "$url/" -o /dev/null && break; sleep 0.1; done
  done
  kill "$p1"; wait "$p1" 2>/dev/null || true
fi
mb() { echo "1024 / $1" | bc -l; }
printf '%-36s %12s %12s %8s\n' "metric (embedded store)" webdav mount "dav/mnt"
row() { printf '%-36s %12.1f %12.1f %8.2f\n' "$1" "$2" "$3" "$(echo "$2 / $3" | bc -l)"; }
row "1 GiB PUT, MB/s" "$(mb "${T[put_w]}")" "$(mb "${T[put_m]}")"
row "1 GiB GET (cold), MB/s" "$(mb "${T[get_w]}")" "$(mb "${T[get_m]}")"
row "1 000 small files (rclone), files/s" "$(echo "1000 / ${T[small_w]}" | bc -l)" "$(echo "1000 / ${T[small_m]}" | bc -l)"
row "1 000 small files (curl), files/s" "$(echo "1000 / ${T[small_c]}" | bc -l)" "$(echo "1000 / ${T[small_m]}" | bc -l)"
row "list 10 000 entries, s" "${T[list_w]}" "${T[list_m]}"
echo "daemon peak RSS during a 2 GiB PUT: $((rss / 1024)) MiB"
if [ -n "${T[sput]:-}" ]; then
  printf '\n%-36s %12s %12s %8s\n' "metric (serve --webdav)" https http "s/h"
  row "1 GiB PUT, MB/s" "$(mb "${T[sput]}")" "$(mb "${T[hput]}")"
  row "1 GiB GET (cold), MB/s" "$(mb "${T[sget]}")" "$(mb "${T[hget]}")"
fi
