"""Byte-exactness as a rule: a check never strands received bytes, the end-of-job
invariants catch what would otherwise be kept, and a checksum mismatch on bytes assembled
from several attempts is fetched once more from zero."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch.pipeline import check_invariants
from tests.faultserver import FaultServer, actions as A, make_body
from tests.test_cli import run
from tests.timing_options import quick

pytestmark = pytest.mark.timeout(60)
SIZE = (3 << 20) + 17            # past the 1 MiB splice pipe, odd on purpose
BODY = make_body(SIZE, seed=10)
DIGEST = hashlib.sha256(BODY).hexdigest()
SPEED = quick(speed_limit=200000, speed_time=0.5, idle_timeout=5)   # the low-speed rule on


@pytest.fixture
def origin():
    with FaultServer() as srv:
        srv.add("/img", BODY, etag='"x1"')
        yield srv


def starts(server):
    return [int(r.range[6:-1]) if r.range else 0 for r in server.requests]


# A trickle whose gap equals the low-speed rule's check interval (speed_time / 10) puts a
# byte's arrival on the check's due time; on the old engine ~4 runs in 5 corrupted the file.
ALIGNED = 0.5 / 10


GAPS = pytest.mark.parametrize("gap", [ALIGNED] * 4 + [2 * ALIGNED],
                               ids=["aligned-1", "aligned-2", "aligned-3", "aligned-4", "double"])


@GAPS
def test_low_speed_abort_mid_splice_keeps_every_byte_in_place(vclock, origin, tmp_path, gap):
    """The reported corruption: bytes spliced into the pipe when the low-speed check fired
    were left there and shifted the next attempt's bytes (exit 0, wrong file). On the
    virtual clock the trickle's sends and the check fall due at the same instant."""
    low_speed_abort_mid_splice(origin, tmp_path, gap)


@pytest.mark.slow
@GAPS
def test_low_speed_abort_mid_splice_on_the_real_clock(origin, tmp_path, gap):
    """The same on the real clock, where the two meet by the scheduler's timing."""
    low_speed_abort_mid_splice(origin, tmp_path, gap)


def low_speed_abort_mid_splice(origin: FaultServer, tmp_path, gap: float) -> None:
    origin.script([A.trickle(at=(2 << 20) + 5, gap=gap), A.normal()])
    out = tmp_path / "img"
    proc = run(origin.url("/img"), "-o", str(out), "-q", "--speed-limit", "200000",
               "--speed-time", "0.5", "--idle-timeout", "5")
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == DIGEST
    # the resume asked for exactly the bytes on disk: nothing stranded, nothing doubled
    assert starts(origin)[1] > (2 << 20) and len(origin.requests) == 2


def test_a_stray_byte_in_the_splice_pipe_fails_loudly_and_keeps_nothing(origin, tmp_path):
    from rawfetch.splice import Splicer
    out = tmp_path / "img"
    with open(out, "wb") as handle:
        splicer = Splicer.create(handle.fileno(), str(out))
        if splicer is None:
            pytest.skip("os.splice needs Linux and Python >= 3.10")
        try:
            os.write(splicer.write_fd, b"x")
            stream = rawfetch.open(origin.url("/img"))
            assert stream.read() == BODY
            with pytest.raises(E.InvariantViolation) as info:
                check_invariants(stream, SIZE, splicer)
        finally:
            splicer.close()
    assert info.value.exit_code == 96 and "1 bytes left in the splice pipe" in str(info.value)


def test_delivered_bytes_that_disagree_with_the_stream_fail_loudly(origin):
    with rawfetch.open(origin.url("/img")) as stream:
        stream.read()
        with pytest.raises(E.InvariantViolation, match="delivered"):
            check_invariants(stream, SIZE - 1)


def test_checksum_mismatch_on_assembled_bytes_is_fetched_again_from_zero(origin, tmp_path):
    """A cut, then a resume whose bytes are wrong under the same validators (a lying
    cache): the assembled file fails its checksum, one clean attempt fixes it."""
    corrupt = bytearray(BODY)
    corrupt[SIZE - 10] ^= 0xFF
    same = dict(etag='"x1"', last_modified=origin.resource("/img").last_modified)
    origin.script([A.fin(at=1 << 20), A.replace(bytes(corrupt), then=A.normal(), **same),
                   A.replace(BODY, then=A.normal(), **same)])
    events = []
    result = rawfetch.download(origin.url("/img"), tmp_path / "img", checksum="sha256:" + DIGEST,
                               on_event=events.append, **SPEED)
    assert hashlib.sha256((tmp_path / "img").read_bytes()).hexdigest() == DIGEST
    assert starts(origin) == [0, 1 << 20, 0] and result.restarts == 1
    kinds = [e["event"] for e in events]
    assert kinds.count("error") == 2 and events[kinds.index("restart")]["why"].startswith(
        "checksum mismatch on bytes assembled from 2 pieces")


def test_checksum_mismatch_on_a_clean_single_attempt_is_final(origin, tmp_path):
    wrong = "sha256:" + "0" * 64
    with pytest.raises(E.ChecksumMismatch) as info:
        rawfetch.download(origin.url("/img"), tmp_path / "img", checksum=wrong, **SPEED)
    assert info.value.exit_code == 90 and len(origin.requests) == 1
    assert not (tmp_path / "img").exists() and not (tmp_path / "img.part").exists()


def test_checksum_refetch_happens_once_then_the_mismatch_is_final(origin, tmp_path):
    origin.script([A.fin(at=1 << 20), A.normal()])
    with pytest.raises(E.ChecksumMismatch):
        rawfetch.download(origin.url("/img"), tmp_path / "img", checksum="md5:" + "0" * 32,
                          **SPEED)
    assert starts(origin) == [0, 1 << 20, 0]   # the clean refetch, and no more


def test_stream_mode_cannot_refetch_so_its_mismatch_is_final(origin):
    origin.script([A.fin(at=1 << 20), A.normal()])
    with pytest.raises(E.ChecksumMismatch):
        with rawfetch.open(origin.url("/img"), checksum="md5:" + "0" * 32, **SPEED) as stream:
            stream.read()
    assert starts(origin) == [0, 1 << 20]


def test_reading_a_closed_stream_is_an_error_not_a_new_download(origin):
    stream = rawfetch.open(origin.url("/img"))
    stream.read(10)
    stream.close()
    with pytest.raises(E.InvalidRequest, match="closed stream"):
        stream.read(10)
    assert len(origin.requests) == 1


def test_httpurl_stays_exhausted(origin):
    from rawfetch.compat import HttpUrl
    chunks = HttpUrl(origin.url("/img"))
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == DIGEST
    assert list(chunks) == [] and len(origin.requests) == 1


def test_log_json_on_a_full_disk_is_a_write_error(origin, tmp_path):
    proc = run(origin.url("/img"), "-o", str(tmp_path / "img"), "--log-json", "/dev/full")
    assert proc.returncode == 23, proc.stderr
    assert b"Traceback" not in proc.stderr and b"--log-json /dev/full" in proc.stderr
    assert not (tmp_path / "img").exists()


def test_hashing_failure_is_reported_not_a_hang():
    from rawfetch.digest import Worker, new_hasher
    worker = Worker(new_hasher("sha256"))
    released = memoryview(bytearray(16))
    released.release()                 # hashlib refuses a released buffer
    try:
        worker.update(released)
        with pytest.raises(E.FetchError, match="computing the sha256 checksum of the downloaded bytes failed"):
            worker.drain()
        with pytest.raises(E.FetchError):
            worker.hexdigest()
    finally:
        worker.close()


@pytest.mark.parametrize("options,match", [
    (dict(idle_timeout=float("inf")), "finite"),
    (dict(max_time=float("inf")), "finite"),
    (dict(speed_time=float("nan")), "finite"),
    (dict(checksum="shake_128:" + "0" * 32), "no fixed digest length"),
])
def test_bad_options_are_refused_before_anything_is_sent(origin, tmp_path, options, match):
    with pytest.raises(E.InvalidRequest, match=match):
        rawfetch.download(origin.url("/img"), tmp_path / "img", **options)
    assert origin.requests == []


def test_socket_creation_failure_is_a_connect_error_not_an_oserror(origin, tmp_path):
    """EMFILE at socket(): the child exhausts its descriptors, then downloads."""
    import subprocess
    import sys
    script = (
        "import os, resource, sys, rawfetch\n"
        "from rawfetch.client import request\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "held = []\n"
        "try:\n"
        "    while True: held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError: pass\n"
        "try:\n"
        "    request('GET', sys.argv[1])\n"
        "except rawfetch.FetchError as exc:\n"
        "    print(type(exc).__name__, exc.exit_code, exc)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script, origin.url("/img")],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root),
                          timeout=30)
    assert proc.stdout.startswith("ConnectError 7 "), proc.stdout + proc.stderr
    assert "Too many open files" in proc.stdout


def test_reset_right_after_accept_leaks_no_socket(tmp_path):
    """A peer that resets as soon as it accepts, with events on (the connect event used
    to call getpeername on a possibly dead socket): a FetchError, and no fd left open."""
    with FaultServer() as srv:
        srv.add("/img", BODY)
        srv.script([A.raw(b"", close="rst")])
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            with pytest.raises(E.FetchError) as info:
                rawfetch.request("GET", srv.url("/img"), on_event=lambda e: None)
            assert info.value.retryable
        assert len(os.listdir("/proc/self/fd")) == before


def test_sidecar_written_before_the_first_byte_of_each_identity(origin, tmp_path):
    """download() records identities through the consumer path, not by polling."""
    seen = []

    def watch(event):
        sidecar = tmp_path / "img.part.json"
        if event["event"] == "resume" and sidecar.exists():
            seen.append(json.loads(sidecar.read_text())["etag"])

    origin.script([A.rst(at=1 << 20), A.normal()])
    rawfetch.download(origin.url("/img"), tmp_path / "img", on_event=watch, **SPEED)
    assert seen == ['"x1"']


def test_oserror_is_mapped_in_one_place():
    """errors.translate/mapped is the one OSError/ssl mapping; any other `except OSError`
    in rawfetch/ is cleanup or "not an I/O failure", and says so on its own line."""
    import re
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rawfetch")
    bare = []
    sources = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root)
                     for name in names if name.endswith(".py"))
    assert len(sources) > 20   # every module, the compat package's included
    for path in sources:
        if path == os.path.join(root, "errors.py"):
            continue
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if re.search(r"except \(?[\w., ]*\bOSError\b", line) and "#" not in line:
                    bare.append("%s:%d: %s" % (os.path.relpath(path, root), number,
                                               line.strip()))
    assert bare == []
