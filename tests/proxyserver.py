"""A small forward proxy on loopback for the fast tests: CONNECT tunnels and plain-http
relays, optional Basic authentication, and a log of every request head it received.

Why in-repo: squid is the real tier (tests/squid/), but the everyday suite must show on
real sockets that rawfetch speaks to a proxy correctly (absolute-form, CONNECT, where each
credential goes) and that a fault-server origin's faults travel through a proxy. The
proxy relays bytes verbatim both ways (the fault server understands absolute-form
targets), so an origin's reset or stall reaches the client as it would through squid.
Faults of the proxy itself come from a FaultServer used *as* the proxy.

Every wait is on rawfetch.timing with non-blocking sockets (tests/faultserver/clocked.py),
so a relayed stall runs on the virtual clock too, and the relay takes part in its jump
rule: bytes in flight through the proxy are seen before time moves.
"""
from __future__ import annotations

import base64
import select
import socket
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from rawfetch import timing
from tests.faultserver.clocked import (Stopped, Waker, await_fd, idle_poll, send_all,
                                       start_thread)

MAX_HEAD = 65536           # request head cap, as the fault server's
HEAD_TIMEOUT = 10.0        # s; a client that never finishes its head is dropped
UPSTREAM_TIMEOUT = 5.0     # s; connecting to the origin
RELAY_CHUNK = 65536


@dataclass(frozen=True)
class ProxyRequest:
    """One request head as the proxy received it."""
    method: str
    target: str
    headers: Dict[str, str]


class TestProxy:
    """Threaded forward proxy; `auth="user:pass"` demands that Basic credential."""

    __test__ = False   # not a pytest class

    def __init__(self, auth: Optional[str] = None, host: str = "127.0.0.1") -> None:
        self.auth = None if auth is None else "Basic " + base64.b64encode(
            auth.encode("utf-8")).decode("ascii")
        self.host = host
        self.requests: List[ProxyRequest] = []
        self.relayed = 0          # bytes sent from upstreams to clients
        self._lock = threading.Lock()
        self._waker = Waker()
        self._threads: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None

    def start(self) -> "TestProxy":
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((self.host, 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._waker.open()
        self._spawn(self._accept_loop, long_lived=True)
        return self

    def stop(self) -> None:
        self._waker.stop()      # every wait of every proxy thread ends now
        threads = list(self._threads)
        for thread in threads:
            thread.join(2.0)
        if self._listener is not None:
            self._listener.close()
        if not any(thread.is_alive() for thread in threads):
            self._waker.close()

    def __enter__(self) -> "TestProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def url(self, userinfo: str = "") -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s%s:%d" % (userinfo + "@" if userinfo else "", host, self.port)

    def _spawn(self, target, *args, long_lived: bool = False) -> None:
        thread = start_thread(target, *args, name="testproxy", long_lived=long_lived)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _accept_loop(self) -> None:
        assert self._listener is not None
        poller = self._waker.poller()
        poller.register(self._listener.fileno(), select.POLLIN)
        while not self._waker.stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                idle_poll(poller)   # a client, or the waker on stop
                continue
            except OSError:
                return
            client.setblocking(False)
            self._spawn(self._handle, client)

    def _handle(self, client: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        poller = self._waker.poller()
        poller.register(client.fileno(), 0)
        try:
            head, rest = _read_head(client, self._waker, poller)
            request = _parse(head)
            if request is None:
                return _answer(client, 400, "Bad Request")
            with self._lock:
                self.requests.append(request)
            if self.auth is not None and request.headers.get("proxy-authorization") != self.auth:
                return _answer(client, 407, "Proxy Authentication Required",
                               'Proxy-Authenticate: Basic realm="test"\r\n')
            where = _upstream_address(request)
            if where is None:
                return _answer(client, 400, "Bad Request")
            try:    # loopback: connected or refused at once (a short real block)
                upstream = socket.create_connection(where, UPSTREAM_TIMEOUT)
            except OSError:
                return _answer(client, 502, "Bad Gateway")
            upstream.setblocking(False)
            poller.register(upstream.fileno(), 0)
            if request.method == "CONNECT":
                send_all(self._waker, poller, client,
                         b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:   # verbatim (absolute-form), minus the credential meant for us
                send_all(self._waker, poller, upstream, _without_proxy_auth(head))
            if rest:
                send_all(self._waker, poller, upstream, rest)
            self._relay(client, upstream, poller)
        except (OSError, Stopped):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()

    def _relay(self, client: socket.socket, upstream: socket.socket, poller: Any) -> None:
        """Copy both ways until both sides closed; a reset on one side ends both."""
        peers = {client.fileno(): (client, upstream), upstream.fileno(): (upstream, client)}
        open_ends = set(peers)
        for fd in open_ends:
            poller.modify(fd, select.POLLIN)
        while open_ends and not self._waker.stopping.is_set():
            for fd, _events in timing.poll(poller, None):
                if fd not in open_ends:
                    continue            # the waker: the loop condition sees the stop
                sock, peer = peers[fd]
                try:
                    data = sock.recv(RELAY_CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    open_ends.discard(fd)
                    poller.unregister(fd)   # a hung-up fd would wake every poll
                    peer.shutdown(socket.SHUT_WR)
                    continue
                _send_through(self._waker, poller, peer, data, peer.fileno() in open_ends)
                if sock is upstream:
                    with self._lock:
                        self.relayed += len(data)


def _send_through(waker: Waker, poller: Any, sock: socket.socket, data: bytes,
                  reading: bool) -> None:
    """Relay `data` to `sock`, then watch it for input again if it is still open."""
    if not reading:
        poller.register(sock.fileno(), 0)
    send_all(waker, poller, sock, data)
    if reading:
        poller.modify(sock.fileno(), select.POLLIN)
    else:
        poller.unregister(sock.fileno())


def _read_head(sock: socket.socket, waker: Waker, poller: Any) -> Tuple[bytes, bytes]:
    deadline = timing.now() + HEAD_TIMEOUT
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise OSError("no complete request head")
        try:
            data = sock.recv(RELAY_CHUNK)
        except BlockingIOError:
            if not await_fd(waker, poller, sock.fileno(), select.POLLIN, deadline):
                raise OSError("no complete request head")
            continue
        if not data:
            raise OSError("client closed")
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    return buffer[:end], buffer[end:]


def _parse(head: bytes) -> Optional[ProxyRequest]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return ProxyRequest(parts[0], parts[1], headers)


def _without_proxy_auth(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines
                         if not line.lower().startswith(b"proxy-authorization:"))


def _upstream_address(request: ProxyRequest) -> Optional[Tuple[str, int]]:
    """CONNECT host:port, or the authority of an absolute-form http:// target."""
    if request.method == "CONNECT":
        authority = request.target
    elif request.target.lower().startswith("http://"):
        authority = request.target[7:].split("/", 1)[0]
    else:
        return None
    host, _, port = authority.rpartition(":")
    if not port.isdigit():
        host, port = authority, "80"
    return host.strip("[]"), int(port)


def _answer(sock: socket.socket, code: int, reason: str, extra: str = "") -> None:
    sock.sendall(("HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n"
                  % (code, reason, extra)).encode("ascii"))
