"""Per-piece verification inside a download (issue 24): the pipeline's stage around
pieces.PieceVerifier.

Every byte is checked against its Metalink piece hash (RFC 5854 4.1.3) before it reaches
the whole-file hasher and the output: received buffers are split at piece boundaries,
spliced regions are read back from the output (as digest.FileHasher does). At each
piece start the whole-file digest is copied, so a bad piece costs one rewind: the output
is cut back to the piece's first byte, the digest restored from its copy, and the stream
asks `Range: bytes=<piece start>-` -- from the next mirror when there is one
(resume.Stream.rewind, retry.Budget.decide). Only the bad piece is fetched again.

Cutting back needs an output that allows it: a .part (sinks.PartFile) or an in-place
target with offsets (sinks.SafeDisk: a regular file or a block device, the head held in
memory as always). On the other paths of a download (a decoder, stdout, a character
device, --verify-written) each piece is held back in memory until it verifies, when it
is at most MAX_HELD_PIECE; a bad one is simply dropped and fetched again. Longer pieces
there, and rawfetch.open(), are not checked: the whole-file hash decides (README).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Optional, Set, Tuple

from .disk import SIGNATURE_BYTES
from .errors import PieceMismatch, mapped
from .metalink import Pieces
from .pieces import PieceVerifier, Verdict

Emit = Callable[..., None]

MAX_HELD_PIECE = 8 << 20   # bytes a piece may have to be held back until it verifies, on
                           # paths that cannot cut their output back (stdout, a decoder):
                           # `make`'s default 4 MiB and aria2's 1 MiB fit; at most two
                           # pieces are in memory (one held, one in work), 16 MiB in a ramdisk


class BadPieces:
    """The one report of a bad piece on every path (this stage, and delta re-imaging in
    reimage.py): event `piece_bad {index, offset, length, url}` and the PieceMismatch
    (exit 99) that charges the mirror that sent it; event `piece_fixed {index, offset,
    url}` when that piece later verifies, naming the mirror that fixed it."""

    def __init__(self, algorithm: str, emit: Emit) -> None:
        self.algorithm = algorithm
        self.emit = emit
        self.unfixed: Set[int] = set()   # pieces found bad and not fixed yet

    def bad(self, verdict: Verdict, url: str) -> PieceMismatch:
        """Report a bad piece; the error to charge its mirror with."""
        self.unfixed.add(verdict.index)
        self.emit("piece_bad", index=verdict.index, offset=verdict.start,
                  length=verdict.length, url=url)
        return PieceMismatch("piece %d (bytes %d-%d) does not match its %s hash in the "
                             "Metalink" % (verdict.index, verdict.start, verdict.end - 1,
                                           self.algorithm),
                             index=verdict.index, offset=verdict.start, url=url)

    def good(self, verdict: Verdict, url: str) -> None:
        """A piece verified: reported as fixed when it had been bad."""
        if verdict.index in self.unfixed:
            self.unfixed.discard(verdict.index)
            self.emit("piece_fixed", index=verdict.index, offset=verdict.start, url=url)


class PieceCheck:
    """The piece stage of one download into a cuttable output (`sink.rewind`)."""

    def __init__(self, pieces: Pieces, size: int, sink: Any, held: int, emit: Emit,
                 holding: bool = False) -> None:
        """`held`: bytes verify_held() checked, a piece start (or the end). `holding`:
        the output cannot be cut back, so each piece is held here until it verifies."""
        self.verifier = PieceVerifier(pieces, size, start=held)
        self.holding = holding
        self.held = bytearray()     # holding: the piece in flight, not passed on yet
        self.length = pieces.length
        self.path = sink.part or sink.path   # read back: spliced bytes are only there
        self.emit = emit
        self.mark: Any = None       # the whole-file digest at the current piece's start
        self.report = BadPieces(pieces.algorithm, emit)
        self._fd = -1

    def parts(self, offset: int, size: int) -> Iterator[Tuple[int, int]]:
        """(offset, size) runs of [offset, offset+size) that stay inside one piece."""
        end = offset + size
        while offset < end:
            step = min(end, (offset // self.length + 1) * self.length) - offset
            yield offset, step
            offset += step

    def starting(self, offset: int, whole: Any) -> None:
        """At a piece's first byte: a copy of the whole-file digest (`whole`, a
        digest.Verifier or None) to restore if the piece turns out bad."""
        if whole is not None and offset % self.length == 0 and not self.holding:
            self.mark = whole.snapshot()

    @property
    def pending(self) -> int:
        """Bytes taken from the stream but held back (not passed on yet)."""
        return len(self.held)

    def release(self, part: memoryview, worker: Any) -> Optional[memoryview]:
        """Bytes of a piece that verified (or is still in flight when not holding) to
        pass on; holding, the whole piece once its last byte verified, else None."""
        if not self.holding:
            return part
        self.held += part
        position = self.verifier.position
        if position % self.length and position != self.verifier.size:
            return None
        worker.drain(keep=1)        # memory: one piece in work, one held
        ready, self.held = memoryview(self.held), bytearray()   # the worker keeps `ready`
        return ready

    def restart(self) -> None:
        """The stream starts over from zero: so does the check."""
        self.verifier.rewind(0)
        self.held = bytearray()

    def refetch(self, bad: Verdict, stream: Any, worker: Any, whole: Any, sink: Any) -> None:
        """A bad piece: the output cut back to its first byte (holding: its bytes were
        never passed on), the whole-file digest restored, the stream asked to fetch from
        there (it raises when it gives up)."""
        error = self.bad(bad, stream.url)
        if self.holding:
            self.held = bytearray()
            stream.rewind(error, bad.start)
            return
        worker.drain()
        if whole is not None:
            whole.restore(self.mark, bad.start)
        sink.rewind(bad.start)
        stream.rewind(error, bad.start)

    def passes(self, offset: int, part: Any, stream: Any, pipeline: Any) -> bool:
        """Check one run of bytes inside a piece: received ones (a view), or `part`
        bytes spliced into the output (an int: read back). False: the piece was bad, the
        pipeline and the stream were rewound to its first byte (or the stream gave up)."""
        self.starting(offset, pipeline.verifier)
        bad = self.feed_back(offset, part, stream.url) if isinstance(part, int) else \
            self.feed(offset, part, stream.url)
        if bad is None:
            return True
        if not self.holding:    # queued writes land, and are counted, before the cut
            pipeline.worker.drain()
            pipeline.fed = pipeline.written = bad.start
        self.refetch(bad, stream, pipeline.worker, pipeline.verifier, pipeline.sink)
        return False

    def feed(self, offset: int, view: Any, url: str) -> Optional[Verdict]:
        """Check bytes of one piece; the piece's bad verdict when they complete it."""
        return self._judged(self.verifier.feed(offset, view), url)

    def feed_back(self, offset: int, size: int, url: str) -> Optional[Verdict]:
        """Check bytes of one piece the kernel spliced into the output: read them back."""
        return self._judged(self.verifier.feed_file(self._reader(), offset, size, self.path),
                            url)

    def _judged(self, verdicts: Any, url: str) -> Optional[Verdict]:
        for verdict in verdicts:    # a part lies in one piece: at most one verdict
            if not verdict.ok:
                return verdict
            self.report.good(verdict, url)
        return None

    def bad(self, verdict: Verdict, url: str) -> PieceMismatch:
        """Record a bad piece; the error to charge its mirror with."""
        self.verifier.rewind(verdict.start)
        return self.report.bad(verdict, url)

    def _reader(self) -> int:
        if self._fd < 0:
            with mapped("write", path=self.path):
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def verify_held(pieces: Optional[Pieces], size: Optional[int], sink: Any, held: int,
                emit: Emit) -> int:
    """An earlier run's bytes are checked piece by piece before anything is asked: the
    output is cut back to the first bad piece (the sidecar claims only fsynced bytes, not
    verified ones), or else to the start of the piece in flight, so that every piece
    this run checks starts with a copy of the whole-file digest. Returns the bytes kept."""
    if not (pieces and held and size is not None and cuts_back(sink, pieces)) or held > size \
            or sink.part is None:
        return held
    verifier = PieceVerifier(pieces, size)
    with mapped("write", path=sink.part):
        fd = os.open(sink.part, os.O_RDONLY | os.O_CLOEXEC)
    try:
        verifier.feed_file(fd, 0, held, sink.part)
    finally:
        os.close(fd)
    first = verifier.first_bad()
    if first is None:
        start = held - held % pieces.length if held < size else held
    else:
        start, length = pieces.span(first, size)
        BadPieces(pieces.algorithm, emit).bad(Verdict(first, start, start + length, False),
                                              "an earlier run")
    if start != held:
        sink.rewind(start)
    return start


def cuts_back(sink: Any, pieces: Optional[Pieces], decoding: bool = False) -> bool:
    """Can a bad piece be cut back from this output? A .part, or an in-place target with
    offsets (not behind a decoder: the output's bytes are not the published ones). A
    piece shorter than the format signature SafeDisk checks first could make a rewind
    re-open that check: such lists are held back instead."""
    return pieces is not None and not decoding and pieces.length >= SIGNATURE_BYTES \
        and bool(getattr(sink, "rewindable", False))


def piece_check(pieces: Optional[Pieces], size: Optional[int], sink: Any, held: int,
                decoding: bool, emit: Emit) -> Optional[PieceCheck]:
    """The job's piece stage: cutting the output back when it can, else holding each
    piece back when pieces are at most MAX_HELD_PIECE; else none (event
    pieces_unchecked: the whole-file hash alone decides)."""
    if pieces is None or size is None:
        return None
    if cuts_back(sink, pieces, decoding):
        return PieceCheck(pieces, size, sink, held, emit)
    if pieces.length <= MAX_HELD_PIECE:
        return PieceCheck(pieces, size, sink, held, emit, holding=True)
    emit("pieces_unchecked", length=pieces.length, limit=MAX_HELD_PIECE,
         why="pieces longer than MAX_HELD_PIECE cannot be held back on this path")
    return None
