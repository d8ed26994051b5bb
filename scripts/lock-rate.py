#!/usr/bin/env python3
"""Lock throughput on one file: `lock-rate.py FILE SECS` prints two numbers,
lock+unlock pairs per second (fcntl byte-range locks through lockf) by one
process alone, then by two processes taking turns on the same byte (each
lock waits for the other's unlock: F_SETLKW)."""
import fcntl, os, sys, time

path, secs = sys.argv[1], float(sys.argv[2])


def pairs(fd, until):
    n = 0
    while time.monotonic() < until:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        n += 1
    return n


fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
alone = pairs(fd, time.monotonic() + secs) / secs

r, w = os.pipe()
until = time.monotonic() + secs
pid = os.fork()
if pid == 0:
    cfd = os.open(path, os.O_RDWR)
    os.write(w, str(pairs(cfd, until)).encode())
    os._exit(0)
mine = pairs(fd, until)
theirs = int(os.read(r, 64))
os.waitpid(pid, 0)
print(f"{alone:.0f} {(mine + theirs) / secs:.0f}")
