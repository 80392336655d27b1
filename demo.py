#!/usr/bin/env python3
"""rawfetch's main job on an embedded default: no network, nothing to install.

Serves a generated xz image (64 MiB uncompressed) and the SHA256SUMS published next to
it from two in-repo fault servers on loopback: a broken mirror that resets mid-body and
then loses the file (404), and a master that throws a storm of faults (reset, 503 +
Retry-After, stall, trickle, cut, a Range ignored). Downloads it with the real `rawfetch`
command -- --decompress auto, --checksum-url, the mirror list, in place onto a stand-in
disk (a file holding an "old system") with --verify-written, a progress line -- then
prints the verified digests and a summary of the events, and draws the download's
timeline next to its event log when matplotlib is installed (docs/timeline.png is
`python3 demo.py --timeline docs/timeline.png`).
Usage: python3 demo.py [--size MiB] [--keep PATH] [--timeline PNG]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tests.faultserver import FaultServer, actions as A, make_body  # noqa: E402


def make_image(size: int) -> bytes:
    """Compressible but not trivial: random 4 KiB blocks repeated with variations."""
    block = make_body(1 << 20, seed=2015)
    return b"".join(block[(i * 4099) % (1 << 19):][: 1 << 19] + block[:1 << 19]
                    for i in range(size >> 20))


def storm(size: int) -> list:
    """One fault per connection to the master, at offsets spread over the image."""
    return [
        A.status(503, {"Retry-After": "1"}),           # master busy
        A.rst(at=size // 9),                           # connection reset mid-body
        A.stall(at=size // 8),                         # silent server -> idle timeout
        A.trickle(at=size // 7, gap=0.2, step=64),     # trickle -> low-speed abort
        A.fin(at=size // 6),                           # cut short -> incomplete body
        A.fin(at=size // 5, ignore_range=True),        # Range ignored: prefix skipped
        A.normal(),
    ]


def summarize(log_path: str) -> str:
    events = [json.loads(line) for line in open(log_path, encoding="utf-8")]
    count = Counter(e["event"] for e in events)
    errors = Counter(e["error"] for e in events if e["event"] == "error")
    done = next((e for e in events if e["event"] == "done"), {})
    skipped = done.get("refetched", 0)
    lines = ["attempts %d, resumes %d, restarts %d, mirror switches %d, bytes re-fetched %s"
             % (count["request"], count["resume"], count["restart"], count["mirror"],
                format(skipped, ","))]
    lines.append("errors survived: " + ", ".join("%s x%d" % kv for kv in errors.items()))
    for url, start, end in done.get("segments", []):
        lines.append("served %s-%s by %s" % (format(start, ","), format(end - 1, ","), url))
    return "\n".join("  " + line for line in lines)


def draw_timeline(log_path: str, picture: str) -> str:
    """The picture of this download (rawfetch-timeline), or how to get one."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ("timeline: python3 -m pip install 'rawfetch[plot]', then\n"
                "  python3 -m rawfetch.timeline %s -o timeline.png" % log_path)
    code = subprocess.call([sys.executable, "-m", "rawfetch.timeline", log_path, "-o",
                            picture], stdout=subprocess.DEVNULL,
                           env=dict(os.environ, PYTHONPATH=HERE))
    return "timeline: %s" % picture if code == 0 else "timeline: not drawn (exit %d)" % code


def run(image: bytes, packed: bytes, target: str, log_path: str) -> int:
    sums = "%s  image.raw.xz\n" % hashlib.sha256(packed).hexdigest()
    with FaultServer() as mirror, FaultServer() as master:
        for server in (mirror, master):
            server.add("/image.raw.xz", packed, etag='"image-v1"')
        master.add("/SHA256SUMS", sums.encode(), etag='"sums-v1"')
        mirror.script([A.rst(at=len(packed) // 12), A.status(404)])
        master.script(storm(len(packed)), path="/image.raw.xz")
        master.script([A.status(503, {"Retry-After": "0"}), A.normal()], path="/SHA256SUMS")
        urls = [mirror.url("/image.raw.xz"), master.url("/image.raw.xz")]
        flags = ["--decompress", "auto", "--checksum-url", master.url("/SHA256SUMS"),
                 "--in-place", "--verify-written"]
        command = [sys.executable, "-m", "rawfetch", *urls, "-o", target, *flags,
                   "--progress", "--idle-timeout", "1", "--speed-limit", "262144",
                   "--speed-time", "1.5", "--retry-delay", "0.2", "--retry-max-delay", "1",
                   "--max-time", "120", "--log-json", log_path]
        print("$ rawfetch %s %s -o %s %s --log-json %s" % (
            urls[0], urls[1], target, " ".join(flags), log_path), flush=True)
        code = subprocess.call(command, env=dict(os.environ, PYTHONPATH=HERE))
        print("\nwhat the servers saw (one line per connection):")
        for name, server in (("mirror", mirror), ("master", master)):
            for request in server.requests:
                print("  %s #%d %-12s %-24s If-Range %s" % (
                    name, request.conn, request.path, request.range or "(whole file)",
                    request.if_range or "-"))
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image size in MiB (64)")
    parser.add_argument("--keep", metavar="PATH", help="keep the image at PATH")
    parser.add_argument("--timeline", metavar="PNG", help="write the timeline picture "
                        "here (default: next to the event log)")
    args = parser.parse_args()
    import lzma
    image = make_image(max(args.size, 1) << 20)
    packed = lzma.compress(image, preset=0)
    workdir = tempfile.mkdtemp(prefix="rawfetch-demo-")
    target = args.keep or os.path.join(workdir, "disk.img")
    with open(target, "wb") as disk:     # the stand-in disk holds an "old system"
        disk.write(b"old system " * (len(image) // 11 + 1000))
    log_path = os.path.join(workdir, "events.jsonl")
    started = time.monotonic()
    code = run(image, packed, target, log_path)
    elapsed = time.monotonic() - started
    ok = code == 0 and open(target, "rb").read() == image
    print("\nevents (%s):\n%s" % (log_path, summarize(log_path)))
    print(draw_timeline(log_path, args.timeline or os.path.join(workdir, "timeline.png")))
    print("\nexit code %d in %.1fs: %s" % (code, elapsed, (
        "disk holds the image, read back; xz sha256:%s (from SHA256SUMS), raw sha256:%s" % (
            hashlib.sha256(packed).hexdigest(), hashlib.sha256(image).hexdigest()))
        if ok else "FAILED"))
    if not args.keep and os.path.exists(target):
        os.unlink(target)               # the event log and the timeline stay for a look
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
