"""rawfetch through a proxy, on real sockets: the in-repo relay proxy (tests/proxyserver.py)
in front of fault-server origins, and fault servers standing in for misbehaving proxies.

What a user cares about: the bytes (exact, through origin faults and resumes), what each
server saw (absolute-form targets, Range unchanged, where each credential went), the
error class and exit code of every proxy failure, and that every wait is bounded by the
configured timeouts. The squid tier (tests/squid/) repeats the essentials against squid.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from typing import Iterator, List, Optional

import pytest

import rawfetch
from rawfetch import errors as E, timing
from rawfetch.http11 import HeadParser
from tests.faultserver import FaultServer, actions as A
from tests.proxyserver import TestProxy
from tests.test_catalogue import CASES, CONTINUE, STATUS, flood, split_params
from tests.timing_options import QUICK, STEP, TICK

# Every test on the virtual clock (tests/vclock.py): stalls, trickles and the timeouts
# they trip take virtual seconds.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("vclock")]



@pytest.fixture
def proxy() -> Iterator[TestProxy]:
    with TestProxy() as relay:
        yield relay


def events_of(kind: str, events: List[dict]) -> List[dict]:
    return [e for e in events if e["event"] == kind]


# ---------------------------------------------------------------- plain http

def test_plain_http_goes_in_absolute_form_and_resumes_with_range_unchanged(
        server, proxy, body, tmp_path):
    server.script([A.rst(at=300000), A.normal()])
    events: List[dict] = []
    result = rawfetch.download(server.url("/img"), tmp_path / "img", proxy=proxy.url(),
                               on_event=events.append, **QUICK)
    assert (tmp_path / "img").read_bytes() == body and result.attempts == 2
    absolute = server.url("/img")
    assert [(r.method, r.target) for r in proxy.requests] == [("GET", absolute)] * 2
    first, second = server.requests
    assert first.target == second.target == absolute      # relayed as rawfetch sent it
    resumed_at = events_of("resume", events)[0]["offset"]
    assert 0 < resumed_at <= 300000
    assert (second.range, second.if_range) == ("bytes=%d-" % resumed_at, '"v1"')
    assert second.headers["host"] == "127.0.0.1:%d" % server.port
    assert {e["proxy"] for e in events_of("connect", events)} == {proxy.url()}
    assert {e["host"] for e in events_of("resolve", events)} == {"127.0.0.1"}


@pytest.mark.parametrize("faults", [
    [A.rst(at=200000)], [A.fin(at=200000)], [A.stall(at=200000)],
    [A.rst(at=200000), A.normal(ignore_range=True)], [A.trickle(at=200000, gap=0.3, step=1)]],
    ids=["rst", "fin", "stall", "cut-then-range-ignored", "trickle"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_origin_faults_through_the_proxy_end_byte_exact(make_server, proxy, body, tmp_path,
                                                        faults, scheme):
    """Both proxy data paths (relayed plain http, CONNECT tunnel) under origin faults:
    every failed attempt is resumed and the file is exact."""
    origin = make_server(tls="ok" if scheme == "https" else None)
    origin.add("/img", body, etag='"v1"')
    origin.script(faults + [A.normal()])
    digest = hashlib.sha256(body).hexdigest()
    result = rawfetch.download(origin.url("/img"), tmp_path / "img", proxy=proxy.url(),
                               cafile=origin.ca_path, checksum="sha256:" + digest,
                               speed_limit=2000, speed_time=1.0, **QUICK)
    assert (tmp_path / "img").read_bytes() == body
    assert result.attempts == 2 and len(proxy.requests) == 2
    assert [r.method for r in proxy.requests] == (["CONNECT"] * 2 if scheme == "https"
                                                  else ["GET"] * 2)


# ---------------------------------------------------------------- https: CONNECT

def test_https_tunnels_and_verifies_the_origin_certificate(make_server, proxy, body):
    origin = make_server(tls="ok")
    origin.add("/img", body)
    events: List[dict] = []
    with rawfetch.request("GET", origin.url("/img"), proxy=proxy.url(), cafile=origin.ca_path,
                          user="alice:origin-pw", on_event=events.append) as response:
        assert response.read() == body
    (connect,) = proxy.requests
    assert (connect.method, connect.target) == ("CONNECT", "localhost:%d" % origin.port)
    assert connect.headers["host"] == "localhost:%d" % origin.port
    assert "authorization" not in connect.headers          # origin credentials: tunnel only
    assert origin.requests[0].target == "/img"             # origin-form inside the tunnel
    assert origin.requests[0].headers["authorization"].startswith("Basic ")
    (tls,) = events_of("tls", events)
    assert events_of("connect", events)[0]["proxy"] == proxy.url()
    assert tls["version"].startswith("TLS")


@pytest.mark.parametrize("mode,error", [("wrong_host", E.CertificateError),
                                        ("untrusted", E.CertificateError)])
def test_origin_certificate_failures_through_the_tunnel_are_final(make_server, proxy,
                                                                  tmp_path, mode, error):
    origin = make_server(tls=mode)
    origin.add("/img", b"x" * 1000)
    with pytest.raises(error) as caught:
        rawfetch.download(origin.url("/img"), tmp_path / "img", proxy=proxy.url(),
                          cafile=origin.ca_path, retries=3, **QUICK)
    assert caught.value.exit_code == 60 and not caught.value.retryable
    assert len(proxy.requests) == 1                        # never retried


# ---------------------------------------------------------------- credentials

@pytest.mark.parametrize("how", ["userinfo", "proxy_user"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_credentials_go_only_to_the_proxy(make_server, body, how, scheme):
    origin = make_server(tls="ok" if scheme == "https" else None)
    origin.add("/img", body)
    with TestProxy(auth="px:px-pw") as relay:
        options = dict(proxy=relay.url("px:px-pw")) if how == "userinfo" else dict(
            proxy=relay.url(), proxy_user="px:px-pw")
        assert rawfetch.request("GET", origin.url("/img"), cafile=origin.ca_path,
                                **options).read() == body
        assert relay.requests[0].headers["proxy-authorization"] == "Basic cHg6cHgtcHc="
    assert "proxy-authorization" not in origin.requests[0].headers


def test_proxy_credentials_never_reach_a_bypassed_origin(server, proxy, body):
    response = rawfetch.request("GET", server.url("/img"), proxy=proxy.url("px:secret"),
                                no_proxy="127.0.0.1")
    assert response.read() == body
    assert proxy.requests == []
    assert server.requests[0].target == "/img"
    assert "proxy-authorization" not in server.requests[0].headers


@pytest.mark.parametrize("scheme,error,code", [("http", E.HTTPStatusError, 22),
                                               ("https", E.ProxyTunnelError, 56)])
def test_wrong_proxy_password_is_refused_once(make_server, tmp_path, scheme, error, code):
    origin = make_server(tls="ok" if scheme == "https" else None)
    origin.add("/img", b"x" * 1000)
    with TestProxy(auth="px:right") as relay:
        with pytest.raises(error) as caught:
            rawfetch.download(origin.url("/img"), tmp_path / "img", retries=5,
                              proxy=relay.url("px:wrong"), cafile=origin.ca_path, **QUICK)
        assert len(relay.requests) == 1                    # no retry storm
        shown = relay.url()
    assert caught.value.status == 407 and not caught.value.retryable
    assert caught.value.exit_code == code
    assert shown in str(caught.value) and "407" in str(caught.value)
    assert "wrong" not in str(caught.value)
    assert origin.requests == []


# ---------------------------------------------------------------- proxy failures

@pytest.mark.parametrize("status,retried", [
    (407, False), (403, False), (400, False), (404, False),
    (502, True), (503, True), (504, True), (500, True), (408, True), (429, True)])
def test_connect_refusals_are_exit_56_and_retried_only_when_transient(status, retried):
    with FaultServer() as fake_proxy:
        fake_proxy.script([A.status(status, {"Retry-After": "0"})])
        shown = "http://127.0.0.1:%d" % fake_proxy.port
        with pytest.raises(E.ProxyTunnelError) as caught:
            rawfetch.open("https://origin.example/img", proxy=shown, retries=2, **QUICK)
        requests = fake_proxy.requests
    error = caught.value
    assert error.exit_code == 56 and error.status == status and error.retryable is retried
    assert len(requests) == (3 if retried else 1)
    assert {(r.method, r.target) for r in requests} == {("CONNECT", "origin.example:443")}
    assert shown in error.message and str(status) in error.message


# A proxy that hangs up before its CONNECT answer's head ends: curl 7.88 says 56 ("Proxy
# CONNECT aborted") for all three, not its 52/18 of an origin's empty or cut answer.
CUT_CONNECT = {"none": b"", "in-line": b"HTTP/1.1 200 Connection est",
               "at-line-end": b"HTTP/1.1 200 Connection established\r\n"}


@pytest.mark.parametrize("cut", sorted(CUT_CONNECT))
def test_connect_answer_cut_short_is_exit_56_and_retried(cut):
    with FaultServer() as fake_proxy:
        fake_proxy.script([A.raw(CUT_CONNECT[cut])])
        shown = "http://127.0.0.1:%d" % fake_proxy.port
        with pytest.raises(E.ProxyTunnelClosed) as caught:
            rawfetch.open("https://origin.example/img", proxy=shown, retries=2, **QUICK)
        requests = fake_proxy.requests
        curl = _curl_exit(shown)
    error = caught.value
    assert error.exit_code == 56 and error.retryable and len(requests) == 3
    assert {(r.method, r.target) for r in requests} == {("CONNECT", "origin.example:443")}
    assert shown in error.message and "CONNECT answer" in error.message
    cut_at = "(%d bytes)" % len(CUT_CONNECT[cut]) if CUT_CONNECT[cut] else "before any byte"
    assert cut_at in error.message
    assert curl in (None, 56)


def _curl_exit(proxy: str) -> Optional[int]:
    """curl 7.88's exit through the same scripted proxy (the curl the docs cite), or None."""
    if not shutil.which("curl"):
        return None
    version = subprocess.run(["curl", "--version"], capture_output=True, timeout=10)
    if not version.stdout.startswith(b"curl 7.88."):
        return None
    done = subprocess.run(["curl", "-sS", "-o", os.devnull, "--max-time", "10", "-x", proxy,
                           "https://origin.example/img"], capture_output=True, timeout=30)
    return done.returncode


@pytest.mark.parametrize("status", [502, 503, 504])
def test_proxy_gateway_errors_for_plain_http_are_retried(status, server, body, tmp_path):
    """For plain http the proxy's own 5xx is an ordinary retryable answer."""
    with FaultServer() as fake_proxy:
        fake_proxy.script([A.status(status, {"Retry-After": "0"})])
        with pytest.raises(E.HTTPStatusError) as caught:
            rawfetch.download(server.url("/img"), tmp_path / "img", retries=2,
                              proxy="127.0.0.1:%d" % fake_proxy.port, **QUICK)
        assert len(fake_proxy.requests) == 3
        assert fake_proxy.requests[0].target == server.url("/img")
    assert caught.value.status == status and caught.value.retryable


def test_unreachable_proxy_is_exit_7_naming_the_proxy():
    with socket.socket() as placeholder:       # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    with pytest.raises(E.ProxyConnectError) as caught:
        rawfetch.request("GET", "http://origin.example/img", proxy="127.0.0.1:%d" % port)
    assert caught.value.exit_code == 7 and caught.value.retryable
    assert "proxy http://127.0.0.1:%d" % port in str(caught.value)


def test_unresolvable_proxy_is_exit_5_and_the_origin_is_never_resolved():
    asked: List[str] = []

    def resolver(host: str, port: int) -> List[str]:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(E.ProxyResolveError) as caught:
        rawfetch.request("GET", "https://origin.example/img", proxy="proxy.invalid:3128",
                         resolver=resolver)
    assert caught.value.exit_code == 5 and not caught.value.retryable
    assert "proxy http://proxy.invalid:3128" in str(caught.value)
    assert asked == ["proxy.invalid"]


def test_slow_proxy_lookup_is_bounded_by_dns_timeout(vclock):
    def resolver(host: str, port: int) -> List[str]:
        timing.sleep(3)          # a slow name server, on the test's clock
        return ["127.0.0.1"]

    watch = vclock.stopwatch()
    with pytest.raises(E.DNSTimeout) as caught:
        rawfetch.request("GET", "http://origin.example/img", proxy="proxy.lan:3128",
                         resolver=resolver, dns_timeout=0.3)
    assert 0.3 - TICK <= watch.stop() < 0.3 + STEP   # not the lookup's own 3 s
    assert caught.value.exit_code == 28 and "proxy http://proxy.lan:3128" in str(caught.value)


def test_blackholed_proxy_is_bounded_by_connect_timeout(vclock, blackhole):
    port = blackhole()
    watch = vclock.stopwatch()
    with pytest.raises(E.ConnectTimeout) as caught:
        rawfetch.request("GET", "http://origin.example/img", proxy="127.0.0.2:%d" % port,
                         connect_timeout=0.3)
    assert 0.3 - TICK <= watch.stop() < 0.3 + STEP
    assert "proxy http://127.0.0.2:%d" % port in str(caught.value)


def test_silent_proxy_is_bounded_by_idle_timeout(vclock):
    with FaultServer() as fake_proxy:
        fake_proxy.script([A.silence()])
        watch = vclock.stopwatch()
        with pytest.raises(E.IdleTimeout) as caught:
            rawfetch.request("GET", "https://origin.example/img", idle_timeout=0.5,
                             proxy="127.0.0.1:%d" % fake_proxy.port)
        elapsed = watch.stop()
    assert 0.5 - TICK <= elapsed < 0.5 + STEP
    assert "proxy http://127.0.0.1:" in str(caught.value) and "CONNECT" in str(caught.value)


def test_trickling_proxy_is_bounded_by_max_time(vclock):
    """A CONNECT answer trickled a byte every 0.2 s never trips idle_timeout: max_time ends it."""
    with FaultServer() as fake_proxy:
        fake_proxy.script([A.raw(tuple([b"HTTP/1.1 200 OK\r\n"] + [b"X"] * 1000), close=None)])
        watch = vclock.stopwatch()
        with pytest.raises(E.DeadlineExceeded):
            rawfetch.open("https://origin.example/img", idle_timeout=10, max_time=1.0,
                          proxy="127.0.0.1:%d" % fake_proxy.port, retries=5, **dict(
                              retry_delay=0.01))
        assert 1.0 - TICK <= watch.stop() < 1.0 + STEP   # not idle_timeout=10


# ---------------------------------------------------------------- hostile CONNECT answers

def _refused_by_head_parser(data: bytes) -> bool:
    try:
        HeadParser().feed(data)
    except E.ProtocolError:
        return True
    return False


HEAD_CASES = [case for case in CASES
              if case.expected is E.ProtocolError and _refused_by_head_parser(case.data)]
CONNECT_PARAMS = split_params(HEAD_CASES)


@pytest.fixture(scope="module")
def fake_proxy() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def test_the_catalogue_selection_is_not_empty():
    assert len(HEAD_CASES) >= 30


@pytest.mark.parametrize("case, split", CONNECT_PARAMS)
def test_hostile_connect_answers_are_refused_like_origin_heads(vclock, fake_proxy, case,
                                                                split):
    """Every head the origin parser refuses is refused in a CONNECT answer too, whole
    and one byte per send, at once, and the connection is dropped."""
    fake_proxy.script([A.raw(split(case.data))])
    ended = len(fake_proxy.disconnects)
    watch = vclock.stopwatch()
    with pytest.raises(E.ProtocolError) as caught:
        rawfetch.request("GET", "https://origin.example/img", idle_timeout=2,
                         proxy="127.0.0.1:%d" % fake_proxy.port)
    assert watch.stop() < STEP       # at once: not the idle timeout
    assert case.match in caught.value.message
    assert caught.value.message.startswith("proxy http://127.0.0.1:%d" % fake_proxy.port)
    assert fake_proxy.wait_disconnects(ended + 1, timeout=0.5)


@pytest.mark.parametrize("prefix,pattern", [
    (STATUS, b"X-A: b\r\n"), (STATUS + b"X-A: ", b"b"), (b"", CONTINUE)],
    ids=["endless-fields", "endless-line", "endless-1xx"])
def test_endless_connect_answer_is_refused_early(fake_proxy, prefix, pattern):
    pieces = flood(prefix, pattern)      # 48 MiB offered; kernel buffers hold a few
    fake_proxy.script([A.raw(pieces)])
    ended = len(fake_proxy.disconnects)
    with pytest.raises(E.ProtocolError):
        rawfetch.request("GET", "https://origin.example/img", idle_timeout=2,
                         proxy="127.0.0.1:%d" % fake_proxy.port)
    assert fake_proxy.wait_disconnects(ended + 1, timeout=2)
    assert fake_proxy.disconnects[-1].body_bytes_sent < sum(map(len, pieces)) // 3


@pytest.mark.parametrize("data,error,match", [
    (b"HTTP/1.1 200 OK\r\n\r\nearly bytes", E.ProtocolError, "after its CONNECT answer"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 407 Auth\r\nContent-Length: 3\r\n\r\nabc",
     E.ProxyTunnelError, "407 Auth"),
    (b"HTTP/1.0 200 Connection established\r\nContent-Length: 99\r\n\r\n",
     E.TLSHandshakeError, ""),   # framing headers of a 2xx are ignored: TLS starts
])
def test_connect_answer_edge_cases(fake_proxy, data, error, match):
    fake_proxy.script([A.raw(data)])
    with pytest.raises(error) as caught:
        rawfetch.request("GET", "https://origin.example/img", idle_timeout=2,
                         proxy="127.0.0.1:%d" % fake_proxy.port)
    assert match in str(caught.value)


# ---------------------------------------------------------------- per-hop decisions

def test_each_redirect_hop_gets_its_own_proxy_decision(server, make_server, proxy, body):
    other = make_server()
    other.add("/img", body)
    away = "http://localhost:%d/img" % other.port           # another origin, proxied
    server.script([A.redirect(302, away)], path="/start")
    events: List[dict] = []
    response = rawfetch.request("GET", server.url("/start"), proxy=proxy.url(),
                                no_proxy="127.0.0.1", on_event=events.append)
    assert response.read() == body
    assert [r.target for r in server.requests] == ["/start"]          # direct
    assert [r.target for r in proxy.requests] == [away]               # through the proxy
    assert [e["proxy"] for e in events_of("connect", events)] == [None, proxy.url()]


def test_each_mirror_gets_its_own_proxy_decision(server, make_server, proxy, body, tmp_path):
    mirror = make_server()
    mirror.add("/img", body)
    mirror.script([A.status(404)])
    rawfetch.download(mirror.url("/img").replace("127.0.0.1", "localhost"), tmp_path / "img",
                      urls=[server.url("/img")], proxy=proxy.url(), no_proxy="127.0.0.1",
                      **QUICK)
    assert (tmp_path / "img").read_bytes() == body
    assert [r.target for r in proxy.requests] == ["http://localhost:%d/img" % mirror.port]
    assert [r.target for r in server.requests] == ["/img"]


# ---------------------------------------------------------------- the environment

@pytest.mark.parametrize("variable,through", [("http_proxy", True), ("HTTP_PROXY", False),
                                              ("all_proxy", True), ("ALL_PROXY", True)])
def test_environment_selects_the_proxy(server, proxy, body, monkeypatch, variable, through):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, proxy.url())
    assert rawfetch.request("GET", server.url("/img")).read() == body
    assert len(proxy.requests) == (1 if through else 0)
    assert rawfetch.request("GET", server.url("/img"), trust_env=False).read() == body
    assert rawfetch.request("GET", server.url("/img"), proxy="").read() == body
    assert len(proxy.requests) == (1 if through else 0)
    monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
    assert rawfetch.request("GET", server.url("/img")).read() == body
    assert len(proxy.requests) == (1 if through else 0)
