"""One connection: read the request head, run the scripted action.

The socket is non-blocking and every wait (for bytes, for room to send, a
delay, a stall, a trickle's gap, the linger after FIN) is a timing.poll() that
also watches the server's Waker (clocked.py): on the virtual clock a 30 s
stall takes no real time, and stop() ends any wait at once on either clock.
"""
from __future__ import annotations

import select
import socket
import ssl
import struct
import sys
import traceback
from collections import deque
from typing import TYPE_CHECKING, Deque, List, Optional, Union

from rawfetch import timing

from . import respond
from .actions import Action, Raw, Replace, Serve, Status, TlsStall, normal
from .clocked import Stopped, await_fd
from .model import Disconnect, Request, Resource, default_etag, later_date
from .tls import PROTOCOL_VERSION_ALERT

if TYPE_CHECKING:  # pragma: no cover
    from .server import FaultServer

POLL = 0.1                 # s; the acceptor's back-off after e.g. EMFILE
MAX_HEAD = 64 * 1024       # request head cap (nginx's large_client_header_buffers order)
REQUEST_TIMEOUT = 30.0     # s; a client that never finishes its head is dropped
HANDSHAKE_TIMEOUT = 10.0   # s; likewise a TLS handshake
LINGER_DRAIN = 1.0         # s; after FIN, read the client's leftovers so close() sends no RST
SEND_PIECE = 256 * 1024    # bytes per send(): `sent` counts payload as it leaves
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class _ClientGone(Exception):
    """The peer closed or reset the connection."""


_Stopped = Stopped


class _Finished(Exception):
    """End the connection early with a given disconnect kind."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind)
        self.kind, self.detail = kind, detail


class Handler:
    """Runs one connection from accept to close in its own thread."""

    def __init__(self, srv: "FaultServer", index: int, sock: socket.socket,
                 action: Action) -> None:
        self.srv = srv
        self.index = index
        self.sock: Union[socket.socket, ssl.SSLSocket] = sock
        self.action = action
        self.sent = 0
        self.tls_active = False
        self.admitted = False
        self._fd = sock.fileno()
        self._poller = srv._waker.poller()
        self._poller.register(self._fd, 0)
        self._napper = srv._waker.poller()

    # ---- lifecycle -------------------------------------------------------
    def run(self) -> None:
        """Thread entry: never raises; always records one Disconnect."""
        kind, detail = "error", ""
        self.srv._opened(1)
        try:
            kind = self._run()
        except _Finished as fin:
            kind, detail = fin.kind, fin.detail
        except _Stopped:
            kind = "stopped"
        except (_ClientGone, OSError) as exc:
            kind = "stopped" if self._stopping() else "client_closed"
            detail = "" if isinstance(exc, _ClientGone) else repr(exc)
        except Exception as exc:  # a bug in the server: make it visible
            detail = repr(exc)
            traceback.print_exc(file=sys.stderr)
        finally:
            self._close_quietly()
            self.srv._opened(-1)
            if self.admitted:
                self.srv._release()
        self.srv._record(Disconnect(timing.now(), self.index, kind,
                                    self.sent, detail))

    def _run(self) -> str:
        """Handshake, read the request, pick the action, dispatch it."""
        if isinstance(self.action, TlsStall):
            self._hold(self.action.seconds)
            return self._close_fin()
        self._handshake()
        req = self._read_request()
        self.srv._record(req)
        self.admitted = self.srv._admit()
        if not self.admitted:
            busy = {"Retry-After": self.srv.busy_retry_after}
            return self._dispatch(req, Status(503, busy, b"busy"))
        action = self.srv._action_for_path(req.path) or self.action
        return self._dispatch(req, action)

    def _dispatch(self, req: Request, action: Action) -> str:
        """Route to the handler for the action type."""
        if isinstance(action, Serve):
            return self._serve(req, action)
        if isinstance(action, Status):
            plan = respond.plan_status(req, action.code, action.headers,
                                       action.body)
            return self._send_plan(req, plan, Serve())
        if isinstance(action, Raw):
            return self._raw(req, action)
        if isinstance(action, Replace):
            self._replace(req, action)
            return self._dispatch(req, action.then or normal())
        # Silence, or TlsStall after the handshake: say nothing.
        self._hold(getattr(action, "seconds", None))
        return self._close_fin()

    def _stopping(self) -> bool:
        return self.srv._stopping.is_set()

    def _await(self, events: int, deadline: Optional[float]) -> bool:
        """Until the socket is ready for `events` (True) or `deadline` (False)."""
        return await_fd(self.srv._waker, self._poller, self._fd, events, deadline)

    def _await_tls(self, exc: Exception, deadline: Optional[float]) -> bool:
        """Wait for what a non-blocking (TLS) call said it needs."""
        wants_write = isinstance(exc, ssl.SSLWantWriteError)
        return self._await(select.POLLOUT if wants_write else select.POLLIN, deadline)

    # ---- TLS -------------------------------------------------------------
    def _handshake(self) -> None:
        """Wrap and handshake if this is a TLS server; failures end quietly."""
        setup = self.srv._tls
        if setup is None:
            return
        if setup.alert_only:
            self._recv_some(timing.now() + HANDSHAKE_TIMEOUT)
            self._send(PROTOCOL_VERSION_ALERT, payload=False)
            self._close_fin()
            raise _Finished("tls_error", "TLS 1.0 only (alert sent)")
        if setup.context is None:  # "plaintext": speak HTTP on the TLS port
            return
        self.sock = setup.context.wrap_socket(
            self.sock, server_side=True, do_handshake_on_connect=False)
        self.srv._track(self.index, self.sock)
        deadline = timing.now() + HANDSHAKE_TIMEOUT
        while True:
            try:
                self.sock.do_handshake()  # type: ignore[union-attr]
                self.tls_active = True
                return
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                if not self._await_tls(exc, deadline):
                    raise _Finished("tls_error", "handshake timeout")
            except (ssl.SSLError, OSError) as exc:
                if self._stopping():
                    raise _Stopped()
                raise _Finished("tls_error", repr(exc))

    # ---- reading ---------------------------------------------------------
    def _recv_some(self, deadline: float) -> bytes:
        """One recv that honours stop and a deadline; b'' never returned."""
        while True:
            if self._stopping():
                raise _Stopped()
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                if not self._await(select.POLLIN, deadline):
                    raise _Finished("request_timeout")
                continue
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                if not self._await_tls(exc, deadline):
                    raise _Finished("request_timeout")
                continue
            except OSError:
                raise _ClientGone()
            if not data:
                raise _Stopped() if self._stopping() else _ClientGone()
            return data

    def _read_request(self) -> Request:
        """Read up to the blank line (bounded) and parse the head."""
        buf = bytearray()
        deadline = timing.now() + REQUEST_TIMEOUT
        while True:
            end = _head_end(buf)
            if end:
                break
            if len(buf) > MAX_HEAD:
                self._bad_request(431)
            if _bad_start(buf):  # e.g. a TLS ClientHello on a plain port
                self._bad_request(400)
            buf += self._recv_some(deadline)
        if end > MAX_HEAD:
            self._bad_request(431)
        req = parse_head(bytes(buf[:end]), self.index)
        if req is None:
            self._bad_request(400)
        return req  # type: ignore[return-value]

    def _bad_request(self, code: int) -> None:
        """Answer a broken request head and finish the connection."""
        body = b"bad request\n"
        plan = respond.Plan(code, respond.base_headers() + [
            ("Content-Length", str(len(body)))], memoryview(body), False)
        # One send: a TLS client hitting the plain port aborts on the first
        # bytes, and a second send would then fail and hide the verdict.
        self._send(respond.head_bytes(plan.status, plan.headers) + body, False)
        self._close_complete()
        raise _Finished("bad_request", "status %d" % code)

    # ---- writing ---------------------------------------------------------
    def _send(self, data: Union[bytes, memoryview], payload: bool) -> None:
        """Send everything, counting payload bytes exactly as they leave."""
        view = memoryview(data).cast("B")
        off = 0
        while off < len(view):
            if self._stopping():
                raise _Stopped()
            try:
                n = self.sock.send(view[off:off + SEND_PIECE])
            except BlockingIOError:
                self._await(select.POLLOUT, None)
                continue
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                self._await_tls(exc, None)
                continue
            except OSError:
                raise _ClientGone()
            off += n
            if payload:
                self.sent += n

    def _send_until(self, segs: Deque[respond.Segment], limit: int) -> None:
        """Send segments until `limit` payload bytes are out (framing eager)."""
        while segs:
            data, is_payload = segs[0]
            if not is_payload:
                self._send(data, False)
                segs.popleft()
                continue
            room = limit - self.sent
            if room <= 0:
                return
            segs.popleft()
            if len(data) > room:
                segs.appendleft((data[room:], True))
                data = data[:room]
            self._send(data, True)

    def _wait(self, seconds: float) -> None:
        """Sleep that the server's stop interrupts."""
        if seconds > 0:
            self.srv._waker.nap(self._napper, seconds)

    def _hold(self, seconds: Optional[float]) -> None:
        """Stay silent; return when time is up, raise on stop or peer close."""
        deadline = None if seconds is None else timing.now() + seconds
        while True:
            if self._stopping():
                raise _Stopped()
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                if not self._await(select.POLLIN, deadline):
                    return
                continue
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                if not self._await_tls(exc, deadline):
                    return
                continue
            except OSError:
                raise _ClientGone()
            if not data:
                raise _Stopped() if self._stopping() else _ClientGone()

    # ---- serving ---------------------------------------------------------
    def _serve(self, req: Request, act: Serve) -> str:
        """Plan the response for the resource and send it with the fault."""
        res = self.srv.resource(req.path)
        if res is None:
            plan = respond.not_found(req)
        else:
            plan = respond.plan_serve(req, res, act)
        return self._send_plan(req, plan, act)

    def _send_plan(self, req: Request, plan: respond.Plan, act: Serve) -> str:
        """Send head and body, applying act.fault after act.at body bytes."""
        self._wait(act.delay)
        self._send(respond.head_bytes(plan.status, plan.headers), False)
        segs: Deque[respond.Segment] = deque()
        if req.method != "HEAD":
            segs.extend(respond.segments(plan.body, plan.chunked))
        if act.fault == "none":
            self._send_until(segs, len(plan.body))
            return self._close_complete()
        self._send_until(segs, act.at)
        if act.fault == "rst":
            return self._close_rst()
        if act.fault == "fin":
            return self._close_fin()
        if act.fault == "stall":
            self._hold(act.seconds)
            return self._close_fin()
        if act.fault == "trickle":
            self._trickle(segs, act.gap, act.step)
            return self._close_complete()
        raise ValueError("unknown fault %r" % act.fault)

    def _trickle(self, segs: Deque[respond.Segment], gap: float,
                 step: int) -> None:
        """Send the rest `step` payload bytes at a time, `gap` apart."""
        while segs:
            data, is_payload = segs.popleft()
            if not is_payload:
                self._send(data, False)
                continue
            for off in range(0, len(data), step):
                self._wait(gap)
                self._send(data[off:off + step], True)

    def _raw(self, req: Request, act: Raw) -> str:
        """Send bytes verbatim (all counted as body bytes), then close."""
        data = act.data(req) if callable(act.data) else act.data
        pieces: List[bytes] = ([data] if isinstance(data, (bytes, bytearray))
                               else [bytes(p) for p in data])
        for piece in pieces:
            self._send(piece, True)
        if act.hold is not None or act.close is None:
            self._hold(act.hold)
        if act.close == "rst":
            return self._close_rst()
        self._close_complete()
        return "fin"

    def _replace(self, req: Request, act: Replace) -> None:
        """Install the new version of the resource for all later requests."""
        old = self.srv.resource(req.path)
        etag = default_etag(act.data) if act.etag is None else act.etag
        if act.last_modified is None:
            lm: Optional[str] = later_date(old.last_modified if old else None)
        else:
            lm = act.last_modified
        self.srv._set_resource(req.path, Resource(
            act.data, etag or None, lm or None,
            old.chunked if old else False,
            old.content_type if old else "application/octet-stream"))

    # ---- closing ---------------------------------------------------------
    def _close_rst(self) -> str:
        """Abort: SO_LINGER(on, 0) makes close() send RST, dropping queues."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))
        self.sock.close()
        return "rst"

    def _close_complete(self) -> str:
        """Graceful end: TLS close_notify (if TLS), then FIN and linger."""
        if self.tls_active:
            try:
                self.sock.setblocking(False)
                self.sock.unwrap()  # type: ignore[union-attr]
            except (ssl.SSLError, OSError, ValueError):
                pass
        self._close_fin()
        return "complete"

    def _close_fin(self) -> str:
        """FIN without close_notify, then drain so close() can't turn to RST.

        Closing with unread input makes the kernel send RST, which can
        destroy data the client has not read yet; draining avoids that.
        """
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
        except OSError:
            return "fin"
        deadline = timing.now() + LINGER_DRAIN
        try:
            while True:
                try:
                    if not socket.socket.recv(self.sock, 65536):
                        break
                except BlockingIOError:
                    if not self._await(select.POLLIN, deadline):
                        break
                except OSError:  # reset or gone: nothing left to drain
                    break
        except _Stopped:
            pass
        self.sock.close()
        return "fin"

    def _close_quietly(self) -> None:
        """Make sure the socket is closed whatever happened."""
        try:
            self.sock.close()
        except OSError:
            pass
        self.srv._untrack(self.index)


def _head_end(buf: bytearray) -> int:
    """Offset just past the blank line ending the head, or 0."""
    i = buf.find(b"\r\n\r\n")
    if i >= 0:
        return i + 4
    i = buf.find(b"\n\n")
    return i + 2 if i >= 0 else 0


def _bad_start(buf: bytearray) -> bool:
    """True once the method token contains a non-token byte.

    Real servers reject such garbage immediately instead of waiting for a
    blank line that never comes; a TLS client talking to the "plaintext"
    port then fails fast, as it would against a real misconfigured server.
    """
    method = bytes(buf[:32]).split(b" ", 1)[0]
    return any(b not in _TCHAR for b in method)


def parse_head(raw: bytes, conn: int) -> Optional[Request]:
    """Parse a request head; None if it is not HTTP/1.x-shaped."""
    lines = raw.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[0]:
        return None
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    return Request(timing.now(), conn, parts[0], parts[1], parts[2],
                   headers, raw, headers.get("range"), headers.get("if-range"))
