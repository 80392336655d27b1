"""Reconnect and Range resumption: one object's bytes, delivered exactly once, in order.

A Stream holds what has been delivered (offset, running digest) and the object's identity
(total length, validator). When an attempt fails mid-body it reconnects with
`Range: bytes=N-` + `If-Range`, and accepts only answers that provably continue the same
object (see README "Resume rules"). One RetryPolicy and one Deadline cover the whole job.
"""
from __future__ import annotations

import hashlib
import random
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional, Tuple

from .client import DEFAULT_CHUNK_SIZE, Response, request
from .errors import (ChecksumMismatch, DeadlineExceeded, FetchError, HTTPStatusError,
                     InvalidRequest, ProtocolError, ResourceChanged)
from .events import emit
from .options import Options, make_options
from .timing import Deadline

MAX_RETRY_AFTER = 120.0       # s; a master node's Retry-After is honoured up to 2 min
                              # (urllib3 caps at 6 h; cloud-init's uncapped wait parks nodes)
PROGRESS_REFUND = 1 << 20     # an attempt that delivered >= 1 MiB new bytes is not charged
SKIP_BUFFER = 1 << 20         # discard buffer when a server ignores Range (200 full body)
OK_STATUSES = frozenset((200, 203))


class Attempt(NamedTuple):
    """One failed attempt, as kept in RetryPolicy.history."""
    error: str          # error class name
    message: str
    offset: int         # bytes delivered when it failed
    elapsed: float      # seconds since the job started
    charged: bool       # whether it used up one of the retries


class RetryPolicy:
    """Immutable retry budget with history (in the spirit of urllib3's Retry).

    `retries` failed attempts are allowed over the whole job; an attempt that moved the
    download forward by PROGRESS_REFUND bytes is recorded but not charged, so a long
    transfer over a link that drops now and then completes, while a server that answers
    and closes burns the budget at once. Backoff: full jitter, exponential from
    retry_delay, capped at retry_max_delay, counted over consecutive failures.
    """

    __slots__ = ("retries", "retry_delay", "retry_max_delay", "history", "_random")

    def __init__(self, retries: int = 10, retry_delay: float = 1.0,
                 retry_max_delay: float = 30.0, history: Tuple[Attempt, ...] = (),
                 rng: Optional[random.Random] = None) -> None:
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_max_delay = retry_max_delay
        self.history = history
        self._random = rng or random.Random()

    @classmethod
    def from_options(cls, options: Options) -> "RetryPolicy":
        return cls(options.retries, options.retry_delay, options.retry_max_delay)

    @property
    def charged(self) -> int:
        return sum(1 for attempt in self.history if attempt.charged)

    @property
    def exhausted(self) -> bool:
        return self.charged > self.retries

    def increment(self, error: FetchError, offset: int, elapsed: float,
                  progress: int) -> "RetryPolicy":
        """A new policy with this failure recorded."""
        attempt = Attempt(type(error).__name__, str(error.message), offset, round(elapsed, 3),
                          progress < PROGRESS_REFUND)
        return RetryPolicy(self.retries, self.retry_delay, self.retry_max_delay,
                           self.history + (attempt,), self._random)

    def backoff(self, retry_after: Optional[float] = None) -> float:
        """Seconds to sleep before the next attempt."""
        streak = 0
        for attempt in reversed(self.history):
            if not attempt.charged:
                break
            streak += 1
        ceiling = min(self.retry_max_delay, self.retry_delay * (2 ** max(streak - 1, 0)))
        delay = self._random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def __repr__(self) -> str:
        return "RetryPolicy(retries=%d, used=%d, history=%d)" % (
            self.retries, self.charged, len(self.history))


def parse_checksum(checksum: Optional[str]) -> Optional[Tuple[str, str]]:
    """"ALGO:HEX" -> (algo, lowercase hex), validated against hashlib."""
    if checksum is None:
        return None
    algo, colon, hexdigest = str(checksum).partition(":")
    algo = algo.lower().replace("-", "")
    try:
        size = hashlib.new(algo).digest_size
    except (ValueError, TypeError):
        raise InvalidRequest("unknown checksum algorithm %r" % algo) from None
    hexdigest = hexdigest.strip().lower()
    if not colon or len(hexdigest) != 2 * size or hexdigest.strip("0123456789abcdef"):
        raise InvalidRequest("checksum %r is not %s:<%d hex digits>" % (checksum, algo, 2 * size))
    return algo, hexdigest


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
                 hasher: Any = None) -> None:
        self.url = url
        self.options = options
        self.deadline = deadline or Deadline(options.max_time)
        self.policy = RetryPolicy.from_options(options)
        self.checksum = parse_checksum(options.checksum)
        self.hasher = hasher if hasher is not None else (
            hashlib.new(self.checksum[0]) if self.checksum else None)
        self.offset = offset            # bytes delivered (or held, for a resumed file)
        self.identity = identity        # known once a first response arrived
        self.attempts = 0
        self.restarts = 0
        self.resumed_from = offset      # bytes held before this job started
        self.started = time.monotonic()
        self._restart = restart         # file mode: truncate and start over on a change
        self._response: Optional[Response] = None
        self._attempt_start = offset
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

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(self)
        buffer = bytearray(size)
        got = self.readinto(buffer)
        del buffer[got:]
        return bytes(buffer)

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_bytes()

    def iter_bytes(self, size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        buffer = bytearray(size)
        view = memoryview(buffer)
        while True:
            got = self.readinto(view)
            if not got:
                return
            yield bytes(view[:got])

    def close(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()

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
        if self.offset and self._restart is not None and not self._provable():
            self._changed(None, "the server gives no ETag or Last-Modified and no checksum "
                                "was given, so a resume could not be proven safe")
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
        """Can a resume be shown to continue the same object?"""
        return bool(self.checksum) or bool(self.identity and self.identity.validator)

    def _range_headers(self) -> Tuple[Tuple[str, str], ...]:
        if self.offset == 0 or self.identity is None:
            return ()
        headers: Tuple[Tuple[str, str], ...] = (("Range", "bytes=%d-" % self.offset),)
        if self.identity.validator:
            headers += (("If-Range", self.identity.validator),)
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
        if self.identity.validator and fresh.validator and not self.identity.same_validator(fresh):
            raise ProtocolError("206 for a different validator than If-Range asked for",
                                url=self.url)
        self.identity = Identity(span[2], self.identity.etag, self.identity.last_modified)
        self._response = response
        self._emit("resume", offset=self.offset, total=span[2])

    def _accept_full(self, response: Response) -> None:
        fresh = Identity.of(response, response.content_length)
        if self.identity is None or self.offset == 0:
            self.identity = fresh
            self._response = response
            return
        if not self.identity.same_as(fresh) or (self.identity.total is None
                                                 and not self.identity.etag):
            self._changed(response, "the server sent a different version (validator or "
                                    "length changed)")
            return
        self._skip(response, self.offset)
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
        self.offset = 0
        if self.hasher is not None:
            self.hasher = hashlib.new(self.hasher.name)
        self._emit("restart", why=why)
        if response is not None and response.status in OK_STATUSES:
            self.identity = Identity.of(response, response.content_length)
            self._response = response
        else:
            self.identity = None

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
        if not exc.retryable or isinstance(exc, DeadlineExceeded):
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

    def _emit(self, name: str, **fields: Any) -> None:
        if self.options.on_event is not None or _logging_wanted():
            emit(self.options.on_event, name, url=self.url, **fields)


def _logging_wanted() -> bool:
    import sys
    logging = sys.modules.get("logging")
    return logging is not None and logging.getLogger("rawfetch").isEnabledFor(20)


def open(url: str, *, options: Optional[Options] = None, **kwargs: Any) -> Stream:  # noqa: A001
    """Open `url` as a resumable stream; the first attempt is made before returning."""
    opts = make_options(options, kwargs)
    stream = Stream(url, opts)
    try:
        return stream.start()
    except BaseException:
        stream.close()
        raise
