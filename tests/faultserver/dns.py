"""A tiny scriptable UDP DNS responder and a minimal stub-resolver client.

Lets downloader tests exercise resolution failures (SERVFAIL, NXDOMAIN,
timeouts, slow answers, several addresses) deterministically on loopback,
without touching the system resolver.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from rawfetch import timing

from .clocked import Changes, Stopped, Waker, idle_poll, start_thread

QTYPES = {"A": 1, "AAAA": 28}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}
RCODE_NOERROR, RCODE_SERVFAIL, RCODE_NXDOMAIN = 0, 2, 3
TTL = 60

__all__ = ["DNSResponder", "DnsAction", "dns_query", "dns_answer",
           "dns_servfail", "dns_nxdomain", "dns_drop"]


@dataclass(frozen=True)
class DnsAction:
    """What the responder does with one query."""

    kind: str  # "answer", "servfail", "nxdomain", "drop"
    delay: float = 0.0


def dns_answer(delay: float = 0.0) -> DnsAction:
    """Answer from the records (NXDOMAIN if unknown), after `delay` s."""
    return DnsAction("answer", delay)


def dns_servfail() -> DnsAction:
    """Answer SERVFAIL (rcode 2): a temporary resolver failure."""
    return DnsAction("servfail")


def dns_nxdomain() -> DnsAction:
    """Answer NXDOMAIN (rcode 3) even for known names."""
    return DnsAction("nxdomain")


def dns_drop() -> DnsAction:
    """Never answer this query: the client must time out."""
    return DnsAction("drop")


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _read_name(msg: bytes, off: int) -> Tuple[str, int]:
    """Decode a (possibly compressed) name; returns (name, offset after)."""
    labels: List[str] = []
    end = -1
    for _ in range(128):  # bound pointer loops
        length = msg[off]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = off + 2
            off = ((length & 0x3F) << 8) | msg[off + 1]
            continue
        if length == 0:
            return ".".join(labels), (off + 1 if end < 0 else end)
        labels.append(msg[off + 1:off + 1 + length].decode("latin-1"))
        off += 1 + length
    raise ValueError("name compression loop")


def _encode_name(name: str) -> bytes:
    """Wire-format a name (IDNA for non-ASCII labels)."""
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = b""
    for label in name.encode("idna").split(b"."):
        if not 0 < len(label) < 64:
            raise ValueError("bad DNS label in %r" % name)
        out += bytes([len(label)]) + label
    return out + b"\x00"


class DNSResponder:
    """UDP DNS server answering A/AAAA from `records`, following a script.

    records maps a name to addresses; entries containing ":" answer AAAA,
    the others A. Unknown names get NXDOMAIN; known names without an
    address of the asked type get an empty NOERROR answer.
    """

    def __init__(self, records: Optional[Mapping[str, Sequence[str]]] = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._want_port = port
        self.records: Dict[str, List[str]] = {
            _norm(k): list(v) for k, v in (records or {}).items()}
        self._actions: List[DnsAction] = [dns_answer()]
        self._used = 0
        self._queries: List[Tuple[float, str, str]] = []
        self._cond = threading.Condition()
        self._changes = Changes(self._cond)
        self._waker = Waker()
        self._stopping = self._waker.stopping
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._timers: List[threading.Thread] = []   # delayed answers

    def set(self, name: str, addresses: Sequence[str]) -> None:
        """Add or replace the addresses for `name`."""
        with self._cond:
            self.records[_norm(name)] = list(addresses)

    def script(self, actions: Sequence[DnsAction]) -> None:
        """Nth query from now gets action N; the last repeats."""
        actions = list(actions)
        if not actions or not all(isinstance(a, DnsAction) for a in actions):
            raise ValueError("script needs a non-empty list of DnsAction")
        with self._cond:
            self._actions, self._used = actions, 0

    @property
    def port(self) -> int:
        """The bound UDP port."""
        if self._sock is None:
            raise RuntimeError("responder not started")
        return int(self._sock.getsockname()[1])

    @property
    def queries(self) -> List[Tuple[float, str, str]]:
        """Snapshot of (timing.now(), name, qtype) for every query."""
        with self._cond:
            return list(self._queries)

    def wait_queries(self, n: int, timeout: float = 5.0) -> bool:
        """Block until `n` queries arrived; False on timeout."""
        return self._changes.wait_for(lambda: len(self._queries) >= n, timeout)

    def start(self) -> "DNSResponder":
        """Bind the UDP socket and serve in a background thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((self.host, self._want_port))
        sock.setblocking(False)
        self._waker.open()
        self._sock = sock
        self._thread = start_thread(self._loop, name="faultserver-dns",
                                    long_lived=True)
        return self

    def stop(self) -> None:
        """Stop serving, cancel delayed answers, close the socket."""
        if self._sock is None or self._stopping.is_set():
            return
        self._waker.stop()      # ends the loop and every delayed answer's wait
        with self._cond:
            threads = list(self._timers)
        if self._thread is not None:
            threads.append(self._thread)
        for thread in threads:
            thread.join(1.0)
        self._sock.close()
        if not any(thread.is_alive() for thread in threads):
            self._waker.close()

    def __enter__(self) -> "DNSResponder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        """Receive queries until stopped; malformed packets are ignored."""
        assert self._sock is not None
        poller = self._waker.poller()
        poller.register(self._sock.fileno(), select.POLLIN)
        while not self._stopping.is_set():
            try:
                msg, addr = self._sock.recvfrom(4096)
            except BlockingIOError:
                idle_poll(poller)   # a query, or the waker on stop
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            try:
                self._handle(msg, addr)
            except (ValueError, IndexError, struct.error):
                continue

    def _handle(self, msg: bytes, addr: object) -> None:
        """Log the query, pick the scripted action, answer (maybe later)."""
        qid, flags, qd = struct.unpack("!HHH", msg[:6])
        if flags & 0x8000 or qd != 1:
            return
        name, off = _read_name(msg, 12)
        qtype, _qclass = struct.unpack("!HH", msg[off:off + 4])
        with self._cond:
            self._queries.append((timing.now(), _norm(name),
                                  QTYPE_NAMES.get(qtype, "TYPE%d" % qtype)))
            act = self._actions[min(self._used, len(self._actions) - 1)]
            self._used += 1
            self._cond.notify_all()
            self._changes.notify_locked()
        if act.kind == "drop":
            return
        reply = self._reply(qid, flags, msg[12:off + 4], _norm(name), qtype,
                            act.kind)
        if act.delay > 0:
            timer = start_thread(self._send_later, act.delay, reply, addr,
                                 name="faultserver-dns-later")
            with self._cond:
                self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        else:
            self._send(reply, addr)

    def _send_later(self, delay: float, reply: bytes, addr: object) -> None:
        """A slow answer: `delay` seconds on the clock, unless the responder stops."""
        try:
            self._waker.nap(self._waker.poller(), delay)
        except Stopped:
            return
        self._send(reply, addr)

    def _send(self, reply: bytes, addr: object) -> None:
        if self._sock is not None and not self._stopping.is_set():
            try:
                self._sock.sendto(reply, addr)
            except OSError:
                pass

    def _reply(self, qid: int, flags: int, question: bytes, name: str,
               qtype: int, kind: str) -> bytes:
        """Build the response message for one query."""
        answers: List[bytes] = []
        rcode = {"servfail": RCODE_SERVFAIL,
                 "nxdomain": RCODE_NXDOMAIN}.get(kind, RCODE_NOERROR)
        with self._cond:
            addrs = self.records.get(name)
        if kind == "answer" and addrs is None:
            rcode = RCODE_NXDOMAIN
        elif kind == "answer":
            for addr in addrs or []:
                fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
                if QTYPES["AAAA" if ":" in addr else "A"] != qtype:
                    continue
                rdata = socket.inet_pton(fam, addr)
                answers.append(b"\xc0\x0c" + struct.pack(
                    "!HHIH", qtype, 1, TTL, len(rdata)) + rdata)
        rflags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | rcode
        head = struct.pack("!6H", qid, rflags, 1, len(answers), 0, 0)
        return head + question + b"".join(answers)


def _parse_reply(data: bytes, qid: int, qtype: int, name: str
                 ) -> Optional[List[str]]:
    """Addresses from a reply to our query; None if it isn't ours."""
    if len(data) < 12:
        return None
    rid, flags, qd, an = struct.unpack("!4H", data[:8])
    if rid != qid or not flags & 0x8000:
        return None
    rcode = flags & 0xF
    if rcode == RCODE_NXDOMAIN:
        raise socket.gaierror(socket.EAI_NONAME,
                              "NXDOMAIN: %s not found" % name)
    if rcode == RCODE_SERVFAIL:
        raise socket.gaierror(socket.EAI_AGAIN, "SERVFAIL resolving %s" % name)
    if rcode != RCODE_NOERROR:
        raise socket.gaierror(socket.EAI_FAIL,
                              "DNS rcode %d resolving %s" % (rcode, name))
    off = 12
    for _ in range(qd):
        off = _read_name(data, off)[1] + 4
    out: List[str] = []
    for _ in range(an):
        off = _read_name(data, off)[1]
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", data[off:off + 10])
        rdata = data[off + 10:off + 10 + rdlen]
        off += 10 + rdlen
        if rtype == qtype == 1 and rdlen == 4:
            out.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == qtype == 28 and rdlen == 16:
            out.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return out


def dns_query(server_host: str, server_port: int, name: str,
              timeout: float = 2.0, qtype: Union[str, int] = "A") -> List[str]:
    """Resolve `name` against one DNS server, getaddrinfo-style errors.

    Raises socket.gaierror(EAI_NONAME) on NXDOMAIN, gaierror(EAI_AGAIN) on
    SERVFAIL, socket.timeout when no answer comes within `timeout`. A name
    with no address of the asked type returns [] (NOERROR/NODATA).
    """
    code = QTYPES[qtype.upper()] if isinstance(qtype, str) else int(qtype)
    qid = struct.unpack("!H", os.urandom(2))[0]
    msg = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + \
        _encode_name(name) + struct.pack("!HH", code, 1)
    family = socket.AF_INET6 if ":" in server_host else socket.AF_INET
    deadline = timing.now() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((server_host, server_port))
        sock.setblocking(False)
        sock.send(msg)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        while True:
            left = deadline - timing.now()
            if left <= 0 or not timing.poll(poller, left):
                raise socket.timeout("DNS query for %s timed out" % name)
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            try:
                result = _parse_reply(data, qid, code, name)
            except (ValueError, IndexError, struct.error):
                continue
            if result is not None:
                return result
