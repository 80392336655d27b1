"""Tests for rawfetch.http11's response side, the sans-IO HTTP/1.1 parser (table-driven, in the spirit of h11).

Every response-parsing case runs twice, fed whole and fed one byte at a time, and both
runs must agree exactly: same head fields and body bytes, or the same exception class.
"""
from __future__ import annotations

import tracemalloc
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import pytest

from rawfetch.errors import FetchError, IncompleteBody, ProtocolError
from rawfetch.http11 import (
    MAX_CHUNK_LINE, MAX_CHUNK_SIZE_DIGITS, MAX_HEAD, MAX_HEADERS, MAX_INTERIM, MAX_LENGTH_DIGITS,
    MAX_LINE, MAX_TRAILER_BYTES, ChunkedReader, CloseDelimitedReader, ContentLengthReader,
    HeadParser, Headers, NoBodyReader, body_reader)

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024
NO_HEAD = "no complete head"  # outcome when every byte was fed and no final head came out


def head(*lines, version: bytes = b"HTTP/1.1") -> bytes:
    """A response head: status line (b"200 OK" is prefixed with version), fields, CRLF CRLF."""
    raw = [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    if raw and raw[0][:1].isdigit():
        raw[0] = version + b" " + raw[0]
    return b"\r\n".join(raw) + b"\r\n\r\n"


def cl(value: str, *more) -> bytes:
    return head("200 OK", "Content-Length: " + value, *more)


def te(value: str, *more) -> bytes:
    return head("200 OK", "Transfer-Encoding: " + value, *more)


CHUNKED = te("chunked")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# ---------------------------------------------------------------- the helper

def pieces_whole(raw: bytes) -> List[bytes]:
    return [raw]


def pieces_bytes(raw: bytes) -> List[bytes]:
    return [raw[i:i + 1] for i in range(len(raw))]


def exchange(raw: bytes, method: str = "GET",
             split: Callable[[bytes], List[bytes]] = pieces_whole):
    """(version, status, reason, headers, interim, body, complete), or NO_HEAD. Pieces after
    the body completes are still fed: the reader must ignore them."""
    parser = HeadParser()
    final = reader = None
    body = bytearray()
    for piece in split(raw):
        if reader is None:
            final, leftover = parser.feed(piece)
            if final is None:
                assert leftover == b""
                continue
            reader = body_reader(method, final)
            piece = leftover
        for view in reader.feed(piece):
            assert isinstance(view, memoryview)
            body += view
    if reader is None:
        return NO_HEAD
    if not reader.complete:
        reader.eof()
        assert reader.complete
    return (final.version, final.status, final.reason, final.headers.items(), final.interim,
            bytes(body), reader.complete)


def outcome(raw: bytes, method: str = "GET", split=pieces_whole):
    try:
        return exchange(raw, method, split)
    except FetchError as exc:
        return type(exc)


def both(raw: bytes, method: str = "GET"):
    """The outcome fed whole, after asserting that byte-at-a-time gives exactly the same."""
    whole = outcome(raw, method, pieces_whole)
    one_by_one = outcome(raw, method, pieces_bytes)
    assert whole == one_by_one, "whole: %r\nbyte-at-a-time: %r" % (whole, one_by_one)
    return whole


class Ok(NamedTuple):
    status: int = 200
    body: bytes = b""
    reason: Optional[str] = None                       # None: not checked
    headers: Optional[List[Tuple[str, str]]] = None    # None: not checked
    interim: int = 0
    version: str = "HTTP/1.1"


def check(raw: bytes, method: str, expected) -> None:
    got = both(raw, method)
    if not isinstance(expected, Ok):
        assert got == expected
        return
    assert isinstance(got, tuple), "expected a response, got %r" % (got,)
    version, status, reason, headers, interim, body, complete = got
    assert (version, status, body, complete, interim) == (
        expected.version, expected.status, expected.body, True, expected.interim)
    assert reason == expected.reason or expected.reason is None
    assert headers == expected.headers or expected.headers is None


def case(id: str, raw: bytes, expected, method: str = "GET"):
    return pytest.param(raw, method, expected, id=id)


# ---------------------------------------------------------------- valid responses

HELLO = Ok(body=b"hello")
X31 = b"x" * 31
HEX = Ok(body=b"0123456789" + X31)
PAD = "X-Pad: " + "p" * (MAX_LINE - 8)  # with CRLF: MAX_LINE bytes in all, just within bounds

VALID = [
    case("cl-200", cl("5") + b"hello", Ok(200, b"hello", "OK", [("Content-Length", "5")])),
    case("cl-extra-bytes-ignored", cl("5") + b"helloEXTRA\r\n", HELLO),
    case("cl-zero", cl("0") + b"junk", Ok(body=b"")),
    case("cl-leading-zeros", cl("0005") + b"hello!", HELLO),
    case("cl-list-equal", cl("5, 5") + b"hello", HELLO),
    case("cl-list-no-space", cl("5,5") + b"hello", HELLO),
    case("cl-duplicate-equal", cl("5", "Content-Length: 5") + b"hello", HELLO),
    case("cl-ows-around-value", cl("\t5 \t") + b"hello", HELLO),
    case("close-delimited", head("200 OK", "Server: x") + b"until\r\n\r\nthe end",
         Ok(body=b"until\r\n\r\nthe end")),
    case("close-delimited-empty", head("200 OK"), Ok(body=b"")),
    case("http10-close-delimited", head("200 OK", version=b"HTTP/1.0") + b"old",
         Ok(body=b"old", version="HTTP/1.0")),
    case("http10-cl", head("200 OK", "Content-Length: 2", version=b"HTTP/1.0") + b"okNO",
         Ok(body=b"ok", version="HTTP/1.0")),
    case("chunked", CHUNKED + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", Ok(body=b"hello world")),
    case("chunked-ext", CHUNKED + b"5;a=b\r\nhello\r\n0\r\n\r\n", HELLO),
    case("chunked-ext-bws", CHUNKED + b"5 ;a=b\r\nhello\r\n0 ; x\r\n\r\n", HELLO),
    case("chunked-ext-htab-bws", CHUNKED + b"5\t;a=b\r\nhello\r\n0\r\n\r\n", HELLO),
    case("chunked-ext-quoted", CHUNKED + b'5;a="x y";b\r\nhello\r\n0\r\n\r\n', HELLO),
    case("chunked-ext-quoted-obs-text", CHUNKED + b'5;a="\xe9"\r\nhello\r\n0\r\n\r\n', HELLO),
    # RFC 9112 s7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
    case("chunked-ext-several", CHUNKED + b"5;a;b=c ; d = e\r\nhello\r\n0;z\r\n\r\n", HELLO),
    case("chunked-ext-quoted-pair", CHUNKED + b'5;a="x\\"y\\\\z"\r\nhello\r\n0\r\n\r\n', HELLO),
    case("chunked-ext-empty-quoted", CHUNKED + b'5;a=""\r\nhello\r\n0\r\n\r\n', HELLO),
    case("chunked-hex-upper", CHUNKED + b"A\r\n0123456789\r\n1F\r\n" + X31 + b"\r\n0\r\n\r\n", HEX),
    case("chunked-hex-lower", CHUNKED + b"a\r\n0123456789\r\n1f\r\n" + X31 + b"\r\n0\r\n\r\n", HEX),
    case("chunked-max-digits-leading-zeros",
         CHUNKED + b"0" * (MAX_CHUNK_SIZE_DIGITS - 1) + b"3\r\nabc\r\n0\r\n\r\n", Ok(body=b"abc")),
    case("chunked-trailers", CHUNKED + b"3\r\nabc\r\n0\r\nX-T: v\r\nX-U: \xe9\r\n\r\n",
         Ok(body=b"abc", headers=[("Transfer-Encoding", "chunked")])),
    case("chunked-empty", CHUNKED + b"0\r\n\r\n", Ok(body=b"")),
    case("chunked-extra-bytes-ignored", CHUNKED + b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
         Ok(body=b"ok")),
    case("chunked-te-case-insensitive", te("Chunked") + b"2\r\nok\r\n0\r\n\r\n", Ok(body=b"ok")),
    case("chunked-data-is-crlf", CHUNKED + b"4\r\n\r\n\r\n\r\n0\r\n\r\n", Ok(body=b"\r\n\r\n")),
    case("head-with-cl", cl("5") + b"hello", Ok(body=b""), "HEAD"),
    case("head-with-te", CHUNKED + b"5\r\nhello\r\n0\r\n\r\n", Ok(body=b""), "HEAD"),
    case("204-with-cl", head("204 No Content", "Content-Length: 5") + b"hello",
         Ok(204, b"", "No Content")),
    case("304-with-te", head("304 Not Modified", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
         Ok(304, b"")),
    case("304-with-cl", head("304 Not Modified", "Content-Length: 99"), Ok(304, b"")),
    case("interim-100", CONTINUE + cl("2") + b"ok",
         Ok(body=b"ok", interim=1, headers=[("Content-Length", "2")])),
    case("interim-100-103-headers", CONTINUE
         + head("103 Early Hints", "Link: </s.css>; rel=preload", "Link: </a.js>")
         + head("201 Created", "Content-Length: 2") + b"ok",
         Ok(201, b"ok", "Created", [("Content-Length", "2")], interim=2)),
    case("interim-max", CONTINUE * MAX_INTERIM + cl("0"), Ok(interim=MAX_INTERIM)),
    case("bare-lf-head", b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok",
         Ok(body=b"ok", reason="OK", headers=[("Content-Length", "2"), ("X-A", "b")])),
    case("mixed-crlf-lf-head", b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok", Ok(body=b"ok")),
    case("no-reason", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", Ok(body=b"ok", reason="")),
    case("empty-reason", b"HTTP/1.1 404 \r\n\r\n", Ok(404, reason="")),
    case("reason-spaces-tab-obs-text", b"HTTP/1.1 500 Very\tBad  Caf\xe9\r\n\r\n",
         Ok(500, reason="Very\tBad  Caf\xe9")),
    case("status-599", head("599 Odd"), Ok(599, reason="Odd")),
    case("obs-text-value", head("200 OK", b"X-A: caf\xe9 \xff\x80"),
         Ok(headers=[("X-A", "caf\xe9 \xff\x80")])),
    case("value-ows-stripped-empty-kept", head("200 OK", "X-A:  \t spaced \t ", "X-E:", "x:1"),
         Ok(headers=[("X-A", "spaced"), ("X-E", ""), ("x", "1")])),
    case("value-with-colons", head("200 OK", "Location: http://a:1/b"),
         Ok(headers=[("Location", "http://a:1/b")])),
    # RFC 9112 s5.2: a user agent replaces each obs-fold with SP before interpreting the value
    case("obs-fold-sp-unfolded", head("200 OK", "X-A: a ", "   folded", "Content-Length: 2") + b"ok",
         Ok(body=b"ok", headers=[("X-A", "a folded"), ("Content-Length", "2")])),
    case("obs-fold-htab-twice", head("200 OK", "X-A: a", "\tb", " c"),
         Ok(headers=[("X-A", "a b c")])),
    case("obs-fold-empty-value", head("200 OK", "X-A:", " b"), Ok(headers=[("X-A", "b")])),
    case("obs-fold-in-interim", head("103 Hints", "Link: a", " b") + head("200 OK"),
         Ok(interim=1, headers=[])),
    case("trailer-obs-fold", CHUNKED + b"1\r\nx\r\n0\r\nX-T: v\r\n folded\r\n\r\n",
         Ok(body=b"x")),
    case("max-headers", head("200 OK", *["X-%d: v" % i for i in range(MAX_HEADERS)]), Ok(body=b"")),
    case("long-line-within-max-line", head("200 OK", PAD, "Content-Length: 0"), Ok()),
]


@pytest.mark.parametrize("raw, method, expected", VALID)
def test_valid_response(raw, method, expected):
    check(raw, method, expected)


@pytest.mark.parametrize("raw", [
    pytest.param(VALID[0].values[0], id="cl"),
    pytest.param(CHUNKED + b"5;a=b\r\nhello\r\n0\r\nX-T: v\r\n\r\n", id="chunked-trailers"),
    pytest.param(CONTINUE + head("103 Hints", "Link: <x>") + head("200 OK") + b"end", id="interim"),
])
def test_every_two_piece_split_agrees(raw):
    whole = outcome(raw)
    assert isinstance(whole, tuple)
    for cut in range(len(raw) + 1):
        assert outcome(raw, split=lambda r: [r[:cut], r[cut:]]) == whole, cut


def test_truncated_head_gives_no_head_either_way():
    for raw in (b"", b"HTTP/", b"HTTP/1.1 200 OK\r\nContent-Le", CONTINUE + b"HTTP/1.1 200 OK\r\n"):
        assert both(raw) == NO_HEAD


# ---------------------------------------------------------------- malformed responses

def trailers(*lines: bytes) -> bytes:
    return CHUNKED + b"1\r\nx\r\n0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


BIG_LINE = "X-Big: " + "b" * 1000

MALFORMED = [
    case("garbage-html-no-newline", b"<html><body>hello</body></html>", ProtocolError),
    case("garbage-html-blank-line", b"<html>\r\n\r\nbody", ProtocolError),
    case("garbage-json", b'{"ok": true}\n\n', ProtocolError),
    case("garbage-lowercase-http", b"http/1.1 200 OK\r\n\r\n", ProtocolError),
    case("garbage-after-interim", CONTINUE + b"<html>", ProtocolError),
    case("garbage-http09-with-newline", b"<html>\n<body>hello", ProtocolError),
    case("bad-status-before-head-ends", b"HTTP/1.1 999 Bad\r\nX-A: b", ProtocolError),
    case("leading-empty-line", b"\r\nHTTP/1.1 200 OK\r\n\r\n", ProtocolError),
    case("leading-space", b" HTTP/1.1 200 OK\r\n\r\n", ProtocolError),
    case("status-2000", b"HTTP/1.1 2000 OK\r\n\r\n", ProtocolError),
    case("http2", b"HTTP/2 200\r\n\r\n", ProtocolError),
    case("http12", b"HTTP/1.2 200 OK\r\n\r\n", ProtocolError),
    case("status-2-digits", b"HTTP/1.1 20 OK\r\n\r\n", ProtocolError),
    case("status-600", b"HTTP/1.1 600 Nope\r\n\r\n", ProtocolError),
    case("status-099", b"HTTP/1.1 099 Nope\r\n\r\n", ProtocolError),
    case("status-no-space-before-reason", b"HTTP/1.1 200OK\r\n\r\n", ProtocolError),
    case("status-double-space", b"HTTP/1.1  200 OK\r\n\r\n", ProtocolError),
    case("status-not-digits", b"HTTP/1.1 2x0 OK\r\n\r\n", ProtocolError),
    case("status-line-only-version", b"HTTP/1.1\r\n\r\n", ProtocolError),
    case("reason-control", b"HTTP/1.1 200 O\x01K\r\n\r\n", ProtocolError),
    case("reason-nul", b"HTTP/1.1 200 OK\x00\r\n\r\n", ProtocolError),
    case("bare-cr-in-status-line", b"HTTP/1.1 200 OK\rX-A: b\r\n\r\n", ProtocolError),
    case("bare-cr-in-header-line", head("200 OK", b"X-A: a\rb"), ProtocolError),
    case("cr-cr-lf", b"HTTP/1.1 200 OK\r\nX-A: b\r\r\n\r\n", ProtocolError),
    # RFC 9112 s2.2: whitespace before the first field line; s5.2: no fold in framing fields
    case("fold-before-first-field", head("200 OK", " X-A: a", "Content-Length: 0"), ProtocolError),
    case("obs-fold-content-length", head("200 OK", "Content-Length:", " 5") + b"hello",
         ProtocolError),
    case("obs-fold-content-length-case", head("200 OK", "content-LENGTH: 5", " ") + b"hello",
         ProtocolError),
    case("obs-fold-transfer-encoding", te("gzip,", " chunked") + b"0\r\n\r\n", ProtocolError),
    case("obs-fold-ctl", head("200 OK", "X-A: a", b" \x01"), ProtocolError),
    case("nul-in-name", head("200 OK", b"X\x00A: b"), ProtocolError),
    case("nul-in-value", head("200 OK", b"X-A: a\x00b"), ProtocolError),
    case("ctl-in-value-soh", head("200 OK", b"X-A: a\x01b"), ProtocolError),
    case("ctl-in-value-esc", head("200 OK", b"X-A: \x1b[31m"), ProtocolError),
    case("ctl-in-value-vt", head("200 OK", b"X-A: a\x0bb"), ProtocolError),
    case("ctl-in-value-ff", head("200 OK", b"X-A: a\x0cb"), ProtocolError),
    case("del-in-value", head("200 OK", b"X-A: a\x7fb"), ProtocolError),
    case("ctl-in-name", head("200 OK", b"X\x01A: b"), ProtocolError),
    case("non-ascii-in-name", head("200 OK", b"X-\xe9: b"), ProtocolError),
    case("separator-in-name", head("200 OK", b"X(A): b"), ProtocolError),
    case("space-before-colon", head("200 OK", "X-A : b"), ProtocolError),
    case("tab-before-colon", head("200 OK", "Content-Length\t: 0"), ProtocolError),
    case("no-colon", head("200 OK", "X-A b"), ProtocolError),
    case("empty-name", head("200 OK", ": b"), ProtocolError),
    case("too-many-headers", head("200 OK", *["X-%d: v" % i for i in range(MAX_HEADERS + 1)]),
         ProtocolError),
    case("line-over-max-line", head("200 OK", "X-Big: " + "b" * (MAX_LINE - 6)), ProtocolError),
    case("head-over-max-head", head("200 OK", *[BIG_LINE] * (MAX_HEAD // 1000 + 1)), ProtocolError),
    case("too-many-interim", CONTINUE * (MAX_INTERIM + 1) + head("200 OK"), ProtocolError),
    case("101-switching", head("101 Switching Protocols", "Upgrade: h2c") + head("200 OK"),
         ProtocolError),
] + [
    case("cl-" + name, head("200 OK", b"Content-Length: " + value) + b"0123456789" * 2,
         ProtocolError)
    for name, value in [
        ("plus", b"+5"), ("minus", b"-5"), ("underscore", b"1_0"), ("inner-space", b"1 0"),
        ("hex", b"0x10"), ("float", b"5.0"), ("exponent", b"1e1"), ("empty", b""),
        ("trailing-comma", b"5,"), ("superscript-two", b"\xb2"), ("digit-then-sup", b"1\xb9"),
        ("arabic-indic-utf8", b"\xd9\xa5"), ("too-many-digits", b"1" * (MAX_LENGTH_DIGITS + 1)),
        ("conflicting-list", b"5, 6")]
] + [
    case("cl-conflicting-headers", cl("5", "Content-Length: 6") + b"hello!", ProtocolError),
    case("cl-and-te", cl("5", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
         ProtocolError),
    case("te-gzip-chunked", te("gzip, chunked"), ProtocolError),
    case("te-two-headers", te("gzip", "Transfer-Encoding: chunked"), ProtocolError),
    case("te-chunked-chunked", te("chunked, chunked"), ProtocolError),
    case("te-identity", te("identity") + b"x", ProtocolError),
    case("te-empty", te("") + b"x", ProtocolError),
    case("te-chunked-params", te("chunked;q=1"), ProtocolError),
    case("te-in-http10", head("200 OK", "Transfer-Encoding: chunked", version=b"HTTP/1.0")
         + b"0\r\n\r\n", ProtocolError),
] + [
    case("chunk-size-" + name, CHUNKED + size + b"\r\nhello\r\n0\r\n\r\n", ProtocolError)
    for name, size in [
        ("minus", b"-5"), ("plus", b"+5"), ("0x-prefix", b"0x5"), ("underscore", b"5_0"),
        ("empty", b""), ("not-hex", b"g"), ("leading-space", b" 5"), ("inner-space", b"5 5"),
        ("too-many-digits", b"0" * MAX_CHUNK_SIZE_DIGITS + b"5"), ("empty-with-ext", b";a=b"),
        ("ext-ctl", b"5;a=\x01"), ("ext-nul", b"5;\x00"), ("ext-del", b"5;a\x7f"),
        ("ext-bare-cr", b"5;a\rb"), ("line-over-max", b"5;" + b"e" * (MAX_CHUNK_LINE - 1)),
        # RFC 9112 s7.1: BWS only before ';' -- none after the size, none at the end
        ("trailing-spaces", b"5  "), ("trailing-htab", b"5\t"), ("ext-trailing-space", b"5;a "),
        # RFC 9112 s7.1.1: a token name, a token or well-formed quoted-string value
        ("ext-empty", b"5;"), ("ext-empty-then-name", b"5;;a"), ("ext-no-name", b"5;=b"),
        ("ext-empty-value", b"5;a="), ("ext-unbalanced-quote", b'5;a="x'),
        ("ext-quote-in-token", b'5;a=x"y"'), ("ext-unquoted-obs-text", b"5;a=\xe9"),
        ("ext-quoted-ctl", b'5;a="\x01"'), ("ext-quoted-pair-ctl", b'5;a="\\\x01"'),
        ("ext-separator-value", b"5;a=b/c"), ("ext-two-values", b"5;a=b=c"),
        ("ext-name-not-token", b"5;a b")]
] + [
    case("chunk-data-not-followed-by-crlf", CHUNKED + b"5\r\nhelloX\r\n0\r\n\r\n", ProtocolError),
    case("chunk-data-followed-by-bare-lf", CHUNKED + b"5\r\nhello\n0\r\n\r\n", ProtocolError),
    case("chunk-data-followed-by-lf-cr", CHUNKED + b"5\r\nhello\n\r0\r\n\r\n", ProtocolError),
    case("chunk-size-bare-lf", CHUNKED + b"5\nhello\r\n0\r\n\r\n", ProtocolError),
    case("chunk-size-cr-cr-lf", CHUNKED + b"5\r\r\nhello\r\n0\r\n\r\n", ProtocolError),
    case("last-chunk-bare-lf", CHUNKED + b"0\n\r\n", ProtocolError),
    case("final-crlf-bare-lf", CHUNKED + b"0\r\n\n", ProtocolError),
    case("trailer-bare-lf", CHUNKED + b"0\r\nX-T: v\n\r\n", ProtocolError),
    case("trailer-no-colon", trailers(b"X-T v"), ProtocolError),
    case("trailer-fold-first", trailers(b" X-T: v"), ProtocolError),
    case("trailer-fold-ctl", trailers(b"X-T: v", b" \x00"), ProtocolError),
    case("trailer-ctl", trailers(b"X-T: a\x00b"), ProtocolError),
    case("trailers-over-max-bytes", trailers(*[b"X-T: " + b"t" * 1000] * 17), ProtocolError),
    case("trailer-line-over-max-bytes", trailers(b"X-T: " + b"t" * MAX_TRAILER_BYTES),
         ProtocolError),
    case("too-many-trailers", trailers(*[b"X-T: v"] * (MAX_HEADERS + 1)), ProtocolError),
]


@pytest.mark.parametrize("raw, method, expected", MALFORMED)
def test_malformed_response(raw, method, expected):
    check(raw, method, expected)


def test_trailer_limits_are_inclusive_boundaries():
    check(trailers(*[b"X-T: v"] * MAX_HEADERS), "GET", Ok(body=b"x"))
    check(CHUNKED + b"5;" + b"e" * (MAX_CHUNK_LINE - 2) + b"\r\nhello\r\n0\r\n\r\n", "GET", HELLO)


@pytest.mark.parametrize("prefix", [b"<", b"H<", b"HTTP ", b"HTTPS", b"\x16", b"\x00",
                                    CONTINUE + b"x"],
                         ids=["lt", "H-lt", "HTTP-space", "HTTPS", "tls-0x16", "nul", "interim-x"])
def test_garbage_detected_from_first_bytes(prefix):
    """A non-HTTP reply is refused as soon as its first 5 bytes cannot start "HTTP/"."""
    parser = HeadParser()
    for byte in pieces_bytes(prefix[:-1]):
        assert parser.feed(byte) == (None, b"")
    with pytest.raises(ProtocolError, match="HTTP/"):
        parser.feed(prefix[-1:])


@pytest.mark.parametrize("raw", [b"<html>\n<body>hello", CONTINUE + b"<html>\r\n<p>x",
                                 b"HTTP/1.1 999 Bad\r\nX-A: b"],
                         ids=["http09-body", "after-interim", "bad-status-line"])
def test_bad_first_line_refused_at_once_when_fed_whole(raw):
    """Regression: the head need not be complete for a non-HTTP first line to be refused."""
    with pytest.raises(ProtocolError):
        HeadParser().feed(raw)


# ---------------------------------------------------------------- incomplete bodies

INCOMPLETE = [
    case("cl-short", cl("5") + b"abc", IncompleteBody),
    case("cl-empty", cl("5"), IncompleteBody),
    case("cl-huge", cl("%d" % 10 ** 18) + b"abc", IncompleteBody),
    case("cl-max-digits", head("200 OK", "Content-Length: " + "9" * MAX_LENGTH_DIGITS) + b"a",
         IncompleteBody),
    case("chunked-no-body", CHUNKED, IncompleteBody),
    case("chunked-mid-size-line", CHUNKED + b"5;ext", IncompleteBody),
    case("chunked-after-size-cr", CHUNKED + b"5\r", IncompleteBody),
    case("chunked-after-size-line", CHUNKED + b"5\r\n", IncompleteBody),
    case("chunked-mid-data", CHUNKED + b"5\r\nhel", IncompleteBody),
    case("chunked-before-data-crlf", CHUNKED + b"5\r\nhello", IncompleteBody),
    case("chunked-between-cr-lf", CHUNKED + b"5\r\nhello\r", IncompleteBody),
    case("chunked-before-last-chunk", CHUNKED + b"5\r\nhello\r\n", IncompleteBody),
    case("chunked-after-last-chunk", CHUNKED + b"5\r\nhello\r\n0\r\n", IncompleteBody),
    case("chunked-in-trailers", CHUNKED + b"0\r\nX-T: v\r\n", IncompleteBody),
    case("chunked-mid-trailer-line", CHUNKED + b"0\r\nX-T", IncompleteBody),
    case("chunked-final-cr-only", CHUNKED + b"0\r\n\r", IncompleteBody),
]


@pytest.mark.parametrize("raw, method, expected", INCOMPLETE)
def test_incomplete_body(raw, method, expected):
    check(raw, method, expected)


def _eof_error(raw: bytes, split=pieces_whole) -> IncompleteBody:
    with pytest.raises(IncompleteBody) as info:
        exchange(raw, "GET", split)
    return info.value


@pytest.mark.parametrize("split", [pieces_whole, pieces_bytes], ids=["whole", "bytes"])
def test_incomplete_content_length_attributes(split):
    exc = _eof_error(cl("5") + b"abc", split)
    assert (exc.received, exc.expected, exc.offset) == (3, 5, 3)
    assert str(exc) == "server closed the connection after 3 of 5 bytes"
    assert exc.retryable and exc.exit_code == 18


def test_incomplete_huge_content_length_attributes():
    exc = _eof_error(cl("%d" % 10 ** 18) + b"abc")
    assert (exc.received, exc.expected) == (3, 10 ** 18)
    assert "after 3 of 1,000,000,000,000,000,000 bytes" in str(exc)


@pytest.mark.parametrize("split", [pieces_whole, pieces_bytes], ids=["whole", "bytes"])
def test_incomplete_chunked_attributes(split):
    exc = _eof_error(CHUNKED + b"5\r\nhello\r\n4\r\nwo", split)
    assert (exc.received, exc.expected) == (7, None)
    assert "chunked" in str(exc) and "after 7 bytes" in str(exc)


# ---------------------------------------------------------------- reader selection

@pytest.mark.parametrize("raw, method, cls, passthrough", [
    (cl("5"), "GET", ContentLengthReader, True),
    (head("200 OK"), "GET", CloseDelimitedReader, True),
    (CHUNKED, "GET", ChunkedReader, False),
    (CHUNKED, "HEAD", NoBodyReader, True),
    (head("204 No Content"), "GET", NoBodyReader, True),
], ids=["content-length", "close-delimited", "chunked", "head", "204"])
def test_body_reader_selection(raw, method, cls, passthrough):
    final, leftover = HeadParser().feed(raw)
    assert leftover == b""
    reader = body_reader(method, final)
    assert type(reader) is cls and reader.passthrough is passthrough


def test_content_length_reader_passthrough_accounting():
    reader = ContentLengthReader(10)
    assert reader.limit(64) == 10 and not reader.complete
    reader.consumed(4)
    assert reader.limit(64) == 6 and reader.limit(3) == 3 and reader.received == 4
    reader.consumed(6)
    assert reader.complete and reader.limit(64) == 0
    assert ChunkedReader().limit(64) == 0 and NoBodyReader().limit(64) == 0


def test_leftover_after_head_is_returned():
    final, leftover = HeadParser().feed(cl("4") + b"body+more")
    assert leftover == b"body+more" and repr(final) == "ResponseHead(HTTP/1.1 200 'OK', 1 headers)"


# ---------------------------------------------------------------- Headers

def test_headers_case_insensitive_ordered_multi_valued():
    headers = Headers([("Set-Cookie", "a=1"), ("Content-Type", "text/plain"),
                       ("set-cookie", "b=2"), ("SET-COOKIE", "")])
    assert headers.get("set-cookie") == "a=1, b=2, "
    assert headers.get_all("Set-Cookie") == ["a=1", "b=2", ""]
    assert headers["CONTENT-type"] == "text/plain" and headers.get("content-TYPE") == "text/plain"
    assert "content-type" in headers and "X-Missing" not in headers and 42 not in headers
    assert headers.get("x-missing") is None and headers.get("x-missing", "d") == "d"
    assert headers.get_all("x-missing") == []
    with pytest.raises(KeyError):
        headers["x-missing"]
    assert list(headers) == ["Set-Cookie", "Content-Type", "set-cookie", "SET-COOKIE"]
    assert headers.items()[1] == ("Content-Type", "text/plain") and len(headers) == 4
    headers.items().clear()  # a copy
    assert len(headers) == 4 and len(Headers()) == 0


def test_parsed_headers_keep_case_order_and_duplicates():
    final, _ = HeadParser().feed(head("200 OK", "x-b: 1", "X-A: 2", "X-B: 3"))
    assert final.headers.items() == [("x-b", "1"), ("X-A", "2"), ("X-B", "3")]
    assert final.headers.get("X-B") == "1, 3"


# ---------------------------------------------------------------- bounded memory

def endless(pattern: bytes, size: int) -> Iterator[bytes]:
    """The infinite repetition of pattern, cut into pieces of `size` bytes."""
    block = pattern * (size // len(pattern) + 2)
    offset = 0
    while True:
        start = offset % len(pattern)
        yield block[start:start + size]
        offset += size


def feed_until_error(feed, prefix: bytes, pattern: bytes, size: int,
                     budget: int = 20 * MiB) -> Tuple[int, int, str]:
    """Feed prefix then endless pattern; return (bytes fed, peak traced memory, message)."""
    pieces = endless(pattern, size)
    fed = 0
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            fed += len(prefix)
            feed(prefix)
            while fed < budget:
                piece = next(pieces)
                fed += len(piece)
                feed(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return fed, peak, str(info.value)


SIZES = pytest.mark.parametrize("size", [1, 1000, 64 * 1024], ids=["1B", "1000B", "64KiB"])
STATUS = b"HTTP/1.1 200 OK\r\n"


@SIZES
@pytest.mark.parametrize("prefix, pattern, message", [
    (STATUS, b"X-A: b\r\n", "more than %d" % MAX_HEADERS),
    (STATUS, BIG_LINE.encode() + b"\r\n", "larger than %d" % MAX_HEAD),
    (STATUS + b"X-A: ", b"b", "longer than %d" % MAX_LINE),
    (b"", b"HTTP/1.1 100 Continue\r\n\r\n", "more than %d interim" % MAX_INTERIM),
    (b"", b"HTTP/1.1 200 OK", "longer than %d" % MAX_LINE),
], ids=["short-lines", "long-lines", "endless-line", "endless-interim", "endless-status-line"])
def test_endless_head_is_bounded(prefix, pattern, message, size):
    fed, peak, text = feed_until_error(HeadParser().feed, prefix, pattern, size)
    assert message in text
    assert fed < MiB and fed <= MAX_HEAD + MAX_LINE + size
    assert peak < MiB, peak


def test_unterminated_last_line_counts_towards_max_head():
    parser = HeadParser()
    assert parser.feed(STATUS + (BIG_LINE.encode() + b"\r\n") * 60) == (None, b"")
    with pytest.raises(ProtocolError, match="larger than %d" % MAX_HEAD):
        parser.feed(b"X-Tail: " + b"t" * 8000)  # no newline yet, and under MAX_LINE


@SIZES
@pytest.mark.parametrize("prefix, pattern, message", [
    (b"5;", b"a", "chunk size line longer"),
    (b"", b"0", "chunk size line longer"),
    (b"5", b" ", "chunk size line longer"),
    (b"0\r\n", b"X-T: v\r\n", "more than %d trailer" % MAX_HEADERS),
    (b"0\r\n", b"X-T: " + b"t" * 1000 + b"\r\n", "trailers larger than"),
    (b"0\r\nX-T: ", b"t", "trailers larger than"),
], ids=["endless-extension", "endless-size-digits", "endless-bws", "short-trailers",
        "long-trailers", "endless-trailer-line"])
def test_endless_chunk_framing_is_bounded(prefix, pattern, message, size):
    fed, peak, text = feed_until_error(ChunkedReader().feed, prefix, pattern, size)
    assert message in text
    # The trailer total is checked as each line completes and a pending line is capped on
    # its own, so up to one more MAX_TRAILER_BYTES line may be read before the error.
    assert fed < MiB and fed <= len(prefix) + 2 * (MAX_TRAILER_BYTES + 2) + size
    assert peak < MiB, peak
