"""Time delta re-imaging's survey (rawfetch.delta.hash_target) on a 1 GiB target, 1 vs 2
hashing threads, from the page cache and cold (posix_fadvise DONTNEED on the target only).

    PYTHONPATH=$PWD python3 bench/survey.py [--size-mib 1024] [--runs 5] [--dir /tmp]

Prints min and median wall time and the process CPU time per configuration. The machine
is shared: compare the minimums, and quote the load average printed beside them.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time

from rawfetch.delta import hash_target
from rawfetch.metalink import Pieces

PIECE = 4 << 20


def make_target(path: str, size: int) -> Pieces:
    """A target of random pieces whose published list differs in 1 piece of 20 (5 %)."""
    digests = bytearray()
    with open(path, "wb") as handle:
        for index in range(size // PIECE):
            block = os.urandom(PIECE)
            handle.write(block)
            digests += hashlib.sha256(block if index % 20 else b"changed").digest()
    return Pieces("sha-256", PIECE, bytes(digests))


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    size = args.size_mib << 20
    path = os.path.join(args.dir, "rawfetch-survey-bench.img")
    try:
        pieces = make_target(path, size)
        print("load average before: %.2f %.2f %.2f" % os.getloadavg())
        for cold in (False, True):
            for threads in (1, 2):
                walls, cpus = [], []
                for _ in range(args.runs):
                    if cold:
                        drop_cache(path)
                    wall, cpu = time.perf_counter(), time.process_time()
                    found = hash_target(path, pieces, size, threads)
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
                    assert len(found) == -(-size // PIECE // 20), len(found)
                print("%s %d thread(s): wall min %.2fs median %.2fs, cpu median %.2fs "
                      "(%.0f MB/s at the min)" % ("cold  " if cold else "cached", threads,
                                                  min(walls), statistics.median(walls),
                                                  statistics.median(cpus),
                                                  size / min(walls) / 1e6))
        print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
