"""This tree's rawfetch against another checkout's (--baseline-tree), side by side.

A refactor must not cost speed: each row runs the same command line from both trees in
alternating rounds (the order rotated each round, as every series here), so load drifts
hit both alike, and reports this ÷ baseline as the median of per-round ratios. Rows:
plain HTTP to a file (the splice path) and to stdout, --sha256 to a file (the digest
worker) and to stdout, TLS to a file. Skipped with a note without --baseline-tree.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from common import PY, human
from harness import Client, Harness

THIS, BASE = "rawfetch", "rawfetch-baseline"
NOISE = 1.10   # one tree against its own clone (A/A: --rawfetch-tree and --baseline-tree
               # the same commit), 512 MiB, 9 rounds, 2026-12-07: 0.83-1.07x wall


def _pair(h: Harness, url: str, dest: str, tag: str, extra: Sequence[str],
          tls: bool) -> List[Client]:
    """The same command from this tree and from the baseline tree."""
    this = h.rawfetch(url, dest, tls=tls, tag=tag, name=THIS, extra=extra)
    base_head = ["env", "PYTHONPATH=%s" % os.path.abspath(h.args.baseline_tree), PY,
                 "-m", "rawfetch"]
    argv = base_head + this.argv[3:]   # h.rawfetch's argv starts with PY -m rawfetch
    out = None
    if this.out is not None:
        out = h.out(tag + BASE)
        argv = [out if a == this.out else a for a in argv]
    return [this, Client(BASE, argv, out=out)]


def run(h: Harness) -> None:
    if not getattr(h.args, "baseline_tree", None):
        h.report.notes.append("baseline: skipped (no --baseline-tree)")
        return
    sha = ["--sha256", h.sha]
    cases: List[Tuple[str, str, Sequence[str], bool]] = [
        ("plain → file", "file", (), False), ("plain → stdout", "null", (), False),
        ("sha256 → file", "file", sha, False), ("sha256 → stdout", "null", sha, False)]
    if getattr(h.nginx, "cafile", None):
        cases.append(("TLS → file", "file", (), True))
    rows = []
    for title, dest, extra, tls in cases:
        clients = _pair(h, h.url(tls=tls), dest, "b%d" % len(rows), extra, tls)
        s = h.run_series("baseline " + title, clients)
        wall, cpu = s.ratio(THIS, BASE), s.ratio(THIS, BASE, "cpu")
        rows.append([title, "%.3f" % s.med(THIS, "wall"), "%.3f" % s.med(BASE, "wall"),
                     "%.2f×" % wall, "%.2f×" % cpu,
                     "%.1f / %.1f" % (s.med(THIS, "rss") / 1024, s.med(BASE, "rss") / 1024)])
        h.report.target("baseline %s: wall ≤ %.2f× the baseline tree's" % (title, NOISE),
                        wall, NOISE, detail="CPU %.2f×" % cpu)
    h.report.table("rawfetch against the baseline tree (%s), %s, %d rounds"
                   % (h.args.baseline_tree, human(h.size), h.reps),
                   ["case", "this wall s", "baseline wall s", "this ÷ baseline (wall)",
                    "this ÷ baseline (CPU)", "peak RSS MiB this / baseline"], rows,
                   notes=["medians; ratios are medians of per-round ratios, rounds "
                          "alternating the two trees"])
