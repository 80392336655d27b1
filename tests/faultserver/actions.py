"""Scripted connection behaviours for :class:`FaultServer`.

Each constructor returns a small frozen dataclass describing what the server
does with one connection. Tests build lists of these and hand them to
``FaultServer.script()``; the Nth connection gets the Nth action and the last
action repeats. Offsets (``at``) always count *body payload* bytes of the
response, never head or chunked-framing bytes, so a test can assert exactly
how much data the client had before the fault. An `at` beyond the body
means the whole body is sent first, then the fault happens.

Disconnect kinds recorded per action: normal/status/redirect/trickle end
"complete" (TLS: close_notify, then FIN); rst -> "rst"; fin and expired
stall/silence -> "fin" (TLS: no close_notify, a truncation); raw -> its
close mode ("fin" is graceful there), with every raw byte counted in
body_bytes_sent. Peer gone -> "client_closed"; stop() -> "stopped".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Tuple, Union

HeaderMap = Optional[Mapping[str, Optional[str]]]
RawData = Union[bytes, Callable[[Any], Any], Tuple[bytes, ...]]

__all__ = [
    "Serve", "Silence", "Status", "Raw", "Replace", "TlsStall", "Action",
    "normal", "rst", "fin", "stall", "trickle", "silence", "status",
    "redirect", "raw", "wrong_content_range", "replace", "tls_stall",
]


@dataclass(frozen=True)
class Serve:
    """Serve the resource properly, optionally faulting after `at` body bytes.

    ``fault`` is one of "none", "rst", "fin", "stall", "trickle"; a single
    class keeps all body-serving behaviour on one well-tested code path.
    """

    fault: str = "none"
    at: int = 0
    seconds: Optional[float] = None
    gap: float = 0.5
    step: int = 1
    wrong_range: bool = False
    content_range: Optional[str] = None
    ignore_range: bool = False
    chunked: Optional[bool] = None
    headers: HeaderMap = None
    delay: float = 0.0


@dataclass(frozen=True)
class Silence:
    """Read the request, then say nothing for `seconds` (None = until stop)."""

    seconds: Optional[float] = None


@dataclass(frozen=True)
class Status:
    """Answer with a fixed status line, headers and body."""

    code: int
    headers: HeaderMap = None
    body: bytes = b""


@dataclass(frozen=True)
class Raw:
    """Send bytes verbatim: the tool for framing faults the server won't make."""

    data: RawData
    close: Optional[str] = "fin"
    hold: Optional[float] = None


@dataclass(frozen=True)
class Replace:
    """Swap the resource for a new version, then serve with `then`."""

    data: bytes
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    then: Optional["Action"] = None


@dataclass(frozen=True)
class TlsStall:
    """Accept TCP but never answer the ClientHello (plain HTTP: never read)."""

    seconds: Optional[float] = None


Action = Union[Serve, Silence, Status, Raw, Replace, TlsStall]
ACTION_TYPES = (Serve, Silence, Status, Raw, Replace, TlsStall)


def _check_at(at: int) -> int:
    """Reject negative offsets early, where the test author can see them."""
    if not isinstance(at, int) or at < 0:
        raise ValueError("at must be a non-negative int, got %r" % (at,))
    return at


def _serve(fault: str, at: int = 0, **kw: Any) -> Serve:
    """Build a Serve action with validated common keyword arguments."""
    if kw.get("delay", 0.0) < 0:
        raise ValueError("delay must be >= 0")
    return Serve(fault=fault, at=_check_at(at), **kw)


def normal(*, ignore_range: bool = False, chunked: Optional[bool] = None,
           headers: HeaderMap = None, delay: float = 0.0) -> Serve:
    """Serve the resource correctly."""
    return _serve("none", 0, ignore_range=ignore_range, chunked=chunked,
                  headers=headers, delay=delay)


def rst(at: int, *, ignore_range: bool = False, chunked: Optional[bool] = None,
        headers: HeaderMap = None, delay: float = 0.0) -> Serve:
    """After `at` body bytes abort with a TCP RST (SO_LINGER 0)."""
    return _serve("rst", at, ignore_range=ignore_range, chunked=chunked,
                  headers=headers, delay=delay)


def fin(at: int, *, ignore_range: bool = False, chunked: Optional[bool] = None,
        headers: HeaderMap = None, delay: float = 0.0) -> Serve:
    """After `at` body bytes close with a plain FIN: a short body."""
    return _serve("fin", at, ignore_range=ignore_range, chunked=chunked,
                  headers=headers, delay=delay)


def stall(at: int, seconds: Optional[float] = None, *,
          ignore_range: bool = False, chunked: Optional[bool] = None,
          headers: HeaderMap = None, delay: float = 0.0) -> Serve:
    """After `at` body bytes go silent for `seconds` (None = until stop)."""
    return _serve("stall", at, seconds=seconds, ignore_range=ignore_range,
                  chunked=chunked, headers=headers, delay=delay)


def trickle(at: int, gap: float = 0.5, step: int = 1, *,
            ignore_range: bool = False, chunked: Optional[bool] = None,
            headers: HeaderMap = None, delay: float = 0.0) -> Serve:
    """After `at` body bytes send `step` bytes every `gap` seconds."""
    if step < 1 or gap < 0:
        raise ValueError("trickle needs step >= 1 and gap >= 0")
    return _serve("trickle", at, gap=gap, step=step, ignore_range=ignore_range,
                  chunked=chunked, headers=headers, delay=delay)


def wrong_content_range(content_range: Optional[str] = None, *,
                        ignore_range: bool = False,
                        chunked: Optional[bool] = None,
                        headers: HeaderMap = None, delay: float = 0.0) -> Serve:
    """Answer a Range request with 206 whose Content-Range lies.

    Default: the start is shifted by +1 while the bytes still come from the
    asked start; a string replaces the header verbatim. Non-range requests
    are served normally.
    """
    return _serve("none", 0, wrong_range=True, content_range=content_range,
                  ignore_range=ignore_range, chunked=chunked, headers=headers,
                  delay=delay)


def silence(seconds: Optional[float] = None) -> Silence:
    """Accept and read the request, never answer."""
    return Silence(seconds)


def status(code: int, headers: HeaderMap = None, body: bytes = b"") -> Status:
    """Answer with `code`, the given headers and a Content-Length'd body."""
    return Status(int(code), headers, bytes(body))


def redirect(code: int, location: str) -> Status:
    """A 3xx with a Location header and an empty body."""
    if code not in (301, 302, 303, 307, 308):
        raise ValueError("redirect code must be 301/302/303/307/308")
    return Status(code, {"Location": location}, b"")


def raw(data: Union[bytes, Callable[[Any], Any], Iterable[bytes]],
        close: Optional[str] = "fin", hold: Optional[float] = None) -> Raw:
    """Send `data` verbatim after reading the request, then close or hold.

    `data` may be bytes, an iterable of bytes pieces (each sent by its own
    send call) or a callable taking the Request record and returning either.
    If `hold` is set, or `close` is None, the connection is held open first
    (`hold` seconds, None = until stop); then closed with `close` or "fin".
    """
    if close not in (None, "fin", "rst"):
        raise ValueError("close must be 'fin', 'rst' or None")
    if not isinstance(data, (bytes, bytearray)) and not callable(data):
        data = tuple(bytes(p) for p in data)
    elif isinstance(data, bytearray):
        data = bytes(data)
    return Raw(data, close, hold)


def replace(data: bytes, etag: Optional[str] = None,
            last_modified: Optional[str] = None,
            then: Optional[Action] = None) -> Replace:
    """From this connection on, the requested path has new content.

    etag None derives a strong ETag from the data; last_modified None takes
    the previous Last-Modified plus one day. Pass "" to omit either header.
    """
    if then is not None and not isinstance(then, ACTION_TYPES):
        raise TypeError("then must be an action")
    return Replace(bytes(data), etag, last_modified, then)


def tls_stall(seconds: Optional[float] = None) -> TlsStall:
    """Accept the TCP connection but never answer (no TLS handshake)."""
    return TlsStall(seconds)
