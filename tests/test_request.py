"""Tests for rawfetch.http11's request side: build_request writes exact bytes and refuses
anything that could change the request's meaning on the wire, before any connection."""
from __future__ import annotations

import pytest

from rawfetch.errors import InvalidRequest
from rawfetch.http11 import build_request

pytestmark = pytest.mark.timeout(30)


def test_build_request_simple_get_exact_bytes():
    assert build_request("GET", "/a/b?c=d", "example.com", [("X-A", "b")]) == (
        b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: rawfetch\r\nAccept: */*\r\n"
        b"X-A: b\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n")
    assert build_request("HEAD", "/", "[::1]:8080", user_agent="ua/1") == (
        b"HEAD / HTTP/1.1\r\nHost: [::1]:8080\r\nUser-Agent: ua/1\r\nAccept: */*\r\n"
        b"Accept-Encoding: identity\r\nConnection: close\r\n\r\n")


def test_user_headers_override_in_place():
    raw = build_request("GET", "/", "h", [("accept", "image/png"), ("X-B", "1"),
                                          ("USER-AGENT", "mine"), ("Range", "bytes=5-")])
    assert raw.split(b"\r\n")[1:7] == [b"Host: h", b"USER-AGENT: mine", b"accept: image/png",
                                        b"X-B: 1", b"Range: bytes=5-", b"Accept-Encoding: identity"]
    assert raw.count(b"User-Agent") + raw.count(b"Accept:") == 0


def test_header_values_obs_text_and_ows():
    raw = build_request("GET", "/", "h", [("X-A", " caf\xe9\t\xff "), ("X-Tab", "a\tb c")])
    assert b"\r\nX-A: caf\xe9\t\xff\r\nX-Tab: a\tb c\r\n" in raw


BAD_CHARS = [("CR", "\r"), ("LF", "\n"), ("CRLF", "\r\n"), ("NUL", "\x00"), ("DEL", "\x7f"),
             ("SOH", "\x01"), ("ESC", "\x1b"), ("VT", "\x0b"), ("FF", "\x0c"), ("US", "\x1f")]
WS = [("SP", " "), ("HTAB", "\t")]


BUILD_WITH = {  # a request with `c` in the middle of one field
    "method": lambda c: build_request("GE" + c + "T", "/", "h"),
    "target": lambda c: build_request("GET", "/a" + c + "b", "h"),
    "host": lambda c: build_request("GET", "/", "exa" + c + "mple.com"),
    "header-name": lambda c: build_request("GET", "/", "h", [("X-" + c + "A", "v")]),
    "header-value": lambda c: build_request("GET", "/", "h", [("X-A", "a" + c + "b")]),
}


@pytest.mark.parametrize("field, char", [
    pytest.param(field, char, id="%s-%s" % (field, name)) for field in BUILD_WITH
    for name, char in BAD_CHARS + (WS if field != "header-value" else [])])
def test_controls_rejected_in_request(field, char):
    with pytest.raises(InvalidRequest):
        BUILD_WITH[field](char)


@pytest.mark.parametrize("method", ["", "GET(", "GE:T", "G/ET", "G\xc9T", "GET\u2028",
                                    '"GET"', "GET,"])
def test_non_token_method_rejected(method):
    with pytest.raises(InvalidRequest, match="method"):
        build_request(method, "/", "h")


@pytest.mark.parametrize("name", ["", "X:A", "X A", "X\xe9", "X\u00e4", "(X)", "X@", "[X]"])
def test_non_token_header_name_rejected(name):
    with pytest.raises(InvalidRequest, match="header name"):
        build_request("GET", "/", "h", [(name, "v")])


@pytest.mark.parametrize("name", ["Content-Length", "content-LENGTH", "Transfer-Encoding",
                                  "Connection", "connection", "Accept-Encoding", "TE", "Upgrade"])
def test_managed_headers_rejected(name):
    with pytest.raises(InvalidRequest, match="managed by rawfetch"):
        build_request("GET", "/", "h", [(name, "x")])


@pytest.mark.parametrize("kwargs", [
    dict(target=""), dict(target="/\xfc"), dict(target="/\u2603"), dict(host=""),
    dict(host=" \t "), dict(host="b\u00fccher.de\u2603"), dict(headers=[("X-A", "snow \u2603")]),
    dict(headers=[("X-A", "\u0100")])],
    ids=["empty-target", "latin1-target", "unicode-target", "empty-host", "blank-host",
         "non-latin1-host", "non-latin1-value", "u0100-value"])
def test_other_invalid_requests(kwargs):
    args = dict(method="GET", target="/", host="h")
    args.update(kwargs)
    with pytest.raises(InvalidRequest):
        build_request(**args)


@pytest.mark.parametrize("user_agent", ["ua\r\nX-Injected: 1", "ua\x00", "ua \u2603"],
                         ids=["crlf-injection", "nul", "non-latin1"])
def test_user_agent_argument_is_validated(user_agent):
    """Regression: user_agent went onto the wire unchecked (CRLF header injection)."""
    with pytest.raises(InvalidRequest):
        build_request("GET", "/", "h", user_agent=user_agent)
