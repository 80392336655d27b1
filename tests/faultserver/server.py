"""FaultServer: a loopback HTTP/1.1 server that misbehaves on cue.

Each accepted connection runs in its own thread with one scripted action
(see actions.py). The server keeps a thread-safe log of requests and of how
every connection ended so tests can assert on what the client did.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import (Any, Callable, Dict, List, Optional, Sequence, Union)

from .actions import ACTION_TYPES, Action, normal
from .clocked import Changes, Stopped, Waker, idle_poll, start_thread
from .conn import POLL, Handler
from .model import (DEFAULT_LAST_MODIFIED, Disconnect, Request, Resource,
                    default_etag, target_path)

_DEFAULT: Any = object()
STOP_JOIN = 1.0   # s real; stop() waits this long for the connection threads
Record = Union[Request, Disconnect]


class _Script:
    """A list of actions consumed in order; the last one repeats forever."""

    def __init__(self, actions: Sequence[Action]) -> None:
        actions = list(actions)
        if not actions:
            raise ValueError("a script needs at least one action")
        for act in actions:
            if not isinstance(act, ACTION_TYPES):
                raise TypeError("not an action: %r" % (act,))
        self.actions = actions
        self.used = 0

    def next(self) -> Action:
        """Action for the next connection/request."""
        act = self.actions[min(self.used, len(self.actions) - 1)]
        self.used += 1
        return act


class FaultServer:
    """Scriptable misbehaving HTTP/1.1 (optionally TLS) server on loopback.

    tls: None, or a mode from tls.MODES ("ok", "expired", "wrong_host",
    "untrusted", "tls1_0", "plaintext"). `log`, if given, is called (from
    server threads) with every Request and Disconnect record as it happens.
    """

    def __init__(self, tls: Optional[str] = None, host: str = "127.0.0.1",
                 port: int = 0,
                 log: Optional[Callable[[Record], None]] = None,
                 max_inflight: Optional[int] = None,
                 busy_retry_after: str = "1", backlog: int = 128) -> None:
        """max_inflight: serve at most that many responses at once and answer the excess
        with 503 + Retry-After: busy_retry_after (a master node after a restart).
        backlog: the listen queue (a herd of hundreds of clients needs more than 128)."""
        self.max_inflight = max_inflight
        self.backlog = backlog
        self.busy_retry_after = busy_retry_after
        self.peak_inflight = 0      # most responses served at once
        self.peak_connections = 0   # most connections open at once (served or turned away)
        self.busy_answers = 0       # 503s sent because of max_inflight
        self._inflight = 0
        self._open = 0
        self.host = host
        self.tls = tls
        self._want_port = port
        self._log = log
        self._lock = threading.Condition()
        self._changes = Changes(self._lock)
        self._waker = Waker()
        self._stopping = self._waker.stopping
        self._resources: Dict[str, Resource] = {}
        self._script = _Script([normal()])
        self._path_scripts: Dict[str, _Script] = {}
        self._requests: List[Request] = []
        self._disconnects: List[Disconnect] = []
        self._socks: Dict[int, socket.socket] = {}
        self._threads: List[threading.Thread] = []
        self._count = 0
        self._listener: Optional[socket.socket] = None
        self._acceptor: Optional[threading.Thread] = None
        self._tls: Any = None
        self._started = False

    # ---- configuration ---------------------------------------------------
    def add(self, path: str, data: bytes, etag: Optional[str] = _DEFAULT,
            last_modified: Optional[str] = _DEFAULT, chunked: bool = False,
            content_type: str = "application/octet-stream") -> None:
        """Serve `data` at `path`. etag/last_modified None omit the header."""
        data = bytes(data)
        if etag is _DEFAULT:
            etag = default_etag(data)
        if last_modified is _DEFAULT:
            last_modified = DEFAULT_LAST_MODIFIED
        self._set_resource(path, Resource(data, etag, last_modified,
                                          chunked, content_type))

    def script(self, actions: Sequence[Action],
               path: Optional[str] = None) -> None:
        """Set the action list, counting from the next connection/request.

        Global (path None): the Nth connection accepted after this call gets
        action N. Per path: the Nth request for that path gets action N,
        overriding the global action. The last action repeats forever.
        """
        new = _Script(actions)
        with self._lock:
            if path is None:
                self._script = new
            else:
                self._path_scripts[target_path(path)] = new

    def resource(self, path: str) -> Optional[Resource]:
        """The version currently served at `path` (after any replace())."""
        with self._lock:
            return self._resources.get(target_path(path))

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> "FaultServer":
        """Bind, listen and start accepting; returns self for chaining."""
        if self._started:
            raise RuntimeError("server already started")
        if self.tls is not None:
            from . import tls as tls_mod
            self._tls = tls_mod.build(self.tls)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        self._waker.open()
        try:
            if os.name != "nt":
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((self.host, self._want_port))
            lsock.listen(self.backlog)
            lsock.setblocking(False)
        except OSError:
            lsock.close()
            self._waker.close()
            self._cleanup_tls()
            raise
        self._listener = lsock
        self._started = True
        self._acceptor = start_thread(self._accept_loop, name="faultserver-accept",
                                     long_lived=True)
        return self

    def stop(self) -> None:
        """Stop accepting, end every connection, clean up; returns in ~1 s."""
        if not self._started or self._stopping.is_set():
            return
        self._waker.stop()    # every wait of every server thread ends now
        if self._acceptor is not None:
            self._acceptor.join(STOP_JOIN)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            socks = list(self._socks.values())
            threads = list(self._threads)
        for sock in socks:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_JOIN   # real: threads end in real time
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers = list(self._socks.values())
        for sock in leftovers:  # a wedged handler must not leak its socket
            sock.close()
        if not any(thread.is_alive() for thread in threads):
            self._waker.close()   # else a wedged thread may still poll it: leave it
        self._cleanup_tls()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- addresses -------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (an ephemeral one when constructed with port 0)."""
        if self._listener is None:
            raise RuntimeError("server not started")
        return int(self._listener.getsockname()[1])

    @property
    def ca_path(self) -> Optional[str]:
        """PEM file of the CA clients should trust (None without TLS)."""
        return None if self._tls is None else self._tls.ca_path

    @property
    def client_cert(self) -> Optional[str]:
        """tls="mtls": PEM file holding a client certificate and key the server accepts."""
        return None if self._tls is None else self._tls.client_cert

    def url(self, path: str = "/") -> str:
        """Absolute URL for `path`; TLS URLs use "localhost" on 127.0.0.1."""
        host = self.host
        if self.tls is not None and host in ("127.0.0.1", "localhost"):
            host = "localhost"
        if ":" in host:
            host = "[%s]" % host
        scheme = "http" if self.tls is None else "https"
        return "%s://%s:%d%s" % (scheme, host, self.port, path)

    # ---- logs ------------------------------------------------------------
    @property
    def requests(self) -> List[Request]:
        """Snapshot of all request heads received so far, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> List[Disconnect]:
        """Snapshot of how each finished connection ended, in order."""
        with self._lock:
            return list(self._disconnects)

    @property
    def connection_count(self) -> int:
        """Number of TCP connections accepted so far."""
        with self._lock:
            return self._count

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least `n` requests were logged; False on timeout (seconds
        of the installed clock: virtual under the vclock fixture)."""
        return self._changes.wait_for(lambda: len(self._requests) >= n, timeout)

    def wait_connections(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least `n` connections were accepted, each with its handler
        running; False on timeout."""
        return self._changes.wait_for(lambda: self._count >= n, timeout)

    def wait_disconnects(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least `n` connections have ended; False on timeout."""
        return self._changes.wait_for(lambda: len(self._disconnects) >= n, timeout)

    # ---- internals used by conn.Handler ----------------------------------
    def _accept_loop(self) -> None:
        """Accept until stopped; each connection gets the next action."""
        assert self._listener is not None
        poller = self._waker.poller()
        poller.register(self._listener.fileno(), select.POLLIN)
        napper = self._waker.poller()
        while not self._stopping.is_set():
            try:
                sock, _addr = self._listener.accept()
            except BlockingIOError:
                idle_poll(poller)   # a connection, or the waker on stop
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                try:
                    self._waker.nap(napper, POLL)  # e.g. EMFILE: back off, don't spin
                except Stopped:
                    return
                continue
            self._spawn(sock)

    def _spawn(self, sock: socket.socket) -> None:
        """Register the connection and start its handler thread."""
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        with self._lock:
            index = self._count
            self._count += 1
            action = self._script.next()
            self._socks[index] = sock
            self._threads = [t for t in self._threads if t.is_alive()]
            handler = Handler(self, index, sock, action)
        thread = start_thread(handler.run, name="faultserver-conn-%d" % index)
        with self._lock:
            self._threads.append(thread)
            self._changes.notify_locked()   # wait_connections

    def _admit(self) -> bool:
        """Take a serving slot, or count a busy answer when all max_inflight are taken."""
        with self._lock:
            if self.max_inflight is not None and self._inflight >= self.max_inflight:
                self.busy_answers += 1
                return False
            self._inflight += 1
            self.peak_inflight = max(self.peak_inflight, self._inflight)
            return True

    def _release(self) -> None:
        with self._lock:
            self._inflight -= 1

    def _opened(self, delta: int) -> None:
        with self._lock:
            self._open += delta
            self.peak_connections = max(self.peak_connections, self._open)

    def _action_for_path(self, path: str) -> Optional[Action]:
        """Next action of the per-path script, if that path has one."""
        with self._lock:
            scr = self._path_scripts.get(path)
            return None if scr is None else scr.next()

    def _set_resource(self, path: str, res: Resource) -> None:
        with self._lock:
            self._resources[target_path(path)] = res

    def _track(self, index: int, sock: socket.socket) -> None:
        with self._lock:
            self._socks[index] = sock

    def _untrack(self, index: int) -> None:
        with self._lock:
            self._socks.pop(index, None)

    def _record(self, rec: Record) -> None:
        """Append a record, wake waiters, and feed the optional log hook."""
        with self._lock:
            if isinstance(rec, Request):
                self._requests.append(rec)
            else:
                self._disconnects.append(rec)
            self._lock.notify_all()
            self._changes.notify_locked()
        if self._log is not None:
            self._log(rec)

    def _cleanup_tls(self) -> None:
        if self._tls is not None:
            self._tls.cleanup()
