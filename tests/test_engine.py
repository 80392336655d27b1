"""The single-attempt engine against the fault server: every fault class, every bound.

On the virtual clock (tests/vclock.py): the elapsed times asserted are virtual seconds,
and where nothing but the bound under test takes time the upper bound is the bound
itself. The stall, trickle (low-speed) and max_time tests have real-clock twins (slow)."""
from __future__ import annotations


import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch import timing
from tests.faultserver import actions as A
from tests.timing_options import QUICK

pytestmark = [pytest.mark.timeout(30), pytest.mark.virtual_clock]   # conftest: the virtual clock


# the shared bounded waits, without QUICK's short backoff: engine tests keep the default retry
FAST = {name: QUICK[name] for name in ("idle_timeout", "connect_timeout", "dns_timeout")}
# Upper time bounds: the bound under test is small, and whatever would end the wait if it
# failed (another timeout, the server giving up) is made ALTERNATIVE seconds long; the
# test then asserts an elapsed time under ALTERNATIVE / 2 and, where it differs, the
# error class. Safe on a loaded machine, and still fails if the bound stops working.
ALTERNATIVE = 20.0


def fetch(url: str, **options) -> bytes:
    with rawfetch.request("GET", url, **{**FAST, **options}) as response:
        return response.read()


def expect(error, url: str, **options) -> E.FetchError:
    with pytest.raises(error) as info:
        fetch(url, **options)
    return info.value


def test_plain_get_is_byte_exact_and_sends_our_headers(server, body):
    with rawfetch.request("GET", server.url("/img")) as response:
        assert (response.status, response.content_length) == (200, len(body))
        assert response.headers["ETag"] == '"v1"' and response.headers.get("etag") == '"v1"'
        data = response.read()
    assert data == body
    seen = server.requests[0]
    assert seen.method == "GET" and seen.target == "/img"
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["connection"] == "close"
    assert seen.headers["host"] == "127.0.0.1:%d" % server.port


def test_readinto_fills_caller_buffer_and_iter_bytes_chunks(server, body):
    with rawfetch.request("GET", server.url("/img")) as response:
        buffer = bytearray(1000)
        got = response.readinto(buffer)
        assert 0 < got <= 1000 and bytes(buffer[:got]) == body[:got]
        rest = b"".join(response.iter_bytes(4096))
    assert bytes(buffer[:got]) + rest == body


def test_head_has_no_body(server):
    with rawfetch.request("HEAD", server.url("/img")) as response:
        assert response.status == 200 and response.read() == b""


def test_chunked_body_is_decoded(server, body):
    server.script([A.normal(chunked=True)])
    assert fetch(server.url("/img")) == body


def test_rst_mid_body_is_receive_error_with_offset(server):
    server.script([A.rst(at=300000)])
    error = expect(E.ReceiveError, server.url("/img"))
    assert error.retryable and error.exit_code == 56
    assert error.offset is not None and error.offset <= 300000
    assert "of 1,048,576" in str(error)


def test_fin_mid_body_is_incomplete_body_naming_counts(server):
    server.script([A.fin(at=5000)])
    error = expect(E.IncompleteBody, server.url("/img"))
    assert (error.received, error.expected) == (5000, 1 << 20)
    assert "after 5,000 of 1,048,576 bytes" in str(error)
    assert error.exit_code == 18 and error.retryable


def test_fin_mid_chunked_body_is_incomplete(server):
    server.script([A.fin(at=5000, chunked=True)])
    expect(E.IncompleteBody, server.url("/img"))


@pytest.mark.parametrize("clock", ["virtual", pytest.param("real", marks=pytest.mark.slow)])
def test_stall_mid_body_trips_idle_timeout_in_bound(server, clock):
    server.script([A.stall(at=1000, seconds=ALTERNATIVE)])   # then FIN: IncompleteBody
    started = timing.now()
    error = expect(E.IdleTimeout, server.url("/img"), idle_timeout=0.5, speed_limit=0)
    elapsed = timing.now() - started
    assert 0.45 <= elapsed < ALTERNATIVE / 2
    if clock == "virtual":
        assert 0.5 <= elapsed < 0.5 + 1e-6, elapsed
    assert error.exit_code == 28 and error.retryable


def test_silence_after_accept_trips_idle_timeout_in_head(server):
    server.script([A.silence(ALTERNATIVE)])   # then FIN: a ProtocolError, not a timeout
    started = timing.now()
    error = expect(E.IdleTimeout, server.url("/img"), idle_timeout=0.4)
    elapsed = timing.now() - started
    assert 0.35 <= elapsed < ALTERNATIVE / 2
    assert 0.4 <= elapsed < 0.4 + 1e-6, elapsed   # virtual
    assert "response" in str(error)


def test_stall_after_headers(server):
    server.script([A.stall(at=0)])
    with rawfetch.request("GET", server.url("/img"), idle_timeout=0.4) as response:
        assert response.status == 200
        with pytest.raises(E.IdleTimeout):
            response.read()


@pytest.mark.parametrize("clock", ["virtual", pytest.param("real", marks=pytest.mark.slow)])
def test_trickle_never_trips_idle_but_trips_low_speed(server, clock):
    server.script([A.trickle(at=100, gap=0.05, step=1)])
    started = timing.now()
    error = expect(E.LowSpeed, server.url("/img"), idle_timeout=ALTERNATIVE, speed_limit=1000,
                   speed_time=0.6, max_time=ALTERNATIVE)   # else DeadlineExceeded
    elapsed = timing.now() - started
    assert 0.55 <= elapsed < ALTERNATIVE / 2
    if clock == "virtual":   # judged at a sample (every speed_time / SPEED_SAMPLES)
        assert 0.6 <= elapsed <= 0.6 + 0.6 / timing.SPEED_SAMPLES + 1e-6, elapsed
    assert "1000 bytes/s" in str(error)


@pytest.mark.parametrize("clock", ["virtual", pytest.param("real", marks=pytest.mark.slow)])
def test_max_time_cuts_a_stall_in_progress(server, clock):
    server.script([A.stall(at=1000)])
    started = timing.now()
    error = expect(E.DeadlineExceeded, server.url("/img"), idle_timeout=ALTERNATIVE,
                   max_time=0.5, speed_limit=0)   # else IdleTimeout
    elapsed = timing.now() - started
    assert 0.45 <= elapsed < ALTERNATIVE / 2
    if clock == "virtual":
        assert 0.5 <= elapsed < 0.5 + 1e-6, elapsed
    assert not error.retryable and error.exit_code == 28


def test_max_time_cuts_a_slow_resolver():
    def slow(host, port):
        timing.sleep(ALTERNATIVE)   # in rawfetch's daemon worker thread
        return ["127.0.0.1"]
    started = timing.now()
    with pytest.raises(E.DeadlineExceeded):   # else DNSTimeout
        fetch("http://slow.test/x", resolver=slow, dns_timeout=ALTERNATIVE, max_time=0.3)
    assert timing.now() - started < ALTERNATIVE / 2
    assert 0.3 <= timing.now() - started < 0.3 + 1e-6   # virtual


@pytest.mark.parametrize("code,retryable", [(503, True), (429, True), (500, True),
                                            (404, False), (403, False), (410, False)])
def test_status_errors_carry_status_and_retryability(server, code, retryable):
    server.script([A.status(code, {"Retry-After": "2"}, body=b"nope")])
    with rawfetch.request("GET", server.url("/img")) as response:
        assert response.status == code
        with pytest.raises(E.HTTPStatusError) as info:
            response.raise_for_status()
    assert (info.value.status, info.value.retryable) == (code, retryable)
    assert info.value.retry_after == 2.0 and info.value.exit_code == 22


def test_redirects_are_followed_and_counted(server, body):
    server.script([A.redirect(302, "/img?hop=1"), A.redirect(307, "img?hop=2"), A.normal()])
    with rawfetch.request("GET", server.url("/start")) as response:
        assert response.read() == body
        assert response.url.endswith("/img?hop=2")
    assert [r.target for r in server.requests] == ["/start", "/img?hop=1", "/img?hop=2"]


def test_redirect_loop_stops_at_max_redirs(server):
    server.script([A.redirect(301, "/loop")])
    expect(E.TooManyRedirects, server.url("/loop"), max_redirs=3)
    assert len(server.requests) == 4


def test_credentials_are_not_sent_to_another_origin(server, make_server, body):
    other = make_server()
    other.add("/img", body)
    server.script([A.redirect(302, other.url("/img"))])
    headers = {"Authorization": "Bearer secret", "Cookie": "a=b", "X-Keep": "yes"}
    assert fetch(server.url("/img"), headers=headers) == body
    assert server.requests[0].headers["authorization"] == "Bearer secret"
    seen = other.requests[0].headers
    assert "authorization" not in seen and "cookie" not in seen and seen["x-keep"] == "yes"


def test_redirect_to_other_scheme_is_refused(server):
    server.script([A.redirect(302, "ftp://127.0.0.1/x")])
    expect(E.UnsafeRedirect, server.url("/img"))


def test_invalid_header_never_opens_a_connection(server):
    for headers in ({"X-A": "b\r\nInjected: 1"}, {"Bad Name": "x"}, {"X": "nul\x00"}):
        expect(E.InvalidRequest, server.url("/img"), headers=headers)
    expect(E.InvalidRequest, server.url("/img") + "\r\nX: y")
    assert server.connection_count == 0


def test_raw_framing_fault_is_protocol_error(server):
    server.script([A.raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhelloXX0\r\n\r\n")])
    expect(E.ProtocolError, server.url("/img"))


def test_empty_reply_is_protocol_error(server):
    server.script([A.raw(b"")])
    error = expect(E.ProtocolError, server.url("/img"))
    assert "without a response" in str(error) and error.retryable


def test_connection_refused_is_connect_error():
    error = expect(E.ConnectError, "http://127.0.0.1:9/x")
    assert error.exit_code == 7 and error.retryable


def test_all_addresses_blackholed_is_connect_timeout(blackhole):
    port = blackhole("127.0.0.2")
    started = timing.now()
    error = expect(E.ConnectTimeout, "http://127.0.0.2:%d/x" % port, connect_timeout=0.5,
                   max_time=ALTERNATIVE)   # else DeadlineExceeded
    elapsed = timing.now() - started
    assert 0.45 <= elapsed < ALTERNATIVE / 2 and error.exit_code == 28
    assert 0.5 <= elapsed < 0.5 + 1e-6, elapsed   # virtual


def test_happy_eyeballs_skips_a_blackholed_first_address(server, blackhole, body):
    blackhole("127.0.0.2", server.port)
    pin = "img.test:%d:127.0.0.2,127.0.0.1" % server.port
    started = timing.now()
    assert fetch("http://img.test:%d/img" % server.port, resolve=[pin],
                 connect_timeout=ALTERNATIVE) == body
    assert timing.now() - started < ALTERNATIVE / 2   # the stagger, not connect_timeout
    assert server.requests[0].headers["host"] == "img.test:%d" % server.port
    from rawfetch.net import ADDRESS_MEMORY
    import socket
    ordered = ADDRESS_MEMORY.order([(socket.AF_INET, ("127.0.0.2", server.port)),
                                    (socket.AF_INET, ("127.0.0.1", server.port))])
    assert ordered[0][1][0] == "127.0.0.1"   # the slow address now goes last


def test_refused_first_address_moves_on_at_once(server, body):
    pin = "img.test:%d:127.0.0.3,127.0.0.1" % server.port
    started = timing.now()
    assert fetch("http://img.test:%d/img" % server.port, resolve=[pin],
                 connect_timeout=ALTERNATIVE) == body
    assert timing.now() - started < ALTERNATIVE / 2   # not held until connect_timeout
