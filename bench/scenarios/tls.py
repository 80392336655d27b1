"""(b) TLS (nginx with a trustme certificate), to /dev/null and to a file."""
from __future__ import annotations

from common import human
from harness import Harness

FSYNC_REASON = ("rawfetch fsyncs before the rename (see rawfetch-nofsync in the detail); "
                "the ssl floor and curl do not")
SSL_CPU_REASON = ("the fixed per-process cost (-m runpy, argparse, the download-path "
                  "modules; see the fixed-cost table) on top of the floor's SSL_read work")


def run(h: Harness) -> None:
    if h.nginx is None or h.nginx.tls_port is None:
        return
    to_null(h)
    to_file(h)


def to_null(h: Harness) -> None:
    url = h.url(tls=True)
    clients = [h.rawfetch(url, "null", tls=True), h.floor(url, "null", tls=True),
               h.floor(url, "null", tls=True, kind="floor-fill")] \
        + h.peers(url, "null", tls=True)
    s = h.run_series("tls → /dev/null", clients)
    h.report.series_table(
        "(b) TLS (nginx, trustme CA), %s → /dev/null" % human(h.size), s,
        note=["floor: raw `ssl` socket, recv_into 1 MiB + os.write per call (SSL_read "
              "returns ≤ one 16 KiB record)",
              "floor-fill: the same but filling the 1 MiB buffer before each os.write"])
    h.report.target("TLS → /dev/null: CPU ≤ 1.15× raw ssl recv_into loop",
                    s.ratio("rawfetch", "floor", "cpu"), 1.15,
                    detail="vs floor-fill %.2f×" % s.ratio("rawfetch", "floor-fill", "cpu"),
                    reason=SSL_CPU_REASON)
    h.report.target("TLS → /dev/null: wall ≤ 1.10× raw ssl recv_into loop",
                    s.ratio("rawfetch", "floor"), 1.10,
                    detail="vs floor-fill %.2f×" % s.ratio("rawfetch", "floor-fill"),
                    reason=SSL_CPU_REASON)


def to_file(h: Harness) -> None:
    url = h.url(tls=True)
    clients = [h.rawfetch(url, "file", tls=True, tag="t"),
               h.rawfetch(url, "file", tls=True, tag="t", name="rawfetch-nofsync",
                          nofsync=True),
               h.floor(url, "file", tls=True, tag="t")]
    clients += [c for c in h.peers(url, "file", tls=True, tag="t")
                if c.name in ("curl", "wget")]
    s = h.run_series("tls → file", clients)
    h.report.series_table("(b) TLS, %s → a file" % human(h.size), s)
    nofsync = "rawfetch-nofsync %.2f×"
    h.report.target("TLS → file: wall ≤ 1.10× raw ssl loop (issues 6, 15)",
                    s.ratio("rawfetch", "floor"), 1.10,
                    detail=nofsync % s.ratio("rawfetch-nofsync", "floor"),
                    reason=FSYNC_REASON)
    h.report.target("TLS → file: faster than curl (< 1.00×)", s.ratio("rawfetch", "curl"),
                    0.999, detail=nofsync % s.ratio("rawfetch-nofsync", "curl"),
                    reason=FSYNC_REASON)
