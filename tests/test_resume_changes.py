"""What a resume does when the server's object changed under it, over real sockets (the
in-repo fault server): the verdicts of judge.py carried out end to end. Issue 23.

On the virtual clock (tests/vclock.py), like every resume test."""
from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import os

import pytest

import rawfetch
from rawfetch import errors as E
from tests.faultserver import actions as A, make_body
from tests.timing_options import QUICK

pytestmark = [pytest.mark.timeout(60), pytest.mark.virtual_clock]   # conftest: the virtual clock


SIZE = 1 << 20


def ranges(server):
    return [(r.range, r.if_range) for r in server.requests]


def test_other_length_under_the_same_etag_restarts_from_zero(server, tmp_path):
    """A well-formed 206 for another total (same ETag, the If-Range matched) is a change:
    restart from zero and end byte-exact on the new object, not retry the same Range."""
    new = make_body(SIZE - 12345, seed=7)
    server.script([A.fin(at=300000), A.replace(new, etag='"v1"'), A.normal()])
    target = tmp_path / "out.img"
    events = []
    result = rawfetch.download(server.url("/img"), target, on_event=events.append,
                               retries=3, **QUICK)
    assert target.read_bytes() == new and result.restarts == 1
    assert ranges(server) == [(None, None), ("bytes=300000-", '"v1"'), (None, None)]
    why = [e["why"] for e in events if e["event"] == "restart"]
    assert len(why) == 1 and "length changed from 1,048,576 to 1,036,231" in why[0]


def test_other_length_under_the_same_etag_is_resource_changed_in_stream_mode(server):
    server.script([A.fin(at=300000), A.replace(make_body(SIZE + 1, seed=7), etag='"v1"')])
    with rawfetch.open(server.url("/img"), retries=3, **QUICK) as stream:
        with pytest.raises(E.ResourceChanged) as info:
            stream.read()
    assert info.value.exit_code == 91 and "length changed" in info.value.message
    assert len(server.requests) == 2


def test_sidecar_total_disagreeing_with_the_server_restarts_from_zero(server, body,
                                                                      tmp_path):
    """Issue 20 item 5: a sidecar whose total differs from the server's under the same
    ETag made every rerun fail with exit 8; it restarts from zero instead."""
    (tmp_path / "out.img.part").write_bytes(body[:500000])
    (tmp_path / "out.img.part.json").write_text(json.dumps(
        {"format": 2, "url": server.url("/img"), "total": SIZE + 999, "etag": '"v1"',
         "last_modified": None, "verified": 500000}))
    target = tmp_path / "out.img"
    result = rawfetch.download(server.url("/img"), target, retries=3, **QUICK)
    assert target.read_bytes() == body and result.restarts == 1
    assert ranges(server) == [("bytes=500000-", '"v1"'), (None, None)]


def now_http_date() -> str:
    return email.utils.formatdate(usegmt=True)


def test_same_second_replacement_never_splices(make_server, tmp_path):
    """Issue 23 item 1 (the Apache/nginx/caddy cells): the first answer's Last-Modified is
    its Date, so neither it nor an mtime-derived ETag proves anything; the file replaced
    (same size, same tag) before the resume must not be spliced: restart from zero."""
    old, new = make_body(SIZE, seed=3), make_body(SIZE, seed=4)
    srv = make_server()
    stamp = now_http_date()
    srv.add("/img", old, etag='"mtime-size"', last_modified=stamp)
    srv.script([A.fin(at=300000), A.replace(new, etag='"mtime-size"', last_modified=stamp),
                A.normal()])
    target = tmp_path / "out.img"
    result = rawfetch.download(srv.url("/img"), target, **QUICK)
    assert target.read_bytes() == new and result.restarts == 1
    assert ranges(srv) == [(None, None), (None, None)]


@pytest.mark.parametrize("etag", ['W/"v1"', '"v1"'])
def test_weak_or_same_second_validator_is_resource_changed_in_stream_mode(make_server, etag):
    srv = make_server()
    srv.add("/img", make_body(SIZE, seed=3), etag=etag,
            last_modified=now_http_date() if etag == '"v1"' else None)
    srv.script([A.fin(at=300000), A.normal()])
    with rawfetch.open(srv.url("/img"), **QUICK) as stream:
        with pytest.raises(E.ResourceChanged) as info:
            stream.read()
    assert "no strong validator" in info.value.message and len(srv.requests) == 1


def test_weak_etag_is_never_sent_and_a_checksum_allows_the_resume(make_server, tmp_path):
    data = make_body(SIZE, seed=3)
    srv = make_server()
    srv.add("/img", data, etag='W/"v1"')    # Last-Modified a day old: a strong date
    srv.script([A.fin(at=300000), A.normal()])
    result = rawfetch.download(srv.url("/img"), tmp_path / "out.img", checksum="sha256:"
                               + hashlib.sha256(data).hexdigest(), **QUICK)
    assert (tmp_path / "out.img").read_bytes() == data and result.restarts == 0
    assert ranges(srv) == [(None, None), ("bytes=300000-", None)]   # no date beside W/


def test_changed_weak_etag_under_a_checksum_resume_restarts(make_server, tmp_path):
    old, new = make_body(SIZE, seed=3), make_body(SIZE, seed=4)
    srv = make_server()
    srv.add("/img", old, etag='W/"v1"')
    srv.script([A.fin(at=300000), A.replace(new, etag='W/"v2"'), A.normal()])
    result = rawfetch.download(srv.url("/img"), tmp_path / "out.img", checksum="sha256:"
                               + hashlib.sha256(new).hexdigest(), **QUICK)
    assert (tmp_path / "out.img").read_bytes() == new and result.restarts == 1
    assert ranges(srv) == [(None, None), ("bytes=300000-", None), (None, None)]


def test_416_without_content_range_after_a_strong_if_range_is_complete(server, body,
                                                                       tmp_path):
    """Issue 23 item 4: Apache and lighttpd answer bytes=N- (N = total) with a bare 416."""
    (tmp_path / "out.img.part").write_bytes(body)
    (tmp_path / "out.img.part.json").write_text(json.dumps(
        {"format": 2, "url": server.url("/img"), "total": SIZE, "etag": '"v1"',
         "last_modified": None, "verified": SIZE}))
    server.script([A.status(416)])
    result = rawfetch.download(server.url("/img"), tmp_path / "out.img", **QUICK)
    assert (tmp_path / "out.img").read_bytes() == body and result.resumed_from == SIZE
    assert ranges(server) == [("bytes=%d-" % SIZE, '"v1"')]


def test_forced_gzip_is_refused_with_exit_61(make_server, tmp_path):
    data = gzip.compress(make_body(SIZE, seed=3))
    srv = make_server()
    srv.add("/img", data)
    srv.script([A.normal(headers={"Content-Encoding": "gzip"})])
    with pytest.raises(E.ContentEncodingError) as info:
        rawfetch.download(srv.url("/img"), tmp_path / "out.img", **QUICK)
    assert info.value.exit_code == 61 and "Content-Encoding: gzip" in info.value.message
    assert len(srv.requests) == 1 and os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("path,decompress", [("/img.gz", "none"), ("/img", "auto"),
                                             ("/img", "gzip")])
def test_gzip_encoding_is_the_file_or_decoded(make_server, tmp_path, path, decompress):
    plain = make_body(SIZE, seed=3)
    data = gzip.compress(plain)
    srv = make_server()
    srv.add(path, data)
    srv.script([A.normal(headers={"Content-Encoding": "gzip"})])
    rawfetch.download(srv.url(path), tmp_path / "out", decompress=decompress, **QUICK)
    expected = data if decompress == "none" else plain
    assert (tmp_path / "out").read_bytes() == expected


def test_command_says_why_a_stream_cannot_resume(make_server, tmp_path):
    """-o - (stream mode) with only a weak ETag: exit 91, one line naming the reason and
    the way out (a checksum), never a traceback."""
    import subprocess
    import sys
    srv = make_server()
    srv.add("/img", make_body(SIZE, seed=3), etag='W/"v1"', last_modified=None)
    srv.script([A.fin(at=300000), A.normal()])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "rawfetch", srv.url("/img"), "-o", "-",
                           "--retry-delay", "0.01"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=root),
                          timeout=30)
    err = proc.stderr.decode()
    assert proc.returncode == 91 and err.count("\n") == 1, err
    assert "no strong validator" in err and "--sha256" in err
