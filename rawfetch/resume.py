"""Reconnect and Range resumption: one object's bytes, delivered exactly once, in order.

A Stream holds what has been delivered (offset, running digest) and the object's identity
(total length, validator). When an attempt fails mid-body it reconnects with
`Range: bytes=N-` + `If-Range`, and accepts only answers that provably continue the same
object (see README "Resume rules"). One RetryPolicy and one Deadline cover the whole job.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from .client import DEFAULT_CHUNK_SIZE, Response, iter_via, read_via, request
from .digest import fresh, new_hasher
from .errors import (ChecksumMismatch, DeadlineExceeded, FetchError, HTTPStatusError,
                     InvalidRequest, LocalWriteError, ProtocolError, ResourceChanged)
from .events import emit, wants_events
from .options import Options, make_options
from .policy import Attempt, RetryPolicy, parse_checksum
from .timing import Deadline

SKIP_BUFFER = 1 << 20         # discard buffer when a server ignores Range (200 full body)
OK_STATUSES = frozenset((200, 203))


class Segment(NamedTuple):
    """Bytes [start, end) of the object as served by `url`."""
    url: str
    start: int
    end: int


# Errors no other attempt or mirror can fix: the caller's input, the local side, the verdict.
FINAL_ERRORS = (InvalidRequest, LocalWriteError, ChecksumMismatch, ResourceChanged)


class Identity(NamedTuple):
    """What makes a response 'the same object': total length and validator."""
    total: Optional[int]
    etag: Optional[str]            # strong ETags only
    last_modified: Optional[str]

    @property
    def validator(self) -> Optional[str]:
        return self.etag or self.last_modified

    @classmethod
    def of(cls, response: Response, total: Optional[int]) -> "Identity":
        etag = response.headers.get("etag")
        if etag is not None and (etag.startswith("W/") or not etag.startswith('"')):
            etag = None  # weak validators cannot prove byte equality (RFC 9110 s8.8.3)
        return cls(total, etag, response.headers.get("last-modified"))

    def same_as(self, other: "Identity") -> bool:
        return self.total == other.total and self.same_validator(other)

    def same_validator(self, other: "Identity") -> bool:
        if self.etag or other.etag:
            return self.etag == other.etag
        return self.last_modified == other.last_modified


def parse_content_range(value: Optional[str]) -> Optional[Tuple[Optional[int], Optional[int], int]]:
    """`bytes A-B/N` -> (A, B, N); `bytes */N` -> (None, None, N); anything else -> None."""
    if not value:
        return None
    unit, _, spec = value.strip().partition(" ")
    span, slash, total = spec.strip().partition("/")
    if unit.lower() != "bytes" or not slash or not _digits(total):
        return None
    if span == "*":
        return None, None, int(total)
    first, dash, last = span.partition("-")
    if not dash or not _digits(first) or not _digits(last):
        return None
    return int(first), int(last), int(total)


def _digits(text: str) -> bool:
    return 0 < len(text) <= 19 and not text.strip("0123456789")


class Stream:
    """One object's body as a single uninterrupted byte stream, resumed invisibly."""

    def __init__(self, url: str, options: Options, deadline: Optional[Deadline] = None,
                 offset: int = 0, identity: Optional[Identity] = None,
                 restart: Optional[Callable[[], None]] = None,
                 hasher: Any = None, mirrors: Sequence[str] = ()) -> None:
        self.urls = [url] + [m for m in mirrors if m != url]
        self.url = url                  # the mirror in use
        self.segments: List[Segment] = []   # which mirror served which bytes
        self._identity_url = url        # the mirror whose validators self.identity holds
        self._mirror_failures = 0
        self._dead: Set[str] = set()
        self.options = options
        self.deadline = deadline or Deadline(options.max_time)
        self.policy = RetryPolicy.from_options(options)
        self.checksum = parse_checksum(options.checksum)
        self.hasher = hasher if hasher is not None else (
            new_hasher(self.checksum[0]) if self.checksum else None)
        self.offset = offset            # bytes delivered (or held, for a resumed file)
        self.identity = identity        # known once a first response arrived
        self.attempts = 0
        self.restarts = 0
        self.resumed_from = offset      # bytes held before this job started
        self.refetched = 0              # prefix bytes read again from servers ignoring Range
        self.started = time.monotonic()
        self._restart = restart         # file mode: truncate and start over on a change
        self._response: Optional[Response] = None
        self._attempt_start = offset
        self._segment_start = offset
        self._verified = False

    # -------------------------------------------------------------- public API
    @property
    def size(self) -> Optional[int]:
        """Total length of the object, or None while unknown (chunked, close-delimited)."""
        return self.identity.total if self.identity else None

    def tell(self) -> int:
        return self.offset

    @property
    def history(self) -> Tuple[Attempt, ...]:
        return self.policy.history

    def readinto(self, buffer: Any) -> int:
        """Fill up to len(buffer) bytes of the object; 0 only at its verified end."""
        view = memoryview(buffer).cast("B")
        while True:
            if self._response is None:
                if self._verified:
                    return 0
                self._connect()
                if self._response is None:
                    continue
            try:
                size = self._response.readinto(view)
            except FetchError as exc:
                self._recover(exc)
                continue
            if size:
                if self.hasher is not None:
                    self.hasher.update(view[:size])
                self.offset += size
                return size
            self._finish()
            return 0

    def splice_to(self, splicer: Any, size: int) -> int:
        """Like readinto(), with the bytes moved by the kernel into splicer's output;
        -1 means "call readinto() now" (no live response, TLS, chunked, a digest to feed,
        or a failure that was just recovered from)."""
        if self._response is None or self.hasher is not None:
            return -1
        try:
            moved = self._response.splice_to(splicer, size)
        except FetchError as exc:
            self._recover(exc)
            return -1
        if moved > 0:
            self.offset += moved
        return moved

    def read(self, size: int = -1) -> bytes:
        return read_via(self.readinto, size)

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_bytes()

    def iter_bytes(self, size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        return iter_via(self.readinto, size)

    def close(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()
        if self.offset > self._segment_start:
            last = self.segments[-1] if self.segments else None
            if last is not None and last.url == self.url and last.end == self._segment_start:
                self.segments[-1] = last._replace(end=self.offset)
            else:
                self.segments.append(Segment(self.url, self._segment_start, self.offset))
        self._segment_start = self.offset

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def digest(self) -> Optional[str]:
        if self.hasher is None:
            return None
        return "%s:%s" % (self.hasher.name, self.hasher.hexdigest())

    # -------------------------------------------------------------- attempts
    def start(self) -> "Stream":
        """Make the first attempt now, so open() itself raises 404s and the like."""
        while self._response is None and not self._verified:
            self._connect()
        return self

    def _connect(self) -> None:
        """One attempt: a response positioned at self.offset, or self._recover()."""
        other_mirror = self.url != self._identity_url
        if self.offset and (self._restart is not None or other_mirror) \
                and not self._provable():
            self._changed(None, "no strong validator and no checksum prove that %s holds the "
                                "same object" % ("this mirror" if other_mirror else "the server"))
        self.attempts += 1
        self._attempt_start = self.offset
        headers = self._range_headers()
        self._emit("request", attempt=self.attempts, offset=self.offset,
                   range=dict(headers).get("Range"))
        try:
            response = request("GET", self.url, options=self.options, deadline=self.deadline,
                               extra_headers=headers)
        except FetchError as exc:
            self._recover(exc)
            return
        try:
            self._position(response)
        except FetchError as exc:
            response.close()
            self._recover(exc)

    def _provable(self) -> bool:
        """Can a resume be shown to continue the same object? Across mirrors only a
        strong ETag or a checksum proves it; on one server Last-Modified does too."""
        if self.checksum:
            return True
        if self.identity is None:
            return False
        if self.url != self._identity_url:
            return bool(self.identity.etag)
        return bool(self.identity.validator)

    def _range_headers(self) -> Tuple[Tuple[str, str], ...]:
        if self.offset == 0 or self.identity is None:
            return ()
        headers: Tuple[Tuple[str, str], ...] = (("Range", "bytes=%d-" % self.offset),)
        same_server = self.url == self._identity_url
        # Across mirrors a checksum is the proof (the mirror's own ETag may differ), else
        # only a strong ETag can ask for "the same object".
        validator = self.identity.validator if same_server else (
            None if self.checksum else self.identity.etag)
        if validator:
            headers += (("If-Range", validator),)
        return headers

    def _position(self, response: Response) -> None:
        """Accept the response only if it continues the same object at self.offset."""
        self._emit("response", status=response.status, length=response.content_length,
                   etag=response.headers.get("etag"), content_range=response.headers.get(
                       "content-range"), attempt=self.attempts)
        if response.status == 206 and self.offset:
            self._accept_partial(response)
        elif response.status in OK_STATUSES:
            self._accept_full(response)
        elif response.status == 416 and self.offset:
            self._accept_unsatisfiable(response)
        else:
            response.raise_for_status()
            raise ProtocolError("unexpected HTTP %d %s" % (response.status, response.reason),
                                url=self.url, retryable=False)

    def _accept_partial(self, response: Response) -> None:
        span = parse_content_range(response.headers.get("content-range"))
        assert self.identity is not None
        total = self.identity.total
        if span is None or span[0] != self.offset or span[2] < 1 or span[1] != span[2] - 1 \
                or (total is not None and span[2] != total) \
                or response.content_length not in (None, span[2] - self.offset):
            raise ProtocolError("server answered Range bytes=%d- with Content-Range %r"
                                % (self.offset, response.headers.get("content-range")),
                                url=self.url)
        fresh = Identity.of(response, span[2])
        if self._sent_validator() and fresh.validator and not self.identity.same_validator(fresh):
            raise ProtocolError("206 for a different validator than If-Range asked for",
                                url=self.url)
        self._adopt(fresh if fresh.validator else
                    Identity(span[2], self.identity.etag, self.identity.last_modified))
        self._response = response
        self._emit("resume", offset=self.offset, total=span[2])

    def _sent_validator(self) -> bool:
        return any(name == "If-Range" for name, _ in self._range_headers())

    def _adopt(self, identity: Identity) -> None:
        """From now on resumes on this mirror are validated against `identity`."""
        self.identity = identity
        self._identity_url = self.url
        self._segment_start = self.offset

    def _accept_full(self, response: Response) -> None:
        fresh = Identity.of(response, response.content_length)
        if self.identity is None or self.offset == 0:
            self._adopt(fresh)
            self._response = response
            return
        same = self.identity.same_as(fresh) if self.url == self._identity_url else (
            self.identity.total == fresh.total and (bool(self.checksum) or (
                bool(self.identity.etag) and self.identity.etag == fresh.etag)))
        if not same or (self.identity.total is None and not self.identity.etag):
            self._changed(response, "the server sent a different version (validator or "
                                    "length changed)")
            return
        self._skip(response, self.offset)
        self._adopt(fresh)
        self._response = response
        self._emit("resume", offset=self.offset, total=fresh.total, skipped=self.offset)

    def _accept_unsatisfiable(self, response: Response) -> None:
        span = parse_content_range(response.headers.get("content-range"))
        assert self.identity is not None
        response.close()
        held = self.offset
        if span is not None and span[0] is None and span[2] == held \
                and self.identity.total in (None, held):
            self.identity = Identity(held, self.identity.etag, self.identity.last_modified)
            self._finish()
            return
        self._changed(None, "416 with Content-Range %r while %d bytes are held"
                      % (response.headers.get("content-range"), held))

    def _changed(self, response: Optional[Response], why: str) -> None:
        """The object changed: restart from zero in file mode, fail in stream mode."""
        if self._restart is None:
            if response is not None:
                response.close()
            raise ResourceChanged("resource changed after %s bytes were delivered: %s"
                                  % (format(self.offset, ","), why), url=self.url)
        self._restart()
        self.restarts += 1
        self.offset = self._segment_start = 0
        self.segments = []
        if self.hasher is not None:
            self.hasher = fresh(self.hasher)
        self._emit("restart", why=why)
        if response is not None and response.status in OK_STATUSES:
            self._adopt(Identity.of(response, response.content_length))
            self._response = response
        else:
            self.identity = None
            self._identity_url = self.url

    def _skip(self, response: Response, count: int) -> None:
        """Discard the prefix we already hold from a 200 full answer."""
        buffer = bytearray(min(SKIP_BUFFER, count))
        view = memoryview(buffer)
        while count:
            got = response.readinto(view[:min(count, len(view))])
            if not got:
                raise ProtocolError("200 body ended inside the prefix being skipped",
                                    url=self.url)
            count -= got
            self.refetched += got

    def _finish(self) -> None:
        """End of body: check the length and the checksum, once."""
        self.close()
        total = self.identity.total if self.identity else None
        if total is not None and self.offset != total:
            raise ProtocolError("body ended at %d of %d bytes" % (self.offset, total),
                                url=self.url, retryable=False)
        if self.checksum and self.hasher is not None and not self._verified:
            got = self.hasher.hexdigest()
            if got != self.checksum[1]:
                self._verified = True
                raise ChecksumMismatch("%s mismatch: expected %s, got %s"
                                       % (self.checksum[0], self.checksum[1], got), url=self.url)
        self._verified = True

    def _recover(self, exc: FetchError) -> None:
        """Record a failure; raise it if final, else sleep the backoff (within max_time)."""
        self.close()
        exc.url = exc.url or self.url
        elapsed = time.monotonic() - self.started
        self.policy = self.policy.increment(exc, self.offset, elapsed,
                                            self.offset - self._attempt_start)
        self._emit("error", error=type(exc).__name__, message=exc.message,
                   offset=self.offset, retryable=exc.retryable, attempt=self.attempts)
        if isinstance(exc, (DeadlineExceeded,) + FINAL_ERRORS):
            raise exc
        if not self.policy.exhausted and self._next_mirror(exc):
            return
        if not exc.retryable:
            raise exc
        if self.policy.exhausted:
            exc.message += " (gave up after %d attempts)" % self.attempts
            raise exc
        retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
        delay = self.policy.backoff(retry_after)
        left = self.deadline.remaining()
        if left is not None and delay >= left:
            exc.message += " (no time left for another attempt within max_time)"
            raise exc
        self._emit("backoff", seconds=round(delay, 3), attempt=self.attempts)
        time.sleep(delay)

    def _next_mirror(self, exc: FetchError) -> bool:
        """Hand over to the next mirror when this one failed for good or used its share."""
        if len(self.urls) < 2:
            return False
        if not exc.retryable:
            self._dead.add(self.url)
        else:
            self._mirror_failures += 1
            if self._mirror_failures < self._mirror_share():
                return False
        alive = [u for u in self.urls if u not in self._dead]
        if not alive or alive == [self.url]:
            return False
        index = self.urls.index(self.url)
        following = next(u for u in self.urls[index + 1:] + self.urls[:index + 1] if u in alive)
        self._emit("mirror", previous=self.url, mirror=following, offset=self.offset,
                   why=type(exc).__name__)
        self.url = following
        self._mirror_failures = 0
        return True

    def _mirror_share(self) -> int:
        """Consecutive failures one mirror may use before the next one gets a turn."""
        return max(1, (self.policy.retries + 1) // len(self.urls))

    def _emit(self, name: str, **fields: Any) -> None:
        if wants_events(self.options):
            emit(self.options.on_event, name, url=self.url, **fields)


def open(url: str, *, options: Optional[Options] = None,  # noqa: A001
         urls: Sequence[str] = (), **kwargs: Any) -> Stream:
    """Open `url` (then mirrors `urls`, the same object elsewhere) as a resumable stream;
    the first attempt is made before returning. With gunzip=True the stream yields the
    decompressed bytes (a GunzipReader; checksum still applies to the compressed bytes)."""
    opts = make_options(options, kwargs)
    stream = Stream(url, opts, mirrors=urls)
    try:
        stream.start()
    except BaseException:
        stream.close()
        raise
    if opts.gunzip:
        from .gunzip import GunzipReader
        return GunzipReader(stream)  # type: ignore[return-value]
    return stream
