"""The image pipeline end to end through the command: xz/bzip2/auto through faults,
corrupt streams as exit 92 with no file, checksum files fetched inside the job's budget,
and the rack flags as a user types them."""
from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import json
import lzma

import pytest

from tests.faultserver import FaultServer, actions as A, make_body
from tests.test_cli import run
from tests.timing_options import QUICK_ARGV, STEP, TICK

# Every test on the virtual clock (tests/vclock.py): stalls, backoffs and timeouts take
# virtual seconds; the command runs in-process (tests/inprocess.py) on the same clock.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("vclock")]
RAW = make_body(3 << 20, seed=31)[: 1 << 20] * 3           # compressible, not trivial
PACK = {"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress}
RAW_SHA = hashlib.sha256(RAW).hexdigest()


@functools.lru_cache(maxsize=None)
def packed_raw(kind: str) -> bytes:
    """RAW packed by `kind`, once per run: packing dominates these tests' CPU time."""
    return PACK[kind](RAW)


def served(kind: str, srv: FaultServer) -> bytes:
    packed = packed_raw(kind)
    srv.add("/img." + kind, packed, etag='"%s"' % kind)
    return packed


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2"])
@pytest.mark.parametrize("mode", ["named", "auto"])
def test_each_codec_through_faults_to_a_file(server, tmp_path, kind, mode):
    packed = served(kind, server)
    cut = len(packed) // 3
    server.script([A.fin(at=cut), A.rst(at=7000), A.normal()])
    out = tmp_path / "img"
    proc = run(server.url("/img." + kind), "-o", str(out), "-q", *QUICK_ARGV,
               "--decompress", kind if mode == "named" else "auto",
               "--sha256", hashlib.sha256(packed).hexdigest())
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == RAW_SHA
    starts = [int(r.range[6:-1]) for r in server.requests[1:]]
    # after a FIN every byte sent arrived; a RST may discard some still in flight
    assert starts[0] == cut and cut <= starts[1] <= cut + 7000 and len(starts) == 2


def test_auto_passes_an_uncompressed_image_through(server, body, tmp_path):
    out = tmp_path / "img"
    proc = run(server.url("/img"), "-o", str(out), "-q", "--decompress", "auto")
    assert proc.returncode == 0 and out.read_bytes() == body


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2"])
@pytest.mark.parametrize("damage", ["truncated", "corrupt", "garbage"])
def test_a_broken_stream_is_exit_92_and_no_file(server, tmp_path, kind, damage):
    packed = bytearray(packed_raw(kind))
    if damage == "truncated":
        packed = packed[: len(packed) * 2 // 3]
    elif damage == "corrupt":
        packed[len(packed) // 2] ^= 0x55
    else:
        packed += b"trailing garbage"
    server.add("/bad", bytes(packed), etag='"bad"')
    out = tmp_path / "img"
    proc = run(server.url("/bad"), "-o", str(out), "--decompress", kind, *QUICK_ARGV)
    assert proc.returncode == 92, proc.stderr
    assert b"Traceback" not in proc.stderr and proc.stderr.count(b"\n") == 1
    assert not out.exists() and not (tmp_path / "img.part").exists()
    assert len(server.requests) == 1                       # a decoding error is final


def test_xz_needing_more_than_the_memory_limit_is_exit_92(server, tmp_path):
    packed = lzma.compress(RAW, preset=9)                  # needs ~65 MiB to decode
    server.add("/big.xz", packed)
    proc = run(server.url("/big.xz"), "-o", str(tmp_path / "img"), "--decompress", "xz",
               "--xz-memlimit", "1M")
    assert proc.returncode == 92 and b"--xz-memlimit" in proc.stderr


def checksum_server(srv: FaultServer, line: str) -> None:
    srv.add("/SHA256SUMS", ("# release\n%s\n" % line).encode(), etag='"sums"')


@pytest.mark.parametrize("style", ["gnu", "bsd"])
def test_checksum_url_verifies_the_image_through_faults(server, body, tmp_path, style):
    sha = hashlib.sha256(body).hexdigest()
    line = "%s *img" % sha if style == "gnu" else "SHA256 (img) = %s" % sha
    checksum_server(server, "0" * 64 + "  other.iso\n" + line)
    server.script([A.fin(at=5)], path="/SHA256SUMS")       # the checksum file is cut too
    server.script([A.rst(at=300000), A.normal()], path="/img")
    server.script([A.normal()], path="/SHA256SUMS")
    server.script([A.fin(at=5), A.normal()], path="/SHA256SUMS")
    log = tmp_path / "events.jsonl"
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), *QUICK_ARGV,
               "--checksum-url", server.url("/SHA256SUMS"), "--log-json", str(log))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "img").read_bytes() == body and ("sha256:" + sha).encode() in proc.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.index("checksum") < max(i for i, e in enumerate(events)
                                         if e["event"] == "request" and e["url"].endswith("/img"))
    assert [e["attempt"] for e in events if e["event"] == "request"] == [1, 2, 3, 4]


def test_checksum_file_without_the_entry_is_exit_94(server, tmp_path):
    checksum_server(server, "%s  other.iso" % ("a" * 64))
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--checksum-url",
               server.url("/SHA256SUMS"))
    assert proc.returncode == 94 and b"'img'" in proc.stderr and b"SHA256SUMS" in proc.stderr
    assert [r.path for r in server.requests] == ["/SHA256SUMS"]   # the image is never asked


def test_checksum_file_fetch_counts_against_max_time(vclock, server, tmp_path):
    checksum_server(server, "a" * 64)
    server.script([A.stall(at=0)], path="/SHA256SUMS")
    watch = vclock.stopwatch()
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--checksum-url",
               server.url("/SHA256SUMS"), "--max-time", "1", "--idle-timeout", "30")
    elapsed = watch.stop()   # max_time, not the idle timeout
    assert proc.returncode == 28 and 1 - TICK <= elapsed < 1 + STEP < 30
    assert not (tmp_path / "img").exists()


def test_limit_rate_and_speed_limit_conflict_is_a_usage_error(server, tmp_path):
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--limit-rate", "100K",
               "--speed-limit", "200000")
    assert proc.returncode == 2 and b"--limit-rate" in proc.stderr and server.requests == []


def test_rack_flags_reach_the_engine(server, body, tmp_path):
    log = tmp_path / "events.jsonl"
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--splay", "0.2",
               "--splay-seed", "node-7", "--limit-rate", "4M", "--mirror-order", "hash",
               "--log-json", str(log))
    assert proc.returncode == 0 and (tmp_path / "img").read_bytes() == body
    splay = [json.loads(line) for line in log.read_text().splitlines()
             if '"splay"' in line]
    assert len(splay) == 1 and 0 <= splay[0]["seconds"] <= 0.2 and splay[0]["seeded"]
