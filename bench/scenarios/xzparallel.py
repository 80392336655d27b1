"""xz on the node's cores (issue 25): the pipeline's 768 MiB image as `xz -T2 -6` writes it
(one stream of 24 MiB blocks with their sizes in the headers; -T0 on these 2-core machines
is -T2) and as one block (`xz -T1 -6`: no sizes, so the one-thread path), from nginx to a
file. rawfetch (default threads, and --decode-threads 1) against `curl | xz -dc` and
`curl | xz -T0 -dc`, in alternating rounds, outputs checked by sha256 after each run.
The 1-minute load average is reported before and after each series: the targets mean
little on a busy machine."""
from __future__ import annotations

import os
import shlex
import subprocess
from typing import List

from common import MiB
from harness import Client, Harness, Series, log
from image import Image
from report import today
from scenarios.pipeline import serve_image

MULTI_VS_CURL = 1 / 1.8     # issue 25: wall ≤ 1/1.8 of curl | xz -dc (≥ 1.8× as fast)
MULTI_VS_T0 = 1.00          # ... and no slower than curl | xz -T0 -dc
SINGLE_VS_CURL = 1.00       # a single-block image: no slower than curl | xz -dc


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:   # cleanup: not Linux; the report says so
        return "n/a"


def single_block(img: Image) -> str:
    """The same raw image as one xz block (xz -T1 -6), cached beside the multi-block one."""
    path = img.xz[:-3] + ".single.xz"
    if os.path.exists(path):
        return path
    log("xz parallel: writing the single-block image (xz -T1 -6; once, minutes)")
    with open(path + ".tmp", "wb") as out:
        unxz = subprocess.Popen(["xz", "-dc", img.xz], stdout=subprocess.PIPE)
        packer = subprocess.Popen(["xz", "-T1", "-6", "-c"], stdin=unxz.stdout, stdout=out)
        assert unxz.stdout is not None
        unxz.stdout.close()
        if packer.wait() != 0 or unxz.wait() != 0:
            raise RuntimeError("xz failed writing the single-block image")
    os.replace(path + ".tmp", path)
    return path


def _clients(h: Harness, url: str, tag: str, sha: str, one_thread_row: bool) -> List[Client]:
    clients = []
    for label, extra in (("rawfetch --decompress xz", []),
                         ("rawfetch --decode-threads 1", ["--decode-threads", "1"])):
        if extra and not one_thread_row:
            continue
        c = h.rawfetch(url, "file", tag=tag, name=label, extra=["--decompress", "xz"] + extra)
        c.verify = sha
        clients.append(c)
    for label, unxz in (("curl | xz -dc", "xz -dc"), ("curl | xz -T0 -dc", "xz -T0 -dc")):
        out = h.out(tag + label)
        line = "set -o pipefail; curl -s %s | %s > %s" % (shlex.quote(url), unxz,
                                                          shlex.quote(out))
        clients.append(Client(label, ["bash", "-c", line], out=out, verify=sha, peer=True))
    return clients


def _series(h: Harness, title: str, clients: List[Client]) -> Series:
    before = loadavg()
    series = h.run_series(title, clients)
    h.report.notes.append("%s: loadavg %s before, %s after" % (title, before, loadavg()))
    return series


def run(h: Harness) -> None:
    if not (h.have["curl"] and h.have["xz"] and h.have["bash"]):
        h.report.section("xz on every core (issue 25)", ["skipped: needs curl, xz and bash"])
        return
    img = serve_image(h)
    single = os.path.join(h.data, "image-single.xz")
    if not os.path.lexists(single):
        os.symlink(single_block(img), single)
    h.report.section("xz on every core (issue 25)", [
        "Measured %s with `%s` on %d cores (loadavg %s at the start). The %d MiB image as "
        "`xz -T2 -6` writes it (%.1f MiB, blocks of 24 MiB with sizes; what `xz -T0` "
        "writes here) and as one block (`xz -T1 -6`, %.1f MiB), nginx on loopback → a "
        "file; every output's sha256 checked." % (
            today(), h.command, os.cpu_count() or 0, loadavg(), img.size // MiB,
            img.xz_size / MiB, os.path.getsize(single) / MiB)])
    multi = _series(h, "xz multi-block", _clients(h, h.url("image.xz"), "pm", img.sha256,
                                                  True))
    one = _series(h, "xz single-block", _clients(h, h.url("image-single.xz"), "ps",
                                                 img.sha256, False))
    ref = "rawfetch --decompress xz"
    h.report.series_table("xz -T2 -6 (multi-block) → file", multi, ref=ref, level=3)
    h.report.series_table("xz -T1 -6 (single block) → file", one, ref=ref, level=3)
    h.report.target("xz multi-block → file: wall ≤ %.3f× curl | xz -dc (≥ 1.8× as fast; "
                    "issue 25)" % MULTI_VS_CURL, multi.ratio(ref, "curl | xz -dc"),
                    MULTI_VS_CURL, fmt="%.3f",
                    detail="--decode-threads 1: %.2f×" % multi.ratio(
                        "rawfetch --decode-threads 1", "curl | xz -dc"))
    h.report.target("xz multi-block → file: wall ≤ %.2f× curl | xz -T0 -dc (issue 25)"
                    % MULTI_VS_T0, multi.ratio(ref, "curl | xz -T0 -dc"), MULTI_VS_T0)
    h.report.target("xz single block → file: wall ≤ %.2f× curl | xz -dc (issue 25)"
                    % SINGLE_VS_CURL, one.ratio(ref, "curl | xz -dc"), SINGLE_VS_CURL,
                    detail="curl | xz -T0 -dc %.2f×" % one.ratio("curl | xz -T0 -dc",
                                                                  "curl | xz -dc"))
