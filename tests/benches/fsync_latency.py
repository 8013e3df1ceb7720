#!/usr/bin/env python3
"""fdatasync latency of a small append on the filesystem holding DIR (default /tmp): the floor
under an audited lookup, whose event is fsync'd before the answer.

    python3 tests/benches/fsync_latency.py [DIR] [CALLS]     (default /tmp, 2000)
"""
import os
import sys
import tempfile
import time

d = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
with tempfile.NamedTemporaryFile(dir=d) as f:
    fd = f.fileno()
    os.posix_fallocate(fd, 0, 4 << 20)
    os.fsync(fd)
    t = []
    for i in range(n):
        os.pwrite(fd, b"x" * 300, (i * 300) % (4 << 20))
        s = time.perf_counter()
        os.fdatasync(fd)
        t.append(time.perf_counter() - s)
        time.sleep(0.001)
t.sort()
q = lambda p: t[min(len(t) - 1, int(len(t) * p))] * 1e3
print(f"fdatasync of a 300-byte append, {n} calls: p50 {q(0.5):.2f} ms, p90 {q(0.9):.2f}, p99 {q(0.99):.2f}, max {t[-1] * 1e3:.2f}")
