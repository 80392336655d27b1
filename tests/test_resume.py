"""Resume engine: Range/If-Range resumption, identity checks, budgets and deadlines.

On the virtual clock (tests/vclock.py): stalls, backoffs, Retry-After and max_time take
no real time, and the elapsed times asserted are virtual; the stall, Retry-After and
max_time tests have real-clock twins (slow)."""
from __future__ import annotations

import hashlib
import json
import os
import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch import timing
from tests.faultserver import actions as A, make_body
from tests.timing_options import QUICK

pytestmark = [pytest.mark.timeout(60), pytest.mark.virtual_clock]   # conftest: the virtual clock


SIZE = 1 << 20
# Upper time bounds: whatever would end the wait if the behaviour under test failed (a
# backoff sleep, max_time) is made ALTERNATIVE seconds long, and the test asserts an
# elapsed time under ALTERNATIVE / 2.
ALTERNATIVE = 20.0


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def get(server, tmp_path, name="out.img", **options):
    target = tmp_path / name
    result = rawfetch.download(server.url("/img"), target, **{**QUICK, **options})
    return result, target


def ranges(server):
    return [(r.range, r.if_range) for r in server.requests]


@pytest.mark.parametrize("fault", [A.fin(at=300000), A.rst(at=300000)])
def test_cut_transfer_resumes_at_exact_offset_with_if_range(server, body, tmp_path, fault):
    server.script([fault, A.normal()])
    result, target = get(server, tmp_path)
    assert target.read_bytes() == body
    first, second = ranges(server)
    assert first == (None, None)
    held = int(second[0][len("bytes="):-1])
    assert second == ("bytes=%d-" % held, '"v1"')
    assert held <= 300000 and (fault.fault == "rst" or held == 300000)
    assert result.attempts == 2 and result.bytes == SIZE
    assert not os.path.exists(str(target) + ".part")


@pytest.mark.parametrize("clock", ["virtual", pytest.param("real", marks=pytest.mark.slow)])
def test_stall_is_detected_then_resumed(server, body, tmp_path, clock):
    server.script([A.stall(at=200000), A.normal()])
    result, target = get(server, tmp_path, idle_timeout=0.3, speed_limit=0)
    assert target.read_bytes() == body
    assert ranges(server)[1] == ("bytes=200000-", '"v1"')
    assert result.history[0].error == "IdleTimeout"


def test_server_ignoring_range_has_its_prefix_skipped(server, body, tmp_path):
    server.script([A.fin(at=100000), A.normal(ignore_range=True)])
    result, target = get(server, tmp_path)
    assert target.read_bytes() == body and result.restarts == 0


def test_changed_file_restarts_cleanly_in_file_mode(server, body, tmp_path):
    new = make_body(SIZE + 5, seed=9)
    server.script([A.fin(at=100000), A.replace(new, etag='"v2"')])
    result, target = get(server, tmp_path)
    assert target.read_bytes() == new
    assert result.restarts == 1
    assert ranges(server)[1] == ("bytes=100000-", '"v1"')


def test_changed_file_is_an_error_in_stream_mode(server, body):
    server.script([A.fin(at=100000), A.replace(make_body(SIZE, seed=9), etag='"v2"')])
    with rawfetch.open(server.url("/img"), **QUICK) as stream:
        with pytest.raises(E.ResourceChanged) as info:
            stream.read()
    assert info.value.exit_code == 91 and not info.value.retryable


def test_wrong_content_range_is_never_spliced(server, body, tmp_path):
    server.script([A.fin(at=100000), A.wrong_content_range(), A.normal()])
    result, target = get(server, tmp_path)
    assert target.read_bytes() == body
    assert [h.error for h in result.history] == ["IncompleteBody", "ProtocolError"]
    assert len(server.requests) == 3


def test_416_for_exactly_the_bytes_held_means_complete(server, body, tmp_path):
    target = tmp_path / "out.img"
    (tmp_path / "out.img.part").write_bytes(body)
    (tmp_path / "out.img.part.json").write_text(json.dumps(
        {"format": 2, "url": server.url("/img"), "total": SIZE, "etag": '"v1"',
         "last_modified": None, "verified": SIZE}))
    result = rawfetch.download(server.url("/img"), target, **QUICK)
    assert target.read_bytes() == body and result.resumed_from == SIZE
    assert ranges(server) == [("bytes=%d-" % SIZE, '"v1"')]


def test_404_is_one_request_and_leaves_nothing(server, tmp_path):
    server.script([A.status(404)])
    started = timing.now()
    with pytest.raises(E.HTTPStatusError) as info:   # a retry would first sleep ALTERNATIVE
        get(server, tmp_path, retries=10, retry_delay=ALTERNATIVE,
            retry_max_delay=ALTERNATIVE, retry_jitter=False)
    assert info.value.status == 404 and timing.now() - started < ALTERNATIVE / 2
    assert len(server.requests) == 1
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("clock", ["virtual", pytest.param("real", marks=pytest.mark.slow)])
def test_retry_after_is_honoured(server, body, tmp_path, clock):
    server.script([A.status(503, {"Retry-After": "1"}), A.normal()])
    result, target = get(server, tmp_path)
    first, second = server.requests
    assert second.time - first.time >= 0.95
    if clock == "virtual":   # the Retry-After and nothing else (no jitter on it)
        assert second.time - first.time <= 1.0 + QUICK["retry_max_delay"], second.time - first.time
    assert target.read_bytes() == body and result.history[0].error == "HTTPStatusError"


def test_retry_after_never_sleeps_past_max_time(server, tmp_path):
    server.script([A.status(503, {"Retry-After": "100"})])
    started = timing.now()
    with pytest.raises(E.HTTPStatusError) as info:   # sleeping would end in DeadlineExceeded
        get(server, tmp_path, max_time=ALTERNATIVE)
    assert timing.now() - started < ALTERNATIVE / 2
    assert "max_time" in str(info.value) and len(server.requests) == 1


def test_one_budget_over_every_reconnect(server, tmp_path):
    server.script([A.fin(at=0)])   # headers, then close: fuel-agent reconnected forever
    with pytest.raises(E.IncompleteBody) as info:
        get(server, tmp_path, retries=3)
    assert len(server.requests) == 4 and "gave up after 4 attempts" in str(info.value)
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("clock", ["virtual", pytest.param("real", marks=pytest.mark.slow)])
def test_max_time_bounds_a_server_that_stalls_forever(server, tmp_path, clock):
    server.script([A.stall(at=1000)])
    options = dict(retries=1000, idle_timeout=0.2, speed_limit=0, max_time=1.5)
    started = timing.now()
    with pytest.raises(E.FetchTimeout):
        get(server, tmp_path, **options)
    # The job stops at max_time (a backoff that would cross it fails at once), and every
    # attempt lasts at least idle_timeout, so at most max_time / idle_timeout + 1 attempts
    # fit; ignoring max_time would make all 1001 (or hit the test timeout).
    elapsed = timing.now() - started
    assert elapsed >= options["max_time"] - QUICK["retry_max_delay"]
    if clock == "virtual":
        assert elapsed < options["max_time"] + 1e-6, elapsed
    assert len(server.requests) <= options["max_time"] / options["idle_timeout"] + 1


def test_checksum_verified_across_a_resume(server, body, tmp_path):
    server.script([A.rst(at=500000), A.normal()])
    result, target = get(server, tmp_path, checksum=sha256(body))
    assert result.digest == sha256(body) and target.read_bytes() == body


@pytest.mark.parametrize("algo", ["md5", "sha512", "sha1"])
def test_any_hashlib_algorithm(server, body, tmp_path, algo):
    expected = "%s:%s" % (algo, hashlib.new(algo, body).hexdigest())
    assert get(server, tmp_path, checksum=expected)[0].digest == expected


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    with pytest.raises(E.ChecksumMismatch) as info:
        get(server, tmp_path, checksum="sha256:" + "0" * 64)
    assert info.value.exit_code == 90
    assert os.listdir(str(tmp_path)) == []


def test_bad_checksum_spec_is_invalid_before_connecting(server, tmp_path):
    for spec in ("sha256:zz", "nosuch:00", "sha256", "md5:" + "0" * 31):
        with pytest.raises(E.InvalidRequest):
            get(server, tmp_path, checksum=spec)
    assert server.connection_count == 0


def test_killed_run_is_resumed_by_the_next_one(server, body, tmp_path):
    server.script([A.fin(at=400000)])
    with pytest.raises(E.IncompleteBody):
        get(server, tmp_path, retries=0)
    part = tmp_path / "out.img.part"
    assert part.read_bytes() == body[:400000]
    assert json.loads((tmp_path / "out.img.part.json").read_text())["etag"] == '"v1"'
    server.script([A.normal()])
    result, target = get(server, tmp_path, checksum=sha256(body))
    assert target.read_bytes() == body and result.resumed_from == 400000
    assert server.requests[-1].range == "bytes=400000-"
    assert server.requests[-1].if_range == '"v1"'
    assert sorted(os.listdir(str(tmp_path))) == ["out.img"]


def test_part_from_another_url_is_not_trusted(server, body, tmp_path):
    (tmp_path / "out.img.part").write_bytes(b"x" * 1000)
    (tmp_path / "out.img.part.json").write_text(json.dumps(
        {"format": 2, "url": "http://elsewhere/img", "total": SIZE, "etag": '"v1"',
         "verified": 1000}))
    get(server, tmp_path)
    assert (tmp_path / "out.img").read_bytes() == body and server.requests[0].range is None


def test_no_validator_restarts_from_zero_in_file_mode(make_server, tmp_path):
    data = make_body(SIZE, seed=5)
    srv = make_server()
    srv.add("/img", data, etag=None, last_modified=None)
    srv.script([A.fin(at=300000), A.normal()])
    result, target = get(srv, tmp_path)
    assert target.read_bytes() == data and result.restarts == 1
    assert [r.range for r in srv.requests] == [None, None]


def test_no_validator_with_checksum_resumes(make_server, tmp_path):
    data = make_body(SIZE, seed=5)
    srv = make_server()
    srv.add("/img", data, etag=None, last_modified=None)
    srv.script([A.fin(at=300000), A.normal()])
    result, target = get(srv, tmp_path, checksum=sha256(data))
    assert target.read_bytes() == data
    assert [r.range for r in srv.requests] == [None, "bytes=300000-"]
    assert srv.requests[1].if_range is None


def test_last_modified_is_the_validator_without_etag(make_server, tmp_path):
    data = make_body(SIZE, seed=6)
    srv = make_server()
    srv.add("/img", data, etag=None)
    srv.script([A.fin(at=1000), A.normal()])
    get(srv, tmp_path)
    assert srv.requests[1].if_range == srv.resource("/img").last_modified


def test_failed_first_attempt_leaves_no_part(server, tmp_path):
    server.script([A.status(500)])
    with pytest.raises(E.HTTPStatusError):
        get(server, tmp_path, retries=2)
    assert len(server.requests) == 3 and os.listdir(str(tmp_path)) == []


def test_output_in_missing_directory_is_a_local_write_error(server, tmp_path):
    with pytest.raises(E.LocalWriteError) as info:
        rawfetch.download(server.url("/img"), tmp_path / "no" / "such" / "dir.img")
    assert info.value.exit_code == 23 and server.connection_count == 0


def test_stream_api_resumes_invisibly(server, body):
    server.script([A.rst(at=70000), A.fin(at=90000), A.stall(at=5000), A.normal()])
    with rawfetch.open(server.url("/img"), **{**QUICK, "idle_timeout": 0.3}) as stream:
        assert stream.size == SIZE and stream.tell() == 0
        head = stream.read(10)
        buffer = bytearray(65536)
        got = stream.readinto(buffer)
        rest = b"".join(stream)
        assert stream.tell() == SIZE
    assert head + bytes(buffer[:got]) + rest == body
    assert len(server.requests) == 4


def test_stream_open_raises_404_at_once(server):
    server.script([A.status(404)])
    with pytest.raises(E.HTTPStatusError):
        rawfetch.open(server.url("/img"), **QUICK)


def test_chunked_original_resumes_with_total_from_content_range(server, body, tmp_path):
    server.script([A.fin(at=100000, chunked=True), A.normal()])
    result, target = get(server, tmp_path)
    assert target.read_bytes() == body and server.requests[1].range == "bytes=100000-"


def test_retry_policy_is_immutable_with_history():
    policy = rawfetch.RetryPolicy(retries=2, retry_delay=1, retry_max_delay=4)
    error = E.ReceiveError("reset")
    later = policy.increment(error, offset=10, elapsed=0.5, progress=0)
    assert policy.history == () and len(later.history) == 1
    assert later.history[0].error == "ReceiveError" and later.history[0].offset == 10
    assert not later.exhausted
    third = later.increment(error, 10, 1, 0).increment(error, 10, 2, 0)
    assert third.exhausted
    assert all(0 <= third.backoff() <= 4 for _ in range(200))
    assert third.backoff(retry_after=3.5) >= 3.5
    refunded = policy.increment(error, offset=5 << 20, elapsed=1, progress=5 << 20)
    assert refunded.charged == 0 and len(refunded.history) == 1


def test_no_backoff_right_after_an_attempt_that_made_progress():
    policy = rawfetch.RetryPolicy(retries=3, retry_delay=5, retry_max_delay=5)
    progressed = policy.increment(E.ReceiveError("reset"), offset=8 << 20, elapsed=1,
                                  progress=8 << 20)
    assert progressed.backoff() == 0.0
    assert progressed.backoff(retry_after=2) >= 2          # a server's Retry-After still holds
    stuck = progressed.increment(E.ConnectError("refused"), 8 << 20, 2, progress=0)
    assert 0 <= stuck.backoff() <= 5 and stuck.charged == 1
    trickled = policy.increment(E.ReceiveError("reset"), offset=1000, elapsed=1, progress=1000)
    assert trickled.backoff() == 0.0 and trickled.charged == 1   # retried at once, but charged


def test_digest_restarts_with_the_file_when_the_object_changes(server, tmp_path):
    new = make_body(SIZE, seed=12)
    server.script([A.fin(at=400000), A.replace(new, etag='"v2"')])
    result, target = get(server, tmp_path, checksum=sha256(new))
    assert target.read_bytes() == new and result.digest == sha256(new)


def test_hash_worker_matches_inline_hashing():
    from rawfetch.digest import Worker, new_hasher
    data = make_body(5 << 20, seed=4)
    worker = Worker(new_hasher("sha256"))
    views = [memoryview(data)[i:i + 65536] for i in range(0, len(data), 65536)]
    for view in views:
        worker.update(view)
        worker.drain(keep=1)
    assert worker.hexdigest() == hashlib.sha256(data).hexdigest()
    worker.reset().update(b"abc")
    assert worker.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    worker.close()
