"""Delta re-imaging (issue 24): turn an in-place target that holds an earlier image into
the one a Metalink describes, fetching only the pieces that differ.

The order is the disk-safety rule's (docs/sinks.md, docs/delta.md):

1. Open and lock the target through SafeDisk (nothing written yet), survey it
   (delta.hash_target: every piece hashed on two threads) and plan the Range requests
   (delta.plan_ranges: runs coalesced, the head separate).
2. The head -- the first MiB -- reaches SafeDisk first: fetched when one of its pieces
   differs, else read from the target. SafeDisk checks its format, zeroes the target's
   first MiB and holds the head in memory until commit() writes it last.
3. Each planned range is fetched by a resume.RangeStream (`Range: bytes=a-b`, resumed
   inside the range after a cut), under the job's one retry budget and max_time. Every
   byte is written at its offset and checked by pieces.PieceVerifier; a bad piece is
   fetched again alone, from the next mirror when there is one, and overwritten.
4. The whole-file hash is fed in file order: fetched bytes as they arrive, the pieces
   the target already held read back from it. It decides at the end; then the head is
   written and the target fsynced. Any failure after step 2 leaves the first MiB zeroed:
   a half re-imaged disk never boots, and running again completes it.

A target holding garbage matches no piece, so the plan is one range over the whole
image: an ordinary download through the same steps.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

from . import timing
from .delta import ByteRange, Plan, hash_target, plan_ranges
from .digest import new_hasher, parse_checksum
from .disk import HEAD_HOLD
from .errors import ChecksumMismatch, InvalidRequest, mapped
from .events import emit, wants_events
from .judge import Identity
from .metalink import File, Pieces, load
from .metalink.sources import Sources, merge_sources
from .options import Options, make_options
from .pieces import PieceVerifier
from .result import DownloadResult
from .resume import RangeStream, Segment
from .retry import Budget
from .sinks import InPlace, SafeDisk

__all__ = ["run", "Reimage"]

FETCH_BLOCK = 1 << 20   # one readinto per MiB: as pipeline's buffers; hashing dominates
READ_BACK_BLOCK = 1 << 20   # the held pieces re-read for the whole-file hash, per pread

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


class Reimage:
    """One delta re-imaging job: the survey, the plan, and the fetches that carry it out."""

    def __init__(self, path: str, sources: Sources, opts: Options) -> None:
        assert sources.pieces is not None and sources.size is not None
        self.path, self.opts = path, opts
        self.pieces: Pieces = sources.pieces
        self.size: int = sources.size
        self.urls: List[str] = list(sources.urls)   # the next range asks urls[0] first
        self.checksum = parse_checksum(sources.checksum)
        self.budget = Budget(opts)
        self.sink = SafeDisk(InPlace(path), preserve_on_error=opts.preserve_on_error,
                             allow_any_format=opts.allow_any_format,
                             verify_written=opts.verify_written, emit=self._emit)
        self.verifier = PieceVerifier(self.pieces, self.size)
        self.hasher = new_hasher(self.checksum[0] if self.checksum else self.pieces.algorithm)
        self.identity = Identity(self.size, None, None)   # validators learned per mirror
        self.identity_url: Optional[str] = None
        self.segments: List[Segment] = []
        self.fetched = 0
        self.attempts = 0
        self.bad: Dict[int, str] = {}    # pieces found bad -> the mirror that sent them
        self._read = memoryview(bytearray(READ_BACK_BLOCK))
        self._fd = -1                      # our own read-only fd on the target

    # ------------------------------------------------------------ the job
    def run(self) -> DownloadResult:
        started = timing.now()
        self.sink.open()            # locked from here: one writer per target
        try:
            with mapped("write", path=self.path):
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            plan = self._plan()
            if plan.head is None:
                self._already_there()
            else:
                self.sink.expect_size(self.size)
                self._carry_out(plan)
                self._verdict()
                self.sink.commit(self.size)
        except BaseException:
            self.sink.abandon(keep=False)   # zeroes the start again once zeroing began
            raise
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        digest = self.checksum and "%s:%s" % (self.checksum[0], self.hasher.hexdigest())
        result = DownloadResult(self.path, self.urls[0], self.fetched, self.size,
                                self.attempts, 0, self.size - self.fetched,
                                round(timing.now() - started, 3), digest,
                                self.budget.policy.history, tuple(self.segments))
        self._emit("done", path=self.path, bytes=self.fetched, written=self.size,
                   digest=result.digest, attempts=self.attempts, elapsed=result.elapsed,
                   segments=[list(s) for s in self.segments], delta=True)
        return result

    def _plan(self) -> Plan:
        """Survey the target and plan the fetches (events: delta_survey, delta_plan)."""
        began = timing.now()
        differing = hash_target(self.path, self.pieces, self.size)
        self._emit("delta_survey", path=self.path, pieces=self.pieces.count,
                   differing=len(differing), seconds=round(timing.now() - began, 3))
        plan = plan_ranges(differing, self.pieces, self.size)
        self._emit("delta_plan", path=self.path, ranges=[r.header for r in plan.requests()],
                   bytes=plan.fetch_bytes, full=plan.full, head_fetch=plan.head_fetch)
        return plan

    def _already_there(self) -> None:
        """Every piece matched: nothing is written. The whole-file hash still decides;
        a longer regular file is cut to the image's size, as a download would."""
        read_back(self.hasher, self._fd, 0, self.size, self._read, self.path)
        self._verdict()
        self.sink.abandon(keep=True)    # OPEN -> ABANDONED: the target was never touched
        if os.path.isfile(self.path) and os.path.getsize(self.path) > self.size:
            with mapped("write", path=self.path):
                os.truncate(self.path, self.size)

    def _carry_out(self, plan: Plan) -> None:
        """The head first (from the target when it matched), then each range in file
        order with the held bytes between read back into the whole-file hash."""
        done = 0
        if not plan.head_fetch:
            done = min(HEAD_HOLD, self.size)
            head = pread_exact(self._fd, 0, done, self.path)
            self.sink.write(head)       # format check, first MiB zeroed, head held
            self.hasher.update(head)
        for wanted in plan.requests():
            read_back(self.hasher, self._fd, done, wanted.first, self._read, self.path)
            self._fetch(wanted)
            done = wanted.last + 1
        read_back(self.hasher, self._fd, done, self.size, self._read, self.path)
        if self.sink.taken != self.size:
            self.sink.seek(self.size)   # the tail after the last range is the target's

    def _verdict(self) -> None:
        """The whole-file hash decides (RFC 5854 4.2.4): a mismatch is exit 90."""
        if self.checksum is not None and self.hasher.hexdigest() != self.checksum[1]:
            raise ChecksumMismatch("%s: re-imaged, but its %s is %s, not %s; its first MiB "
                                   "was zeroed again" % (self.path, self.checksum[0],
                                                         self.hasher.hexdigest(),
                                                         self.checksum[1]))

    # ------------------------------------------------------------ fetching
    def _fetch(self, wanted: ByteRange) -> None:
        """Fetch `wanted` until every piece in it verifies; a bad piece is asked again
        from its first byte, from the next mirror, charged to the job's budget."""
        start = wanted.first
        self.verifier.skip_to(start)
        while True:
            mark = self.hasher.copy()
            stream = self._stream(start, wanted.last + 1)
            try:
                bad = self._pump(stream, start, mark)
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

    def _pump(self, stream: RangeStream, offset: int, mark: Any) -> Optional[int]:
        """Bytes from `stream` (starting at `offset`) to the target, the piece check and
        the whole-file hash, split at piece boundaries. Returns the first bad piece's
        index, with the hash rewound to that piece's start; None at the range's end."""
        block = memoryview(bytearray(FETCH_BLOCK))
        length = self.pieces.length
        while True:
            got = stream.readinto(block)
            if not got:
                return None
            used = 0
            while used < got:
                take = min(got - used, length - (offset % length))
                view = block[used:used + take]
                self._write(offset, view)
                verdicts = self.verifier.feed(offset, view)
                self.hasher.update(view)
                offset, used = offset + take, used + take
                for verdict in verdicts:
                    if not verdict.ok:
                        self.hasher = mark
                        return verdict.index
                    mark = self.hasher.copy()
                    if self.bad.pop(verdict.index, None) is not None:
                        self._emit("piece_fixed", index=verdict.index, url=stream.url)

    def _write(self, offset: int, view: memoryview) -> None:
        if offset != self.sink.taken:
            self.sink.seek(offset)
        self.sink.write(view)

    def _refetch(self, index: int, url: str) -> int:
        """A bad piece: charge it, hand over to the next mirror, rewind the check (and
        the held head when the piece lies in it). Returns the offset to fetch from."""
        start, length = self.pieces.span(index, self.size)
        error = ChecksumMismatch("piece %d (bytes %d-%d) from %s does not match its "
                                 "Metalink hash" % (index, start, start + length - 1, url),
                                 url=url)
        self._emit("piece_bad", index=index, offset=start, length=length, url=url)
        self.budget.failed(error, start, 0, self._emit)
        if self.budget.exhausted:
            raise error
        self.budget.deadline.check()
        if len(self.urls) > 1 and self.urls[0] == url:
            self.urls.append(self.urls.pop(0))
        if start < HEAD_HOLD:           # the held head has bad bytes: collect it again
            self.sink.restart()
            self.hasher = new_hasher(self.hasher.name)
            start = 0
        self.verifier.rewind(start)
        self.bad[index] = url
        return start

    # ------------------------------------------------------------ events
    def _emit(self, name: str, **fields: Any) -> None:
        if wants_events(self.opts):
            fields.setdefault("url", self.urls[0])
            emit(self.opts.on_event, name, **fields)


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
