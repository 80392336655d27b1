"""(d) peak RSS against file size: a generated file and a sparse one 4x larger."""
from __future__ import annotations

from common import PY, human
from harness import Client, Harness, Series


def _worst(s: Series, names) -> float:
    values = [s.med(n, "rss") for n in names if s.ok(n)]
    return max(values) if values else float("nan")


def run(h: Harness) -> None:
    url, big = h.url(), h.url("big.bin")
    small_names = ["rawfetch %s → /dev/null" % human(h.size), "rawfetch %s → file"
                   % human(h.size)]
    large_names = ["rawfetch %s → /dev/null" % human(h.big), "rawfetch %s → file"
                   % human(h.big)]
    clients = [Client("bare python", [PY, "-c", "pass"]),
               h.rawfetch(url, "null", name=small_names[0]),
               h.rawfetch(big, "null", name=large_names[0]),
               h.rawfetch(url, "file", name=small_names[1], tag="r"),
               h.rawfetch(big, "file", name=large_names[1], tag="r")]
    s = h.run_series("rss", clients, reps=1 if h.quick else 2, warmup=False)
    h.report.series_table(
        "(d) peak RSS vs file size (%s generated, %s sparse)" % (human(h.size),
                                                                 human(h.big)),
        s, with_ratio=False,
        note=["peak RSS = the child's ru_maxrss from wait4, forked from a tiny C launcher "
              "(bench/launch.c)"])
    bare = s.med("bare python", "rss")
    small, large = _worst(s, small_names), _worst(s, large_names)
    worst = max(small, large)
    h.report.target("peak RSS ≤ bare interpreter + 6 MiB (any size, plain)",
                    (worst - bare) / 1024, 6.0, unit="MiB", fmt="%.1f",
                    detail="bare %.1f MiB, rawfetch worst %.1f MiB; %s vs %s: %+.1f MiB"
                    % (bare / 1024, worst / 1024, human(h.big), human(h.size),
                       (large - small) / 1024),
                    reason="buffers or imported modules grew: compare the (e) table")
