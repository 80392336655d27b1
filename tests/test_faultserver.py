"""Self-tests for tests/faultserver, using raw sockets only (no mocks).

The raw client reads through rawfetch.timing (non-blocking socket + timing.poll, its
socket timeout as patience), so the tests of delays, stalls, trickles and slow DNS
answers run on the virtual clock and assert virtual elapsed time; each also runs on the
real clock in the slow tier. A virtual-clock client runs inside timing.busy(): it takes
part in the clock before it connects, so time cannot jump past its request.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple

import pytest

from rawfetch import timing

from tests.faultserver import (DNSResponder, FaultServer, actions as A,
                               dns_answer, dns_drop, dns_nxdomain, dns_query,
                               dns_servfail, make_body)
from tests.faultserver.__main__ import parse_script

pytestmark = pytest.mark.timeout(30)

DATA = make_body(100_000, seed=1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Resp:
    """What a raw client saw: parsed head, raw body bytes, terminal error."""

    status: int = 0
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: Optional[BaseException] = None
    head: bytes = b""


def exchange(sock: socket.socket, path: str = "/img", method: str = "GET",
             headers: Optional[Dict[str, str]] = None) -> Resp:
    """Send one request and read until EOF/error; parse what arrived."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: test",
             "Connection: close"]
    lines += ["%s: %s" % kv for kv in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    raw, err = read_all(sock)
    return parse(raw, err)


def read_all(sock: socket.socket) -> Tuple[bytes, Optional[BaseException]]:
    """Everything until EOF, plus the exception that ended reading, if any; waits on
    the installed clock, at most the socket's timeout between two reads."""
    patience = sock.gettimeout()
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    out = bytearray()
    try:
        while True:
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                if not timing.poll(poller, patience):
                    raise socket.timeout("no data for %ss" % patience)
                continue
            if not chunk:
                return bytes(out), None
            out += chunk
    except (OSError, ssl.SSLError) as exc:
        return bytes(out), exc


@contextmanager
def client_on(clock: str) -> Iterator[None]:
    """Around a raw client's whole exchange: on the virtual clock it takes part in the
    clock (busy, or waiting in read_all) from before it connects."""
    with timing.busy():
        yield


def parse(raw: bytes, err: Optional[BaseException] = None) -> Resp:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/") else 0
    return Resp(status, hdrs, body, err, head)


def get(srv: FaultServer, path: str = "/img", method: str = "GET",
        headers: Optional[Dict[str, str]] = None, timeout: float = 5.0) -> Resp:
    with socket.create_connection((srv.host, srv.port), timeout=timeout) as s:
        return exchange(s, path, method, headers)


def dechunk(body: bytes) -> Tuple[bytes, bool]:
    """Decode chunked framing; returns (payload, saw_last_chunk)."""
    out, pos = bytearray(), 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size = int(body[pos:eol], 16)
        if size == 0:
            return bytes(out), True
        out += body[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


@pytest.fixture
def srv() -> Iterator[FaultServer]:
    server = FaultServer()
    server.add("/img", DATA)
    with server:
        yield server


# ---- normal serving semantics -------------------------------------------

def test_full_get_and_head(srv: FaultServer) -> None:
    r = get(srv)
    assert r.status == 200 and r.body == DATA and r.error is None
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["connection"] == "close"
    assert r.headers["etag"].startswith('"')
    assert r.headers["last-modified"].endswith("GMT")
    h = get(srv, method="HEAD")
    assert h.status == 200 and h.body == b""
    assert h.headers["content-length"] == str(len(DATA))
    assert srv.url("/img") == "http://127.0.0.1:%d/img" % srv.port


@pytest.mark.parametrize("rng, status, start, end", [
    ("bytes=10-19", 206, 10, 19),
    ("bytes=99990-", 206, 99990, 99999),
    ("bytes=-5", 206, 99995, 99999),
    ("bytes=-200000", 206, 0, 99999),
    ("bytes=100-999999", 206, 100, 99999),
    ("bytes=100000-", 416, None, None),
    ("bytes=0-1,5-6", 200, 0, 99999),
    ("bytes=abc", 200, 0, 99999),
    ("bytes=9-3", 200, 0, 99999),
    ("items=0-5", 200, 0, 99999),
])
def test_range_semantics(srv: FaultServer, rng: str, status: int,
                         start: Optional[int], end: Optional[int]) -> None:
    r = get(srv, headers={"Range": rng})
    assert r.status == status
    if status == 416:
        assert r.headers["content-range"] == "bytes */100000"
        assert r.body == b""
        return
    assert r.body == DATA[start:end + 1]
    assert r.headers["content-length"] == str(end - start + 1)
    if status == 206:
        assert r.headers["content-range"] == "bytes %d-%d/100000" % (start,
                                                                     end)
    else:
        assert "content-range" not in r.headers


def test_if_range(srv: FaultServer) -> None:
    etag = get(srv, method="HEAD").headers["etag"]
    lm = get(srv, method="HEAD").headers["last-modified"]
    cases = [(etag, 206), ('"other"', 200), ("W/" + etag, 200), (lm, 206),
             ("Fri, 02 Jan 2026 00:00:00 GMT", 200)]
    for value, status in cases:
        r = get(srv, headers={"Range": "bytes=50-", "If-Range": value})
        assert r.status == status, value
        assert r.body == (DATA[50:] if status == 206 else DATA)
    assert srv.requests[-1].if_range == "Fri, 02 Jan 2026 00:00:00 GMT"


def test_weak_resource_etag_never_matches_and_omitted_validators() -> None:
    with FaultServer() as s:
        s.add("/w", b"x" * 100, etag='W/"1"', last_modified=None)
        s.add("/none", b"y" * 10, etag=None, last_modified=None)
        r = get(s, "/w", headers={"Range": "bytes=1-", "If-Range": 'W/"1"'})
        assert r.status == 200 and "last-modified" not in r.headers
        n = get(s, "/none")
        assert "etag" not in n.headers and "last-modified" not in n.headers
        assert n.body == b"y" * 10


def test_unknown_path_404_and_bad_request(srv: FaultServer) -> None:
    r = get(srv, "/nope")
    assert r.status == 404 and r.body
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00garbage")  # looks like a ClientHello
        assert parse(*read_all(s)).status == 400
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
        assert parse(*read_all(s)).status == 431
    assert srv.wait_disconnects(3)
    assert sorted(d.kind for d in srv.disconnects) == [
        "bad_request", "bad_request", "complete"]


def test_request_log_records_range_and_conn_index(srv: FaultServer) -> None:
    get(srv)
    get(srv, "/img?x=1", headers={"Range": "bytes=5-"})
    reqs = srv.requests
    assert [r.conn for r in reqs] == [0, 1]
    assert reqs[0].range is None and reqs[1].range == "bytes=5-"
    assert reqs[1].target == "/img?x=1" and reqs[1].path == "/img"
    assert reqs[1].method == "GET" and reqs[1].version == "HTTP/1.1"
    assert reqs[1].headers["host"] == "test"
    assert reqs[1].raw_head.endswith(b"\r\n\r\n")
    assert srv.connection_count == 2
    assert srv.wait_disconnects(2)
    # Disconnects are logged in the order the server noticed them, which need not be
    # the order of the connections: find the ranged one by its connection index.
    ranged = [d for d in srv.disconnects if d.conn == 1]
    assert [d.kind for d in ranged] == ["complete"]
    assert ranged[0].body_bytes_sent == len(DATA) - 5


# ---- faults at exact offsets --------------------------------------------

def test_rst_and_fin_at_exact_offsets(srv: FaultServer) -> None:
    srv.script([A.rst(at=1000), A.fin(at=5000), A.rst(at=0),
                A.fin(at=100, headers={"X-Extra": "1", "Accept-Ranges": None})])
    r = get(srv)
    assert r.status == 200 and r.body == DATA[:1000]
    assert isinstance(r.error, ConnectionResetError)
    f = get(srv)
    assert f.body == DATA[:5000] and f.error is None
    z = get(srv)
    assert z.status == 200 and z.body == b""
    assert isinstance(z.error, ConnectionResetError)
    h = get(srv)
    assert h.headers["x-extra"] == "1" and "accept-ranges" not in h.headers
    assert srv.wait_disconnects(4)
    got = [(d.conn, d.kind, d.body_bytes_sent) for d in srv.disconnects]
    assert sorted(got) == [(0, "rst", 1000), (1, "fin", 5000), (2, "rst", 0),
                           (3, "fin", 100)]


def test_fault_offset_counts_bytes_of_a_206(srv: FaultServer) -> None:
    srv.script([A.fin(at=300)])
    r = get(srv, headers={"Range": "bytes=1000-"})
    assert r.status == 206 and r.body == DATA[1000:1300]


def test_last_action_repeats_and_ignore_range(srv: FaultServer) -> None:
    srv.script([A.fin(at=10), A.normal(ignore_range=True)])
    assert len(get(srv).body) == 10
    for _ in range(2):
        r = get(srv, headers={"Range": "bytes=10-"})
        assert r.status == 200 and r.body == DATA


def test_stall_holds_then_fins(srv: FaultServer, clock: str) -> None:
    srv.script([A.stall(at=500, seconds=0.6)])
    patience = 20.0   # the client's recv timeout: a stall that never ends is an error
    with client_on(clock), socket.create_connection((srv.host, srv.port),
                                                    timeout=patience) as s:
        t0 = timing.now()
        s.sendall(b"GET /img HTTP/1.1\r\nHost: x\r\n\r\n")
        raw, err = read_all(s)
        elapsed = timing.now() - t0
    assert parse(raw).body == DATA[:500] and err is None   # ended by the FIN
    assert 0.5 <= elapsed < patience / 2
    if clock == "virtual":   # the stall and nothing else took time
        assert elapsed == pytest.approx(0.6, abs=1e-6)
    assert srv.wait_disconnects(1)
    assert srv.disconnects[0].kind == "fin"


def test_trickle_paces_the_rest(clock: str) -> None:
    with FaultServer() as s:
        s.add("/t", b"0123456789" * 2)
        s.script([A.trickle(at=10, gap=0.05, step=2)])
        with client_on(clock):
            t0 = timing.now()
            r = get(s, "/t")
            elapsed = timing.now() - t0
        assert r.body == b"0123456789" * 2
        assert elapsed >= 0.2  # 5 steps x 0.05 s
        if clock == "virtual":
            assert elapsed == pytest.approx(0.25, abs=1e-6)
        assert s.wait_disconnects(1) and s.disconnects[0].kind == "complete"


def test_trickle_ends_when_client_closes(srv: FaultServer, vclock) -> None:
    srv.script([A.trickle(at=100, gap=0.02, step=1)])
    with client_on("virtual"):
        s = socket.create_connection((srv.host, srv.port), timeout=5)
        s.sendall(b"GET /img HTTP/1.1\r\n\r\n")
        poller = select.poll()
        poller.register(s.fileno(), select.POLLIN)
        got = b""
        while len(got) < 400:
            assert timing.poll(poller, 5.0)
            got += s.recv(4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        s.close()  # RST, so the server's next send fails at once
        assert srv.wait_disconnects(1)
    d = srv.disconnects[0]
    assert d.kind == "client_closed" and 100 <= d.body_bytes_sent < 1000


def test_silence_status_redirect(srv: FaultServer, vclock) -> None:
    srv.script([A.silence(seconds=0.3),
                A.status(503, {"Retry-After": "2"}, b"busy"),
                A.redirect(302, "/elsewhere")])
    with client_on("virtual"), socket.create_connection((srv.host, srv.port),
                                                        timeout=5) as s:
        t0 = timing.now()
        s.sendall(b"GET /img HTTP/1.1\r\n\r\n")
        assert read_all(s) == (b"", None)
        assert timing.now() - t0 == pytest.approx(0.3, abs=1e-6)   # then the FIN
    assert srv.requests[0].target == "/img"
    r = get(srv)
    assert r.status == 503 and r.headers["retry-after"] == "2"
    assert r.body == b"busy" and r.head.startswith(b"HTTP/1.1 503 Service")
    r = get(srv)
    assert r.status == 302 and r.headers["location"] == "/elsewhere"
    assert r.headers["content-length"] == "0" and r.body == b""


def test_raw_variants(srv: FaultServer, vclock) -> None:
    srv.script([A.raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
                A.raw(lambda req: req.target.encode(), close="rst"),
                A.raw([b"ab", b"cd"], close=None, hold=0.2)])
    with client_on("virtual"):
        _raw_variants(srv)


def _raw_variants(srv: FaultServer) -> None:
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(b"GET /img HTTP/1.1\r\n\r\n")
        assert read_all(s) == (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", None)
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\n\r\n")
        data, err = read_all(s)
        assert data == b"/echo" and isinstance(err, ConnectionResetError)
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert read_all(s) == (b"abcd", None)


def test_wrong_content_range(srv: FaultServer) -> None:
    srv.script([A.wrong_content_range(),
                A.wrong_content_range("bytes 0-0/1"), A.wrong_content_range()])
    r = get(srv, headers={"Range": "bytes=100-199"})
    assert r.status == 206 and r.body == DATA[100:200]
    assert r.headers["content-range"] == "bytes 101-199/100000"
    r = get(srv, headers={"Range": "bytes=100-"})
    assert r.headers["content-range"] == "bytes 0-0/1"
    assert get(srv).status == 200


def test_replace_changes_etag_from_that_connection_on(srv: FaultServer) -> None:
    new = make_body(50_000, seed=2)
    srv.script([A.normal(), A.replace(new), A.normal()])
    first = get(srv)
    second = get(srv)
    third = get(srv, headers={"Range": "bytes=10-",
                              "If-Range": first.headers["etag"]})
    assert first.body == DATA and second.body == new
    assert second.headers["etag"] != first.headers["etag"]
    assert second.headers["last-modified"] != first.headers["last-modified"]
    assert third.status == 200 and third.body == new  # old validator
    assert srv.resource("/img").etag == second.headers["etag"]  # type: ignore


def test_replace_then_fault(srv: FaultServer) -> None:
    srv.script([A.replace(b"new-data", etag='"v2"', then=A.fin(at=3))])
    r = get(srv)
    assert r.headers["etag"] == '"v2"' and r.body == b"new"


def test_chunked_decodes_and_faults_count_payload() -> None:
    with FaultServer() as s:
        s.add("/c", DATA, chunked=True)
        s.add("/p", DATA)
        r = get(s, "/c")
        assert "content-length" not in r.headers
        assert r.headers["transfer-encoding"] == "chunked"
        assert dechunk(r.body) == (DATA, True)
        s.script([A.fin(at=20_000)])
        payload, last = dechunk(get(s, "/c").body)
        assert payload == DATA[:20_000] and not last
        s.script([A.normal(chunked=True)])
        ranged = get(s, "/p", headers={"Range": "bytes=7-"})
        assert ranged.status == 206 and dechunk(ranged.body) == (DATA[7:], True)


def test_per_path_script_overrides_global() -> None:
    with FaultServer() as s:
        s.add("/a", DATA)
        s.add("/b", DATA)
        s.script([A.fin(at=1)])
        s.script([A.fin(at=7), A.normal()], path="/b")
        assert len(get(s, "/a").body) == 1
        assert len(get(s, "/b").body) == 7
        assert get(s, "/b").body == DATA
        assert len(get(s, "/a").body) == 1


def test_delay_before_head(srv: FaultServer, clock: str) -> None:
    srv.script([A.normal(delay=0.3)])
    with client_on(clock):
        t0 = timing.now()
        assert get(srv).body == DATA
        elapsed = timing.now() - t0
    assert elapsed >= 0.3
    if clock == "virtual":
        assert elapsed == pytest.approx(0.3, abs=1e-6)


def test_stop_is_quick_with_stalled_clients() -> None:
    s = FaultServer()
    s.add("/img", DATA)
    s.script([A.stall(at=0), A.silence(), A.trickle(at=0, gap=10),
              A.tls_stall()])
    s.start()
    socks = [socket.create_connection((s.host, s.port), timeout=5)
             for _ in range(4)]
    for sock in socks[:3]:
        sock.sendall(b"GET /img HTTP/1.1\r\n\r\n")
    assert s.wait_requests(3) and s.wait_connections(4)   # every handler is in its wait
    s.stop()
    # Each handler records its disconnect as its last step, so all four had ended when
    # stop() returned, though two would wait forever and one sleeps through a 10 s gap.
    assert sorted(d.kind for d in s.disconnects) == ["stopped"] * 4
    for sock in socks:
        sock.settimeout(2)
        read_all(sock)  # EOF (or reset) arrives: the server closed it
        sock.close()


# ---- TLS ----------------------------------------------------------------

def _tls_client(srv: FaultServer, timeout: float = 5.0) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=srv.ca_path)
    raw = socket.create_connection(("localhost", srv.port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def test_tls_ok_serves_with_faults() -> None:
    with FaultServer(tls="ok") as s:
        s.add("/img", DATA)
        s.script([A.normal(), A.fin(at=1234)])
        assert s.url("/img") == "https://localhost:%d/img" % s.port
        assert s.ca_path and os.path.exists(s.ca_path)
        with _tls_client(s) as c:
            r = exchange(c)
        assert r.status == 200 and r.body == DATA
        with _tls_client(s) as c:
            assert exchange(c).body == DATA[:1234]
        ca = s.ca_path
    assert not os.path.exists(ca)


@pytest.mark.parametrize("mode", ["expired", "wrong_host", "untrusted",
                                  "tls1_0", "plaintext"])
def test_tls_bad_modes_fail_handshake(mode: str) -> None:
    with FaultServer(tls=mode) as s:
        s.add("/img", DATA)
        with pytest.raises(ssl.SSLError):
            _tls_client(s)
        assert s.wait_disconnects(1)
        want = "bad_request" if mode == "plaintext" else "tls_error"
        assert s.disconnects[0].kind == want


def test_tls_stall_never_answers_hello() -> None:
    with FaultServer(tls="ok") as s:
        s.script([A.tls_stall()])
        with pytest.raises(socket.timeout):
            _tls_client(s, timeout=0.3)


# ---- DNS ----------------------------------------------------------------

def test_dns_responder_script(clock: str) -> None:
    with client_on(clock):
        _dns_responder_script(clock)


def _dns_responder_script(clock: str) -> None:
    recs = {"img.test": ["127.0.0.1", "127.0.0.2", "::1"]}
    with DNSResponder(recs) as d:
        port = d.port
        assert dns_query("127.0.0.1", port, "img.test") == ["127.0.0.1",
                                                             "127.0.0.2"]
        assert dns_query("127.0.0.1", port, "IMG.test.", qtype="AAAA") == \
            ["::1"]
        with pytest.raises(socket.gaierror) as ei:
            dns_query("127.0.0.1", port, "nope.test")
        assert ei.value.errno == socket.EAI_NONAME
        d.script([dns_servfail(), dns_nxdomain(), dns_drop(),
                  dns_answer(delay=0.2)])
        with pytest.raises(socket.gaierror) as ei:
            dns_query("127.0.0.1", port, "img.test")
        assert ei.value.errno == socket.EAI_AGAIN
        with pytest.raises(socket.gaierror) as ei:
            dns_query("127.0.0.1", port, "img.test")
        assert ei.value.errno == socket.EAI_NONAME
        t0 = timing.now()
        with pytest.raises(socket.timeout):
            dns_query("127.0.0.1", port, "img.test", timeout=0.3)
        assert timing.now() - t0 >= 0.3
        t0 = timing.now()
        assert dns_query("127.0.0.1", port, "img.test")[0] == "127.0.0.1"
        elapsed = timing.now() - t0
        assert elapsed >= 0.2
        if clock == "virtual":
            assert elapsed == pytest.approx(0.2, abs=1e-6)
        names = [(q[1], q[2]) for q in d.queries]
        assert names[:2] == [("img.test", "A"), ("img.test", "AAAA")]
        assert len(names) == 7


# ---- make_body and CLI --------------------------------------------------

def test_make_body() -> None:
    a = make_body(3 << 20, seed=0)
    assert len(a) == 3 << 20 and a == make_body(3 << 20, seed=0)
    assert make_body(1000, seed=0) == a[:1000]
    b = make_body(3 << 20, seed=1)
    windows = range(0, len(a), 4096)
    assert all(a[i:i + 16] != b[i:i + 16] for i in windows)
    assert a[:4096] != a[4096:8192] and a[:1 << 20] != a[1 << 20:2 << 20]
    assert make_body(0) == b""


def test_script_dsl() -> None:
    acts = parse_script("rst@1M,fin@5000,stall@0:3,trickle@100:0.2,"
                        "status:503,silence,normal")
    assert acts == [A.rst(1 << 20), A.fin(5000), A.stall(0, 3.0),
                    A.trickle(100, 0.2), A.status(503), A.silence(),
                    A.normal()]
    with pytest.raises(ValueError):
        parse_script("explode@3")


def test_standalone_cli() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faultserver", "--size", "10K",
         "--script", "fin@100,normal", "--log"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = proc.stdout.readline().decode().strip()  # type: ignore
        assert url.startswith("http://127.0.0.1:") and url.endswith("/img")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert len(exchange(s).body) == 100
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert exchange(s).body == make_body(10 << 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert b"conn=0 end=fin body_bytes=100" in err
