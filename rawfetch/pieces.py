"""Per-piece verification (issue 24), sans-IO: a Metalink's piece hashes checked while
the bytes stream by, so a bad piece is found and fetched again alone instead of the whole
image after a whole-file mismatch.

`PieceVerifier` is fed the stream's bytes in order with their offsets, in any chunking
(a chunk may cross any number of piece boundaries), and hashes each piece incrementally:
one hasher for the piece in flight, so memory is constant whatever the image's size.
Each feed returns the verdicts of the pieces it completed. After a bad verdict the caller
rewinds to the piece's first byte (`rewind`) and streams it again, from the same or the
next mirror; the counters say how many pieces were verified and fetched again. hashlib
releases the GIL on large buffers, and no Python code runs per byte: a feed costs one
`update` per piece it touches.

Nothing here reads a socket or a file except `feed_file`, which reads bytes already on
disk back (a spliced region, a .part resumed after a crash) through the same feed.
"""
from __future__ import annotations

import os
from typing import Any, List, NamedTuple, Optional, Union

from .digest import new_hasher
from .errors import InvalidRequest, InvariantViolation, mapped
from .metalink import Pieces, piece_count

FEED_FILE_BLOCK = 1 << 20   # feed_file's pread size: one buffer, as digest.READ_BLOCK's
                            # order of magnitude; large enough that hashing dominates

# A piece's state in PieceVerifier.states: never judged, its last verdict ok, or bad.
UNSEEN, GOOD, BAD = 0, 1, 2

Buffer = Union[bytes, bytearray, memoryview]


class Verdict(NamedTuple):
    """One piece judged: bytes start..end-1 of the file (`end` one past the last byte,
    like a slice; `Range: bytes=start-(end-1)` asks for exactly this piece)."""
    index: int
    start: int
    end: int
    ok: bool

    @property
    def length(self) -> int:
        return self.end - self.start


class PieceVerifier:
    """The verdict on every piece of a `size`-byte file whose bytes are fed in order.

    `position` is the offset the next feed must start at. Bytes at any other offset,
    or past `size`, are an InvariantViolation: the stream's own accounting is wrong, and
    hashing them would judge the wrong bytes.
    """

    def __init__(self, pieces: Pieces, size: int, start: int = 0) -> None:
        if size < 0 or pieces.count != piece_count(size, pieces.length):
            raise InvalidRequest("%d piece hashes do not cover %d bytes in pieces of %d"
                                 % (pieces.count, size, pieces.length))
        self.pieces = pieces
        self.size = size
        self.states = bytearray(pieces.count)   # UNSEEN/GOOD/BAD per piece: 1 byte each
        self.verified = 0     # verdicts given, ok or bad, repeats included
        self.good = 0         # pieces whose last verdict is ok
        self.failed = 0       # bad verdicts given (a piece bad twice counts twice)
        self.refetched = 0    # verdicts on a piece that already had one
        self.position = 0
        self._hasher: Any = None
        self._piece_end = 0
        self._index = 0
        self.skip_to(start)

    # ---- where pieces are
    def index_of(self, offset: int) -> int:
        """The piece holding byte `offset`."""
        if not 0 <= offset < self.size:
            raise InvariantViolation("offset %d is outside the %d-byte file" % (offset, self.size))
        return offset // self.pieces.length

    def start_of(self, index: int) -> int:
        """The offset to rewind to, and ask `Range: bytes=<offset>-` from, to fetch piece
        `index` again."""
        return self.pieces.span(index, self.size)[0]

    def first_bad(self) -> Optional[int]:
        """The lowest piece whose last verdict is bad, None when there is none."""
        found = self.states.find(BAD)
        return None if found < 0 else found

    @property
    def done(self) -> bool:
        """Every piece's last verdict is ok: the image is verified piece by piece."""
        return self.good == self.pieces.count

    # ---- feeding
    def feed(self, offset: int, data: Buffer) -> List[Verdict]:
        """Hash `data`, the file's bytes from `offset` on (which must be `position`);
        return the verdicts of the pieces it completed, in file order."""
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        if offset != self.position:
            raise InvariantViolation("piece check fed bytes at offset %d, expected %d: "
                                     "bytes out of order" % (offset, self.position))
        if len(view) > self.size - offset:
            raise InvariantViolation("piece check fed %d bytes at offset %d of a %d-byte "
                                     "file: past its end" % (len(view), offset, self.size))
        verdicts: List[Verdict] = []
        used = 0
        while used < len(view):
            take = min(len(view) - used, self._piece_end - self.position)
            self._hasher.update(view[used:used + take])
            used += take
            self.position += take
            if self.position == self._piece_end:
                verdicts.append(self._judge())
        return verdicts

    def feed_file(self, fd: int, offset: int, size: int, path: str = "the output") -> List[Verdict]:
        """Feed `size` bytes read back from `fd` at `offset` (spliced bytes, or a .part's
        bytes before a resume point), one FEED_FILE_BLOCK buffer at a time."""
        block = memoryview(bytearray(min(FEED_FILE_BLOCK, max(size, 1))))
        verdicts: List[Verdict] = []
        while size > 0:
            with mapped("write", path=path):
                got = os.preadv(fd, [block[:min(size, len(block))]], offset)
            if not got:
                raise InvariantViolation("%s ends at %d, before the %d bytes to check"
                                         % (path, offset, size))
            verdicts += self.feed(offset, block[:got])
            offset += got
            size -= got
        return verdicts

    def _judge(self) -> Verdict:
        index = self._index
        ok = self._hasher.digest() == self.pieces.digest(index)
        if self.states[index] != UNSEEN:
            self.refetched += 1
        if self.states[index] == GOOD:
            self.good -= 1
        self.states[index] = GOOD if ok else BAD
        self.verified += 1
        self.good += ok
        self.failed += not ok
        verdict = Verdict(index, self._piece_end - self._span_length(index), self._piece_end, ok)
        self._open(index + 1)
        return verdict

    # ---- moving
    def rewind(self, offset: int) -> None:
        """Stream again from `offset`, the start of a piece at or before `position`
        (after a bad piece, or a retry that asks from a piece start): the partial hash of
        the piece in flight is dropped."""
        if offset > self.position:
            raise InvariantViolation("rewind to %d is ahead of the checked position %d"
                                     % (offset, self.position))
        self._seek(offset)

    def skip_to(self, offset: int) -> None:
        """Go on from `offset`, a piece start at or after `position`: the pieces between
        are not checked here (delta re-imaging found them good on the target)."""
        if offset < self.position:
            raise InvariantViolation("skip to %d is behind the checked position %d"
                                     % (offset, self.position))
        self._seek(offset)

    def _seek(self, offset: int) -> None:
        if offset != self.size and (offset % self.pieces.length or not 0 <= offset < self.size):
            raise InvariantViolation("offset %d is not the start of a piece (pieces of %d "
                                     "bytes, file of %d)" % (offset, self.pieces.length, self.size))
        self.position = offset
        self._open(offset // self.pieces.length)

    def _open(self, index: int) -> None:
        self._index = index
        if index >= self.pieces.count:
            self._hasher, self._piece_end = None, self.size
            return
        self._hasher = new_hasher(self.pieces.algorithm)
        self._piece_end = index * self.pieces.length + self._span_length(index)

    def _span_length(self, index: int) -> int:
        return self.pieces.span(index, self.size)[1]

    def __repr__(self) -> str:
        return ("PieceVerifier(%d pieces of %d, position=%d, good=%d, failed=%d, refetched=%d)"
                % (self.pieces.count, self.pieces.length, self.position, self.good,
                   self.failed, self.refetched))
