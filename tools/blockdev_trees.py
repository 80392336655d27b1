#!/usr/bin/env python3
"""rawfetch trees side by side onto a block device: a loop device over a tmpfs file,
nginx on loopback serving random data, `rawfetch URL -o /dev/loopN -q` per tree in
alternating rounds (rotating order). Each run asserts it imports its own tree; the
first round checks the device's sha256. Prints per-tree medians and, against the first
tree, the median of per-round ratios. Needs root, losetup, nginx; uses /dev/shm.
Usage (docs/disk-safety.md, "Whole blocks"):
    git clone -q . /tmp/t-a && git -C /tmp/t-a checkout -q COMMIT
    python3 tools/blockdev_trees.py --rounds 21 nosplice=/tmp/t-a aligned=$PWD
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Nginx  # noqa: E402

MiB = 1 << 20
LAUNCH = ("import sys; sys.path.insert(0, %r); import rawfetch; "
          "assert rawfetch.__file__.startswith(%r), rawfetch.__file__; "
          "from rawfetch.cli import main; main()")


def device_sha256(device: str) -> str:
    """The device's bytes, its page cache dropped first."""
    digest = hashlib.sha256()
    fd = os.open(device, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for block in iter(lambda: os.read(fd, MiB), b""):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def one_run(tree: str, url: str, device: str) -> Tuple[float, float]:
    """(wall seconds, user+sys CPU seconds) of one rawfetch from `tree`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LAUNCH % (tree, tree.rstrip("/") + "/"),
                           url, "-o", device, "-q"], cwd="/tmp")
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit("%s: rawfetch exited %d" % (tree, done.returncode))
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def rounds(trees: Dict[str, str], count: int, size: int, work: str
           ) -> Dict[str, List[Tuple[float, float]]]:
    image = os.path.join(work, "img")
    with open(image, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(os.urandom(MiB))
    with open(image, "rb") as handle:
        want = hashlib.sha256(handle.read()).hexdigest()
    backing = os.path.join(work, "disk")
    with open(backing, "wb") as handle:
        handle.truncate(size)
    device = subprocess.run(["losetup", "-f", "--show", backing], stdout=subprocess.PIPE,
                            universal_newlines=True, check=True).stdout.strip()
    nginx = Nginx(work, work, tls=False).start()
    results: Dict[str, List[Tuple[float, float]]] = {name: [] for name in trees}
    try:
        names = list(trees)
        for turn in range(count):
            for name in names[turn % len(names):] + names[:turn % len(names)]:
                results[name].append(one_run(trees[name], nginx.url("img"), device))
                if turn == 0 and device_sha256(device) != want:
                    raise SystemExit("%s: the device does not hold the image" % name)
    finally:
        nginx.stop()
        subprocess.run(["losetup", "-d", device], check=False)
    return results


def median(values: List[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="NAME=PATH, the first is the reference")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--size-mib", type=int, default=512)
    args = parser.parse_args()
    trees = dict(arg.split("=", 1) for arg in args.trees)
    work = "/dev/shm/rawfetch-blockdev-trees-%d" % os.getpid()
    os.makedirs(work)
    try:
        results = rounds(trees, args.rounds, args.size_mib * MiB, work)
    finally:
        subprocess.run(["rm", "-rf", work], check=False)
    first = list(results)[0]
    for name, runs in results.items():
        line = "%-16s median wall %.3f s, CPU %.3f s" % (
            name, median([w for w, _ in runs]), median([c for _, c in runs]))
        if name != first:
            ratios = [(b[0] / a[0], b[1] / a[1]) for a, b in zip(results[first], runs)]
            line += "; against %s: %.2fx wall, %.2fx CPU" % (
                first, median([r[0] for r in ratios]), median([r[1] for r in ratios]))
        print(line)


if __name__ == "__main__":
    main()
