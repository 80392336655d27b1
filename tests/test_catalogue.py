"""Catalogue of hostile responses, served verbatim by the fault server over a real socket.

Every case goes through the public API (`rawfetch.request("GET", url, idle_timeout=CASE_IDLE)` and
`.read()`) twice: the whole response in one send, and one byte per send (cases larger than
BYTEWISE_CAP are served whole only). Both must give the expected outcome: an exact error
class, or for the lenient cases the exact status and body. Each run must also end fast (no
waiting for the idle timeout) and the client must hang up at once (the server sees the
close while the caller still holds the error). The second half proves, with tracemalloc,
that endless or enormous input keeps memory under a small fixed bound.
"""
from __future__ import annotations

import tracemalloc
from typing import Any, Iterator, List, NamedTuple, Optional, Tuple, Union

import pytest

import rawfetch
from rawfetch import errors as E, timing
from rawfetch.http11 import (MAX_CHUNK_LINE, MAX_CHUNK_SIZE_DIGITS, MAX_HEAD, MAX_HEADERS,
                             MAX_INTERIM, MAX_LENGTH_DIGITS, MAX_LINE, MAX_TRAILER_BYTES)
from tests.faultserver import FaultServer, actions as A
from tests.timing_options import STEP

# Every case on the virtual clock (tests/vclock.py): elapsed times below are virtual, and
# a case ends within STEP of its start: no timer fired (not idle_timeout, not a hold),
# however loaded the machine is.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("vclock")]

KiB, MiB = 1024, 1024 * 1024
BYTEWISE_CAP = 4 * KiB     # one send per byte costs ~15 us; bigger cases are served whole
CASE_IDLE = 10.0           # s; idle_timeout of every request here: never what ends a case
CASE_BOUND = CASE_IDLE / 2  # s; the server sees the client hang up well before that
MEMORY_BOUND = 2 * MiB     # tracemalloc peak allowed while a server floods the client
FLOOD = 48 * MiB           # bytes the server tries to send in the endless cases


class Ok(NamedTuple):
    """A lenient case: the response is accepted with exactly this status and body."""
    body: bytes = b""
    status: int = 200
    reason: Optional[str] = None   # None: not checked


Expected = Union[Ok, type]


class Case(NamedTuple):
    id: str
    data: bytes
    expected: Expected
    method: str = "GET"
    match: str = ""                # substring the error message must contain


def head(*lines: Union[str, bytes], version: bytes = b"HTTP/1.1") -> bytes:
    """Status line (a leading "200 OK" gets the version) + fields + the blank line."""
    raw = [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    if raw and raw[0][:1].isdigit():
        raw[0] = version + b" " + raw[0]
    return b"\r\n".join(raw) + b"\r\n\r\n"


def cl(value: Union[str, bytes], *more: Union[str, bytes]) -> bytes:
    value = value.encode("latin-1") if isinstance(value, str) else value
    return head("200 OK", b"Content-Length: " + value, *more)


CHUNKED = head("200 OK", "Transfer-Encoding: chunked")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HELLO = Ok(b"hello")
P = E.ProtocolError
INC = E.IncompleteBody
EXIT_CODES = {P: 8, INC: 18, E.EmptyReply: 52, E.IncompleteHead: 18}  # curl's meanings


def chunked(*lines: bytes) -> bytes:
    return CHUNKED + b"".join(lines)


CASES: List[Case] = [
    # ------------------------------------------------------------ garbage and HTTP/0.9
    Case("empty-reply", b"", E.EmptyReply, match="without a response"),
    Case("http09-html", b"<html><body>hello</body></html>\n", P, match="HTTP/"),
    Case("http09-blank-line", b"<html>\r\n\r\nbody", P),
    Case("plain-text-line", b"hello world\r\n\r\n", P),
    Case("json", b'{"ok": true}\n', P),
    Case("tls-alert-on-http-port", b"\x15\x03\x01\x00\x02\x02\x46", P),
    Case("nul-bytes", b"\x00" * 64, P),
    Case("lowercase-http", b"http/1.1 200 OK\r\n\r\n", P),
    Case("leading-blank-line", b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", P),
    Case("leading-space", b" HTTP/1.1 200 OK\r\n\r\n", P),
    Case("head-cut-mid-line", b"HTTP/1.1 200 OK\r\nContent-Le", E.IncompleteHead,
         match="middle of the"),
    Case("head-cut-before-blank-line", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
         E.IncompleteHead),
    Case("head-cut-after-version", b"HTTP/1.1", E.IncompleteHead),
    # ------------------------------------------------------------ status lines
    Case("status-2000", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", P),
    Case("status-20", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", P),
    Case("http2-status", b"HTTP/2 200\r\ncontent-length: 0\r\n\r\n", P),
    Case("http12-status", b"HTTP/1.2 200 OK\r\n\r\n", P),
    Case("http10-space", b"HTTP/1.0  200 OK\r\n\r\n", P),
    Case("status-no-space-200OK", b"HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n", P),
    Case("status-600", b"HTTP/1.1 600 Odd\r\n\r\n", P),
    Case("status-099", b"HTTP/1.1 099 Odd\r\n\r\n", P),
    Case("status-letters", b"HTTP/1.1 2OO OK\r\n\r\n", P),
    Case("status-101", head("101 Switching Protocols", "Upgrade: h2c") + head("200 OK"), P),
    Case("reason-nul", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", P),
    Case("reason-esc", b"HTTP/1.1 200 \x1b[2JOK\r\nContent-Length: 0\r\n\r\n", P),
    Case("missing-reason-accepted", b"HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello",
         Ok(b"hello", reason="")),
    Case("empty-reason-accepted", b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nhello",
         Ok(b"hello", reason="")),
    Case("http10-close-delimited", head("200 OK", version=b"HTTP/1.0") + b"old style",
         Ok(b"old style", reason="OK")),
    # ------------------------------------------------------------ line endings, folding
    Case("bare-lf-accepted", b"HTTP/1.1 200 OK\nContent-Length: 5\nX-A: b\n\nhello",
         Ok(b"hello", reason="OK")),
    Case("mixed-crlf-lf-accepted", b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\nhello", HELLO),
    Case("bare-cr-line-end", b"HTTP/1.1 200 OK\rContent-Length: 5\r\r\rhello", P),
    Case("bare-cr-in-value", head("200 OK", b"X-A: a\rb", "Content-Length: 0"), P),
    Case("cr-cr-lf", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\r\n\r\n", P),
    # RFC 9112 s5.2: obs-fold unfolded into SP, except in the framing fields
    Case("obs-fold-sp-accepted", head("200 OK", "X-A: a", " folded", "Content-Length: 5")
         + b"hello", HELLO),
    Case("obs-fold-htab-accepted", head("200 OK", "X-A: a", "\tfolded", "Content-Length: 0"),
         Ok()),
    Case("obs-fold-content-length", head("200 OK", "Content-Length:", " 5") + b"hello", P,
         match="folding in Content-Length"),
    Case("obs-fold-transfer-encoding", head("200 OK", "Transfer-Encoding: gzip,", " chunked")
         + b"5\r\nhello\r\n0\r\n\r\n", P, match="folding in Transfer-Encoding"),
    Case("obs-fold-first-field", head("200 OK", " X-A: a", "Content-Length: 0"), P),
    # ------------------------------------------------------------ NUL and controls
    Case("nul-in-value", head("200 OK", b"X-A: a\x00b", "Content-Length: 0"), P),
    Case("nul-in-name", head("200 OK", b"X-\x00A: b", "Content-Length: 0"), P),
    Case("soh-in-value", head("200 OK", b"X-A: \x01", "Content-Length: 0"), P),
    Case("esc-in-value", head("200 OK", b"X-A: \x1b[31mred", "Content-Length: 0"), P),
    Case("del-in-value", head("200 OK", b"X-A: a\x7f", "Content-Length: 0"), P),
    Case("vt-in-name", head("200 OK", b"X\x0bA: b", "Content-Length: 0"), P),
    Case("space-before-colon", head("200 OK", "Content-Length : 5") + b"hello", P),
    Case("no-colon", head("200 OK", "Content-Length 5") + b"hello", P),
    Case("empty-name", head("200 OK", ": x", "Content-Length: 0"), P),
    Case("obs-text-value-accepted", head("200 OK", b"X-A: caf\xe9", "Content-Length: 5")
         + b"hello", HELLO),
    # ------------------------------------------------------------ Content-Length
    Case("cl-plus", cl("+5") + b"hello", P, match="Content-Length"),
    Case("cl-minus", cl("-5") + b"hello", P),
    Case("cl-minus-one", cl("-1") + b"hello", P),
    Case("cl-underscore", cl("1_0") + b"0123456789", P),
    Case("cl-inner-space", cl("1 0") + b"0123456789", P),
    Case("cl-hex", cl("0x5") + b"hello", P),
    Case("cl-float", cl("5.0") + b"hello", P),
    Case("cl-empty", cl("") + b"hello", P),
    Case("cl-superscript", cl(b"\xb2") + b"hello", P),
    Case("cl-overflow-20-digits", cl("1" * (MAX_LENGTH_DIGITS + 1)) + b"hello", P),
    Case("cl-overflow-2**64", cl(str(2 ** 64)) + b"hello", P),
    Case("cl-conflicting-duplicates", cl("5", "Content-Length: 6") + b"hello!", P,
         match="conflicting"),
    Case("cl-conflicting-list", cl("5, 6") + b"hello!", P),
    Case("cl-trailing-comma", cl("5,") + b"hello", P),
    Case("cl-equal-duplicates-accepted", cl("5", "Content-Length: 5") + b"hello", HELLO),
    Case("cl-ows-accepted", cl(" \t5\t ") + b"hello", HELLO),
    Case("cl-leading-zeros-accepted", cl("0005") + b"hello", HELLO),
    Case("cl-short-body", cl("5") + b"hel", INC, match="3 of 5 bytes"),
    Case("cl-huge-3-bytes", cl(str(10 ** 18)) + b"abc", INC,
         match="after 3 of 1,000,000,000,000,000,000 bytes"),
    Case("cl-max-digits", cl("9" * MAX_LENGTH_DIGITS) + b"abc", INC),
    # ------------------------------------------------------------ Transfer-Encoding
    Case("cl-and-te", cl("5", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n", P,
         match="smuggling"),
    Case("te-and-cl", head("200 OK", "Transfer-Encoding: chunked", "Content-Length: 5")
         + b"5\r\nhello\r\n0\r\n\r\n", P),
    Case("te-gzip", head("200 OK", "Transfer-Encoding: gzip") + b"hello", P),
    Case("te-gzip-chunked", head("200 OK", "Transfer-Encoding: gzip, chunked")
         + b"5\r\nhello\r\n0\r\n\r\n", P),
    Case("te-chunked-gzip", head("200 OK", "Transfer-Encoding: chunked, gzip"), P),
    Case("te-chunked-twice", head("200 OK", "Transfer-Encoding: chunked",
                                  "Transfer-Encoding: chunked") + b"0\r\n\r\n", P),
    Case("te-identity", head("200 OK", "Transfer-Encoding: identity") + b"hello", P),
    Case("te-xchunked", head("200 OK", "Transfer-Encoding: xchunked") + b"hello", P),
    Case("te-empty", head("200 OK", "Transfer-Encoding: ") + b"hello", P),
    Case("te-in-http10", head("200 OK", "Transfer-Encoding: chunked", version=b"HTTP/1.0")
         + b"5\r\nhello\r\n0\r\n\r\n", P),
    Case("te-uppercase-accepted", head("200 OK", "Transfer-Encoding: CHUNKED")
         + b"5\r\nhello\r\n0\r\n\r\n", HELLO),
    # ------------------------------------------------------------ chunked framing
    Case("chunked-ok", chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), Ok(b"hello world")),
    Case("chunk-size-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), P, match="chunk size"),
    Case("chunk-size-plus", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), P),
    Case("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), P),
    Case("chunk-size-underscore", chunked(b"5_0\r\nhello\r\n0\r\n\r\n"), P),
    Case("chunk-size-over-digit-cap", chunked(b"0" * MAX_CHUNK_SIZE_DIGITS
                                              + b"5\r\nhello\r\n0\r\n\r\n"), P,
         match="hex digits"),
    Case("chunk-size-2**64", chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n"), P),
    Case("chunk-size-max-64-bit", chunked(b"ffffffffffffffff\r\nhello"), INC),
    Case("chunk-size-missing", chunked(b"\r\nhello\r\n0\r\n\r\n"), P),
    Case("chunk-size-ext-only", chunked(b";a=b\r\nhello\r\n0\r\n\r\n"), P),
    Case("chunk-size-bare-lf", chunked(b"5\nhello\r\n0\r\n\r\n"), P),
    # RFC 9112 s7.1: no whitespace after the size unless a ';' follows
    Case("chunk-size-trailing-spaces", chunked(b"5  \r\nhello\r\n0\r\n\r\n"), P,
         match="chunk size"),
    Case("chunk-size-bws-ext-accepted", chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), HELLO),
    # RFC 9112 s7.1.1: name token, value token or quoted-string
    Case("chunk-ext-empty", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), P, match="extension"),
    Case("chunk-ext-unbalanced-quote", chunked(b'5;a="x\r\nhello\r\n0\r\n\r\n'), P,
         match="quoted"),
    Case("chunk-ext-quoted-accepted", chunked(b'5;a="x;\\"y"\r\nhello\r\n0\r\n\r\n'), HELLO),
    Case("chunk-data-no-crlf", chunked(b"5\r\nhelloXX0\r\n\r\n"), P, match="CRLF"),
    Case("chunk-data-bare-lf", chunked(b"5\r\nhello\n0\r\n\r\n"), P),
    Case("chunk-data-too-long", chunked(b"3\r\nhello\r\n0\r\n\r\n"), P),
    Case("chunk-ext-nul", chunked(b"5;a=\x00\r\nhello\r\n0\r\n\r\n"), P),
    Case("chunk-ext-huge", chunked(b"5;" + b"e" * (8 * KiB) + b"\r\nhello\r\n0\r\n\r\n"), P,
         match="chunk size line longer"),
    Case("chunk-ext-at-cap-accepted", chunked(b"5;" + b"e" * (MAX_CHUNK_LINE - 2)
                                              + b"\r\nhello\r\n0\r\n\r\n"), HELLO),
    Case("chunked-cut-mid-data", chunked(b"5\r\nhel"), INC),
    Case("chunked-no-last-chunk", chunked(b"5\r\nhello\r\n"), INC),
    Case("chunked-no-final-crlf", chunked(b"5\r\nhello\r\n0\r\n"), INC),
    Case("trailers-accepted", chunked(b"5\r\nhello\r\n0\r\nX-T: v\r\n\r\n"), HELLO),
    Case("trailer-nul", chunked(b"5\r\nhello\r\n0\r\nX-T: \x00\r\n\r\n"), P),
    Case("trailer-obs-fold-accepted", chunked(b"5\r\nhello\r\n0\r\nX-T: v\r\n fold\r\n\r\n"),
         HELLO),
    Case("trailers-too-many", chunked(b"5\r\nhello\r\n0\r\n" + b"X-T: v\r\n" * (MAX_HEADERS + 1)
                                      + b"\r\n"), P, match="trailer"),
    Case("trailers-too-big", chunked(b"5\r\nhello\r\n0\r\n" + (b"X-T: " + b"t" * 1000 + b"\r\n")
                                     * (MAX_TRAILER_BYTES // 1000 + 1) + b"\r\n"), P,
         match="trailers larger"),
    # ------------------------------------------------------------ interim 1xx, header count
    Case("interim-100-accepted", CONTINUE + cl("5") + b"hello", HELLO),
    Case("interim-103-with-fields-accepted", head("103 Early Hints", "Link: </a>") + cl("5")
         + b"hello", HELLO),
    Case("interim-max-accepted", CONTINUE * MAX_INTERIM + cl("5") + b"hello", HELLO),
    Case("interim-one-too-many", CONTINUE * (MAX_INTERIM + 1) + cl("5") + b"hello", P,
         match="interim"),
    Case("interim-then-garbage", CONTINUE + b"<html>", P),
    Case("headers-max-accepted", head("200 OK", *["X-%d: v" % i for i in range(MAX_HEADERS - 1)]
                                      + ["Content-Length: 5"]) + b"hello", HELLO),
    Case("headers-one-too-many", head("200 OK", *["X-%d: v" % i for i in range(MAX_HEADERS)]
                                      + ["Content-Length: 5"]) + b"hello", P,
         match="more than %d" % MAX_HEADERS),
    Case("header-line-over-cap", head("200 OK", "X-Big: " + "b" * MAX_LINE), P,
         match="line longer"),
    Case("head-over-cap", head("200 OK", *["X-Big: " + "b" * 1000] * (MAX_HEAD // 1000 + 2)), P,
         match="head larger"),
    # ------------------------------------------------------------ bodies that must be cut
    Case("extra-bytes-after-cl-body", cl("5") + b"helloEXTRA BYTES\r\n\r\n", HELLO),
    Case("second-response-after-body", cl("5") + b"hello" + cl("3") + b"bad", HELLO),
    Case("extra-bytes-after-chunked", chunked(b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
         HELLO),
    Case("cl-zero-with-bytes", cl("0") + b"junk", Ok()),
    Case("204-with-cl", head("204 No Content", "Content-Length: 5") + b"hello",
         Ok(status=204, reason="No Content")),
    Case("204-with-te", head("204 No Content", "Transfer-Encoding: chunked")
         + b"5\r\nhello\r\n0\r\n\r\n", Ok(status=204)),
    Case("304-with-cl", head("304 Not Modified", "Content-Length: 100") + b"hello",
         Ok(status=304)),
    Case("304-with-bad-cl", head("304 Not Modified", "Content-Length: -1"), Ok(status=304)),
    Case("head-with-cl", cl("5") + b"hello", Ok(), method="HEAD"),
    Case("head-with-huge-cl", cl(str(10 ** 18)), Ok(), method="HEAD"),
    Case("head-with-te", CHUNKED + b"5\r\nhello\r\n0\r\n\r\n", Ok(), method="HEAD"),
    Case("close-delimited-with-crlfs", head("200 OK") + b"a\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
         Ok(b"a\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")),
]

assert len(set(case.id for case in CASES)) == len(CASES)


def whole(data: bytes) -> Tuple[bytes, ...]:
    return (data,)


def bytewise(data: bytes) -> List[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def split_params(cases: List[Case]) -> List[Any]:
    """Each case sent whole, and one byte per send when it is short enough."""
    return [pytest.param(case, whole, id=case.id + "-whole") for case in cases] + [
        pytest.param(case, bytewise, id=case.id + "-bytewise") for case in cases
        if len(case.data) <= BYTEWISE_CAP]


PARAMS = split_params(CASES)


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


class Failure(NamedTuple):
    """What a test keeps of an error: holding the exception itself (and its traceback)
    would keep alive whatever the failing frames referenced."""
    cls: type
    message: str
    url: Optional[str]
    exit_code: int
    received: Optional[int] = None
    expected: Optional[int] = None


def failure(exc: E.FetchError) -> Failure:
    return Failure(type(exc), str(exc), exc.url, exc.exit_code,
                   getattr(exc, "received", None), getattr(exc, "expected", None))


def serve(srv: FaultServer, case: Case, pieces) -> Tuple[object, float]:
    """Serve the pieces to one request; ((status, reason, body) or a Failure, elapsed)."""
    srv.script([A.raw(pieces)])
    requests, ended = len(srv.requests), len(srv.disconnects)
    started = timing.now()
    try:
        url = srv.url("/case/" + case.id)
        with rawfetch.request(case.method, url, idle_timeout=CASE_IDLE) as resp:
            result: object = (resp.status, resp.reason, resp.read())
    except E.FetchError as exc:
        result = failure(exc)
    elapsed = timing.now() - started
    seen = srv.requests[requests:]
    assert [(r.method, r.target) for r in seen] == [(case.method, "/case/" + case.id)]
    assert srv.wait_disconnects(ended + 1, timeout=CASE_BOUND), "client kept the connection open"
    return result, elapsed


@pytest.mark.parametrize("case, split", PARAMS)
def test_catalogue(srv, case, split):
    result, elapsed = serve(srv, case, split(case.data))
    assert elapsed < STEP, "took %.2fs" % elapsed
    if isinstance(case.expected, Ok):
        assert not isinstance(result, Failure), "expected %r, got %r" % (case.expected, result)
        status, reason, body = result  # type: ignore[misc]
        assert (status, body) == (case.expected.status, case.expected.body)
        assert case.expected.reason is None or reason == case.expected.reason
        return
    assert isinstance(result, Failure) and result.cls is case.expected, \
        "expected %s, got %r" % (case.expected.__name__, result)
    assert case.match in result.message
    assert result.exit_code == EXIT_CODES[case.expected]
    # Every error names the URL, chunked framing errors included.
    assert result.url == srv.url("/case/" + case.id)


def test_huge_content_length_names_both_counts(srv):
    result, _ = serve(srv, CASES[[c.id for c in CASES].index("cl-huge-3-bytes")],
                      (cl(str(10 ** 18)) + b"abc",))
    assert isinstance(result, Failure) and result.cls is E.IncompleteBody
    assert (result.received, result.expected) == (3, 10 ** 18)
    assert E.IncompleteBody.retryable and result.exit_code == 18


@pytest.mark.parametrize("data, expected", [
    (cl("5") + b"hello" + b"more bytes that are never read", b"hello"),
    (head("204 No Content", "Content-Length: 5") + b"hello", b""),
    (chunked(b"5\r\nhello\r\n0\r\n\r\n") + b"tail", b"hello"),
], ids=["cl", "204", "chunked"])
def test_complete_body_does_not_wait_for_the_server_to_close(srv, data, expected):
    """The server holds the connection open after the body: the body ends at its framing."""
    srv.script([A.raw(data, close=None, hold=CASE_IDLE)])
    ended = len(srv.disconnects)
    started = timing.now()
    with rawfetch.request("GET", srv.url("/held"), idle_timeout=CASE_IDLE) as response:
        assert response.read() == expected
    assert timing.now() - started < STEP   # not until the server or idle ends it
    assert srv.wait_disconnects(ended + 1, timeout=CASE_BOUND)   # the server holds CASE_IDLE
    assert srv.disconnects[-1].kind == "client_closed"


# ---------------------------------------------------------------- flooding: bounded memory

def flood(prefix: bytes, pattern: bytes, total: int = FLOOD) -> Tuple[bytes, ...]:
    """prefix + pattern repeated to `total` bytes, as ~64 KiB sends of one shared block
    (the server streams it; the test process never holds `total` bytes)."""
    block = pattern * max(1, 65536 // len(pattern))
    return (prefix,) + (block,) * (total // len(block))


def flood_size(pieces: Tuple[bytes, ...]) -> int:
    return sum(len(piece) for piece in pieces)


def drain_traced(srv: FaultServer, pieces: Tuple[bytes, ...]) -> Tuple[Failure, int, float, int]:
    """Serve pieces; read the body with a fixed buffer under tracemalloc.
    Returns (failure, peak traced bytes, elapsed, bytes the server got out)."""
    srv.script([A.raw(pieces)])
    ended = len(srv.disconnects)
    buffer = bytearray(65536)
    result: Optional[Failure] = None
    started = timing.now()
    tracemalloc.start()
    try:
        try:
            with rawfetch.request("GET", srv.url("/flood"), idle_timeout=CASE_IDLE) as response:
                while response.readinto(buffer):
                    pass
        except E.FetchError as exc:
            result = failure(exc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = timing.now() - started
    assert result is not None, "the flood was accepted"
    assert srv.wait_disconnects(ended + 1, timeout=CASE_BOUND), "client kept the connection open"
    return result, peak, elapsed, srv.disconnects[-1].body_bytes_sent


STATUS = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize("prefix, pattern, message", [
    (STATUS, b"X-A: b\r\n", "more than %d response header" % MAX_HEADERS),
    (STATUS, b"X-Long: " + b"l" * 1000 + b"\r\n", "head larger than"),
    (STATUS + b"X-A: ", b"b", "line longer than"),
    (b"HTTP/1.1 200 OK", b" ", "line longer than"),
    (b"", CONTINUE, "more than %d interim" % MAX_INTERIM),
    (CHUNKED + b"5;", b"e", "chunk size line longer"),
    (CHUNKED + b"0\r\n", b"X-T: v\r\n", "more than %d trailer" % MAX_HEADERS),
    (CHUNKED + b"0\r\n", b"X-T: " + b"t" * 500 + b"\r\n", "trailers larger"),
    (CHUNKED + b"0\r\nX-T: ", b"t", "trailers larger"),
], ids=["endless-head-short-fields", "endless-head-long-fields", "endless-field-line",
        "endless-status-line", "endless-1xx", "endless-chunk-extension",
        "endless-trailer-fields", "endless-long-trailers", "endless-trailer-line"])
def test_endless_input_is_refused_early_in_bounded_memory(srv, prefix, pattern, message):
    pieces = flood(prefix, pattern)
    error, peak, elapsed, sent = drain_traced(srv, pieces)
    assert error.cls is E.ProtocolError and message in error.message
    assert peak < MEMORY_BOUND, "tracemalloc peak %d bytes" % peak
    assert elapsed < STEP   # refused at the limit, not left to idle_timeout
    # The client stopped reading after ~64 KiB and hung up: the server could push only
    # what the kernel buffers held, a fraction of the flood.
    assert sent < flood_size(pieces) // 3, sent


@pytest.mark.parametrize("prefix", [
    cl(str(10 ** 18)),
    CHUNKED + b"ffffffffffffffff\r\n",
], ids=["content-length-10**18", "chunk-size-2**64-1"])
def test_enormous_declared_length_is_streamed_in_bounded_memory(srv, prefix):
    """Nothing is preallocated from a declared length: 32 MiB flow through a 64 KiB buffer,
    then the server's FIN is an IncompleteBody naming exactly what arrived."""
    body = 32 * MiB
    pieces = flood(prefix, b"\xa5" * 65536, body)
    error, peak, elapsed, sent = drain_traced(srv, pieces)
    assert error.cls is E.IncompleteBody
    assert error.received == body == sent - len(prefix)
    assert peak < MEMORY_BOUND, "tracemalloc peak %d bytes" % peak
    if prefix.startswith(STATUS + b"Content-Length"):
        assert error.expected == 10 ** 18
        assert "after 33,554,432 of 1,000,000,000,000,000,000 bytes" in error.message


def test_flood_of_one_byte_chunks_is_bounded_in_memory(srv):
    """Valid but hostile: every body byte in its own chunk. Each recv (256 KiB) must not turn
    into one object per body byte (it used to: ~9 MiB of memoryviews per recv)."""
    wire = 384 * KiB
    pieces = flood(CHUNKED, b"1\r\nx\r\n", wire)
    error, peak, elapsed, sent = drain_traced(srv, pieces)
    assert error.cls is E.IncompleteBody
    assert error.received == (sent - len(CHUNKED)) // 6 > wire // 7
    assert peak < MEMORY_BOUND, "tracemalloc peak %d bytes" % peak


# ---------------------------------------------------------------- known client.py bugs

@pytest.mark.parametrize("split", [whole, bytewise], ids=["whole", "bytewise"])
def test_chunked_framing_error_names_the_url(srv, split):
    srv.script([A.raw(split(chunked(b"5\r\nhelloXX0\r\n\r\n")))])
    with pytest.raises(E.ProtocolError) as info:
        with rawfetch.request("GET", srv.url("/chunked"), idle_timeout=2) as response:
            response.read()
    assert info.value.url == srv.url("/chunked")


def test_framing_error_in_the_first_read_closes_the_connection(srv):
    srv.script([A.raw(chunked(b"5\r\nhelloXX0\r\n\r\n"), close=None, hold=CASE_IDLE)])
    ended = len(srv.disconnects)
    with pytest.raises(E.ProtocolError) as info:
        rawfetch.request("GET", srv.url("/leak"), idle_timeout=2)
    assert srv.wait_disconnects(ended + 1, timeout=CASE_BOUND), "connection left open"
    assert "chunk" in str(info.value)
