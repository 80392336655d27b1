#!/usr/bin/env python3
"""rawfetch's main job on an embedded default: no network, nothing to install.

Serves a generated 64 MiB image from the in-repo fault server on loopback, scripts a
storm of faults (reset, 503 + Retry-After, stall, trickle, cut, a server ignoring Range),
downloads it with the real `rawfetch` command, and prints the verified digest plus what
the server saw. Usage: python3 demo.py [--size MiB] [--keep PATH]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tests.faultserver import FaultServer, actions as A, make_body  # noqa: E402


def storm(size: int) -> list:
    """One fault per connection, at byte offsets spread over the image."""
    return [
        A.rst(at=size // 10),                          # connection reset mid-body
        A.status(503, {"Retry-After": "1"}),           # master node busy
        A.stall(at=size // 8),                         # silent server -> idle timeout
        A.trickle(at=size // 7, gap=0.2, step=64),     # trickle -> low-speed abort
        A.fin(at=size // 6),                           # cut short -> incomplete body
        A.fin(at=size // 5, ignore_range=True),        # Range ignored: prefix skipped
        A.normal(),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image size in MiB (64)")
    parser.add_argument("--keep", metavar="PATH", help="keep the image at PATH")
    args = parser.parse_args()
    image = make_body(args.size << 20, seed=2015)
    digest = hashlib.sha256(image).hexdigest()
    workdir = tempfile.mkdtemp(prefix="rawfetch-demo-")
    target = args.keep or os.path.join(workdir, "image.raw")
    with FaultServer() as server:
        server.add("/image.raw", image, etag='"image-v1"')
        server.script(storm(len(image)))
        command = [sys.executable, "-m", "rawfetch", server.url("/image.raw"), "-o", target,
                   "--sha256", digest, "--progress", "--idle-timeout", "1",
                   "--speed-limit", "262144", "--speed-time", "1.5",
                   "--retry-delay", "0.2", "--retry-max-delay", "1", "--max-time", "120"]
        print("$ rawfetch %s -o %s --sha256 %s... (+ timeouts)" % (
            server.url("/image.raw"), target, digest[:12]), flush=True)
        started = time.monotonic()
        code = subprocess.call(command, env=dict(os.environ, PYTHONPATH=HERE))
        elapsed = time.monotonic() - started
        print("\nwhat the server saw (one line per connection):")
        for request in server.requests:
            print("  #%d %-28s If-Range %s" % (request.conn, request.range or "(whole file)",
                                              request.if_range or "-"))
    ok = code == 0 and open(target, "rb").read() == image
    print("\nexit code %d in %.1fs; %s" % (code, elapsed, "file verified: sha256:" + digest
                                           if ok else "FAILED"))
    if not args.keep and os.path.exists(target):
        os.unlink(target)
    os.rmdir(workdir) if not os.listdir(workdir) else None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
