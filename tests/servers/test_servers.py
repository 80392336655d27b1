"""The resume rules against real web servers, through a fault relay (issue 23).

Every scenario runs against every server (apache2, lighttpd, caddy, nginx, http.server)
and asserts what the user cares about: the exact bytes (sha256), the command's exit code,
and the Range / If-Range each server received (logged by the relay). A scenario a server
cannot be configured for (http.server has no configuration) skips with that reason.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import List, Optional, Tuple

import pytest

from tests.servers.daemons import Daemon, write
from tests.servers.relay import PASS, Fault, Relay

pytestmark = [pytest.mark.servers, pytest.mark.timeout(60)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20
SIZE = 3 * MiB
CUT = MiB + 12345                 # body bytes the relay forwards before a fault
OLD = time.time() - 3600          # mtime of a file published an hour ago: strong validators
RUN_TIMEOUT = 30.0                # s: one client run; the options below end it far sooner
COMMON = ["-q", "--retries", "4", "--retry-delay", "0.05", "--retry-max-delay", "0.1",
          "--idle-timeout", "1", "--connect-timeout", "2", "--max-time", "25"]
STALL = 10.0                      # s: a stall outlasting --idle-timeout
TRICKLE_RATE = 64 << 10           # B/s after CUT: checkpoints land, the run never ends first
# lighttpd's stat cache (stat-cache-engine "simple", the default) goes on serving the
# replaced file -- old validator, old bytes, whole -- for about a second after a rename.
STALE_AFTER_RENAME = {"lighttpd"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha_file(path: str, start: int = 0) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def body(seed: int, size: int = SIZE) -> bytes:
    return hashlib.shake_256(b"servers-%d" % seed).digest(size)


def env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1")


def run(url: str, out: str, *extra: str) -> Tuple[int, str]:
    """The command, as a user runs it: (exit code, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "rawfetch", url, "-o", out] + COMMON
                          + list(extra), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env(), timeout=RUN_TIMEOUT)
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


class Cell:
    """One test's files on the shared server, its relay and its output directory."""

    def __init__(self, daemon: Daemon, relay: Relay, name: str, tmp: str) -> None:
        self.daemon, self.relay, self.name, self.tmp = daemon, relay, name, tmp
        self.out = os.path.join(tmp, "out.img")

    def need(self, *features: str) -> None:
        missing = [f for f in features if f not in self.daemon.features]
        if missing:
            pytest.skip("%s cannot be configured for: %s" % (self.daemon.name,
                                                             ", ".join(missing)))

    def path(self, prefix: str = "files", file: str = "img") -> str:
        return "/%s/%s/%s" % (prefix, self.name, file)

    def put(self, data: bytes, prefix: str = "files", file: str = "img",
            mtime: Optional[float] = OLD) -> str:
        write(os.path.join(self.daemon.root, self.path(prefix, file).lstrip("/")), data,
              mtime)
        return self.path(prefix, file)

    def url(self, path: str) -> str:
        return self.relay.url(path)

    def validator(self, index: int = 0) -> Optional[str]:
        """What If-Range should carry after response `index`: its strong ETag, else (no
        ETag at all) its Last-Modified."""
        head = self.relay.responses[index]
        etag = head.get("etag")
        if etag is not None:
            return None if etag.startswith("W/") else etag
        return head.get("last-modified")

    def identity_only(self) -> None:
        """rawfetch asked for identity and got it (compression is enabled on /files/)."""
        assert all(h.get("accept-encoding") == "identity" for h in self.relay.requests)
        assert all(h.get("content-encoding") in (None, "identity")
                   for h in self.relay.responses)

    def left(self) -> List[str]:
        return sorted(os.listdir(self.tmp))


@pytest.fixture
def c(daemon: Daemon, relay: Relay, cell: str, tmp_path) -> Cell:
    return Cell(daemon, relay, cell, str(tmp_path))


def resumed_range(c: Cell, path: str, held: int) -> Tuple[str, str, Optional[str]]:
    return (path, "bytes=%d-" % held, c.validator(0))


# --------------------------------------------------------------------------- clean, faults
def test_clean(c: Cell) -> None:
    data = body(1)
    path = c.put(data)
    code, err = run(c.url(path), c.out)
    assert code == 0, err
    assert sha_file(c.out) == sha(data) and c.left() == ["out.img"]
    assert c.relay.seen() == [(path, None, None)]
    c.identity_only()


@pytest.mark.parametrize("kind", ["fin", "rst", "stall", "trickle"])
def test_fault_then_resume(c: Cell, kind: str) -> None:
    data = body(2)
    path = c.put(data)
    c.relay.script([Fault(kind, CUT, seconds=STALL, rate=2000), PASS])
    extra = ["--speed-limit", "100000", "--speed-time", "0.5"] if kind == "trickle" else []
    code, err = run(c.url(path), c.out, *extra)
    assert code == 0, err
    assert sha_file(c.out) == sha(data)
    first, second = c.relay.seen()
    assert first == (path, None, None)
    if kind == "rst" and second[1] is None:   # the RST discarded every unread byte
        assert second == (path, None, None)
        return
    held = int(second[1][len("bytes="):-1])
    assert second == resumed_range(c, path, held)
    if kind in ("fin", "stall"):
        assert held == CUT
    elif kind == "rst":
        assert 0 < held <= CUT
    else:
        assert CUT <= held < SIZE
    expected = 200 if "range" not in c.daemon.features else 206
    assert c.relay.responses[1].status == expected
    c.identity_only()


# ------------------------------------------------------------------ the file is replaced
@pytest.mark.parametrize("size", [SIZE, SIZE + 4321, SIZE - 4321],
                         ids=["same-size", "bigger", "smaller"])
def test_replaced_between_cut_and_resume(c: Cell, size: int) -> None:
    old, new = body(3), body(4, size)
    path = c.put(old)
    c.relay.script([Fault("fin", CUT, before=lambda: c.put(new, mtime=OLD + 60)), PASS])
    code, err = run(c.url(path), c.out)
    assert code == 0, err
    seen = c.relay.seen()
    assert seen[:2] == [(path, None, None), resumed_range(c, path, CUT)]
    if one_version(c, old, new) == "new":
        assert c.relay.responses[1].status == 200   # If-Range failed: the new version
        assert len(seen) == 2


def one_version(c: Cell, old: bytes, new: bytes) -> str:
    """The output is one whole version: the new one, or (a server whose cache serves
    the old file after a rename, with the old validator) the old one. Never a mix."""
    got = sha_file(c.out)
    if c.daemon.name in STALE_AFTER_RENAME and got == sha(old):
        validators = {(h.get("etag"), h.get("last-modified")) for h in c.relay.responses}
        assert len(validators) == 1     # it said it was the old version, every time
        return "old"
    assert got == sha(new)
    return "new"


def test_replaced_within_the_same_second(c: Cell) -> None:
    """The issue's 6 bad cells: the first answer's Last-Modified equals its Date, the file
    is replaced (same size, same mtime second: same mtime-based ETag) before the resume.
    Nothing proves the held bytes: restart from zero, no Range, the new file exact."""
    old, new = body(5), body(6)
    for _ in range(3):   # the first answer must come within the file's second
        second = float(int(time.time()) + 1)
        time.sleep(second - time.time() + 0.01)
        path = c.put(old, mtime=second)
        c.relay.script([Fault("fin", CUT, before=lambda: c.put(new, mtime=second)), PASS])
        code, err = run(c.url(path), c.out)
        first = c.relay.responses[0]
        if first.get("date") == first.get("last-modified"):
            break
        for name in c.left():
            os.unlink(os.path.join(c.tmp, name))
    else:
        pytest.fail("could not get an answer within the second of the change")
    assert code == 0, err
    one_version(c, old, new)
    assert c.relay.seen() == [(path, None, None), (path, None, None)]


def test_replaced_between_runs_after_kill_9(c: Cell) -> None:
    old, new = body(7), body(8)
    path = c.put(old)
    held = killed_run(c, path)
    validator = c.validator(0)
    c.put(new, mtime=OLD + 60)
    c.relay.script([PASS])
    code, err = run(c.url(path), c.out)
    assert code == 0, err
    assert c.left() == ["out.img"]
    assert c.relay.seen() == [(path, "bytes=%d-" % held, validator)]
    if one_version(c, old, new) == "new":
        assert c.relay.responses[0].status == 200


def killed_run(c: Cell, path: str) -> int:
    """The command trickled by the relay after CUT bytes, killed -9 once its sidecar
    verifies at least CUT (a checkpoint every 2 s, README "File mode: guarantees and
    limits"): returns the verified length, which is what a rerun resumes from."""
    c.relay.script([Fault("trickle", CUT, rate=TRICKLE_RATE)])
    proc = subprocess.Popen([sys.executable, "-m", "rawfetch", c.url(path), "-o", c.out,
                             "-q", "--idle-timeout", "20"], stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env(), start_new_session=True)
    part = c.out + ".part"
    end = time.monotonic() + RUN_TIMEOUT
    try:
        while time.monotonic() < end and verified(part) < CUT:
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(RUN_TIMEOUT)
    held = verified(part)
    assert CUT <= held <= os.path.getsize(part) < SIZE
    with open(part + ".json") as handle:
        assert json.load(handle)["total"] == SIZE
    return held


def verified(part: str) -> int:
    """What the sidecar says was fsynced (0 before the first checkpoint)."""
    try:
        with open(part + ".json") as handle:
            return json.load(handle)["verified"]
    except (OSError, ValueError, KeyError):  # not written yet, or mid-replace
        return 0


def test_already_complete_fetches_nothing_again(c: Cell) -> None:
    """A run killed after its last byte, before the rename: the next run asks for
    bytes=SIZE- and takes the 416 (with or without Content-Range) as complete."""
    data = body(9)
    path = c.put(data)
    held = killed_run(c, path)
    validator = c.validator(0)
    # Complete the .part and let its sidecar claim every byte: the state a run leaves
    # when killed between its final checkpoint and its rename (output.PartFile.commit).
    with open(c.out + ".part", "r+b") as handle:
        handle.seek(held)
        handle.write(data[held:])
    with open(c.out + ".part.json") as handle:
        state = json.load(handle)
    with open(c.out + ".part.json", "w") as handle:
        json.dump(dict(state, verified=SIZE), handle)
    c.relay.script([PASS])
    code, err = run(c.url(path), c.out)
    assert code == 0, err
    assert sha_file(c.out) == sha(data) and c.left() == ["out.img"]
    assert c.relay.seen() == [(path, "bytes=%d-" % SIZE, validator)]
    answer = c.relay.responses[0]
    if "range" in c.daemon.features:
        assert answer.status == 416
        assert answer.get("content-range") in (None, "bytes */%d" % SIZE)
    else:   # http.server ignores Range: its 200 is complete at once, body unread
        assert answer.status == 200


# ---------------------------------------------------------------------- Content-Encoding
def test_forced_gzip_is_refused_then_decoded_on_request(c: Cell) -> None:
    c.need("forced")
    plain = body(10)
    c.daemon.place_forced(os.path.join(c.daemon.root, "forced", c.name), plain)
    path = c.path("forced")
    code, err = run(c.url(path), c.out)
    assert code == 61 and "Content-Encoding: gzip" in err, err
    assert c.left() == []
    assert c.relay.responses[0].get("content-encoding") == "gzip"
    code, err = run(c.url(path), c.out, "--decompress", "auto")
    assert code == 0, err
    assert sha_file(c.out) == sha(plain)


def test_gz_file_served_with_its_encoding_is_saved_as_is(c: Cell) -> None:
    c.need("gz")
    packed = gzip.compress(body(11), mtime=0)
    path = c.put(packed, prefix="gz", file="img.gz")
    out = os.path.join(c.tmp, "img.gz")
    c.relay.script([Fault("fin", 30000), PASS])
    code, err = run(c.url(path), out)
    assert code == 0, err
    assert sha_file(out) == sha(packed)
    assert c.relay.responses[0].get("content-encoding") == "gzip"
    held = int(c.relay.seen()[1][1][len("bytes="):-1])
    assert 0 < held <= 30000    # caddy sends it chunked: the relay counted framing too


# ---------------------------------------------------------------- configuration variants
def test_no_etag_resumes_with_the_date(c: Cell) -> None:
    c.need("noetag")
    data = body(12)
    path = c.put(data, prefix="noetag")
    c.relay.script([Fault("fin", CUT), PASS])
    code, err = run(c.url(path), c.out)
    assert code == 0, err
    assert sha_file(c.out) == sha(data)
    assert "etag" not in c.relay.responses[0].fields
    assert c.relay.seen() == [(path, None, None),
                              (path, "bytes=%d-" % CUT, c.relay.responses[0].get(
                                  "last-modified"))]
    assert c.relay.responses[1].status == 206


def test_redirect_then_cut(c: Cell) -> None:
    c.need("redirect")
    data = body(13)
    target = c.put(data)
    start = "/old/%s" % c.name
    c.relay.script([PASS, Fault("fin", CUT), PASS])
    code, err = run(c.url(start), c.out)
    assert code == 0, err
    assert sha_file(c.out) == sha(data)
    seen = c.relay.seen()
    assert seen[:2] == [(start, None, None), (target, None, None)]
    assert seen[-1] == (target, "bytes=%d-" % CUT, c.validator(1))
    assert c.relay.responses[-1].status == 206


@pytest.mark.parametrize("case", ["404", "403"])
def test_error_status(c: Cell, case: str) -> None:
    if case == "403":
        c.need("forbid")
        path = c.put(body(14), prefix="secret")
    else:
        path = c.path(file="missing")
    code, err = run(c.url(path), c.out)
    assert code == 22 and case in err, err
    assert c.relay.seen() == [(path, None, None)] and c.left() == []


def test_directory_listing_is_saved_as_served(c: Cell) -> None:
    c.need("listing")
    c.put(body(15, 1000), prefix="dir", file="a.img")
    path = "/dir/%s/" % c.name
    code, err = run(c.url(path), c.out)
    assert code == 0, err
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (c.daemon.port, path)) as answer:
        direct = answer.read()
    assert b"a.img" in direct and sha_file(c.out) == sha(direct)


# ------------------------------------------------------------------------- past 4 GiB
BIG = (1 << 32) + 2 * MiB         # sparse: 4 GiB of holes, data around the 2^32 mark
DATA_AT = (1 << 32) - MiB
HELD_BIG = (1 << 32) + 512 * 1024


def test_over_4_gib_resumes_past_2_32(c: Cell) -> None:
    """A sparse image over 4 GiB: an earlier run's .part ends past 2^32, the resume is cut
    again; both Ranges are past 2^32 and the bytes around the mark are exact."""
    c.need("range")
    tail = body(16, BIG - DATA_AT)
    path = c.put(b"")
    source = os.path.join(c.daemon.root, path.lstrip("/"))
    sparse(source, BIG, tail)
    os.utime(source, (OLD, OLD))
    sparse(c.out + ".part", HELD_BIG, tail[:HELD_BIG - DATA_AT])
    probe = urllib.request.Request("http://127.0.0.1:%d%s" % (c.daemon.port, path),
                                   headers={"Range": "bytes=0-0"})
    with urllib.request.urlopen(probe) as answer:
        fields = {k.lower(): v for k, v in answer.headers.items()}
    with open(c.out + ".part.json", "w") as handle:   # as the earlier run recorded it
        json.dump({"format": 2, "url": c.url(path), "total": BIG, "etag": fields.get("etag"),
                   "last_modified": fields.get("last-modified"), "date": fields.get("date"),
                   "verified": HELD_BIG}, handle)
    c.relay.script([Fault("fin", 300000), PASS])
    try:
        code, err = run(c.url(path), c.out)
        assert code == 0, err
        assert os.path.getsize(c.out) == BIG
        assert sha_file(c.out, DATA_AT) == sha(tail)
        validator = fields.get("etag") or fields.get("last-modified")
        assert c.relay.seen() == [(path, "bytes=%d-" % HELD_BIG, validator),
                                  (path, "bytes=%d-" % (HELD_BIG + 300000), validator)]
        assert [h.status for h in c.relay.responses] == [206, 206]
    finally:
        os.unlink(source)


def sparse(path: str, size: int, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.seek(DATA_AT)
        handle.write(data)
    os.chmod(path, 0o644)
