"""The cost of per-piece verification (issue 24): the same download checked by its
whole-file sha256 alone, and from a .meta4 that adds sha-256 pieces (each piece hashed as
it arrives, besides the whole-file hash), to a file and to stdout; aria2c on the same
.meta4 as the peer that verifies pieces too. What a piece list costs on a clean download
is the price of refetching one bad piece instead of the whole image.
"""
from __future__ import annotations

import os
import shutil

from common import PY, human
from harness import Client, Harness

PIECE = 4 << 20         # the piece size the README's publish command uses
COST_NOTE = ("per-piece verification hashes every byte a second time (the whole-file hash "
             "still decides): one more sha-256 pass (~0.6 s of CPU per GiB here, sha_ni) on "
             "2 cores already busy receiving and hashing")


def _publish(h: Harness) -> str:
    meta4 = os.path.join(h.work, "pieces.meta4")
    h.launcher.run([PY, "-m", "rawfetch.metalink", "make", h.main_path, "--url", h.url(),
                    "--piece-size", str(PIECE)], stdout=meta4)
    return meta4


def run(h: Harness) -> None:
    meta4 = _publish(h)
    for dest in ("file", "null"):
        where = "a file" if dest == "file" else "stdout"
        clients = [h.rawfetch(h.url(), dest, name="rawfetch-sha256", tag="p",
                              extra=["--sha256", h.sha]),
                   h.rawfetch(h.url(), dest, name="rawfetch", tag="p",
                              extra=["--metalink", meta4])]
        if dest == "file" and shutil.which("aria2c"):
            out = os.path.join(h.work, "aria")
            clients.append(Client("aria2c-pieces", [
                "sh", "-c", "rm -rf '%s' && aria2c --no-conf -q -M '%s' -d '%s' "
                "--file-allocation=none" % (out, meta4, out)], peer=True))
        s = h.run_series("pieces → " + where, clients)
        cost = s.ratio("rawfetch", "rawfetch-sha256")
        h.report.series_table(
            "Per-piece verification, %s in %s pieces → %s" % (human(h.size), human(PIECE),
                                                              where), s,
            note=["rawfetch-sha256: `--sha256 HEX` (the whole-file hash alone)",
                  "rawfetch: `--metalink FILE` (%d sha-256 pieces and the whole-file "
                  "sha-256)" % -(-h.size // PIECE),
                  "aria2c-pieces: `aria2c -M FILE` (pieces and the whole-file hash)"])
        cpu = s.ratio("rawfetch", "rawfetch-sha256", "cpu")
        h.report.notes.append("pieces → %s: %.2f× the wall, %.2f× the CPU of the whole-file "
                              "hash alone (%s)" % (where, cost, cpu, COST_NOTE))
        if any(c.name == "aria2c-pieces" for c in clients):
            h.report.target("pieces → a file: wall ≤ aria2c -M's on the same .meta4 (the "
                            "peer that verifies pieces)", s.ratio("rawfetch", "aria2c-pieces"),
                            1.0, detail="CPU %.2f×" % s.ratio("rawfetch", "aria2c-pieces",
                                                              "cpu"))
