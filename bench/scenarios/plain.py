"""(a) plain HTTP, to /dev/null and to a file, against the Python floor and the peers."""
from __future__ import annotations

from common import human
from harness import Harness

FSYNC_REASON = ("rawfetch fsyncs the file and its directory before the rename (the "
                "product's durability promise); the floor, curl and wget leave dirty pages")
STARTUP_REASON = ("fixed per-process cost (-m runpy, argparse, the download-path "
                  "modules) against ~0.3 s of CPU per GiB; per-byte work is the floor's")


def run(h: Harness) -> None:
    to_null(h)
    to_file(h)


def to_null(h: Harness) -> None:
    url = h.url()
    clients = [h.rawfetch(url, "null"), h.floor(url, "null")] + h.peers(url, "null")
    s = h.run_series("plain → /dev/null", clients)
    h.report.series_table("(a) plain HTTP, %s → /dev/null" % human(h.size), s,
                          note=["rawfetch: `python3 -m rawfetch URL -o - -q` (stream path, "
                                "stdout is /dev/null)"])
    h.report.target("plain → /dev/null: wall ≤ 1.10× Python floor",
                    s.ratio("rawfetch", "floor"), 1.10, reason=STARTUP_REASON)
    h.report.target("plain → /dev/null: CPU ≤ 1.15× Python floor",
                    s.ratio("rawfetch", "floor", "cpu"), 1.15, reason=STARTUP_REASON)


def to_file(h: Harness) -> None:
    url = h.url()
    clients = [h.rawfetch(url, "file"),
               h.rawfetch(url, "file", name="rawfetch-nofsync", nofsync=True),
               h.floor(url, "file"), h.floor(url, "file", kind="floor-fsync")] \
        + h.peers(url, "file")
    s = h.run_series("plain → file", clients)
    h.report.series_table(
        "(a) plain HTTP, %s → a file on the /tmp disk" % human(h.size), s,
        note=["rawfetch: `python3 -m rawfetch URL -o FILE -q` (download(): .part, sidecar, "
              "fsync, rename)",
              "rawfetch-nofsync: the same with os.fsync a no-op (attribution only)",
              "floor-fsync: the floor plus one fsync at the end; curl, wget and the Python "
              "peers do not fsync",
              "the file is deleted after each run (dirty pages are dropped, not written "
              "back)"])
    nofsync = "rawfetch-nofsync %.2f×"
    h.report.target("plain → file: wall ≤ 1.10× Python floor", s.ratio("rawfetch", "floor"),
                    1.10, detail="vs floor-fsync %.2f×; rawfetch-nofsync vs floor %.2f×"
                    % (s.ratio("rawfetch", "floor-fsync"),
                       s.ratio("rawfetch-nofsync", "floor")), reason=FSYNC_REASON)
    h.report.target("plain → file: CPU ≤ 1.15× Python floor",
                    s.ratio("rawfetch", "floor", "cpu"), 1.15,
                    detail=nofsync % s.ratio("rawfetch-nofsync", "floor", "cpu"),
                    reason=STARTUP_REASON)
    for peer, limit in (("curl", 0.6), ("wget", 0.4)):
        h.report.target("plain → file: wall ≤ %.1f× %s" % (limit, peer),
                        s.ratio("rawfetch", peer), limit,
                        detail=nofsync % s.ratio("rawfetch-nofsync", peer),
                        reason=FSYNC_REASON + "; loopback nginx shares the 2 cores")
