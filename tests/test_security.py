"""Security behaviour end to end: request injection, hosts, redirects across origins, TLS.

Everything runs against real loopback sockets (the fault server); what matters is what the
server saw, or that it saw nothing at all.
"""
from __future__ import annotations

import base64
import os
import socket
import threading
from typing import Iterator, List

import pytest

import rawfetch
from rawfetch import errors as E, timing
from rawfetch.http11 import build_request
from rawfetch.url import parse_url
from tests.faultserver import FaultServer, actions as A, make_body
from tests.timing_options import QUICK, STEP, TICK, quick

pytestmark = pytest.mark.timeout(60)

# Upper time bounds: whatever would end the wait if the behaviour under test failed (a
# retry's backoff, a slow answer) is made ALTERNATIVE seconds long, and the test asserts
# an elapsed time under ALTERNATIVE / 2.
ALTERNATIVE = 20.0
BODY = make_body(100000, seed=7)


def fetch(url: str, method: str = "GET", **options) -> bytes:
    with rawfetch.request(method, url, **quick(**options)) as response:
        return response.read()


# ---------------------------------------------------------------- request injection

BAD = [("CR", "\r"), ("LF", "\n"), ("CRLF", "\r\n"), ("NUL", "\x00"), ("SP", " "),
       ("TAB", "\t"), ("DEL", "\x7f"), ("SOH", "\x01"), ("BS", "\x08"), ("VT", "\x0b"),
       ("FF", "\x0c"), ("ESC", "\x1b"), ("US", "\x1f")]
LEGAL_IN_VALUES = ("SP", "TAB")


PLACES = {  # where the bad character goes: keyword arguments for rawfetch.request
    "path": lambda port, c: dict(url="http://127.0.0.1:%d/a%sb" % (port, c)),
    "query": lambda port, c: dict(url="http://127.0.0.1:%d/a?q=x%sy" % (port, c)),
    "fragment": lambda port, c: dict(url="http://127.0.0.1:%d/a#x%sy" % (port, c)),
    "host": lambda port, c: dict(url="http://local%shost:%d/a" % (c, port)),
    "port": lambda port, c: dict(url="http://127.0.0.1:%d%s/a" % (port, c)),
    "userinfo": lambda port, c: dict(url="http://us%ser:pw@127.0.0.1:%d/a" % (c, port)),
    "method": lambda port, c: dict(url="http://127.0.0.1:%d/a" % port, method="GE%sT" % c),
    "header-name": lambda port, c: dict(url="http://127.0.0.1:%d/a" % port,
                                        headers={"X-%sA" % c: "v"}),
    "header-value": lambda port, c: dict(url="http://127.0.0.1:%d/a" % port,
                                         headers={"X-A": "a%sb" % c}),
    "header-line": lambda port, c: dict(url="http://127.0.0.1:%d/a" % port,
                                        headers=["X-A: a%sb" % c]),
}


@pytest.fixture(scope="module")
def sentinel() -> Iterator[FaultServer]:
    """A server that must never see a connection from the injection tests."""
    with FaultServer() as srv:
        yield srv


@pytest.mark.parametrize("place, char", [
    pytest.param(place, char, id="%s-%s" % (place, name)) for place in PLACES
    for name, char in BAD if not (place.startswith("header-") and name in LEGAL_IN_VALUES
                                  and place != "header-name")])
def test_controls_refused_before_any_connection(sentinel, place, char):
    args = PLACES[place](sentinel.port, char)
    method = args.pop("method", "GET")
    url = args.pop("url")
    with pytest.raises(E.InvalidRequest) as info:
        rawfetch.request(method, url, **QUICK, **args)
    assert info.value.exit_code == 3 and not info.value.retryable
    assert sentinel.connection_count == 0


@pytest.mark.parametrize("kwargs", [
    dict(method="G\xc9T"), dict(method="GET\u2028"), dict(method=""),
    dict(headers={"X-A": "snow \u2603"}), dict(headers={"X-\xe9": "v"}),
    dict(headers={"Content-Length": "0"}), dict(headers={"Transfer-Encoding": "chunked"}),
    dict(headers={"Connection": "keep-alive"}), dict(headers={"TE": "trailers"}),
    dict(headers={"Upgrade": "h2c"}), dict(url="http://b\u00fccher\u3000.test/"),
    dict(url="http://ex\uff0fample.test/"), dict(url="http://exa%2Fmple.test/"),
    dict(url="http://[::1/"), dict(url="http://a:99999/"), dict(url="http://a:8\u0661/"),
    dict(url="file:///etc/passwd"), dict(url="ftp://127.0.0.1/x"), dict(url="/relative"),
    dict(url="http://[::1%25<x>]/"), dict(url="http://[::1%25caf\u00e9]/"),
    dict(url="http://[::1%]/"),
], ids=["non-ascii-method", "u2028-method", "empty-method", "non-latin1-value",
        "non-ascii-name", "content-length", "transfer-encoding", "connection", "te",
        "upgrade", "ideographic-space-host", "fullwidth-solidus-host", "pct-in-host",
        "unclosed-ipv6", "port-out-of-range", "arabic-digit-port", "file-scheme",
        "ftp-scheme", "relative-url", "ipv6-zone-angle-brackets", "ipv6-zone-non-ascii",
        "ipv6-empty-zone"])
def test_other_invalid_requests_refused_before_any_connection(sentinel, kwargs):
    method = kwargs.pop("method", "GET")
    url = kwargs.pop("url", sentinel.url("/a"))
    with pytest.raises(E.InvalidRequest):
        rawfetch.request(method, url, **QUICK, **kwargs)
    assert sentinel.connection_count == 0


def test_legal_but_unusual_bytes_reach_the_server_encoded(server, body):
    """What is allowed goes out percent-encoded (targets) or verbatim (field values); the
    server sees one request line and no injected field."""
    url = server.url("/img?a=%0D%0AX-Injected:%201&u=\u00fc\u0085\u2028&q=\"<>")
    headers = [("X-Tab", "a\tb"), ("X-Space", "a  b"), ("X-Latin1", "caf\xe9")]
    assert fetch(url, headers=headers) == body
    seen = server.requests[-1]
    assert seen.target == ("/img?a=%0D%0AX-Injected:%201&u=%C3%BC%C2%85%E2%80%A8"
                           "&q=%22%3C%3E")
    assert "x-injected" not in seen.headers
    assert seen.headers["x-tab"] == "a\tb" and seen.headers["x-space"] == "a  b"
    assert seen.headers["x-latin1"] == "caf\xe9"
    assert seen.raw_head.count(b"\r\n") == len(seen.headers) + 2  # request line + blank


def test_percent_encoded_crlf_in_userinfo_stays_inside_basic_auth(server, body):
    url = "http://us%0D%0AX-Injected:%201:p%40ss@127.0.0.1:" + "%d/img" % server.port
    assert fetch(url) == body
    seen = server.requests[-1].headers
    assert "x-injected" not in seen
    scheme, _, token = seen["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token) == b"us\r\nX-Injected: 1:p@ss"
    assert "@" not in server.requests[-1].headers["host"]


# ---------------------------------------------------------------- hosts

def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_literal_url_works_and_host_keeps_brackets(make_server):
    srv = make_server(host="::1")
    srv.add("/img", BODY)
    url = "http://[::1]:%d/img" % srv.port
    assert url == srv.url("/img")
    assert fetch(url) == BODY
    assert srv.requests[0].headers["host"] == "[::1]:%d" % srv.port


def test_idna_host_goes_out_as_punycode(server, body):
    pin = "xn--bcher-kva.example:%d:127.0.0.1" % server.port
    for host in ("b\u00fccher.example", "B\u00dcCHER.Example"):
        assert fetch("http://%s:%d/img" % (host, server.port), resolve=[pin]) == body
    hosts = [r.headers["host"] for r in server.requests]
    assert hosts == ["xn--bcher-kva.example:%d" % server.port] * 2
    assert all(r.raw_head.isascii() for r in server.requests)


def test_idna_maps_ideographic_full_stop_to_a_dot(server, body):
    pin = "xn--bcher-kva.example:%d:127.0.0.1" % server.port
    assert fetch("http://b\u00fccher\u3002example:%d/img" % server.port, resolve=[pin]) == body
    assert server.requests[-1].headers["host"] == "xn--bcher-kva.example:%d" % server.port


@pytest.mark.parametrize("url, host_header", [
    ("http://example.com:80/", "example.com"),
    ("https://example.com:443/", "example.com"),
    ("HTTP://EXAMPLE.COM:80/", "example.com"),
    ("http://example.com:443/", "example.com:443"),
    ("https://example.com:80/", "example.com:80"),
    ("http://example.com:8080/", "example.com:8080"),
    ("http://[::1]:80/", "[::1]"),
    ("http://[::1]:81/", "[::1]:81"),
    ("http://b\u00fccher.example/", "xn--bcher-kva.example"),
])
def test_default_port_omitted_from_host(url, host_header):
    parsed = parse_url(url)
    assert parsed.host_header == host_header
    raw = build_request("GET", parsed.target, parsed.host_header)
    assert b"\r\nHost: %s\r\n" % host_header.encode("ascii") in raw


# ---------------------------------------------------------------- redirects

CREDENTIALS = {"Authorization": "Bearer secret", "Cookie": "session=1",
               "Proxy-Authorization": "Basic cHJveHk6cHc="}


def _credentials(request) -> List[str]:
    return sorted(name for name in ("authorization", "cookie", "proxy-authorization")
                  if name in request.headers)


def test_credentials_kept_on_same_origin_redirects(server, body):
    server.script([A.redirect(301, "/img?1"), A.redirect(307, server.url("/img?2")),
                   A.normal()])
    assert fetch(server.url("/start"), headers=CREDENTIALS) == body
    assert [r.target for r in server.requests] == ["/start", "/img?1", "/img?2"]
    for seen in server.requests:
        assert seen.headers["authorization"] == "Bearer secret"
        assert seen.headers["cookie"] == "session=1"
        assert seen.headers["proxy-authorization"] == "Basic cHJveHk6cHc="


@pytest.mark.parametrize("target", ["other-port", "other-host-name", "scheme-relative"])
def test_credentials_dropped_for_another_origin_and_not_restored(server, make_server, body,
                                                                 target):
    """127.0.0.1 and localhost are different origins even on the same server and port.
    Once dropped, credentials stay dropped, even when the chain comes back home."""
    if target == "other-port":
        other = make_server()
        other.add("/img", body)
        away = other.url("/img")
    else:
        other = server
        away = "%s//localhost:%d/away" % ("http:" if target == "other-host-name" else "",
                                          server.port)
    home = server.url("/img?home")
    other.script([A.redirect(302, home)], path="/img" if other is not server else "/away")
    server.script([A.redirect(302, away)], path="/start")
    assert fetch(server.url("/start"), headers=dict(CREDENTIALS, **{"X-Keep": "1"})) == body
    log = sorted(server.requests + (other.requests if other is not server else []),
                 key=lambda r: r.seq)   # the order the servers saw them
    assert [r.target for r in log] == ["/start", "/img" if other is not server else "/away",
                                       "/img?home"]
    assert _credentials(log[0]) == ["authorization", "cookie", "proxy-authorization"]
    assert _credentials(log[1]) == [] and _credentials(log[2]) == []
    assert all(r.headers["x-keep"] == "1" for r in log)


def test_custom_host_header_is_not_sent_to_another_origin(server, make_server, body):
    other = make_server()
    other.add("/img", body)
    server.script([A.redirect(302, other.url("/img"))])
    assert fetch(server.url("/start"), headers={"Host": "internal.example"}) == body
    assert server.requests[0].headers["host"] == "internal.example"
    assert other.requests[0].headers["host"] == "127.0.0.1:%d" % other.port


def test_userinfo_in_location_is_dropped(server, make_server, body):
    other = make_server()
    other.add("/img", body)
    location = "http://mallory:stolen@127.0.0.1:%d/img" % other.port
    server.script([A.redirect(302, location)])
    assert fetch(server.url("/start")) == body
    seen = other.requests[0]
    assert "authorization" not in seen.headers
    assert seen.headers["host"] == "127.0.0.1:%d" % other.port


def test_userinfo_in_same_origin_location_does_not_replace_the_callers(server, body):
    base = "http://alice:pw@127.0.0.1:%d" % server.port
    server.script([A.redirect(302, "http://mallory:x@127.0.0.1:%d/img" % server.port),
                   A.normal()])
    assert fetch(base + "/start") == body
    expected = "Basic " + base64.b64encode(b"alice:pw").decode("ascii")
    assert [r.headers.get("authorization") for r in server.requests] == [expected] * 2


@pytest.mark.parametrize("location", [
    "file:///etc/passwd", "ftp://127.0.0.1/x", "data:text/plain,hello",
    "javascript:alert(1)", "gopher://127.0.0.1:70/", "ws://127.0.0.1/", "FILE:///etc/passwd",
    "http://[::1/", "http://:80/", "http://[::g]/", 'http://[::1%25"<x>]/'],
    ids=["file", "ftp", "data", "javascript", "gopher", "ws", "FILE", "unclosed-ipv6",
         "empty-host", "bad-ipv6", "ipv6-zone-junk"])
def test_redirect_to_a_non_http_target_is_refused(server, location):
    server.script([A.redirect(302, location)])
    with pytest.raises(E.UnsafeRedirect) as info:
        fetch(server.url("/img"))
    assert info.value.exit_code == 1 and not info.value.retryable
    assert server.connection_count == 1


def _raw_redirect(location: bytes) -> bytes:
    return b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("location, error", [
    (b"/a\x00b", E.ProtocolError), (b"/a\rb", E.ProtocolError), (b"/a\x1bb", E.ProtocolError),
    (b"/a\x7fb", E.ProtocolError), (b"/a\tb", E.UnsafeRedirect), (b"/a b", E.UnsafeRedirect),
], ids=["nul", "cr", "esc", "del", "tab", "space"])
def test_location_with_controls_is_refused(server, make_server, location, error):
    """Controls make the head itself malformed; TAB and SP are legal in a field value but
    not in a URL. Either way nothing is requested from the target."""
    other = make_server()
    server.script([A.raw(_raw_redirect(b"http://127.0.0.1:%d" % other.port + location))])
    with pytest.raises(error):
        fetch(server.url("/img"))
    assert other.connection_count == 0


def test_redirect_chain_runs_under_max_time(vclock, server):
    """Three redirects of 0.3 s each, then one answered only after ALTERNATIVE seconds:
    max_time=1.0 must cut the chain in the middle of that wait (virtual seconds: the
    server's waits are on the test's clock too)."""
    release = threading.Event()

    def slow_redirect(request) -> bytes:
        if len(server.requests) > 3:
            timing.wait(release, ALTERNATIVE)
        else:
            timing.sleep(0.3)
        return _raw_redirect(b"/loop")

    server.script([A.raw(slow_redirect)])
    watch = vclock.stopwatch()
    try:
        with pytest.raises(E.DeadlineExceeded):   # idle_timeout would be an IdleTimeout
            fetch(server.url("/loop"), max_time=1.0, max_redirs=50, idle_timeout=ALTERNATIVE)
        elapsed = watch.stop()
    finally:
        release.set()
    assert 1.0 - TICK <= elapsed < 1.0 + STEP < ALTERNATIVE / 2, elapsed
    assert 3 <= len(server.requests) <= 4


def test_download_never_takes_a_filename_from_the_server(server, body, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    server.add("/evil", body)
    hostile = {"Content-Disposition": 'attachment; filename="../../evil"; '
                                      "filename*=UTF-8''..%2F..%2Fevil2"}
    server.script([A.redirect(302, "/evil"), A.normal(headers=hostile)])
    target = work / "chosen.bin"
    result = rawfetch.download(server.url("/img"), str(target), retries=0, **QUICK)
    assert result.path == str(target) and result.bytes == len(body)
    assert [r.target for r in server.requests] == ["/img", "/evil"]
    assert server.requests[1].headers.get("authorization") is None
    files = sorted(os.path.relpath(os.path.join(root, name), str(tmp_path))
                   for root, _, names in os.walk(str(tmp_path)) for name in names)
    assert files == [os.path.join("a", "b", "chosen.bin")]
    assert target.read_bytes() == body


# ---------------------------------------------------------------- TLS

def _tls(make_server, mode: str) -> FaultServer:
    pytest.importorskip("trustme")
    srv = make_server(tls=mode)
    srv.add("/img", BODY)
    return srv


@pytest.mark.parametrize("mode", ["expired", "wrong_host", "untrusted"])
def test_certificate_failure_is_never_retried_by_download(vclock, make_server, tmp_path, mode):
    srv = _tls(make_server, mode)
    path = tmp_path / "img"
    watch = vclock.stopwatch()
    with pytest.raises(E.CertificateError) as info:   # a retry would first sleep ALTERNATIVE
        rawfetch.download(srv.url("/img"), str(path), cafile=srv.ca_path, retries=5,
                          **quick(retry_delay=ALTERNATIVE, retry_max_delay=ALTERNATIVE,
                                  retry_jitter=False))
    assert watch.stop() < STEP < ALTERNATIVE / 2   # at once: no backoff before a retry
    assert (info.value.exit_code, info.value.retryable) == (60, False)
    assert srv.connection_count == 1 and srv.requests == []
    assert not os.listdir(str(tmp_path))


@pytest.mark.parametrize("mode", ["tls1_0", "plaintext"])
def test_handshake_failure_is_a_tls_error_and_not_retried(make_server, tmp_path, mode):
    srv = _tls(make_server, mode)
    with pytest.raises(E.TLSHandshakeError) as info:
        rawfetch.download(srv.url("/img"), str(tmp_path / "img"), cafile=srv.ca_path,
                          retries=5, **QUICK)
    assert (info.value.exit_code, info.value.retryable) == (35, False)
    assert srv.connection_count == 1 and srv.requests == []
    assert not os.listdir(str(tmp_path))


def test_handshake_stall_is_bounded_at_download_level(vclock, make_server, tmp_path):
    srv = _tls(make_server, "ok")
    srv.script([A.tls_stall()])
    options = dict(retries=50, retry_delay=0.01, idle_timeout=0.3, max_time=1.0)
    watch = vclock.stopwatch()
    with pytest.raises(E.FetchTimeout) as info:
        rawfetch.download(srv.url("/img"), str(tmp_path / "img"), cafile=srv.ca_path,
                          **options)
    # Without max_time the 51 attempts of idle_timeout each would take 15 s or more.
    elapsed = watch.stop()
    unbounded = (options["retries"] + 1) * options["idle_timeout"]
    assert options["max_time"] - TICK <= elapsed < options["max_time"] + STEP < unbounded / 2
    assert info.value.exit_code == 28 and srv.requests == []
    # Idle timeouts are retried, within max_time: each attempt lasts idle_timeout.
    assert 2 <= srv.connection_count <= options["max_time"] / options["idle_timeout"] + 1


def test_https_to_http_refusal_makes_no_plain_connection(make_server, server):
    srv = _tls(make_server, "ok")
    srv.script([A.redirect(302, server.url("/img"))])
    with pytest.raises(E.UnsafeRedirect) as info:
        fetch(srv.url("/img"), cafile=srv.ca_path, headers=CREDENTIALS)
    assert info.value.exit_code == 1 and not info.value.retryable
    assert server.connection_count == 0
    assert fetch(srv.url("/img"), cafile=srv.ca_path, headers=CREDENTIALS,
                 allow_insecure_redirect=True) == server.resource("/img").data
    assert _credentials(server.requests[0]) == []   # another origin: credentials dropped


def test_context_with_a_cafile_stays_strict(make_server):
    import ssl
    from rawfetch.net import tls_context
    srv = _tls(make_server, "ok")
    context = tls_context(rawfetch.Options(cafile=srv.ca_path))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert rawfetch.DEFAULTS["insecure"] is False
