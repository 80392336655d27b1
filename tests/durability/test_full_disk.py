"""A small tmpfs fills (ENOSPC), is grown (mount -o remount,size=...), and the download
resumes from what the sidecar verified: byte-exact, nothing left but PATH.

Needs root and mount(2): the tmpfs lives in a private mount namespace (unshare -m), so
nothing is mounted in the machine's namespace and nothing leaks if the test dies."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.faultserver import FaultServer, make_body

from .helpers import QUICK, env, need, sha

pytestmark = pytest.mark.durability

SIZE = 3 << 20
SMALL, LARGE = "1536k", "8m"     # fills at about half the image; then room for all of it


def script(url: str, mnt: str, log: str) -> str:
    run = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "rawfetch", url, "-o",
                                            mnt + "/out.img"] + list(QUICK))
    return "\n".join([
        "set -u",
        "mount -t tmpfs -o size=%s tmpfs %s || exit 99" % (SMALL, mnt),
        "%s 2>%s/err1; echo rc1=$?" % (run, shlex.quote(log)),
        "echo part=$(stat -c %%s %s/out.img.part)" % mnt,
        "echo sidecar=$(cat %s/out.img.part.json)" % mnt,
        "mount -o remount,size=%s %s" % (LARGE, mnt),
        "%s --log-json %s/events; echo rc2=$?" % (run, shlex.quote(log)),
        "echo sha=$(sha256sum %s/out.img | cut -d' ' -f1)" % mnt,
        "echo left=$(ls -A %s | tr '\\n' ' ')" % mnt,
    ])


def test_full_disk_then_grown_resumes_byte_exact(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (in a private mount namespace)")
    unshare = need("unshare")
    probe = subprocess.run([unshare, "-m", "--propagation", "private", "true"])
    if probe.returncode != 0:
        pytest.skip("unshare -m is not permitted here (no CAP_SYS_ADMIN)")
    body = make_body(SIZE, seed=24)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FaultServer() as origin:
        origin.add("/img", body, etag='"f1"')
        done = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c",
                               script(origin.url("/img"), str(mnt), str(tmp_path))],
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120)
        ranges = [r.range for r in origin.requests]
    facts = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    first_error = (tmp_path / "err1").read_text()
    assert facts["rc1"] == "23" and "No space left" in first_error, (facts, first_error)
    claim = json.loads(facts["sidecar"])
    assert 0 < claim["verified"] <= int(facts["part"]), facts
    assert facts["rc2"] == "0", (facts, done.stderr)
    assert ranges[-1] == "bytes=%d-" % claim["verified"], ranges
    assert facts["sha"] == sha(body)
    assert facts["left"].split() == ["out.img"]
