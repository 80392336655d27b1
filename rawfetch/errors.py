"""rawfetch's error hierarchy, and the one place that maps OS/socket/ssl errors onto it.

Every failure a caller can see is a FetchError subclass carrying:
  retryable  -- whether a new attempt can plausibly succeed (the resume layer reads it);
  exit_code  -- the command's exit status, curl's meaning where curl has one;
  url, offset -- where it happened, for one-line messages.
"""
from __future__ import annotations

import errno
import sys
from typing import Any

from .redact import redact_url


class FetchError(Exception):
    """Base of every error rawfetch raises."""

    retryable = False
    exit_code = 1
    phase = "fetch"

    def __init__(self, message: str, *, url: str | None = None,
                 retryable: bool | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.offset = offset
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        if not self.url:
            return self.message
        return "%s (%s)" % (self.message, redact_url(self.url))  # never with a password


class InvalidRequest(FetchError):
    """The request cannot be sent as asked: bad URL, header, method or option (curl 3)."""
    exit_code = 3
    phase = "request"


class UnsafeRedirect(FetchError):
    """A redirect to a target rawfetch refuses to follow (other scheme, https->http)."""
    exit_code = 1
    phase = "redirect"


class TooManyRedirects(FetchError):
    exit_code = 47
    phase = "redirect"


class DNSError(FetchError):
    """Name resolution failed; retryable only for temporary failures (EAI_AGAIN)."""
    exit_code = 6
    phase = "dns"


class ConnectError(FetchError):
    """Connection refused or unreachable on every address. Retryable: a ramdisk's
    network may still be coming up."""
    retryable = True
    exit_code = 7
    phase = "connect"


class TLSHandshakeError(FetchError):
    """The TLS handshake failed for a reason other than the certificate (curl 35)."""
    exit_code = 35
    phase = "tls"


class CertificateError(FetchError):
    """The server's certificate did not verify (curl 60). Never retried."""
    exit_code = 60
    phase = "tls"


class FetchTimeout(FetchError):
    """Base of every time bound rawfetch enforces (curl 28)."""
    retryable = True
    exit_code = 28
    phase = "timeout"


class DNSTimeout(FetchTimeout):
    phase = "dns"


class ConnectTimeout(FetchTimeout):
    phase = "connect"


class IdleTimeout(FetchTimeout):
    """The peer was silent longer than idle_timeout (handshake, head or body)."""
    phase = "recv"


class LowSpeed(FetchTimeout):
    """Throughput stayed under speed_limit for speed_time seconds."""
    phase = "recv"


class DeadlineExceeded(FetchTimeout):
    """max_time ran out. Not retryable: the deadline covers every attempt."""
    retryable = False


class ProtocolError(FetchError):
    """The server's bytes are not valid HTTP/1.1 (curl 8, weird server reply)."""
    retryable = True
    exit_code = 8
    phase = "response"


class IncompleteBody(FetchError):
    """The connection ended before the body did (curl 18)."""
    retryable = True
    exit_code = 18
    phase = "body"

    def __init__(self, message: str, *, received: int = 0,
                 expected: int | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.received = received
        self.expected = expected


class EmptyReply(ProtocolError):
    """The server closed the connection without sending a byte (curl 52, "empty reply
    from server"): a server restarting or a front end dropping the request; retried."""
    exit_code = 52


class IncompleteHead(ProtocolError):
    """The connection ended inside the response head, before its blank line (curl 18,
    like a cut body): the answer was cut short, not malformed; retried."""
    exit_code = 18


class SendError(FetchError):
    retryable = True
    exit_code = 55
    phase = "send"


class ReceiveError(FetchError):
    """The connection failed while receiving (reset, broken pipe) (curl 56)."""
    retryable = True
    exit_code = 56
    phase = "recv"


class ContentEncodingError(FetchError):
    """The body came with a Content-Encoding that is neither the file's own (its URL's
    name) nor one --decompress decodes: never saved as if it were the file (curl 61).
    Not retried on this server (it would encode again); another mirror may be tried."""
    exit_code = 61
    phase = "response"


RETRYABLE_STATUSES = frozenset((408, 429, 500, 502, 503, 504))  # RFC 9110 transient; urllib3 Retry's list


class HTTPStatusError(FetchError):
    """The server answered with a status >= 400 (curl 22)."""
    exit_code = 22
    phase = "status"

    def __init__(self, message: str, *, status: int, reason: str = "",
                 retry_after: float | None = None, **kwargs) -> None:
        kwargs.setdefault("retryable", status in RETRYABLE_STATUSES)
        super().__init__(message, **kwargs)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class LocalWriteError(FetchError):
    """Writing the output failed (curl 23). ENOSPC and friends are fatal at once."""
    exit_code = 23
    phase = "write"


class ReadBackMismatch(FetchError):
    """--verify-written read the device back and it differs from what was written: the
    device does not store what it is given (fuel-agent's reason to read back)."""
    exit_code = 93
    phase = "verify"


class UnsupportedImageFormat(FetchError):
    """The output starts with a qcow2/VMDK signature: writing it raw would give a disk
    that never boots; refused before anything is written."""
    exit_code = 95
    phase = "format"


class ChecksumMismatch(FetchError):
    """All bytes arrived but their digest is not the expected one (rawfetch's own code)."""
    exit_code = 90
    phase = "verify"


class ResourceChanged(FetchError):
    """The server's object changed under a resumed stream whose bytes were already consumed."""
    exit_code = 91
    phase = "resume"


class DecompressError(FetchError):
    """The downloaded gzip/xz/bzip2 stream is truncated, corrupt, fails its check, is
    followed by garbage or needs more memory than xz_memlimit (rawfetch's own code)."""
    exit_code = 92
    phase = "decompress"

    def __init__(self, message: str, *, codec: str = "", produced: int = 0,
                 **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.codec = codec          # "gzip", "xz" or "bzip2"
        self.produced = produced    # decompressed bytes delivered before the failure


class GunzipError(DecompressError):
    """A gzip failure: kept so code written for the gzip-only pipeline still catches it."""
    phase = "gunzip"


class InvariantViolation(FetchError):
    """rawfetch's own byte accounting does not add up at the end of a job (bytes left in
    an intermediate buffer, delivered != offset != total, file size != offset): a bug in
    rawfetch, caught before a wrong file is kept. Never retried; never exit 0."""
    exit_code = 96
    phase = "verify"


class ChecksumFileError(FetchError):
    """The checksum file has no usable entry for the image: none matches its name, two
    differ, or nothing in it parses (rawfetch's own code)."""
    exit_code = 94
    phase = "checksum-file"


class OutputBusy(FetchError):
    """Another process is writing the same output (its lock is held): refused at once,
    before anything is touched, naming the other writer (rawfetch's own code)."""
    exit_code = 97
    phase = "lock"


class MetalinkError(FetchError):
    """A Metalink 4 document (RFC 5854) rawfetch will not use: not well-formed XML, a DTD
    or entity (refused, never expanded), over a size limit, a hash of the wrong length,
    pieces that do not add up to the size, no http(s) URL, or no single file matching the
    name asked for (rawfetch's own code; curl dropped Metalink in 7.78)."""
    exit_code = 98
    phase = "metalink"


class PieceMismatch(FetchError):
    """A piece of the image does not match its Metalink piece hash (RFC 5854 4.1.3): the
    mirror that sent it is charged, and the piece alone is fetched again (from the next
    mirror when there is one) within the same retries and max_time. Raised to the caller
    only when the budget is spent (rawfetch's own code)."""
    retryable = True
    exit_code = 99
    phase = "verify"

    def __init__(self, message: str, *, index: int = -1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.index = index          # the piece's number, from 0; `offset` is its first byte


# ---- proxies and client certificates (curl's codes: 5 proxy host unresolved, 7 proxy
# unreachable, 56 CONNECT refused or cut short, 35 client certificate refused)

class ClientCertificateError(TLSHandshakeError):
    """The server asked for a client certificate and refused the connection (curl 35).
    Never retried: another attempt would present the same certificate, or none."""
    retryable = False


class ProxyResolveError(DNSError):
    """The proxy's host name cannot be resolved (curl 5)."""
    exit_code = 5


class ProxyConnectError(ConnectError):
    """The proxy refused the connection or is unreachable (curl 7); retried like any connect."""


class ProxyTunnelError(FetchError):
    """The proxy answered CONNECT with a non-2xx status (curl 56): 407 and other 4xx are
    final (credentials or policy), 5xx, 408 and 429 are retried."""
    exit_code = 56
    phase = "proxy"

    def __init__(self, message: str, *, status: int, **kwargs) -> None:
        kwargs.setdefault("retryable", status in RETRYABLE_STATUSES or status >= 500)
        super().__init__(message, **kwargs)
        self.status = status


class ProxyTunnelClosed(ReceiveError):
    """The proxy closed the connection before its CONNECT answer's head ended, with no
    byte or mid-way (curl 7.88: 56, "Proxy CONNECT aborted"); retried like a reset."""
    exit_code = 56
    phase = "proxy"


_RESET_ERRNOS = frozenset((errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN))
_CONNECT_ERRNOS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                             errno.ENETDOWN, errno.EHOSTDOWN, errno.EADDRNOTAVAIL))


def _ssl_error_class(exc: BaseException) -> type | None:
    """Classify ssl exceptions without importing ssl (it may never have been loaded)."""
    ssl = sys.modules.get("ssl")
    if ssl is None or not isinstance(exc, ssl.SSLError):
        return None
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CertificateError
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return ReceiveError
    return TLSHandshakeError


def translate(exc: BaseException, phase: str, url: str | None = None,
              offset: int | None = None, path: str | None = None) -> FetchError:
    """Map an OSError/socket/ssl exception raised during `phase` to a FetchError.

    phase is one of "dns", "connect", "tls", "send", "recv" (the network), or "write"
    (a local file, pipe or device: `path` names it).
    """
    if isinstance(exc, FetchError):
        return exc
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if phase == "write":
        error = LocalWriteError("writing %s failed: %s" % (path or "the output", detail),
                                url=url)
        error.errno = getattr(exc, "errno", None)  # type: ignore[attr-defined]
        return error
    ssl_cls = _ssl_error_class(exc)
    if ssl_cls is not None:
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or detail
        if phase == "tls" and ssl_cls is ReceiveError:
            return TLSHandshakeError("TLS handshake: server closed the connection (%s)" % reason,
                                     url=url, retryable=True)
        if ssl_cls is ReceiveError:
            return ReceiveError("TLS connection ended uncleanly: %s" % reason, url=url, offset=offset)
        what = "certificate verify failed" if ssl_cls is CertificateError else "TLS handshake failed"
        return ssl_cls("%s: %s" % (what, reason), url=url, offset=offset)
    code = getattr(exc, "errno", None)
    if phase == "dns":
        return DNSError("cannot resolve host: %s" % detail, url=url,
                        retryable=_dns_retryable(exc))
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "timeout":
        cls = {"connect": ConnectTimeout, "dns": DNSTimeout}.get(phase, IdleTimeout)
        return cls("%s timed out" % phase, url=url, offset=offset)
    if phase in ("connect",) or code in _CONNECT_ERRNOS and phase != "recv":
        return ConnectError("cannot connect: %s" % detail, url=url)
    if phase == "tls":
        return TLSHandshakeError("TLS handshake: %s" % detail, url=url, retryable=True)
    if phase == "send":
        return SendError("sending the request failed: %s" % detail, url=url)
    if code in _RESET_ERRNOS:
        return ReceiveError("connection reset by the server%s" % _at(offset), url=url, offset=offset)
    return ReceiveError("receive failed: %s%s" % (detail, _at(offset)), url=url, offset=offset)


class mapped:
    """`with mapped("write", path=p):` -- the seam (like httpcore's map_exceptions) through
    which an OSError (ssl errors included) of a socket, pipe or local-file call leaves as
    rawfetch's error for its phase. FetchErrors and other exceptions pass unchanged."""

    __slots__ = ("phase", "url", "path", "catch")

    def __init__(self, phase: str, url: str | None = None, path: str | None = None,
                 catch: tuple = (OSError,)) -> None:
        self.phase = phase
        self.url = url
        self.path = path
        self.catch = catch   # the TLS handshake adds ValueError (ssl's bad-argument errors)

    def __enter__(self) -> "mapped":
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, FetchError) or not isinstance(exc, self.catch):
            return False
        raise translate(exc, self.phase, self.url, path=self.path) from None


def _at(offset: int | None) -> str:
    return "" if offset is None else " after %s body bytes" % format(offset, ",")


def _dns_retryable(exc: BaseException) -> bool:
    """Only EAI_AGAIN (temporary failure, e.g. SERVFAIL) is worth retrying; NXDOMAIN is final."""
    import socket  # lazy: `import rawfetch` stays free of socket until a lookup fails
    code = exc.args[0] if isinstance(exc, socket.gaierror) and exc.args else None
    return code in (getattr(socket, "EAI_AGAIN", -3), getattr(socket, "EAI_SYSTEM", -11))


__all__ = [name for name, value in list(globals().items())
           if isinstance(value, type) and issubclass(value, FetchError)] + ["RETRYABLE_STATUSES"]
