#!/usr/bin/env python3
"""The WebDAV gateway soaked: legitimate clients (curl, rclone, davfs2) work
against `datamesh serve --webdav` for MINUTES while an attacker beside them
(from 127.0.0.2-4, as other hosts would be: the listener bounds connections
per address, so an attack from the clients' own address would shut them out
by design) repeats every attack the gateway
was hardened against: nested XML, a LOCK of the root, login floods, half-sent
requests, a body that stalls, 500-range GETs, X-OC-Mtime past any time, lock
floods with big owners, forms from another site, an unclosed If header,
oversized bodies. At the end every file the clients wrote is read back and
compared, the volume is checked with fsck, and a table is printed: requests
served and refused, each client's operations, peak and final RSS.

Fails (exit 1) if a legitimate operation failed, a file differs, the daemon
ended, fsck is not clean, RSS passed 256 MiB, or (runs of 10 minutes or
more) RSS beside the bounded caches (decoded chunks, RocksDB's blocks and
memtables, dirty buffers; read from /metrics each minute) grew more than
16 MiB in the second half.

    scripts/soak-webdav.sh [MINUTES]     (default 30; builds first)
"""

import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter

MINUTES = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
BIN = os.environ["DATAMESH_BIN"]
LIMIT_KIB = 256 * 1024
PW = {"alice": "alice-password", "bob": "bob-password", "mallory": "mallory-password"}

work = tempfile.mkdtemp(prefix="soak-webdav.", dir="/var/tmp")
home = os.path.join(work, "home")
stop = threading.Event()
lock = threading.Lock()
ops = Counter()  # (client, what) -> count
attacks = Counter()  # (attack, status) -> count
failures = []
expected = {}  # volume path -> sha256 of what a client wrote last
rss = []


def fail(what):
    with lock:
        failures.append(what)
    print(f"soak: FAILURE: {what}", file=sys.stderr, flush=True)


def count(client, what, n=1):
    with lock:
        ops[(client, what)] += n


def dm(*args, stdin=None, check=True):
    r = subprocess.run([BIN, "--home", home, *args], input=stdin, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"datamesh {' '.join(args)}: {r.stderr.strip()}")
    return r


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def curl(*args, user="alice", source=None):
    """curl's status code and body; user None sends no credentials."""
    cmd = ["curl", "-s", "-m", "120", "-o", "-", "-w", "\n%{http_code}"]
    if user:
        cmd += ["-u", f"{user}:{PW[user]}"]
    if source:
        cmd += ["--interface", source]
    r = subprocess.run(cmd + list(args), capture_output=True)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or 0), body


def sha(data):
    return hashlib.sha256(data).hexdigest()


# --- the legitimate clients -------------------------------------------------


def curl_client(url):
    n = 0
    while not stop.is_set():
        n += 1
        data = os.urandom(random.choice([0, 1, 4096, 100_000, 1_000_000, 4_000_000]))
        path = f"/curl/f{n % 200}"
        local = os.path.join(work, "curl.bin")
        with open(local, "wb") as f:
            f.write(data)
        code, _ = curl("-T", local, url + path)
        if code not in (201, 204):
            fail(f"curl PUT {path}: {code}")
            continue
        code, body = curl(url + path)
        if code != 200 or body != data:
            fail(f"curl GET {path}: {code}, {len(body)} bytes of {len(data)}")
            continue
        with lock:
            expected[path] = sha(data)
        count("curl", "put+get")
        if n % 10 == 0:
            gone = f"/curl/f{(n - 5) % 200}"
            code, _ = curl("-X", "DELETE", url + gone)
            if code in (204, 200):
                with lock:
                    expected.pop(gone, None)
                count("curl", "delete")
            elif code != 404:
                fail(f"curl DELETE {gone}: {code}")


def rclone_client(url):
    obscured = subprocess.run(["rclone", "obscure", PW["alice"]], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, RCLONE_CONFIG_SOAK_TYPE="webdav", RCLONE_CONFIG_SOAK_URL=url,
               RCLONE_CONFIG_SOAK_VENDOR="other", RCLONE_CONFIG_SOAK_USER="alice",
               RCLONE_CONFIG_SOAK_PASS=obscured)
    n = 0
    while not stop.is_set():
        n += 1
        src = os.path.join(work, f"rclone-src")
        shutil.rmtree(src, ignore_errors=True)
        os.makedirs(os.path.join(src, "sub"))
        files = {}
        for i in range(12):
            data = os.urandom(random.randint(0, 600_000))
            rel = f"sub/r{i}" if i % 3 == 0 else f"r{i}"
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
            files[rel] = sha(data)
        dest = f"rclone/run{n % 20}"
        for step in (["copy", src, f"soak:{dest}"], ["check", "--download", src, f"soak:{dest}"]):
            r = subprocess.run(["rclone", *step, "--retries", "1", "--low-level-retries", "1"],
                               env=env, capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"rclone {step[0]} {dest}: {r.stderr.strip()[-400:]}")
                break
        else:
            with lock:
                for rel, h in files.items():
                    expected[f"/{dest}/{rel}"] = h
            count("rclone", "copy+check (12 files)")


def davfs_client(url):
    at = os.path.join(work, "davfs")
    conf = os.path.join(work, "davfs2.conf")
    os.makedirs(at)
    with open(conf, "w") as f:
        f.write("buf_size 64\n")
    r = subprocess.run(["mount", "-t", "davfs", url, at, "-o", f"conf={conf}"],
                       input=f"alice\n{PW['alice']}\n", capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"mount.davfs: {r.stderr.strip()}")
        return
    n = 0
    written = {}
    try:
        while not stop.is_set():
            n += 1
            run = f"davfs/run{n % 10}"
            target = os.path.join(at, run)
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(target)
            files = {}
            for i in range(20):
                data = os.urandom(random.randint(0, 200_000))
                with open(os.path.join(target, f"d{i}"), "wb") as f:
                    f.write(data)
                files[f"/{run}/d{i}"] = sha(data)
            for path, h in files.items():
                with open(os.path.join(at, path.lstrip("/")), "rb") as f:
                    if sha(f.read()) != h:
                        fail(f"davfs2 read back {path}")
            written = {k: v for k, v in written.items() if not k.startswith(f"/{run}/")}
            written.update(files)
            count("davfs2", "write+read (20 files)")
            time.sleep(1)
    finally:
        r = subprocess.run(["umount", at], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"umount davfs2: {r.stderr.strip()}")
        else:
            # davfs2 uploads what it held at unmount: only now is it the server's.
            with lock:
                expected.update(written)


# --- the attacker ------------------------------------------------------------


def raw(addr, data, source, wait=10):
    """Sends raw bytes from `source`; the status the gateway answered, 0 for none."""
    try:
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(wait)
        s.connect(addr)
        s.sendall(data)
        got = s.recv(64)
        s.close()
        return int(got[9:12]) if got.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        return 0


def hold_half_sent(addr):
    held = []
    for _ in range(80):
        try:
            s = socket.socket()
            s.bind(("127.0.0.3", 0))
            s.connect(addr)
            s.sendall(b"PUT /dav/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            held.append(s)
        except OSError:
            attacks[("half-sent", "refused at connect")] += 1
    time.sleep(12)
    for s in held:
        s.close()
    attacks[("half-sent", f"{len(held)} held")] += 1


def stall_body(addr):
    import base64
    auth = base64.b64encode(f"mallory:{PW['mallory']}".encode()).decode()
    head = (f"PUT /dav/mallory/stalled HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
            "Content-Length: 1000000\r\n\r\n").encode()
    status = raw(addr, head + b"x" * 1000, "127.0.0.4", wait=45)
    attacks[("stalled body", status)] += 1


def attacker(url, addr):
    deep = "<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\">" + "<a>" * 3000 + "</a>" * 3000 + "</D:propfind>"
    big_owner = ("<?xml version=\"1.0\"?><D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:shared/></D:lockscope>"
                 "<D:locktype><D:write/></D:locktype><D:owner>" + "o" * 7000 + "</D:owner></D:lockinfo>")
    body = os.path.join(work, "attack.xml")
    lockbody = os.path.join(work, "lock.xml")
    with open(body, "w") as f:
        f.write(deep)
    with open(lockbody, "w") as f:
        f.write(big_owner)
    small = os.path.join(work, "small")
    with open(small, "wb") as f:
        f.write(os.urandom(2_000_000))
    src = "127.0.0.2"
    curl("-T", small, url + "/mallory/target", user="mallory", source=src)
    background = []
    n = 0
    while not stop.is_set():
        n += 1
        k = n % 11

        def hit(name, *args, user="mallory"):
            code, _ = curl(*args, user=user, source=src)
            attacks[(name, code)] += 1

        if k == 0:
            hit("nested PROPFIND", "-X", "PROPFIND", "--data-binary", f"@{body}", url + "/")
        elif k == 1:
            hit("LOCK of the root", "-X", "LOCK", "--data-binary", f"@{lockbody}", url + "/")
        elif k == 2:
            procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n", "--interface", src,
                                       "-u", f"alice:wrong{i}", url + "/"], stdout=subprocess.PIPE)
                     for i in range(40)]
            for p in procs:
                attacks[("wrong passwords", int(p.communicate()[0] or 0))] += 1
        elif k == 3 and not any(t.is_alive() for t in background):
            t = threading.Thread(target=hold_half_sent, args=(addr,), daemon=True)
            t.start()
            background.append(t)
        elif k == 4:
            code, data = curl("-r", ",".join(["0-"] * 500), url + "/mallory/target", user="bob", source=src)
            attacks[("500 ranges", code)] += 1
            if len(data) > 2_000_000:
                fail(f"500 ranges answered {len(data)} bytes")
        elif k == 5:
            hit("X-OC-Mtime 1e300", "-T", small, "-H", "X-OC-Mtime: 1e300", url + "/mallory/timed")
        elif k == 6:
            for _ in range(50):
                hit("lock flood", "-X", "LOCK", "--data-binary", f"@{lockbody}", url + "/mallory/target")
        elif k == 7:
            hit("cross-site POST", "-X", "POST", "-H", "Origin: http://evil.example", "-d", "a=b", url + "/mallory/x")
        elif k == 8:
            hit("unclosed If", "-X", "PUT", "-H", "If: (<urn:uuid:1", "-d", "x", url + "/mallory/if")
        elif k == 9:
            with open(os.path.join(work, "huge.xml"), "w") as f:
                f.write(" " * (2 << 20))
            hit("2 MiB PROPFIND", "-X", "PROPFIND", "--data-binary", f"@{work}/huge.xml", url + "/")
        elif k == 10 and n % 33 == 10:
            threading.Thread(target=stall_body, args=(addr,), daemon=True).start()
        time.sleep(0.2)


# The caches whose bounds RSS is to be explained by, from /metrics.
CACHES = {
    "datamesh_chunk_cache_bytes": "chunks",
    "datamesh_meta_cache_bytes": "rocksdb blocks",
    "datamesh_meta_memtable_bytes": "memtables",
    "datamesh_dirty_bytes": "dirty",
    "datamesh_meta_cache_entries": "meta entries",
    "datamesh_webdav_requests_total": "requests",
}
caches = []  # (minute, {name: value})


def scrape(port):
    import base64
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"bob:{PW['bob']}".encode()).decode())
    out = {}
    for line in urllib.request.urlopen(req, timeout=20).read().decode().splitlines():
        name, _, value = line.partition(" ")
        if name in CACHES:
            out[CACHES[name]] = float(value)
    return out


def monitor(pid, port, start):
    last_minute = -1
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                kib = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            rss.append((time.time(), kib))
        except (OSError, StopIteration):
            fail("the daemon ended")
            return
        minute = int((time.time() - start) // 60)
        if minute != last_minute:
            last_minute = minute
            try:
                caches.append((minute, kib, scrape(port)))
            except OSError as e:
                print(f"soak: /metrics: {e}", file=sys.stderr)
        time.sleep(2)


def main():
    dm("init")
    for user, flag in (("alice", []), ("bob", ["--read-only"]), ("mallory", [])):
        dm("webdav", "adduser", user, *flag, stdin=PW[user] + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/dav"
    log = open(os.path.join(work, "daemon.log"), "w")
    daemon = subprocess.Popen([BIN, "--home", home, "serve", "--webdav", f"127.0.0.1:{port}"],
                              stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        if curl(url + "/", user=None)[0] == 401:
            break
        time.sleep(0.1)
    for d in ("/curl/", "/rclone/", "/mallory/", "/davfs/"):
        curl("-X", "MKCOL", url + d)
    start = time.time()
    clients = [threading.Thread(target=curl_client, args=(url,)),
               threading.Thread(target=rclone_client, args=(url + "/",))]
    if os.geteuid() == 0 and shutil.which("mount.davfs"):
        clients.append(threading.Thread(target=davfs_client, args=(url + "/",)))
    else:
        print("soak: davfs2 left out (needs root and mount.davfs)", file=sys.stderr)
    side = [threading.Thread(target=monitor, args=(daemon.pid, port, start), daemon=True)]
    # SOAK_NO_ATTACK=1: the clients alone, to tell what the attacks cost.
    if not os.environ.get("SOAK_NO_ATTACK"):
        side.append(threading.Thread(target=attacker, args=(url, ("127.0.0.1", port)), daemon=True))
    for t in clients + side:
        t.start()
    while time.time() - start < MINUTES * 60 and daemon.poll() is None:
        time.sleep(1)
    stop.set()
    for t in clients:
        t.join()
    elapsed = time.time() - start

    # Every file a client wrote, as it last wrote it.
    checked = 0
    for path, h in sorted(expected.items()):
        code, data = curl(url + path)
        if code != 200 or sha(data) != h:
            fail(f"{path}: {code}, not what was written")
        checked += 1
    served = 0
    try:
        served = int(scrape(port).get("requests", 0))
    except OSError as e:
        fail(f"/metrics: {e}")
    fsck = dm("fsck", check=False)
    if fsck.returncode != 0:
        fail(f"fsck: {fsck.stdout.strip()[-400:]}")
    alive = daemon.poll() is None
    daemon.terminate()
    try:
        daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        fail("the daemon did not stop within 60 s")

    peak = max((k for _, k in rss), default=0)
    warm = [k for t, k in rss if t - start > min(120, elapsed / 4)]
    refused = sum(c for (_, code), c in attacks.items() if isinstance(code, int) and code >= 400)
    print(f"\nWebDAV soak: {elapsed / 60:.1f} min, datamesh {BIN}")
    print(f"{'what':44} {'count':>10}")
    print(f"{'requests the gateway counted':44} {served:>10}")
    for (client, what), c in sorted(ops.items()):
        print(f"{client + ': ' + what:44} {c:>10}")
    print(f"{'attacker requests refused (4xx/5xx)':44} {refused:>10}")
    for (name, code), c in sorted(attacks.items(), key=lambda x: (x[0][0], str(x[0][1]))):
        print(f"  {name + ' → ' + str(code):42} {c:>10}")
    print(f"{'files read back and compared':44} {checked:>10}")
    print(f"{'RSS peak (MiB)':44} {peak / 1024:>10.1f}")
    if warm:
        print(f"{'RSS after warm-up: first / last (MiB)':44} {warm[0] / 1024:>5.1f} / {warm[-1] / 1024:.1f}")
    minutes = {}
    for t, k in rss:
        minutes.setdefault(int((t - start) // 60), k)
    print("RSS at each minute (MiB): " + " ".join(f"{k / 1024:.0f}" for _, k in sorted(minutes.items())))
    # What RSS is made of: the bounded caches, and the rest (which must stay flat).
    mib = lambda v: f"{v / (1 << 20):7.1f}"
    print(f"{'min':>4} {'RSS':>7} {'chunks':>7} {'blocks':>7} {'memtab':>7} {'dirty':>7} {'entries':>8} {'rest':>7}   (MiB)")
    for minute, kib, c in caches:
        held = sum(c.get(k, 0) for k in ("chunks", "rocksdb blocks", "memtables", "dirty"))
        print(f"{minute:>4} {mib(kib * 1024)} {mib(c.get('chunks', 0))} {mib(c.get('rocksdb blocks', 0))} "
              f"{mib(c.get('memtables', 0))} {mib(c.get('dirty', 0))} {int(c.get('meta entries', 0)):>8} "
              f"{mib(kib * 1024 - held)}")
    # Once the caches are full the rest must stay flat: past the first half,
    # it may not grow more than 16 MiB above what it was at the half.
    rest = [(m, kib / 1024 - sum(c.get(k, 0) for k in ("chunks", "rocksdb blocks", "memtables", "dirty")) / (1 << 20))
            for m, kib, c in caches]
    half = [r for m, r in rest if m >= MINUTES / 2]
    if MINUTES >= 10 and len(half) >= 2 and max(half) > half[0] + 16:
        fail(f"RSS beside the caches grew from {half[0]:.0f} to {max(half):.0f} MiB in the second half")
    print(f"{'failures':44} {len(failures):>10}")
    if peak > LIMIT_KIB:
        fail(f"RSS peaked at {peak / 1024:.0f} MiB")
    if not alive:
        fail("the daemon ended during the soak")
    for f in failures:
        print(f"  {f}")
    if failures:
        print(f"soak: daemon log in {work}/daemon.log", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
