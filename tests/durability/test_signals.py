"""SIGTERM ends a job like Ctrl-C (exit 143, one line, resumable state); kill -9 at
seeded random moments never leaves anything false and the runs after it resume from the
verified length."""
from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from tests.faultserver import FaultServer, make_body

from .helpers import (KILLED, assert_nothing_false, digest, events, listing, run, sha,
                      start, wait_for_bytes)

pytestmark = pytest.mark.durability

SIZE = 1 << 20
SLOW = ("--limit-rate", "128K")      # 8 s for the image: killed long before the end
KILL_SEED = 2020
KILLS = 4


@pytest.fixture
def body() -> bytes:
    return make_body(SIZE, seed=25)


@pytest.fixture
def origin(body):
    with FaultServer() as srv:
        srv.add("/img", body, etag='"s1"')
        yield srv


def verified(out: str) -> int:
    with open(out + ".part.json") as handle:
        return json.load(handle)["verified"]


@pytest.mark.parametrize("sig,code,line", [(signal.SIGTERM, 143, "rawfetch: terminated (SIGTERM)"),
                                           (signal.SIGINT, 130, "rawfetch: interrupted")])
def test_signal_ends_the_job_resumably_with_one_line(origin, body, tmp_path, sig, code, line):
    out = str(tmp_path / "out.img")
    job = start(origin.url("/img"), out, *SLOW)
    wait_for_bytes(out + ".part", 64 << 10)
    job.send_signal(sig)
    _, err = job.communicate(timeout=30)
    assert job.returncode == code
    assert err.strip().splitlines() == [line]
    held = verified(out)
    assert held == os.path.getsize(out + ".part") >= 64 << 10   # the last checkpoint
    assert listing(str(tmp_path)) == ["out.img.part", "out.img.part.json"]
    asked = len(origin.requests)
    again = run(origin.url("/img"), out)
    assert again.returncode == 0, again.stderr
    assert [r.range for r in origin.requests[asked:]] == ["bytes=%d-" % held]
    assert digest(out) == sha(body) and listing(str(tmp_path)) == ["out.img"]


def test_sigterm_in_place_leaves_no_bootable_start(origin, body, tmp_path):
    """In place, SIGTERM zeroes the first MiB again like any failure: never a new head
    over an old or half-written rest."""
    out = tmp_path / "disk.img"
    out.write_bytes(b"\xaa" * (2 * SIZE))
    log = str(tmp_path.parent / (tmp_path.name + ".jsonl"))
    job = start(origin.url("/img"), str(out), "--in-place", "--limit-rate", "256K",
                "--log-json", log)
    ends = time.monotonic() + 10
    while not events(log, "wipe") and time.monotonic() < ends:   # writing began
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=30)
    assert job.returncode == 143, err
    assert out.read_bytes()[:1 << 20] == bytes(1 << 20)
    assert listing(str(tmp_path)) == ["disk.img"]


def test_kill_9_at_seeded_random_moments_then_resume(origin, body, tmp_path):
    """Each kill leaves nothing false; each rerun resumes exactly at what the sidecar
    verified (bytes past it cut away); the last run ends byte-exact."""
    rng = random.Random(KILL_SEED)
    out = str(tmp_path / "out.img")
    resumed = []
    for _ in range(KILLS):
        claim = verified(out) if os.path.exists(out + ".part.json") else 0
        asked = len(origin.requests)
        job = start(origin.url("/img"), out, *SLOW)
        time.sleep(rng.uniform(0.2, 4.0))
        job.kill()
        job.communicate(timeout=30)
        assert job.returncode in KILLED
        assert_nothing_false(out, body)
        first = origin.requests[asked].range if len(origin.requests) > asked else "none"
        assert first in ("bytes=%d-" % claim if claim else None, "none"), (first, claim)
        resumed.append(claim)
    claim = verified(out) if os.path.exists(out + ".part.json") else 0
    asked = len(origin.requests)
    again = run(origin.url("/img"), out)
    assert again.returncode == 0, again.stderr
    assert origin.requests[asked].range == ("bytes=%d-" % claim if claim else None)
    assert digest(out) == sha(body) and listing(str(tmp_path)) == ["out.img"]
    assert any(resumed + [claim]), "no kill came after a checkpoint: nothing was resumed"
