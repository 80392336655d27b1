"""Delta re-imaging (issue 24): turn an in-place target that holds an earlier image into
the one a Metalink describes, fetching only the pieces that differ.

The order is the disk-safety rule's (docs/sinks.md, docs/delta.md):

1. Open and lock the target through SafeDisk (nothing written yet) and start the survey
   (delta.Survey: every piece hashed on two background threads, in file order). The
   Range requests are planned as the survey goes (delta.walk: plan_ranges' runs,
   coalesced, the head separate), so the first is fetched while the rest is read.
2. The head -- the first MiB -- reaches SafeDisk first: fetched when one of its pieces
   differs, else read from the target. SafeDisk checks its format, zeroes the target's
   first MiB and holds the head in memory until commit() writes it last.
3. Each planned range is fetched by a resume.RangeStream (`Range: bytes=a-b`, resumed
   inside the range after a cut), under the job's one retry budget and max_time. Every
   byte is written at its offset and checked by pieces.PieceVerifier; a bad piece is
   fetched again alone, from the next mirror when there is one, and overwritten.
4. The whole-file hash is fed in file order on its own thread: the pieces the target
   already holds read back from it as soon as the survey has found them good, fetched
   pieces once they verify. It decides at the end; then the head is
   written and the target fsynced. Any failure after step 2 leaves the first MiB zeroed:
   a half re-imaged disk never boots, and running again completes it.

A target holding garbage matches no piece, so the plan is one range over the whole
image: an ordinary download through the same steps.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, List, Optional, Sequence, Union

from . import timing
from .delta import DIFFERS, UNJUDGED, ByteRange, Survey, walk
from .digest import new_hasher, parse_checksum
from .disk import HEAD_HOLD
from .errors import ChecksumMismatch, InvalidRequest, mapped
from .events import emit, wants_events
from .judge import Identity
from .metalink import File, Pieces, load
from .metalink.sources import Sources, merge_sources
from .mirrors import MirrorSet
from .options import Options, make_options
from .piececheck import BadPieces
from .pieces import PieceVerifier, Verdict
from .result import DownloadResult
from .resume import RangeStream, Segment
from .retry import Budget
from .sinks import InPlace, SafeDisk

__all__ = ["run", "Reimage"]

FETCH_BLOCK = 1 << 20   # one readinto per MiB: as pipeline's buffers; hashing dominates
READ_BACK_BLOCK = 1 << 20   # the held pieces re-read for the whole-file hash, per pread
TRAIL_STEP = 16 << 20       # most bytes the whole-file thread hashes between two looks
                            # at its stop flag: a failed job waits ~10 ms for it, no more

MetalinkInput = Union[File, bytes, str, "os.PathLike[str]"]


def run(target: Any, metalink_file: MetalinkInput, urls: Sequence[str] = (),
        opts: Optional[Options] = None, name: Optional[str] = None) -> DownloadResult:
    """Re-image `target` (a block device or an existing file, written in place) into the
    file `metalink_file` describes (a loaded metalink.File, or a document to load, with
    `name` choosing among several files), fetching only the pieces that differ.
    `urls` are the operator's own URLs, tried before the Metalink's mirrors; `opts`
    carries the usual timeouts, retries, max_time and checksum (docs/delta.md)."""
    opts = make_options(opts, {})
    item = metalink_file if isinstance(metalink_file, File) else load(metalink_file, name)
    sources = merge_sources(item, urls[0] if urls else None, list(urls[1:]), opts.checksum)
    if sources.pieces is None or sources.size is None:
        raise InvalidRequest("delta re-imaging needs a Metalink with <size> and <pieces> "
                             "for %s" % item.name)
    return Reimage(os.fspath(target), sources, opts).run()


def report_survey(survey: Survey, asked: List[ByteRange], report: Callable[..., None]) -> None:
    """Events delta_survey and delta_plan at the job's end (the ranges were asked while
    the survey went on; after a failure, `judged` may be short of `pieces`)."""
    report("delta_survey", path=survey.name, pieces=survey.pieces.count,
           judged=survey.pieces.count - survey.states.count(UNJUDGED),
           differing=survey.states.count(DIFFERS), seconds=survey.seconds)
    report("delta_plan", path=survey.name, ranges=[r.header for r in asked],
           bytes=sum(r.length for r in asked),
           full=asked == [ByteRange(0, survey.size - 1)],
           head_fetch=bool(asked) and asked[0].first == 0)


def cut_to_size(path: str, size: int) -> None:
    """A regular file longer than the image is cut to its size (a device never is)."""
    if os.path.isfile(path) and os.path.getsize(path) > size:
        with mapped("write", path=path):
            os.truncate(path, size)


def finished(job: "Reimage", elapsed: float) -> DownloadResult:
    """The job's result, reported as the event `done`."""
    result = DownloadResult(job.path, job.urls[0], job.fetched, job.size, job.attempts, 0,
                            job.size - job.fetched, elapsed, job.digest,
                            job.budget.policy.history, tuple(job.segments))
    job._emit("done", path=job.path, bytes=job.fetched, written=job.size,
              digest=result.digest, attempts=job.attempts, elapsed=elapsed,
              segments=[list(s) for s in job.segments], delta=True)
    return result


class Reimage:
    """One delta re-imaging job: the survey, the plan, and the fetches that carry it out."""

    def __init__(self, path: str, sources: Sources, opts: Options,
                 budget: Optional[Budget] = None) -> None:
        assert sources.pieces is not None and sources.size is not None
        self.path, self.opts = path, opts
        self.pieces: Pieces = sources.pieces
        self.size: int = sources.size
        self.urls: List[str] = list(sources.urls)   # the next range asks urls[0] first
        self.checksum = parse_checksum(sources.checksum)
        self.budget = budget or Budget(opts)   # download()'s, when it fetched the .meta4
        self.sink = SafeDisk(InPlace(path), preserve_on_error=opts.preserve_on_error,
                             allow_any_format=opts.allow_any_format,
                             verify_written=opts.verify_written, emit=self._emit)
        self.verifier = PieceVerifier(self.pieces, self.size)
        self.whole: Optional[Trailer] = None   # the whole-file hash, when there is one
        self.digest: Optional[str] = None
        self.identity = Identity(self.size, None, None)   # validators learned per mirror
        self.identity_url: Optional[str] = None
        self.segments: List[Segment] = []
        self.fetched = self.attempts = 0
        self.report = BadPieces(self.pieces.algorithm, self._emit)   # as streaming's
        self._fd = -1                      # our own read-only fd on the target
        self.survey: Optional[Survey] = None
        self._head: Optional[bytes] = None   # the target's first MiB, when it matched

    # ------------------------------------------------------------ the job
    def run(self) -> DownloadResult:
        started = timing.now()
        self.sink.open()            # locked from here: one writer per target
        try:
            with mapped("write", path=self.path):
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            if self.checksum is not None:
                self.whole = Trailer(self.checksum[0], self._fd, self.path, lambda: (
                    self._head or bytes(self.sink.head.data)))   # as commit() writes it
            self.survey = Survey(self.path, self.pieces, self.size)
            if self._carry_out():
                self.sink.commit(self.size)
            else:
                self._already_there()
        except BaseException:
            self.sink.abandon(keep=False)   # zeroes the start again once zeroing began
            raise
        finally:
            self._release()
        return finished(self, round(timing.now() - started, 3))

    def _release(self) -> None:
        for part in (self.survey, self.whole):
            if part is not None:
                part.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _already_there(self) -> None:
        """Every piece matched: nothing is written. The whole-file hash (fed during the
        survey) still decides; a longer regular file is cut to the image's size, as a
        download would."""
        if self.whole is not None:
            self._verdict(self.whole.hexdigest(self.size))
        self.sink.abandon(keep=True)    # OPEN -> ABANDONED: the target was never touched
        cut_to_size(self.path, self.size)

    def _carry_out(self) -> bool:
        """Each request once the survey has judged enough to plan it (delta.walk), the
        head first; the whole-file hash trails on its own thread, over good pieces while
        the survey reads, a fetched piece once it verifies. False: nothing differed."""
        asked: List[ByteRange] = []
        try:
            for step in walk(self.survey.differs, self.pieces, self.size):
                if isinstance(step, int):       # all before it is good on the target
                    if not asked and self._head is None:   # the head matched: kept in
                        self._head = pread_exact(self._fd, 0, min(HEAD_HOLD, self.size),
                                                 self.path)  # memory before any zeroing
                    self._final(step)
                    continue
                if not asked:
                    self.sink.expect_size(self.size)
                    if step.first:      # the head matched: format check, first MiB zeroed
                        self.sink.write(self._head)
                asked.append(step)
                self._final(step.first)
                self._fetch(step)
        finally:
            report_survey(self.survey, asked, self._emit)
        if not asked:
            return False
        self._final(self.size)
        if self.sink.taken != self.size:
            self.sink.rewind(self.size)   # the tail after the last range is the target's
        if self.whole is not None:
            self._verdict(self.whole.hexdigest(self.size))
        return True

    def _final(self, offset: int) -> None:
        if self.whole is not None:
            self.whole.final(offset)

    def _verdict(self, hexdigest: str) -> None:
        """The whole-file hash decides (RFC 5854 4.2.4): a mismatch is exit 90."""
        assert self.checksum is not None
        self.digest = "%s:%s" % (self.checksum[0], hexdigest)
        if hexdigest != self.checksum[1]:
            raise ChecksumMismatch("%s: re-imaged, but its %s is %s, not %s; its first MiB "
                                   "was zeroed again" % (self.path, self.checksum[0],
                                                         hexdigest, self.checksum[1]))

    # ------------------------------------------------------------ fetching
    def _fetch(self, wanted: ByteRange) -> None:
        """Fetch `wanted` until every piece in it verifies; a bad piece is asked again
        from its first byte, from the next mirror, charged to the job's budget."""
        start = wanted.first
        self.verifier.skip_to(start)
        while True:
            stream = self._stream(start, wanted.last + 1)
            try:
                bad = self._pump(stream, start)
            finally:
                self._close(stream)
            if bad is None:
                return
            start = self._refetch(bad, stream.url)

    def _stream(self, start: int, end: int) -> RangeStream:
        known = self.identity if self.identity_url == self.urls[0] else Identity(
            self.size, None, None)
        proof = self.checksum or (self.pieces.algorithm, "pieces")   # piece hashes prove
        return RangeStream(self.urls[0], self.opts, offset=start, end=end, identity=known,
                           restartable=False, checksum=proof, mirrors=self.urls[1:],
                           budget=self.budget)

    def _close(self, stream: RangeStream) -> None:
        """Keep what the stream learned: the mirror that served, its validators, which
        bytes it sent, how many attempts it made."""
        stream.close()
        self.attempts = self.budget.count
        if stream.identity is not None and stream.offset > stream.resumed_from:
            self.identity, self.identity_url = stream.identity, stream.ledger.identity_url
        self.segments += stream.segments
        self.fetched += sum(s.end - s.start for s in stream.segments) + stream.refetched
        if stream.url in self.urls:     # the next range starts where this one ended up
            self.urls.remove(stream.url)
            self.urls.insert(0, stream.url)

    def _pump(self, stream: RangeStream, offset: int) -> Optional[Verdict]:
        """Bytes from `stream` (starting at `offset`) to the target and the piece check,
        split at piece boundaries. Returns the first bad piece's verdict (nothing after
        it is kept); None at the range's end."""
        block = memoryview(bytearray(FETCH_BLOCK))
        length = self.pieces.length
        while True:
            got = fill(stream, block)
            if not got:
                return None
            used = 0
            while used < got:
                take = min(got - used, length - (offset % length))
                view = block[used:used + take]
                self._write(offset, view)
                verdicts = self.verifier.feed(offset, view)
                offset, used = offset + take, used + take
                for verdict in verdicts:
                    if not verdict.ok:
                        return verdict
                    self._final(verdict.end)
                    self.report.good(verdict, stream.url)

    def _write(self, offset: int, view: memoryview) -> None:
        if offset != self.sink.taken:
            self.sink.rewind(offset)
        self.sink.write(view)

    def _refetch(self, bad: Verdict, url: str) -> int:
        """A bad piece: charged as on the streaming path (retry.Budget.recover: the
        next mirror at once, else a backoff; PieceMismatch, exit 99, once the retries or
        max_time are spent), then the check rewound (and the held head when the piece
        lies in it). Returns the offset to fetch from."""
        start = bad.start
        mirrors = MirrorSet(url, self.urls)
        self.budget.recover(self.report.bad(bad, url), mirrors, start, 0, self._emit)
        turn = mirrors.urls.index(mirrors.current)      # the next range asks it first
        self.urls = mirrors.urls[turn:] + mirrors.urls[:turn]
        if start == 0:      # piece 0 starts the head over (format checked again); else the
            self.sink.restart()   # next write cuts back to `start`, keeping verified bytes
        self.verifier.rewind(start)   # (the whole-file thread may be hashing them now)
        return start

    # ------------------------------------------------------------ events
    def _emit(self, name: str, **fields: Any) -> None:
        if wants_events(self.opts):
            fields.setdefault("url", self.urls[0])
            emit(self.opts.on_event, name, **fields)


def fill(stream: RangeStream, block: memoryview) -> int:
    """Bytes read into `block`: all of it unless the range ends first. So every write
    starts and ends on a piece or block boundary (page-aligned), and the kernel never
    has to read a page of the target to change part of it: a page it cannot read (EIO,
    a pending sector) is rewritten whole, as a disk needs to reallocate it, instead of
    failing the write (tests/durability/test_eio.py)."""
    got = 0
    while got < len(block):
        step = stream.readinto(block[got:])
        if not step:
            break
        got += step
    return got


# ---------------------------------------------------------------- reading the target

def read_back(hasher: Any, fd: int, start: int, end: int, block: memoryview, path: str) -> None:
    """Feed `hasher` with the target's own bytes start..end-1 (the pieces the survey
    found good, warm in the page cache), one `block` at a time."""
    while start < end:
        got = pread_into(fd, block[:min(end - start, len(block))], start, path)
        hasher.update(block[:got])
        start += got


def pread_exact(fd: int, offset: int, size: int, path: str) -> bytes:
    data = bytearray(size)
    done = 0
    while done < size:
        done += pread_into(fd, memoryview(data)[done:], offset + done, path)
    return bytes(data)


def pread_into(fd: int, into: memoryview, offset: int, path: str) -> int:
    with mapped("write", path=path + " (reading back what it holds)"):
        got = os.preadv(fd, [into], offset)
    if not got:
        raise ChecksumMismatch("%s ended at %d while re-imaging it: it shrank under "
                               "rawfetch" % (path, offset))
    return got


class Trailer:
    """The whole-file hash on its own thread, trailing the writer: it hashes the target's
    bytes in file order up to the offset the job marked final -- read back from the
    page cache, the held first MiB from memory -- so the second sha-256 pass overlaps
    the fetches instead of following them (docs/delta.md has the numbers)."""

    def __init__(self, algorithm: str, fd: int, path: str, head: Callable[[], bytes]) -> None:
        self.hasher = new_hasher(algorithm)
        self.fd, self.path, self._head = fd, path, head
        self._final = 0          # bytes before it are final on the target (or the head)
        self._hashed = 0
        self._stopping = False
        self._failure: Optional[BaseException] = None
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="rawfetch-whole-file",
                                        daemon=True)
        self._thread.start()

    def final(self, offset: int) -> None:
        with self._ready:
            if self._failure is not None:
                raise self._failure
            if offset > self._final:
                self._final = offset
                self._ready.notify_all()

    def hexdigest(self, size: int) -> str:
        """Wait until `size` bytes are hashed; the digest (a failure is raised here)."""
        self.final(size)
        with self._ready:
            while self._hashed < size and self._failure is None:
                self._ready.wait()
            if self._failure is not None:
                raise self._failure
        return self.hasher.hexdigest()

    def close(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self._thread.join()

    def _run(self) -> None:
        block = memoryview(bytearray(READ_BACK_BLOCK))
        while True:
            with self._ready:
                while self._hashed >= self._final and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                start, end = self._hashed, min(self._final, self._hashed + TRAIL_STEP)
            try:                # outside the lock: hashlib and pread drop the GIL
                self._hash(start, end, block)
            except BaseException as exc:    # raised in the job's thread by final()
                with self._ready:
                    self._failure = exc
                    self._ready.notify_all()
                return
            with self._ready:
                self._hashed = end
                self._ready.notify_all()

    def _hash(self, start: int, end: int, block: memoryview) -> None:
        if start < HEAD_HOLD:
            upto = min(end, HEAD_HOLD)
            self.hasher.update(self._head()[start:upto])
            start = upto
        read_back(self.hasher, self.fd, start, end, block, self.path)
