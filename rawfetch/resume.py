"""Reconnect and Range resumption: one object's bytes, delivered exactly once, in order.

A Stream is the file-like face of a download. It keeps a ledger of the bytes delivered
(offset, which mirror served which range) and a running digest, and carries out what the
sans-IO judgement (judge.py) decides about each response. Which URL comes next is
mirrors.py's call; how many attempts and how long, budget.py's. A restart from zero
reaches the consumer (download()'s pipeline) through one explicit path:
`consumer.restart()`, and every identity it must record before bytes of it arrive through
`consumer.record(identity)`.
"""
from __future__ import annotations

from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from . import timing
from .client import DEFAULT_CHUNK_SIZE, Response, iter_via, read_via, request
from .digest import fresh, new_hasher, parse_checksum
from .errors import (ChecksumMismatch, ContentEncodingError, FetchError, InvalidRequest,
                     InvariantViolation, ProtocolError, ResourceChanged)
from .events import emit, wants_events
from .judge import (CHANGED, COMPLETE, CONTINUE, ENCODED, OK_STATUSES, RESTART, RETRY, SKIP,
                    STATUS, Held, Identity, Reply, accepted_codings, judge,
                    parse_content_range, plan, provable)
from .mirrors import MirrorSet
from .options import Options, make_options
from .retry import GIVE_UP, HAND_OVER, Attempt, Budget
from .timing import Deadline

__all__ = ["Stream", "Segment", "Identity", "parse_content_range", "open", "open_stream",
           "with_checksum_file"]

SKIP_BUFFER = 1 << 20         # discard buffer when a server ignores Range (200 full body)
PROGRESS_EVENT_INTERVAL = 0.25  # s between `progress` events: a timeline shows a stall's
                                # shape, at a bounded log (14,400 lines, ~2 MB an hour)



class Segment(NamedTuple):
    """Bytes [start, end) of the object as served by `url`."""
    url: str
    start: int
    end: int


class Ledger:
    """The bytes delivered so far and which mirror served which range of them."""

    __slots__ = ("offset", "segments", "pieces", "_start")

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.segments: List[Segment] = []
        self.pieces = 1 if offset else 0   # runs of bytes from separate attempts or runs
        self._start = offset

    def close_segment(self, url: str) -> None:
        """The current attempt's bytes end here; merge with a contiguous run of `url`."""
        if self.offset > self._start:
            self.pieces += 1
            last = self.segments[-1] if self.segments else None
            if last is not None and last.url == url and last.end == self._start:
                self.segments[-1] = last._replace(end=self.offset)
            else:
                self.segments.append(Segment(url, self._start, self.offset))
        self._start = self.offset

    def reset(self) -> None:
        self.offset = self._start = self.pieces = 0
        self.segments = []


class Stream:
    """One object's body as a single uninterrupted byte stream, resumed invisibly.

    `consumer` (file mode) has record(identity) and restart(): with one, a changed object
    restarts from zero; without one (stream mode) the bytes were consumed and a change
    raises ResourceChanged.
    """

    def __init__(self, url: str, options: Options, deadline: Optional[Deadline] = None,
                 offset: int = 0, identity: Optional[Identity] = None, consumer: Any = None,
                 hasher: Any = None, mirrors: Sequence[str] = (),
                 budget: Optional[Budget] = None) -> None:
        self.options = options
        self.mirrors = MirrorSet(url, mirrors, options.mirror_order, options.splay_seed)
        self.budget = budget or Budget(options, deadline)
        self.checksum = parse_checksum(options.checksum)
        # Every delivered buffer goes to hasher.update(): a digest, or download()'s
        # worker thread that also decodes and writes it.
        self.hasher = hasher if hasher is not None else (
            new_hasher(self.checksum[0]) if self.checksum else None)
        self.ledger = Ledger(offset)
        self.identity = identity        # known once a first response arrived
        self.restarts = 0
        self.resumed_from = offset      # bytes held before this job started
        self.refetched = 0              # prefix bytes read again from servers ignoring Range
        self._identity_url = url        # the mirror whose validators self.identity holds
        self._consumer = consumer
        self._response: Optional[Response] = None
        self._attempt_start = offset
        self._verified = False
        self._closed = False
        self._clean_refetch = False     # the one refetch after a checksum mismatch was used
        self._report = wants_events(options)
        self._next_progress = self._last_delivery = 0.0
        self._reported = offset          # the offset the last progress event showed

    # -------------------------------------------------------------- public API
    url = property(lambda self: self.mirrors.current, doc="the mirror in use")
    urls = property(lambda self: self.mirrors.urls)
    offset = property(lambda self: self.ledger.offset, doc="bytes delivered (or held)")
    segments = property(lambda self: self.ledger.segments)
    attempts = property(lambda self: self.budget.count)
    deadline = property(lambda self: self.budget.deadline)
    policy = property(lambda self: self.budget.policy)
    started = property(lambda self: self.budget.started)

    @property
    def size(self) -> Optional[int]:
        """Total length of the object, or None while unknown (chunked, close-delimited)."""
        return self.identity.total if self.identity else None

    def tell(self) -> int:
        return self.offset

    @property
    def history(self) -> Tuple[Attempt, ...]:
        return self.budget.policy.history

    @property
    def resumable(self) -> bool:
        """Can the bytes held be resumed by a later run (a validator or a checksum)?"""
        return provable(self._held())

    def readinto(self, buffer: Any) -> int:
        """Fill up to len(buffer) bytes of the object; 0 only at its verified end."""
        view = memoryview(buffer).cast("B")
        self._check_open()
        while True:
            if self._response is None:
                if self._verified:
                    return 0
                self._attempt()
                continue
            try:
                size = self._response.readinto(view)
            except FetchError as exc:
                self._recover(exc)
                continue
            if size:
                if self.hasher is not None:
                    self.hasher.update(view[:size])
                self._delivered(size)
                return size
            if self._finish():
                return 0

    def splice_to(self, splicer: Any, size: int) -> int:
        """Like readinto(), with the bytes moved by the kernel into splicer's output;
        -1 means "call readinto() now" (no live response, TLS, chunked, a digest fed only
        by buffers, or a failure that was just recovered from)."""
        self._check_open()
        hasher = self.hasher
        if self._response is None or not (
                hasher is None or getattr(hasher, "hashes_spliced", False)):
            return -1
        try:
            moved = self._response.splice_to(splicer, size)
        except FetchError as exc:
            self._recover(exc)
            return -1
        if moved > 0:
            if hasher is not None:
                hasher.spliced(moved)   # in the file already: the worker reads it back
            self._delivered(moved)
        return moved

    def read(self, size: int = -1) -> bytes:
        return read_via(self.readinto, size)

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_bytes()

    def iter_bytes(self, size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        return iter_via(self.readinto, size)

    def close(self) -> None:
        """Release the connection; the stream cannot be read any more."""
        self._closed = True
        self._end_attempt()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def digest(self) -> Optional[str]:
        if self.hasher is None or self.checksum is None:
            return None
        return "%s:%s" % (self.hasher.name, self.hasher.hexdigest())

    def start(self) -> "Stream":
        """Make the first attempt now, so open() itself raises 404s and the like."""
        self._check_open()
        while self._response is None and not self._verified:
            self._attempt()
        return self

    # -------------------------------------------------------------- attempts
    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRequest("read from a closed stream (reopen it to download again)",
                                 url=self.url)

    def _held(self) -> Held:
        from .checksumfile import image_name_from_url
        return Held(self.offset, self.identity, self.url == self._identity_url,
                    bool(self.checksum), self._consumer is not None,
                    accepted_codings(image_name_from_url(self.url), self.options.decompress))

    def _delivered(self, size: int) -> None:
        before = self.ledger.offset
        self.ledger.offset += size
        if not self._report:
            return
        now = timing.wall()
        if now >= self._next_progress:
            quiet = now - self._last_delivery > PROGRESS_EVENT_INTERVAL / 10
            if before > self._reported and quiet:
                self._progress(self._last_delivery, before)   # where a burst ended
            self._progress(now, self.offset)
        self._last_delivery = now

    def _progress(self, when: float, offset: int) -> None:
        """A `progress` event: `offset` held at wall time `when` (of that delivery)."""
        self._next_progress = when + PROGRESS_EVENT_INTERVAL
        self._reported = offset
        self._emit("progress", offset=offset, attempt=self.attempts, time=round(when, 6))

    def _end_attempt(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()
        if self._report and self.offset > self._reported:
            self._progress(self._last_delivery, self.offset)   # the last byte before a
                                                                # stall or a cut
        self.ledger.close_segment(self.url)

    def _attempt(self) -> None:
        """One attempt: a response positioned at self.offset, or self._recover()."""
        decision, headers = plan(self._held())
        if decision.action in (RESTART, CHANGED):
            self._changed(decision.why)
            decision, headers = plan(self._held())
        attempt = self.budget.begin(self._emit)
        self._attempt_start = self.offset
        self._emit("request", attempt=attempt, offset=self.offset,
                   range=dict(headers).get("Range"))
        try:
            response = request("GET", self.url, options=self.options, deadline=self.deadline,
                               extra_headers=headers, limiter=self.budget.limiter)
        except FetchError as exc:
            self._recover(exc)
            return
        try:
            self._take(response)
        except (ChecksumMismatch, InvariantViolation):
            response.close()     # the end-of-body verdict: already recorded and reported
            raise
        except FetchError as exc:
            response.close()
            self._recover(exc)

    def _take(self, response: Response) -> None:
        """Carry out the judgement on `response` (see judge.py and README Resume rules)."""
        self._emit("response", status=response.status, length=response.content_length,
                   etag=response.headers.get("etag"), content_range=response.headers.get(
                       "content-range"), attempt=self.attempts)
        decision = judge(self._held(), Reply.of(response))
        action = decision.action
        if action == STATUS:
            response.raise_for_status()
            raise ProtocolError("unexpected HTTP %d %s" % (response.status, response.reason),
                                url=self.url, retryable=False)
        if action == RETRY:
            raise ProtocolError(decision.why, url=self.url)
        if action == ENCODED:
            raise ContentEncodingError(decision.why, url=self.url)
        if action == COMPLETE:
            response.close()
            self.identity = decision.identity
            self._finish()
            return
        if action in (RESTART, CHANGED):
            usable = response.status in OK_STATUSES
            if not usable:
                response.close()
            self._changed(decision.why, response if usable else None, decision.identity)
            return
        assert decision.identity is not None
        if action == SKIP:
            self._skip(response, self.offset)
            self._emit("resume", offset=self.offset, total=decision.identity.total,
                       skipped=self.offset)
        elif action == CONTINUE:
            self._emit("resume", offset=self.offset, total=decision.identity.total)
        self._adopt(decision.identity, response)

    def _adopt(self, identity: Identity, response: Response) -> None:
        """From now on bytes come from `response` and resumes on this mirror are
        validated against `identity`; the consumer records it before the first byte."""
        self.identity = identity
        self._identity_url = self.url
        if self._consumer is not None:
            self._consumer.record(identity)
        self._response = response

    def _changed(self, why: str, response: Optional[Response] = None,
                 identity: Optional[Identity] = None) -> None:
        """The object changed: restart from zero in file mode, fail in stream mode."""
        if self._consumer is None:
            if response is not None:
                response.close()
            raise ResourceChanged("resource changed after %s bytes were delivered: %s"
                                  % (format(self.offset, ","), why), url=self.url)
        self._restart(why)
        if response is not None and identity is not None:
            self._adopt(identity, response)
        else:
            self.identity = None
            self._identity_url = self.url

    def _restart(self, why: str) -> None:
        """Throw every held byte away: the consumer, the ledger and the digest start over."""
        self._consumer.restart()
        self.restarts += 1
        self.ledger.reset()
        self._reported = 0
        self._attempt_start = 0
        if self.hasher is not None:
            self.hasher = fresh(self.hasher)
        self._emit("restart", why=why)

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

    def _finish(self) -> bool:
        """End of body: check the length and the checksum, once. False means a clean
        refetch from zero was started instead (see _checksum_failed)."""
        self._end_attempt()
        total = self.identity.total if self.identity else None
        if total is not None and self.offset != total:
            raise InvariantViolation("body ended at %d of %d bytes" % (self.offset, total),
                                     url=self.url)
        if self.checksum and self.hasher is not None and not self._verified:
            got = self.hasher.hexdigest()
            if got != self.checksum[1]:
                return self._checksum_failed(ChecksumMismatch(
                    "%s mismatch: expected %s, got %s" % (self.checksum[0], self.checksum[1],
                                                          got), url=self.url))
        self._verified = True
        return True

    def _checksum_failed(self, error: ChecksumMismatch) -> bool:
        """Defence in depth: bytes assembled from several attempts (resumes, mirrors, an
        earlier run) are thrown away and fetched once more from zero in one clean attempt,
        inside the same budget and max_time. A mismatch after that, or on bytes from a
        single attempt, is final."""
        pieces = self.ledger.pieces
        self.budget.record(error, self.offset, 0)
        self._emit("error", error=type(error).__name__, message=error.message,
                   offset=self.offset, retryable=False, attempt=self.attempts)
        if pieces < 2 or self._clean_refetch or self._consumer is None \
                or self.budget.exhausted:
            self._verified = True
            raise error
        self._clean_refetch = True
        self._restart("checksum mismatch on bytes assembled from %d pieces: fetching once "
                      "more from zero in one clean attempt" % pieces)
        self.identity = None
        self._identity_url = self.url
        self.deadline.check()
        return False

    def _recover(self, exc: FetchError) -> None:
        """Record a failure; raise it if final, else sleep the backoff (within max_time)."""
        self._end_attempt()
        exc.url = exc.url or self.url
        self.budget.record(exc, self.offset, self.offset - self._attempt_start)
        self._emit("error", error=type(exc).__name__, message=exc.message,
                   offset=self.offset, retryable=exc.retryable, attempt=self.attempts)
        previous = self.url
        decision = self.budget.decide(exc, self.mirrors)
        if decision.action == GIVE_UP:
            exc.message += decision.note
            raise exc
        if decision.action == HAND_OVER:
            self._emit("mirror", url=previous, previous=previous,
                       mirror=decision.mirror, offset=self.offset, why=type(exc).__name__)
            return
        self.budget.wait(decision, self._emit)

    def _emit(self, name: str, **fields: Any) -> None:
        if wants_events(self.options):
            fields.setdefault("url", self.url)
            emit(self.options.on_event, name, **fields)


def open(url: str, *, options: Optional[Options] = None,  # noqa: A001
         urls: Sequence[str] = (), **kwargs: Any) -> Any:
    """Open `url` (then mirrors `urls`, the same object elsewhere) as a resumable stream;
    the first attempt is made before returning (a checksum_url is fetched before it).
    With decompress= (or gunzip=True) the stream yields the decompressed bytes (a
    DecompressReader; the checksum still applies to the bytes as downloaded)."""
    from .decompress import reader_for
    opts = make_options(options, kwargs)
    budget = Budget(opts)
    opts = with_checksum_file(url, opts, budget)
    return reader_for(open_stream(url, opts, urls, budget), opts)


def open_stream(url: str, opts: Options, urls: Sequence[str] = (), budget: Optional[Budget]
                = None, hasher: Any = None) -> Stream:
    """A started Stream (no decoder): open()'s core, and the command's stdout path."""
    stream = Stream(url, opts, mirrors=urls, budget=budget, hasher=hasher)
    try:
        stream.start()
    except BaseException:
        stream.close()
        raise
    return stream


def with_checksum_file(url: str, opts: Options, budget: Budget) -> Options:
    """checksum_url: fetch the checksum file before the image, with the job's engine,
    options, budget (one retries count, one max_time, one rate limit); return the
    options carrying the checksum found for the image's name."""
    if opts.checksum_url is None:
        return opts
    from .checksumfile import fetch_checksum, image_name_from_url, read_limited
    where, name = opts.checksum_url, opts.checksum_name or image_name_from_url(url)
    plain = opts.replace(checksum_url=None, checksum_name=None, decompress="none",
                         gunzip=False)

    def read(limit: int) -> bytes:
        with open_stream(where, plain, budget=budget) as stream:
            return read_limited(stream, limit)

    algo, hexdigest = fetch_checksum(where, name, read)
    if wants_events(opts):
        emit(opts.on_event, "checksum", url=where, entry=name, algorithm=algo)
    return opts.replace(checksum="%s:%s" % (algo, hexdigest), checksum_url=None,
                        checksum_name=None)
