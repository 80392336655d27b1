"""Reconnect and Range resumption: one object's bytes, delivered exactly once, in order.

A Stream is the attempt loop behind a file-like face. Its Ledger holds what was delivered
(offset, the object's identity and the mirror it came from, which mirror served which
range, restarts from zero); the sans-IO judgement (judge.py) decides about each response,
retry.py about each failure. Nothing here calls back up: a consumer (download()'s
pipeline) reads `stream.ledger` after each readinto()/splice_to() and, when `restarts`
moved or the identity changed, restarts or records its output BEFORE it writes the bytes
just returned. The checksum verdict is the consumer's too (digest.Verifier); on a
mismatch over bytes assembled from several pieces it asks, calling down, for one clean
refetch from zero (Stream.refetch). VerifiedStream is that stage for stream mode.
"""
from __future__ import annotations

from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from . import timing
from .checksumfile import fetch_checksum, image_name_from_url, read_limited
from .client import Readable, Response, request
from .decompress import reader_for
from .digest import Verifier, parse_checksum
from .errors import (ChecksumMismatch, ContentEncodingError, FetchError, InvalidRequest,
                     InvariantViolation, ProtocolError, ResourceChanged)
from .events import emit, wants_events
from .job import Engine, resolve
from .judge import (CHANGED, COMPLETE, CONTINUE, ENCODED, OK_STATUSES, RESTART, RETRY, SKIP,
                    STATUS, Held, Identity, Reply, accepted_codings, judge,
                    parse_content_range, plan, provable)
from .mirrors import MirrorSet
from .options import Options, make_options
from .retry import Budget

__all__ = ["Stream", "RangeStream", "VerifiedStream", "Ledger", "Segment", "Identity",
           "parse_content_range", "open", "open_stream", "with_checksum_file"]

SKIP_BUFFER = 1 << 20         # discard buffer when a server ignores Range (200 full body)
PROGRESS_EVENT_INTERVAL = 0.25  # s between `progress` events: a timeline shows a stall's
                                # shape, at a bounded log (14,400 lines, ~2 MB an hour)


class Segment(NamedTuple):
    """Bytes [start, end) of the object as served by `url`."""
    url: str
    start: int
    end: int


class Ledger:
    """What the stream delivered: `offset` bytes of the object `identity` (validated on
    `identity_url`), which mirror served which range, and `restarts` -- the generation,
    bumped on every restart from zero, that a consumer compares to know it must start
    its output over."""

    __slots__ = ("offset", "identity", "identity_url", "segments", "pieces", "restarts",
                 "refetched", "resumed_from", "_start")

    def __init__(self, url: str, offset: int = 0, identity: Optional[Identity] = None) -> None:
        self.offset = offset
        self.identity = identity
        self.identity_url = url
        self.segments: List[Segment] = []
        self.pieces = 1 if offset else 0   # runs of bytes from separate attempts or runs
        self.restarts = 0
        self.refetched = 0                 # prefix bytes read again from servers ignoring Range
        self.resumed_from = offset         # bytes held before this job started
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

    def restart(self) -> None:
        """Every byte thrown away: a new generation from zero."""
        self.offset = self._start = self.pieces = 0
        self.segments = []
        self.restarts += 1

    def rewind(self, offset: int, url: str) -> None:
        """Bytes from `offset` on were found bad (a piece hash): forget them (all of them:
        the object's identity too)."""
        self.offset = self._start = offset
        self.segments = [s._replace(end=min(s.end, offset)) for s in self.segments
                         if s.start < offset]
        if offset == 0:
            self.adopt(None, url)

    def adopt(self, identity: Optional[Identity], url: str) -> None:
        """Resumes are validated against `identity` (None: unknown) as served by `url`."""
        self.identity = identity
        self.identity_url = url


class _ProgressEvents:
    """`progress` events at most every PROGRESS_EVENT_INTERVAL, plus the last delivery
    before a quiet spell, so a timeline shows a stall's shape."""

    def __init__(self, stream: "Stream") -> None:
        self._stream = stream
        self._next = self._last = 0.0
        self.reported = stream.offset       # the offset the last event showed

    def delivered(self, before: int) -> None:
        now = timing.wall()
        if now >= self._next:
            quiet = now - self._last > PROGRESS_EVENT_INTERVAL / 10
            if before > self.reported and quiet:
                self.event(self._last, before)      # where a burst ended
            self.event(now, self._stream.offset)
        self._last = now

    def flush(self) -> None:
        """The last byte before a stall or a cut."""
        if self._stream.offset > self.reported:
            self.event(self._last, self._stream.offset)

    def event(self, when: float, offset: int) -> None:
        self._next = when + PROGRESS_EVENT_INTERVAL
        self.reported = offset
        self._stream._emit("progress", offset=offset, attempt=self._stream.attempts,
                           time=round(when, 6))


class StreamView(Readable):
    """What a Stream shows of its state: read-only views of its ledger (bytes), budget
    (attempts, time) and mirrors for progress lines, results and the agents' adapters;
    the download's side of the resume question (judge.Held); its events."""

    ledger: "Ledger"
    budget: Budget
    mirrors: MirrorSet
    options: Options
    checksum: Optional[Tuple[str, str]]
    restartable: bool
    end: Optional[int] = None           # a RangeStream's stop: one past its last byte
    url = property(lambda self: self.mirrors.current, doc="the mirror in use")
    urls = property(lambda self: self.mirrors.urls)
    offset = property(lambda self: self.ledger.offset, doc="bytes delivered (or held)")
    segments = property(lambda self: self.ledger.segments)
    identity = property(lambda self: self.ledger.identity)
    restarts = property(lambda self: self.ledger.restarts)
    refetched = property(lambda self: self.ledger.refetched)
    resumed_from = property(lambda self: self.ledger.resumed_from)
    attempts = property(lambda self: self.budget.count)
    deadline = property(lambda self: self.budget.deadline)
    policy = property(lambda self: self.budget.policy)
    started = property(lambda self: self.budget.started)
    history = property(lambda self: self.budget.policy.history)
    digest: Optional[str] = None        # a VerifiedStream's "algo:hex"
    pieces_checked = False              # the consumer verifies every piece (Metalink)

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_bytes()

    @property
    def size(self) -> Optional[int]:
        """Total length of the object, or None while unknown (chunked, close-delimited)."""
        return self.identity.total if self.identity else None

    def tell(self) -> int:
        return self.offset

    @property
    def resumable(self) -> bool:
        """Can the bytes held be resumed by a later run (a validator or a checksum)?"""
        return provable(self._held())

    def _held(self) -> Held:
        return Held(self.offset, self.identity, self.url == self.ledger.identity_url,
                    bool(self.checksum) or self.pieces_checked, self.restartable,
                    accepted_codings(image_name_from_url(self.url), self.options.decompress),
                    self.end)

    _response: Optional[Response]
    _progress: Optional[_ProgressEvents]

    def _end_attempt(self) -> None:
        """The attempt in flight (Stream's) ends: its response closed, its segment kept."""
        response, self._response = self._response, None
        if response is not None:
            response.close()
        if self._progress is not None:
            self._progress.flush()
        self.ledger.close_segment(self.url)

    def _emit(self, name: str, **fields: Any) -> None:
        if wants_events(self.options):
            fields.setdefault("url", self.url)
            emit(self.options.on_event, name, **fields)


class Stream(StreamView):
    """One object's body as a single uninterrupted byte stream, resumed invisibly.

    restartable (file mode): a changed object restarts from zero (ledger.restarts moves);
    otherwise (stream mode) the bytes were consumed and a change raises ResourceChanged.
    `checksum` ("algo", "hex") says the end result will be verified, which lets judge.py
    resume without a strong validator; the verdict itself is the consumer's.
    """

    def __init__(self, url: str, options: Options, *, offset: int = 0,
                 identity: Optional[Identity] = None, restartable: bool = False,
                 checksum: Optional[Tuple[str, str]] = None, mirrors: Sequence[str] = (),
                 budget: Optional[Budget] = None) -> None:
        self.options = options
        self.checksum = checksum
        self.restartable = restartable
        self.mirrors = MirrorSet(url, mirrors, options.mirror_order, options.splay_seed)
        self.budget = budget or Budget(options)
        self.ledger = Ledger(url, offset, identity)
        self._response: Optional[Response] = None
        self._attempt_start = offset
        self._ended = False             # the body ended and its length was checked
        self._closed = False
        self._progress = _ProgressEvents(self) if wants_events(options) else None

    def readinto(self, buffer: Any) -> int:
        """Fill up to len(buffer) bytes of the object; 0 only at its end (length checked)."""
        view = memoryview(buffer).cast("B")
        self._check_open()
        while True:
            if self._response is None:
                if self._ended:
                    return 0
                self._attempt()
                continue
            try:
                size = self._response.readinto(view)
            except FetchError as exc:
                self._recover(exc)
                continue
            if size:
                self._delivered(size)
                return size
            self._finish()

    def splice_to(self, splicer: Any, size: int) -> int:
        """Like readinto(), into splicer's pipe (the caller drains it); -1: call readinto()
        now (no live response, TLS, chunked, or a failure just recovered from)."""
        self._check_open()
        if self._response is None:
            return -1
        try:
            moved = self._response.splice_to(splicer, size)
        except FetchError as exc:
            self._recover(exc)
            return -1
        if moved > 0:
            self._delivered(moved)
        return moved

    def close(self) -> None:
        """Release the connection; the stream cannot be read any more."""
        self._closed = True
        self._end_attempt()

    def start(self) -> "Stream":
        """Make the first attempt now, so open() itself raises 404s and the like."""
        self._check_open()
        while self._response is None and not self._ended:
            self._attempt()
        return self

    def refetch(self, error: ChecksumMismatch, allowed: bool) -> None:
        """The consumer's checksum verdict failed: record it; fetch once more from zero
        in one clean attempt when `allowed` and the mode and budget allow, else raise."""
        self.budget.failed(error, self.offset, 0, self._emit)
        if not (allowed and self.restartable) or self.budget.exhausted:
            raise error
        self._restart("checksum mismatch on bytes assembled from %d pieces: fetching once "
                      "more from zero in one clean attempt" % self.ledger.pieces)
        self.ledger.adopt(None, self.url)
        self.deadline.check()
        self._ended = False

    def rewind(self, error: FetchError, offset: int) -> None:
        """The consumer found bytes from `offset` on bad: forget them, charge the mirror
        (retry.Budget), ask `Range: bytes=<offset>-` next (If-Range when strong)."""
        self._end_attempt()
        self.ledger.rewind(offset, self.url)
        self._ended = False
        self.budget.recover(error, self.mirrors, offset, 0, self._emit)

    # -------------------------------------------------------------- attempts
    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRequest("read from a closed stream (reopen it to download again)",
                                 url=self.url)

    def _delivered(self, size: int) -> None:
        before = self.ledger.offset
        self.ledger.offset += size
        if self._progress is not None:
            self._progress.delivered(before)

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
        except InvariantViolation:
            response.close()     # the end-of-body length check: final
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
        if action in (STATUS, RETRY, ENCODED):
            raise refusal(action, decision.why, response, self.url)
        if action == COMPLETE:
            response.close()
            self.ledger.identity = decision.identity
            self._finish()
            return
        if action in (RESTART, CHANGED):
            usable = response.status in OK_STATUSES
            if not usable:
                response.close()
            self._changed(decision.why, response if usable else None, decision.identity)
            return
        assert decision.identity is not None
        skipped = {}
        if action == SKIP:
            skip(response, self.ledger, self.url)
            skipped = {"skipped": self.offset}
        if action in (SKIP, CONTINUE):
            self._emit("resume", offset=self.offset, total=decision.identity.total, **skipped)
        self._adopt(decision.identity, response)

    def _adopt(self, identity: Optional[Identity], response: Optional[Response]) -> None:
        """From now on bytes come from `response`; resumes on this mirror are validated
        against `identity` (which the consumer records before it writes any of them)."""
        self.ledger.adopt(identity, self.url)
        self._response = response

    def _changed(self, why: str, response: Optional[Response] = None,
                 identity: Optional[Identity] = None) -> None:
        """The object changed: restart from zero in file mode, fail in stream mode."""
        if not self.restartable:
            if response is not None:
                response.close()
            raise ResourceChanged("resource changed after %s bytes were delivered: %s"
                                  % (format(self.offset, ","), why), url=self.url)
        self._restart(why)
        usable = response is not None and identity is not None
        self._adopt(identity if usable else None, response if usable else None)

    def _restart(self, why: str) -> None:
        """Throw every held byte away: a new generation in the ledger from zero."""
        self.ledger.restart()
        if self._progress is not None:
            self._progress.reported = 0
        self._attempt_start = 0
        self._emit("restart", why=why)

    def _finish(self) -> None:
        """End of body: the length must be the object's (a bug, not the network, if not)."""
        self._end_attempt()
        total = self.size
        if total is not None and self.offset != total:
            raise InvariantViolation("body ended at %d of %d bytes" % (self.offset, total),
                                     url=self.url)
        self._ended = True

    def _recover(self, exc: FetchError) -> None:
        """A failed attempt: retry.py records it and raises, hands over or backs off."""
        self._end_attempt()
        exc.url = exc.url or self.url
        self.budget.recover(exc, self.mirrors, self.offset, self.offset - self._attempt_start,
                            self._emit)



class RangeStream(Stream):
    """Bytes offset..end-1 of the object and no more: `Range: bytes=offset-(end-1)`
    (RFC 9110 s14.1.2), resumed inside the range after a cut, with the same identity and
    If-Range rules as an open range; the 206 must name exactly that span of the known
    total (judge._exact, s14.4). A server that ignores Range (200) is read up to `end`
    and the rest of its body dropped with the connection. Delta re-imaging fetches the
    ranges its plan lists this way (reimage.py)."""

    def __init__(self, url: str, options: Options, *, end: int, **kwargs: Any) -> None:
        super().__init__(url, options, **kwargs)
        if not 0 <= self.offset < end:
            raise InvariantViolation("closed range %d-%d is empty" % (self.offset, end - 1))
        self.end = end

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        assert self.end is not None
        if self.offset >= self.end:
            if not self._ended:
                self._end_attempt()
                self._ended = True
            return 0
        return super().readinto(view[:self.end - self.offset])

    def splice_to(self, splicer: Any, size: int) -> int:
        return -1           # a 200 ignoring Range must not be moved past `end` unseen

    def _finish(self) -> None:
        """A 206's body ends exactly at `end` (its Content-Length was checked)."""
        self._end_attempt()
        if self.offset != self.end:
            raise InvariantViolation("closed range body ended at %d, not %s"
                                     % (self.offset, self.end), url=self.url)
        self._ended = True


class VerifiedStream(Stream):
    """Stream mode with a checksum (rawfetch.open): every byte returned passes through
    the same Verifier download() uses, and the end of the body raises ChecksumMismatch
    when the digest differs (bytes already handed out cannot be refetched)."""

    def __init__(self, url: str, options: Options, verifier: Verifier, **kwargs: Any) -> None:
        super().__init__(url, options, checksum=verifier.checksum, **kwargs)
        self.verifier = verifier

    @property
    def digest(self) -> Optional[str]:  # type: ignore[override]
        return self.verifier.digest

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            size = super().readinto(view)
            if size:
                self.verifier.update(view[:size])
                return size
            if self.verifier.verdict(self):
                return 0

    def splice_to(self, splicer: Any, size: int) -> int:
        return -1       # every byte must reach the verifier


def refusal(action: str, why: str, response: Response, url: str) -> FetchError:
    """The error a response judged STATUS, RETRY or ENCODED is."""
    if action == STATUS:
        response.raise_for_status()
        return ProtocolError("unexpected HTTP %d %s" % (response.status, response.reason),
                             url=url, retryable=False)
    if action == RETRY:
        return ProtocolError(why, url=url)
    return ContentEncodingError(why, url=url)


def skip(response: Response, ledger: Ledger, url: str) -> None:
    """Discard the prefix already held (ledger.offset bytes) from a 200 full answer,
    counting them in ledger.refetched."""
    count = ledger.offset
    view = memoryview(bytearray(min(SKIP_BUFFER, count)))
    while count:
        got = response.readinto(view[:min(count, len(view))])
        if not got:
            raise ProtocolError("200 body ended inside the prefix being skipped", url=url)
        count -= got
        ledger.refetched += got


def open(url: Optional[str], *, options: Optional[Options] = None,  # noqa: A001
         urls: Sequence[str] = (), **kwargs: Any) -> Any:
    """Open `url` (then mirrors `urls`, the same object elsewhere) as a resumable stream;
    the first attempt is made before returning (a checksum_url or a metalink is read
    before it: its mirrors and whole-file hash apply, its pieces are not checked here).
    With decompress= (or gunzip=True) the stream yields the decompressed bytes (a
    DecompressReader; the checksum still applies to the bytes as downloaded)."""
    opts = make_options(options, kwargs)
    budget = Budget(opts)
    job = resolve(url, urls, opts, budget, None, ENGINE)
    if job.pieces is not None and wants_events(opts):
        emit(opts.on_event, "pieces_unchecked", url=job.url, length=job.pieces.length,
             why="rawfetch.open() hands bytes out as they come: the whole-file hash decides")
    return reader_for(open_stream(job.url, job.options, job.mirrors, budget), job.options)


def open_stream(url: str, opts: Options, urls: Sequence[str] = (),
                budget: Optional[Budget] = None) -> Stream:
    """A started Stream, a VerifiedStream when opts carry a checksum (no decoder):
    open()'s core, also the ironic adapter's. A metalink must have been read already
    (open() and download() do): here it would be ignored, so it is refused."""
    if opts.metalink is not None:
        raise InvalidRequest("metalink= is read by rawfetch.download(), to_stdout() and "
                             "open(); this entry point would ignore it")
    checksum = parse_checksum(opts.checksum)
    stream = Stream(url, opts, mirrors=urls, budget=budget) if checksum is None else \
        VerifiedStream(url, opts, Verifier(checksum), mirrors=urls, budget=budget)
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


ENGINE = Engine(with_checksum_file, open_stream)   # what job.resolve and metalink.wire fetch with
