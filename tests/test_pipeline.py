"""The image pipeline: mirrors, streamed gunzip, in-place output, the fuel-agent adapter,
events and logs."""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch.compat import HttpUrl, fuel_options
from tests.faultserver import actions as A, make_body
from tests.inprocess import run_cli
from tests.timing_options import QUICK

# Every test on the virtual clock (tests/vclock.py): stalls, backoffs and timeouts take
# virtual seconds; the command runs in-process (tests/inprocess.py) on the same clock.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("vclock")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW = make_body(3 << 20, seed=11)[: 1 << 20] * 3   # compressible but not trivial
GZ = gzip.compress(RAW, compresslevel=1)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def mirror(make_server, body):
    srv = make_server()
    srv.add("/img", body, etag='"v1"')
    return srv


# ---------------------------------------------------------------- mirrors
def test_dead_primary_hands_over_to_the_mirror(server, mirror, body, tmp_path):
    server.script([A.status(404)])
    result = rawfetch.download(server.url("/img"), tmp_path / "img", urls=[mirror.url("/img")],
                               **QUICK)
    assert (tmp_path / "img").read_bytes() == body
    assert len(server.requests) == 1 and result.segments[0].url == mirror.url("/img")


def test_mirror_dying_mid_body_continues_on_the_next_with_range(server, mirror, body, tmp_path):
    server.script([A.rst(at=300000)])            # keeps dying: uses up its share
    events = []
    result = rawfetch.download(server.url("/img"), tmp_path / "img", urls=[mirror.url("/img")],
                               retries=4, on_event=events.append, **QUICK)
    assert (tmp_path / "img").read_bytes() == body
    held = int(mirror.requests[0].range[6:-1])
    assert held > 0 and mirror.requests[0].if_range == '"v1"'   # same strong ETag: continue
    assert [s.url for s in result.segments] == [server.url("/img"), mirror.url("/img")]
    assert result.segments[0].end == result.segments[1].start == held
    assert any(e["event"] == "mirror" for e in events)


def test_mirror_with_other_validator_restarts_cleanly(server, make_server, body, tmp_path):
    other = make_server()
    other.add("/img", body, etag='"other"')
    server.script([A.fin(at=300000)])
    result = rawfetch.download(server.url("/img"), tmp_path / "img", urls=[other.url("/img")],
                               retries=2, **QUICK)
    assert (tmp_path / "img").read_bytes() == body
    # If-Range with the first server's ETag: the mirror answers 200 with its own version,
    # which is taken as a clean restart in the same request.
    assert other.requests[0].if_range == '"v1"' and result.restarts == 1
    assert len(other.requests) == 1


def test_mirror_with_checksum_continues_without_if_range(server, make_server, body, tmp_path):
    other = make_server()
    other.add("/img", body, etag=None, last_modified=None)
    server.script([A.fin(at=300000)])
    rawfetch.download(server.url("/img"), tmp_path / "img", urls=[other.url("/img")],
                      retries=2, checksum=sha256(body), **QUICK)
    assert (tmp_path / "img").read_bytes() == body
    assert other.requests[0].range == "bytes=300000-" and other.requests[0].if_range is None


def test_mirrors_share_one_budget(server, mirror, tmp_path):
    server.script([A.fin(at=0)])
    mirror.script([A.fin(at=0)])
    with pytest.raises(E.IncompleteBody):
        rawfetch.download(server.url("/img"), tmp_path / "img", urls=[mirror.url("/img")],
                          retries=5, **QUICK)
    assert len(server.requests) + len(mirror.requests) == 6
    assert not (tmp_path / "img").exists()


# ---------------------------------------------------------------- gunzip
@pytest.fixture
def gz_server(make_server):
    srv = make_server()
    srv.add("/img.gz", GZ, etag='"gz1"')
    return srv


def test_gunzip_through_faults_writes_the_image(gz_server, tmp_path):
    gz_server.script([A.rst(at=50000), A.fin(at=10000, ignore_range=True), A.normal()])
    result = rawfetch.download(gz_server.url("/img.gz"), tmp_path / "img", gunzip=True,
                               checksum=sha256(GZ), **QUICK)
    assert (tmp_path / "img").read_bytes() == RAW
    assert (result.bytes, result.written, result.digest) == (len(GZ), len(RAW), sha256(GZ))


@pytest.mark.parametrize("blob,words", [(GZ[:-7], "truncated"), (GZ + b"junk", "garbage"),
                                        (GZ[:-8] + b"\0\0\0\0" + GZ[-4:], "corrupt")],
                         ids=["truncated", "garbage", "corrupt"])
def test_bad_gzip_is_its_own_error_and_leaves_nothing(make_server, tmp_path, blob, words):
    srv = make_server()
    srv.add("/img.gz", blob)
    with pytest.raises(E.GunzipError) as info:
        rawfetch.download(srv.url("/img.gz"), tmp_path / "img", gunzip=True, **QUICK)
    assert words in str(info.value) and info.value.exit_code == 92
    assert os.listdir(str(tmp_path)) == []


def test_gunzip_stream_api_and_multi_member(make_server):
    srv = make_server()
    srv.add("/m.gz", GZ + gzip.compress(b"tail") + b"\0" * 8)
    with rawfetch.open(srv.url("/m.gz"), gunzip=True, **QUICK) as reader:
        assert reader.read() == RAW + b"tail"


def test_gunzip_restart_after_change_rewrites_from_the_start(gz_server, tmp_path):
    new_raw = RAW[::-1]
    new_gz = gzip.compress(new_raw, compresslevel=1)
    gz_server.script([A.fin(at=40000), A.replace(new_gz, etag='"gz2"')])
    result = rawfetch.download(gz_server.url("/img.gz"), tmp_path / "img", gunzip=True, **QUICK)
    assert (tmp_path / "img").read_bytes() == new_raw and result.restarts == 1


def test_cli_gunzip_to_stdout_through_faults(gz_server):
    gz_server.script([A.rst(at=30000), A.stall(at=20000), A.normal()])
    proc = run_cli(gz_server.url("/img.gz"), "-o", "-", "--gunzip", "--idle-timeout", "0.3",
                   "--retry-delay", "0.01", "--sha256", hashlib.sha256(GZ).hexdigest())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == RAW


def test_cli_truncated_gzip_exit_92(make_server, tmp_path):
    srv = make_server()
    srv.add("/img.gz", GZ[:5000])
    proc = run_cli(srv.url("/img.gz"), "-o", str(tmp_path / "img"), "--gunzip")
    assert proc.returncode == 92 and not (tmp_path / "img").exists()
    assert b"Traceback" not in proc.stderr


# ---------------------------------------------------------------- in-place output
def test_in_place_overwrites_an_existing_file_and_cuts_its_tail(server, body, tmp_path):
    target = tmp_path / "disk.img"
    target.write_bytes(b"\xff" * (len(body) + 4096))
    server.script([A.rst(at=100000), A.normal()])
    rawfetch.download(server.url("/img"), target, in_place=True, **QUICK)
    assert target.read_bytes() == body
    assert sorted(os.listdir(str(tmp_path))) == ["disk.img"]   # no .part, no sidecar


def test_character_device_is_written_in_place(server):
    result = rawfetch.download(server.url("/img"), "/dev/null", **QUICK)
    assert result.bytes == 1 << 20 and not os.path.exists("/dev/null.part")


def test_in_place_needs_an_existing_target(server, tmp_path):
    with pytest.raises(E.LocalWriteError):
        rawfetch.download(server.url("/img"), tmp_path / "nope", in_place=True)


def test_directory_and_dangling_symlink_are_refused(server, tmp_path):
    with pytest.raises(E.LocalWriteError) as info:
        rawfetch.download(server.url("/img"), tmp_path)
    assert "directory" in str(info.value)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing" / "target")
    with pytest.raises(E.LocalWriteError) as info:
        rawfetch.download(server.url("/img"), link)
    assert "dangling symlink" in str(info.value) and server.connection_count == 0


# ---------------------------------------------------------------- fuel-agent adapter
def test_http_url_adapter_resumes_and_yields_full_chunks(server, body):
    server.script([A.rst(at=150000), A.fin(at=700000), A.normal()])
    target = HttpUrl(server.url("/img"), **QUICK)
    chunks = list(target)
    assert b"".join(chunks) == body and target.processed_bytes == len(body)
    assert target.length == len(body)
    assert [len(c) for c in chunks] == [1 << 20]   # 1 MiB data_chunk_size
    assert server.requests[1].range is not None and server.requests[2].range is not None


def test_http_url_adapter_target_and_errors(server, body, tmp_path):
    HttpUrl(server.url("/img"), chunk_size=100000).target(str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == body
    server.script([A.status(404)])
    with pytest.raises(E.HTTPStatusError):
        HttpUrl(server.url("/img"), **fuel_options(http_max_retries=3, http_retry_delay=0.01))
    assert len(server.requests) == 2   # one for target(), one for the 404: never retried


def test_fuel_options_mapping():
    opts = fuel_options(http_max_retries=30, http_retry_delay=2.0, http_request_timeout=10.0)
    assert opts["retries"] == 30 and opts["retry_delay"] == 2.0
    assert opts["idle_timeout"] == opts["connect_timeout"] == 10.0


# ---------------------------------------------------------------- events and logs
def test_events_cover_every_step(server, body, tmp_path):
    server.script([A.fin(at=200000), A.normal()])
    events = []
    rawfetch.download(server.url("/img"), tmp_path / "img", on_event=events.append,
                      checksum=sha256(body), **QUICK)
    names = [e["event"] for e in events]
    for name in ("request", "resolve", "connect", "response", "error", "backoff", "resume",
                 "done"):
        assert name in names, name
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["offset"] == 200000
    done = events[-1]
    assert done["event"] == "done" and done["bytes"] == len(body)
    assert done["digest"] == sha256(body)


def test_tls_event(make_server, body):
    srv = make_server(tls="ok")
    srv.add("/img", body)
    events = []
    with rawfetch.open(srv.url("/img"), cafile=srv.ca_path, on_event=events.append) as stream:
        stream.read()
    tls = next(e for e in events if e["event"] == "tls")
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")


def test_log_json_lines(server, tmp_path):
    server.script([A.rst(at=100000), A.normal()])
    log = tmp_path / "events.jsonl"
    proc = run_cli(server.url("/img"), "-o", str(tmp_path / "img"), "--log-json", str(log),
                   "--retry-delay", "0.01", "-q")
    assert proc.returncode == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[-1]["event"] == "done" and isinstance(events[-1]["bytes"], int)
    error = next(e for e in events if e["event"] == "error")
    assert isinstance(error["offset"], int) and error["error"] == "ReceiveError"


def test_logging_records(server, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rawfetch"):
        rawfetch.download(server.url("/img"), tmp_path / "img", **QUICK)
    messages = [r.getMessage() for r in caplog.records if r.name == "rawfetch"]
    assert any(m.startswith("connect ") for m in messages)
    assert any(m.startswith("done ") for m in messages)


# ---------------------------------------------------------------- zero-copy path
@pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice needs Linux and Python 3.10+")
def test_plain_download_goes_through_splice_and_resumes(server, body, tmp_path, monkeypatch):
    calls = []
    real = os.splice

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "splice", counting)   # the real splice, counted
    server.script([A.rst(at=300000), A.fin(at=200000), A.normal()])
    rawfetch.download(server.url("/img"), tmp_path / "img", **QUICK)
    assert (tmp_path / "img").read_bytes() == body and calls
    calls.clear()
    # with a checksum the kernel still splices; the worker hashes the .part read back
    server.script([A.fin(at=200000), A.normal()])
    result = rawfetch.download(server.url("/img"), tmp_path / "img2", checksum=sha256(body),
                               **QUICK)
    assert calls and (tmp_path / "img2").read_bytes() == body
    assert result.digest == sha256(body) and result.attempts == 2
    calls.clear()
    with pytest.raises(rawfetch.ChecksumMismatch):
        rawfetch.download(server.url("/img"), tmp_path / "img3", checksum="sha256:" + "0" * 64,
                          **QUICK)
    assert calls and not (tmp_path / "img3").exists()


@pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice needs Linux and Python 3.10+")
def test_splice_falls_back_to_copying_when_the_output_refuses(tmp_path):
    from rawfetch.splice import Splicer
    path = tmp_path / "append-only"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND)   # splice gives EINVAL
    splicer = Splicer.create(fd, str(path))
    try:
        os.write(splicer.write_fd, b"x" * 1000)
        splicer.drain(1000)
        assert splicer.broken and path.read_bytes() == b"x" * 1000
    finally:
        splicer.close()
        os.close(fd)
