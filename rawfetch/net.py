"""Getting a connected, optionally TLS-wrapped, socket under rawfetch's own deadlines.

Resolution runs in a worker thread so dns_timeout really bounds it; connecting races the
addresses Happy-Eyeballs style (RFC 8305) and remembers failed ones; the TLS handshake is
non-blocking under idle_timeout and max_time. All OSError/ssl errors are translated by
errors.translate, the one mapping place.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import timing
from .errors import (ClientCertificateError, ConnectError, ConnectTimeout, DNSError,
                     DNSTimeout, FetchError, FetchTimeout, InvalidRequest, ProtocolError,
                     ReceiveError, SendError, TLSHandshakeError, translate)
from .timing import Deadline

HAPPY_EYEBALLS_DELAY = 0.25   # s; RFC 8305 s5 recommended Connection Attempt Delay
FAILED_ADDRESS_TTL = 600.0    # s; how long a failed address goes to the back of the line
FAILED_ADDRESS_MEMORY = 256   # entries; bounded so a long-lived agent never grows

Address = Tuple[int, Tuple[Any, ...]]   # (family, sockaddr)


class AddressMemory:
    """Process-wide memory of addresses that recently failed to connect."""

    def __init__(self) -> None:
        self._failed: "OrderedDict[Any, float]" = OrderedDict()
        self._lock = threading.Lock()

    def failed(self, sockaddr: Tuple[Any, ...]) -> None:
        with self._lock:
            self._failed.pop(sockaddr[:2], None)
            self._failed[sockaddr[:2]] = timing.now()
            while len(self._failed) > FAILED_ADDRESS_MEMORY:
                self._failed.popitem(last=False)

    def succeeded(self, sockaddr: Tuple[Any, ...]) -> None:
        with self._lock:
            self._failed.pop(sockaddr[:2], None)

    def order(self, addresses: List[Address]) -> List[Address]:
        """Interleave families (RFC 8305 s4), then move recent failures to the end."""
        by_family: Dict[int, List[Address]] = {}
        for address in addresses:
            by_family.setdefault(address[0], []).append(address)
        lists = list(by_family.values())
        mixed = [lst[i] for i in range(max(map(len, lists), default=0))
                 for lst in lists if i < len(lst)]
        now = timing.now()
        with self._lock:
            def stale(address: Address) -> float:
                when = self._failed.get(address[1][:2])
                return when if when is not None and now - when < FAILED_ADDRESS_TTL else 0.0
            return sorted(mixed, key=stale)  # stable: healthy first, oldest failure next


ADDRESS_MEMORY = AddressMemory()


def parse_resolve(entries: Any) -> Dict[Tuple[str, int], List[str]]:
    """curl's --resolve HOST:PORT:ADDR[,ADDR...] (IPv6 addresses may be bracketed)."""
    pins: Dict[Tuple[str, int], List[str]] = {}
    for entry in entries or ():
        host, _, rest = str(entry).partition(":")
        port, _, addrs = rest.partition(":")
        if not host or not port.isdigit() or not addrs:
            raise InvalidRequest("resolve entry %r is not HOST:PORT:ADDR[,ADDR...]" % entry)
        pins[(host.lower(), int(port))] = [_literal(a.strip().strip("[]"), entry)
                                           for a in addrs.split(",")]
    return pins


def _literal(address: str, entry: str) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        socket.inet_pton(family, address)
    except OSError:  # not I/O: inet_pton's way of saying "not an address"
        raise InvalidRequest("resolve entry %r: %r is not an IP address" % (entry, address)) from None
    return address


def _sockaddrs(addresses: List[str], port: int) -> List[Address]:
    out: List[Address] = []
    for address in addresses:
        if ":" in address:
            out.append((socket.AF_INET6, (address, port, 0, 0)))
        else:
            out.append((socket.AF_INET, (address, port)))
    return out


def _is_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:  # not I/O: inet_pton's way of saying "not an address"
            pass
    return False


def _system_resolve(host: str, port: int) -> List[str]:
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    seen: List[str] = []
    for info in infos:
        if info[0] in (socket.AF_INET, socket.AF_INET6) and info[4][0] not in seen:
            seen.append(info[4][0])
    return seen


def resolve(host: str, port: int, dns_timeout: float, deadline: Deadline,
            resolver: Optional[Callable[[str, int], List[str]]] = None,
            pins: Optional[Dict[Tuple[str, int], List[str]]] = None) -> List[Address]:
    """Addresses for host:port within dns_timeout (and max_time)."""
    pinned = (pins or {}).get((host, port))
    if pinned:
        return _sockaddrs(pinned, port)
    if _is_literal(host):
        return _sockaddrs([host], port)
    deadline.check()
    outcome: Dict[str, Any] = {}
    finished = threading.Event()

    def work() -> None:
        with timing.busy():  # a virtual clock must not jump past a lookup in progress
            try:
                outcome["addresses"] = list((resolver or _system_resolve)(host, port))
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc
            finally:
                finished.set()

    threading.Thread(target=work, name="rawfetch-dns", daemon=True).start()
    if not timing.wait(finished, deadline.bound(dns_timeout)):
        deadline.check()
        raise DNSTimeout("resolving %s took longer than dns_timeout=%gs" % (host, dns_timeout))
    if "error" in outcome:
        raise translate(outcome["error"], "dns")
    addresses = [a for a in outcome["addresses"] if isinstance(a, str) and _is_literal(a)]
    if not addresses:
        raise DNSError("no usable address for %s" % host, retryable=True)
    return _sockaddrs(addresses, port)


class _Attempt:
    __slots__ = ("sock", "address", "expires")

    def __init__(self, sock: socket.socket, address: Address, expires: float) -> None:
        self.sock, self.address, self.expires = sock, address, expires


def connect(addresses: List[Address], connect_timeout: float, deadline: Deadline,
            memory: AddressMemory = ADDRESS_MEMORY) -> Tuple[socket.socket, Address]:
    """Race the addresses (RFC 8305): next one 250 ms after the previous if still pending,
    immediately after a failure; first success wins (with TCP_NODELAY set), the rest are
    closed. Returns the socket and the address it is connected to."""
    queue = memory.order(addresses)
    pending: Dict[int, _Attempt] = {}
    failures: List[str] = []
    timed_out = 0
    poller = select.poll()
    next_start = timing.now()
    try:
        while queue or pending:
            now = timing.now()
            deadline.check(now)
            if queue and (not pending or now >= next_start):
                _start(queue.pop(0), pending, poller, now + connect_timeout, failures, memory)
                next_start = now + HAPPY_EYEBALLS_DELAY
                continue
            timed_out += _expire(pending, now, poller, failures, memory)
            if not pending:
                continue
            wake = min(a.expires for a in pending.values())
            if queue:
                wake = min(wake, next_start)
            wait = deadline.bound(max(wake - now, 0.0), now)
            winner = _poll_connect(poller, pending, max(wait or 0.0, 0.0), failures, memory)
            if winner is not None:
                return winner
            if failures and queue and not pending:
                next_start = timing.now()
    finally:
        for fd in list(pending):
            _drop(fd, pending, poller, memory)  # slower than the winner: try it last
    deadline.check()
    summary = "; ".join(failures[-4:]) or "no address to try"
    if timed_out and timed_out == len(failures):
        raise ConnectTimeout("connect timed out after %gs per address (%s)"
                             % (connect_timeout, summary))
    raise ConnectError("cannot connect: %s" % summary)


def _expire(pending: Dict[int, _Attempt], now: float, poller: Any, failures: List[str],
            memory: AddressMemory) -> int:
    """Give up on attempts older than connect_timeout; return how many."""
    expired = [fd for fd, attempt in pending.items() if attempt.expires <= now]
    for fd in expired:
        failures.append("%s: timed out" % _show(pending[fd].address))
        _drop(fd, pending, poller, memory)
    return len(expired)


def _start(address: Address, pending: Dict[int, _Attempt], poller: Any, expires: float,
           failures: List[str], memory: AddressMemory) -> None:
    """Start a non-blocking connect. A local failure (EMFILE, EAFNOSUPPORT on a host
    without IPv6...) fails this address like a refusal would: the others still race,
    and if all fail connect() raises ConnectError naming each reason."""
    try:
        sock = socket.socket(address[0], socket.SOCK_STREAM)
    except OSError as exc:  # this address fails (see above); connect() reports them all
        memory.failed(address[1])
        failures.append("%s: %s" % (_show(address), exc.strerror or exc))
        return
    try:
        sock.setblocking(False)
        code = sock.connect_ex(address[1])
    except OSError as exc:  # likewise: an errno for this address's failure line
        code = exc.errno or errno.EINVAL
    if code in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        pending[sock.fileno()] = _Attempt(sock, address, expires)
        poller.register(sock.fileno(), select.POLLOUT)
        return
    sock.close()
    memory.failed(address[1])
    failures.append("%s: %s" % (_show(address), _errname(code)))


def _poll_connect(poller: Any, pending: Dict[int, _Attempt], wait: float, failures: List[str],
                  memory: AddressMemory) -> Optional[Tuple[socket.socket, Address]]:
    for fd, _events in timing.poll(poller, wait):
        attempt = pending.get(fd)
        if attempt is None:
            continue
        try:
            code = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                attempt.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:   # reset between connect and now: this address failed
            code = exc.errno or errno.ECONNRESET
        if code == 0:
            poller.unregister(fd)
            del pending[fd]
            memory.succeeded(attempt.address[1])
            return attempt.sock, attempt.address
        failures.append("%s: %s" % (_show(attempt.address), _errname(code)))
        _drop(fd, pending, poller, memory)
    return None


def _drop(fd: int, pending: Dict[int, _Attempt], poller: Any,
          memory: Optional[AddressMemory]) -> None:
    attempt = pending.pop(fd)
    poller.unregister(fd)
    if memory is not None:
        memory.failed(attempt.address[1])
    attempt.sock.close()


def _errname(code: int) -> str:
    return "%s (%s)" % (os.strerror(code), errno.errorcode.get(code, code))


def _show(address: Address) -> str:
    host, port = address[1][:2]
    return "[%s]:%d" % (host, port) if address[0] == socket.AF_INET6 else "%s:%d" % (host, port)


_TLS_CONTEXTS: Dict[Tuple[Any, ...], Any] = {}
_UNWATCHED: Dict[int, Any] = {}   # id(watching context) -> its twin without the callback
TLS_HANDSHAKE = 22                # record content type (RFC 8446 s5.1)
CERTIFICATE_REQUEST = 13          # handshake message type (RFC 8446 s4.3.2)


def tls_context(options: Any) -> Any:
    """The one client TLS context builder, for an origin reached directly or through a
    proxy's CONNECT tunnel: CERT_REQUIRED + check_hostname + TLS >= options.tls_min
    unless options.insecure; cafile/capath replace the system CAs; cert/key (PEM; the key
    may be inside the cert file) answer a server that asks for a client certificate.

    Cached per distinct settings. The context notes a server's CertificateRequest (see
    certificate_refusal) until stop_watching swaps in its twin without the callback.
    ssl is imported here, on first https use, not at `import rawfetch`."""
    settings = (options.cafile, options.capath, options.insecure, options.cert,
                options.key, options.tls_min)
    context = _TLS_CONTEXTS.get(settings)
    if context is None:
        context = _new_context(*settings)
        if hasattr(context, "_msg_callback"):
            context._msg_callback = _note_certificate_request
            _UNWATCHED[id(context)] = _new_context(*settings)
        _TLS_CONTEXTS[settings] = context
    return context


def _new_context(cafile: Optional[str], capath: Optional[str], insecure: bool,
                 cert: Optional[str], key: Optional[str], tls_min: str) -> Any:
    import ssl  # lazy: loaded on the first https use, not at `import rawfetch`
    try:
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:  # the caller's input, refused up front
        raise InvalidRequest("cannot load CA file %r: %s" % (cafile or capath, exc)) from None
    # tls_min is one of options.TLS_VERSIONS: "1.2" -> TLSVersion.TLSv1_2
    context.minimum_version = getattr(ssl.TLSVersion, "TLSv" + tls_min.replace(".", "_"))
    if cert is not None:
        _load_client_certificate(context, cert, key)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_client_certificate(context: Any, cert: str, key: Optional[str]) -> None:
    import ssl  # lazy, as in _new_context (already loaded by then)
    try:
        # an encrypted key gets an empty passphrase and fails: OpenSSL would otherwise
        # prompt on the terminal of an unattended agent
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (OSError, ssl.SSLError, ValueError) as exc:  # the caller's input, refused up front
        detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise InvalidRequest("cannot load client certificate %r%s: %s"
                             % (cert, "" if key is None else " with key %r" % key,
                                detail)) from None


def _note_certificate_request(sock: Any, direction: str, _version: Any, content_type: Any,
                              msg_type: Any, _data: bytes) -> None:
    """ssl's message callback, during the handshake only (see stop_watching)."""
    if direction == "read" and content_type == TLS_HANDSHAKE \
            and msg_type == CERTIFICATE_REQUEST:
        try:  # an exception here would surface from the handshake itself
            sock.certificate_requested = True
        except AttributeError:
            pass


def stop_watching(sock: Any) -> None:
    """After the handshake: the twin context without the callback, which would otherwise
    run in Python for every TLS record of the body and slow every TLS download."""
    twin = _UNWATCHED.get(id(sock.context))
    if twin is not None:
        sock.context = twin


def certificate_refusal(exc: FetchError, sock: Any) -> FetchError:
    """A server that asked for a client certificate and then dropped the connection
    before any answer refused the certificate (or its absence). With TLS 1.3 its alert
    comes after the client's handshake ended and is often lost to the reset that
    closing with our request unread causes, so the alert alone can't be relied on:
    curl's 35, never retried."""
    if not getattr(sock, "certificate_requested", False) or isinstance(exc, FetchTimeout) \
            or not isinstance(exc, (ReceiveError, SendError, TLSHandshakeError,
                                    ProtocolError)):
        return exc
    return ClientCertificateError("the server requires a client certificate and refused "
                                  "the connection (%s)" % exc.message, url=exc.url)
