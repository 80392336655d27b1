"""A TCP fault relay between rawfetch and a real web server, on loopback.

Why: the real servers serve correctly; the network between them and the client is what
fails. The relay forwards one connection at a time as it is (rawfetch sends
`Connection: close`, so one request per connection) and, per a script like the fault
server's, cuts (FIN), resets (RST), stalls or trickles the response after exactly N body
bytes, first running a hook (e.g. replacing the file on the server, so that the resume
meets the new version). It logs every request head it forwarded and every response head
it saw, so a test asserts the Range / If-Range each server received and what it answered.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

HEAD_LIMIT = 65536     # bytes: a head larger than this is not a real server's or rawfetch's
IO_TIMEOUT = 30.0      # s: a relay thread never outlives a test by more than this
TRICKLE_TICK = 0.1     # s between trickled pieces


class Fault(NamedTuple):
    """What to do with one connection's response after `at` body bytes."""
    kind: str = "pass"           # pass | fin | rst | stall | trickle
    at: int = 0
    seconds: float = 0.0         # stall: how long to hold the connection silent
    rate: int = 0                # trickle: bytes per second
    before: Optional[Callable[[], None]] = None   # run once, just before the fault


PASS = Fault()


class Head(NamedTuple):
    """A request or response head as forwarded: first line and lower-cased fields."""
    line: str
    fields: Dict[str, str]
    time: float

    def get(self, name: str) -> Optional[str]:
        return self.fields.get(name.lower())

    @property
    def status(self) -> int:
        return int(self.line.split()[1])

    @property
    def target(self) -> str:
        return self.line.split()[1]


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    fields: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            fields[name.strip().lower()] = value.strip()
    return Head(lines[0], fields, time.time())


class Relay:
    """127.0.0.1:<ephemeral> -> 127.0.0.1:upstream, with scripted faults."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.requests: List[Head] = []
        self.responses: List[Head] = []
        self._script: List[Fault] = [PASS]
        self._count = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._stopped = threading.Event()
        self._threads: List[threading.Thread] = []

    def url(self, path: str) -> str:
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def start(self) -> "Relay":
        self._spawn(self._accept_loop)
        return self

    def script(self, faults: Sequence[Fault]) -> None:
        """The Nth connection from now gets faults[N]; the last one repeats. Logs reset."""
        with self._lock:
            self._script = list(faults) or [PASS]
            self._count = 0
            self.requests, self.responses = [], []

    def seen(self) -> List[Tuple[str, Optional[str], Optional[str]]]:
        """(target, Range, If-Range) of every request forwarded, in order."""
        with self._lock:
            return [(h.target, h.get("range"), h.get("if-range")) for h in self.requests]

    def stop(self) -> None:
        self._stopped.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
        except OSError:   # cleanup: not connected is fine, the close below still happens
            pass
        self._listener.close()
        for thread in self._threads:
            thread.join(IO_TIMEOUT)

    # ------------------------------------------------------------------ internals
    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:   # cleanup: the listener was closed by stop()
                return
            with self._lock:
                fault = self._script[min(self._count, len(self._script) - 1)]
                self._count += 1
            self._spawn(self._serve, client, fault)

    def _serve(self, client: socket.socket, fault: Fault) -> None:
        client.settimeout(IO_TIMEOUT)
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream), IO_TIMEOUT)
        except OSError:   # cleanup: the server is down; the client sees a closed connection
            client.close()
            return
        try:
            head = _read_head(client)
            if head is None:
                return
            with self._lock:
                self.requests.append(parse_head(head))
            server.sendall(head)
            self._respond(server, client, fault)
        except OSError:   # cleanup: either side went away mid-relay; the test judges that
            pass
        finally:
            server.close()
            client.close()

    def _respond(self, server: socket.socket, client: socket.socket, fault: Fault) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = server.recv(65536)
            if not piece or len(data) > HEAD_LIMIT:
                client.sendall(data)
                return
            data += piece
        end = data.index(b"\r\n\r\n") + 4
        with self._lock:
            self.responses.append(parse_head(data[:end]))
        client.sendall(data[:end])
        self._body(server, client, data[end:], fault)

    def _body(self, server: socket.socket, client: socket.socket, pending: bytes,
              fault: Fault) -> None:
        left = fault.at if fault.kind != "pass" else None
        while True:
            if left is not None and len(pending) >= left:
                client.sendall(pending[:left])
                self._fault(server, client, fault, pending[left:])
                return
            if pending:
                client.sendall(pending)
                if left is not None:
                    left -= len(pending)
            pending = server.recv(1 << 18)
            if not pending:
                client.shutdown(socket.SHUT_WR)
                return

    def _fault(self, server: socket.socket, client: socket.socket, fault: Fault,
               rest: bytes) -> None:
        if fault.before is not None:
            fault.before()
        if fault.kind == "fin":
            client.shutdown(socket.SHUT_WR)
        elif fault.kind == "rst":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif fault.kind == "stall":
            client.settimeout(fault.seconds)
            try:
                while client.recv(4096):   # until the client gives up (or the stall ends)
                    pass
            except socket.timeout:
                pass
        elif fault.kind == "trickle":
            self._trickle(server, client, fault.rate, rest)

    def _trickle(self, server: socket.socket, client: socket.socket, rate: int,
                 pending: bytes) -> None:
        piece = max(1, int(rate * TRICKLE_TICK))
        server.settimeout(IO_TIMEOUT)
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline and not self._stopped.is_set():
            if len(pending) < piece:
                more = server.recv(1 << 16)
                if not more and not pending:
                    client.shutdown(socket.SHUT_WR)
                    return
                pending += more
            client.sendall(pending[:piece])   # raises once the client gave up
            pending = pending[piece:]
            time.sleep(TRICKLE_TICK)


def _read_head(sock: socket.socket) -> Optional[bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(4096)
        if not piece or len(data) > HEAD_LIMIT:
            return None
        data += piece
    return data
