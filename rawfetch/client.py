"""The single-attempt API: request() -> Response, following redirects safely."""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Iterator, List, Optional, Tuple, Union

from . import timing
from .connection import Connection, open_connection
from .credentials import with_origin_auth
from .net import certificate_refusal
from .errors import (EmptyReply, FetchError, HTTPStatusError, IncompleteHead, TooManyRedirects,
                     UnsafeRedirect)
from .http11 import (USER_AGENT, BodyReader, Headers, HeadParser, body_reader,
                     build_request)
from .options import Options, make_options
from .proxy import proxy_refused, select_proxy, with_proxy_auth
from .redact import SECRET_HEADERS
from .timing import Deadline, RateLimiter
from .url import URL, join_url, parse_url

HEAD_RECV_SIZE = 65536            # head reads; leftover body bytes are served first
CHUNKED_RECV_SIZE = 262144        # scratch for chunked bodies (framing must be parsed)
DEFAULT_CHUNK_SIZE = 1 << 20      # iter_bytes(); fuel-agent's data_chunk_size
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
# Final statuses that never carry the file (RFC 9110 s15.3.5, s15.3.6, s15.4.5): an error,
# never an empty file. A 3xx reaching raise_for_status is a redirect left unfollowed.
NO_FILE_STATUSES = frozenset((204, 205, 304))
# Dropped when a redirect changes the origin: the credentials (requests CVE-2018-18074),
# and a custom Host, which names the first origin (curl).
ORIGIN_BOUND_HEADERS = SECRET_HEADERS | {"host"}

Buffer = Union[bytearray, memoryview]


class Readable:
    """The file-like face of anything with readinto() and close(): read(), iter_bytes(),
    a context manager (Response and resume.Stream share it)."""

    def readinto(self, buffer: Any) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all of the rest when size < 0); b"" at the end."""
        return read_via(self.readinto, size)

    def iter_bytes(self, size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The body as bytes chunks of at most `size` bytes."""
        return iter_via(self.readinto, size)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Response(Readable):
    """A response whose body is read straight from the socket into the caller's buffer."""

    def __init__(self, conn: Connection, method: str, url: URL, head: Any,
                 reader: BodyReader, leftover: bytes) -> None:
        self._conn: Optional[Connection] = conn
        self.method = method
        self.url = str(url)
        self.version = head.version
        self.status: int = head.status
        self.reason: str = head.reason
        self.headers: Headers = head.headers
        self._reader = reader
        self._pending: Deque[memoryview] = deque(reader.feed(leftover)) if leftover else deque()
        self._scratch: Optional[bytearray] = None
        if reader.complete and not self._pending:
            self.close()

    @property
    def content_length(self) -> Optional[int]:
        """Body length from Content-Length (None for chunked or close-delimited bodies)."""
        return self._reader.length

    @property
    def complete(self) -> bool:
        return self._reader.complete and not self._pending

    def readinto(self, buffer: Buffer) -> int:
        """Fill up to len(buffer) body bytes; 0 at the end of the body."""
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not len(view):
            return 0
        if self._pending:
            return self._from_pending(view)
        reader = self._reader
        while not reader.complete and self._conn is not None:
            if reader.passthrough:
                limit = reader.limit(len(view))
                size = self._recv(view if limit == len(view) else view[:limit])
                if size:
                    reader.consumed(size)
                    return size
            else:
                size = self._recv_chunked()
                if self._pending:
                    return self._from_pending(view)
            if not size:
                self._eof()
        self.close()
        return 0

    def splice_to(self, splicer: Any, size: int) -> int:
        """Body bytes straight from the socket into splicer's output (see splice.py);
        -1 when this response can't (buffered bytes, chunked, TLS) or at its end: the
        caller then uses readinto(), which also reports EOF and framing errors."""
        reader = self._reader
        if self._pending or not reader.passthrough or self._conn is None:
            return -1
        limit = reader.limit(size)
        if not limit:
            return -1
        try:
            moved = self._conn.splice_to(splicer, limit)
        except FetchError as exc:
            self.close()
            raise _with_progress(exc, reader) from None
        if moved <= 0:
            return -1
        reader.consumed(moved)
        return moved

    def _recv(self, view: memoryview) -> int:
        assert self._conn is not None
        try:
            return self._conn.recv_into(view)
        except FetchError as exc:
            self.close()
            raise _with_progress(exc, self._reader) from None

    def _recv_chunked(self) -> int:
        if self._scratch is None:
            self._scratch = bytearray(CHUNKED_RECV_SIZE)
        size = self._recv(memoryview(self._scratch))
        if size:
            try:
                pieces = self._reader.feed(bytes(self._scratch[:size]))
            except FetchError as exc:
                self.close()
                exc.url = exc.url or self.url
                raise _with_progress(exc, self._reader) from None
            self._pending.extend(pieces)
        return size

    def _eof(self) -> None:
        try:
            self._reader.eof()
        except FetchError as exc:
            self.close()
            exc.url = exc.url or self.url
            raise
        self.close()

    def _from_pending(self, view: memoryview) -> int:
        piece = self._pending[0]
        size = min(len(piece), len(view))
        view[:size] = piece[:size]
        if size == len(piece):
            self._pending.popleft()
        else:
            self._pending[0] = piece[size:]
        if self._reader.complete and not self._pending:
            self.close()
        return size

    def raise_for_status(self) -> None:
        """Raise HTTPStatusError (exit 22) for a status >= 400 (retryable for 408/429/5xx
        transients), and for a well-formed answer that is not the file: 204, 205, 304, or
        a 3xx with no Location to follow. curl saves those as an empty or 3xx body."""
        if self.status < 300 and self.status not in NO_FILE_STATUSES:
            return
        self.close()
        raise HTTPStatusError("HTTP %d %s%s" % (self.status, self.reason, self._not_the_file()),
                              url=self.url, status=self.status, reason=self.reason,
                              retry_after=retry_after_seconds(self.headers.get("retry-after")))

    def _not_the_file(self) -> str:
        if self.status in NO_FILE_STATUSES:
            return ": the server sent no content"
        if 300 <= self.status < 400 and not self.headers.get("location"):
            return ": a redirect without a Location to follow"
        if 300 <= self.status < 400:
            return ": a redirect status rawfetch does not follow"
        return ""

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __repr__(self) -> str:
        return "<Response %d %s %s>" % (self.status, self.reason, self.url)


def iter_via(readinto: Callable[[memoryview], int], size: int) -> Iterator[bytes]:
    """Chunks of at most `size` bytes from a readinto-style source, until it returns 0."""
    view = memoryview(bytearray(size))
    while True:
        got = readinto(view)
        if not got:
            return
        yield bytes(view[:got])


def read_via(readinto: Callable[[memoryview], int], size: int) -> bytes:
    """file.read() semantics on a readinto-style source: one call, or all when size < 0."""
    if size < 0:
        return b"".join(iter_via(readinto, DEFAULT_CHUNK_SIZE))
    buffer = bytearray(size)
    del buffer[readinto(memoryview(buffer)):]
    return bytes(buffer)


def _with_progress(exc: FetchError, reader: BodyReader) -> FetchError:
    """Name the body progress in messages: 'after 5,000,000 of 16,777,216 bytes'."""
    if exc.offset is None:
        exc.offset = reader.received
        total = "" if reader.length is None else " of %s" % format(reader.length, ",")
        exc.message += " after %s%s body bytes" % (format(reader.received, ","), total)
    return exc


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds: delta-seconds or an HTTP-date (RFC 9110 s10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value[:12]))
    from email.utils import parsedate_to_datetime  # rare path: keeps import light
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - timing.wall())


def request(method: str, url: str, *, options: Optional[Options] = None,
            deadline: Optional[Deadline] = None, extra_headers: Tuple[Tuple[str, str], ...] = (),
            limiter: Optional[RateLimiter] = None, **kwargs: Any) -> Response:
    """One attempt: connect, send, read the head; follow redirects up to max_redirs.

    `extra_headers` are per-attempt headers (Range, If-Range) added by the resume layer;
    `deadline` and `limiter` (--limit-rate) are the job's, shared by its attempts.
    The body is left on the socket for the caller to read.
    """
    opts = make_options(options, kwargs)
    deadline = deadline or Deadline(opts.max_time)
    if limiter is None and opts.limit_rate:
        limiter = RateLimiter(opts.limit_rate)
    current = parse_url(url)
    headers = list(opts.headers) + list(extra_headers)
    headers = with_origin_auth(current, headers, opts)
    for hop in range(opts.max_redirs + 1):
        response = _attempt(method, current, headers, opts, deadline, limiter)
        location = response.headers.get("location")
        if response.status not in REDIRECT_STATUSES or not location:
            return response   # no target, or an empty one (curl ignores it too): the caller decides
        response.close()
        if hop == opts.max_redirs:
            break
        following = _redirect_target(current, location, opts)
        if following.origin != current.origin:
            headers = [(k, v) for k, v in headers if k.lower() not in ORIGIN_BOUND_HEADERS]
            headers = with_origin_auth(following, headers, opts, netrc_only=True)
        current = following
    raise TooManyRedirects("more than max_redirs=%d redirects" % opts.max_redirs, url=url)


def _redirect_target(current: URL, location: str, opts: Options) -> URL:
    try:  # header values are latin-1 text; a UTF-8 Location means its UTF-8 characters
        location = location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass
    try:
        following = join_url(current, location)
    except FetchError as exc:
        raise UnsafeRedirect("refusing redirect to %r: %s" % (location[:200], exc.message),
                             url=str(current)) from None
    if current.scheme == "https" and following.scheme == "http" \
            and not opts.allow_insecure_redirect:
        raise UnsafeRedirect("refusing redirect from https to http (%s); set "
                             "allow_insecure_redirect to allow it" % str(following), url=str(current))
    return following._replace(userinfo=None)  # never take credentials from a server


def _attempt(method: str, url: URL, headers: List[Tuple[str, str]], opts: Options,
             deadline: Deadline, limiter: Optional[RateLimiter]) -> Response:
    proxy = select_proxy(url, opts)     # per hop: redirects and mirrors decide anew
    target = url.target
    if proxy is not None and url.scheme == "http":
        target = str(url)                # absolute-form for a proxy (RFC 9112 s3.2.2)
        headers = with_proxy_auth(headers, proxy)
    data = build_request(method, target, url.host_header, headers, USER_AGENT)
    try:
        conn = open_connection(url, opts, deadline, limiter, proxy)
    except FetchError as exc:
        exc.url = exc.url or str(url)
        raise
    try:
        conn.send_all(data)
        head, leftover = _read_head(conn)
        if proxy is not None and url.scheme == "http" and head.status == 407:
            raise proxy_refused(proxy, head)
        reader = body_reader(method, head)
        return Response(conn, method, url, head, reader, leftover)
    except FetchError as exc:
        exc = certificate_refusal(exc, conn.sock)
        conn.close()
        exc.url = exc.url or str(url)
        raise exc from None
    except BaseException:
        conn.close()
        raise


def _read_head(conn: Connection) -> Tuple[Any, bytes]:
    parser = HeadParser()
    buffer = bytearray(HEAD_RECV_SIZE)
    view = memoryview(buffer)
    received = 0
    while True:
        size = conn.recv_into(view)
        if not size:
            if not received:
                raise EmptyReply("server closed the connection without a response")
            raise IncompleteHead("server closed the connection in the middle of the "
                                 "response head (%d bytes)" % received)
        received += size
        head, leftover = parser.feed(bytes(view[:size]))
        if head is not None:
            return head, leftover
