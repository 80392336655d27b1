#!/usr/bin/env python3
"""What disk safety costs: the same bytes through InPlace, SafeDisk and SafeDisk with
verify_written, written in 1 MiB write() calls to a pre-allocated file (or a device you
name), then commit(). No network: this isolates the sink. Prints the last of `--runs`.
Usage: python3 tools/disk_overhead.py [--size-mib 512] [--runs 2] [--target PATH]
(a --target device is OVERWRITTEN).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rawfetch.sinks import InPlace, SafeDisk  # noqa: E402

MiB = 1 << 20


def one_run(make: Callable[[], Any], size_mib: int) -> Tuple[float, float, Optional[float]]:
    """(write seconds, write + commit seconds, read-back seconds or None)."""
    chunk = memoryview(os.urandom(MiB))
    sink = make()
    sink.open()
    started = time.monotonic()
    for _ in range(size_mib):
        sink.write(chunk)
    written = time.monotonic() - started
    readback = sink.commit(size_mib * MiB)
    return written, time.monotonic() - started, readback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--target", help="file or device to overwrite (default: a temp file)")
    args = parser.parse_args()
    target = args.target
    if target is None:
        handle = tempfile.NamedTemporaryFile(prefix="disk_overhead", delete=False)
        handle.truncate(args.size_mib * MiB)
        handle.close()
        target = handle.name
    sinks = [("InPlace", lambda: InPlace(target)),
             ("SafeDisk", lambda: SafeDisk(InPlace(target))),
             ("SafeDisk, verify_written", lambda: SafeDisk(InPlace(target),
                                                           verify_written=True))]
    try:
        print("| sink | write | write + commit | read-back |\n|---|---|---|---|")
        for label, make in sinks:
            for _ in range(args.runs):
                written, total, readback = one_run(make, args.size_mib)
            print("| %s | %.2f s | %.2f s | %s |" % (
                label, written, total, "–" if readback is None else "%.2f s" % readback))
    finally:
        if args.target is None:
            os.unlink(target)


if __name__ == "__main__":
    main()
