"""Delta re-imaging's plan (issue 24): which of a Metalink's pieces the target already
holds, and the few Range requests that fetch the others.

`hash_target` surveys the target (a file or a block device): it reads each piece with
pread and compares its hash, on SURVEY_THREADS threads (hashlib and pread release the
GIL, so both cores hash). Memory is one READ_BLOCK buffer per thread, whatever the size.
`plan_ranges` turns the differing pieces into HTTP byte ranges (RFC 9110 section 14.1.2),
coalescing runs separated by at most `coalesce_gap` good bytes and capping the count of
requests, and separates the head: the pieces holding the first MiB, which the disk-safety
rule (disk.py) zeroes first and writes last. The plan is data; the pipeline fetches it.
"""
from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from . import timing
from .digest import new_hasher
from .disk import HEAD_HOLD
from .errors import InvariantViolation, mapped, translate
from .metalink import Pieces, piece_count

READ_BLOCK = 1 << 20   # one pread per MiB: hashing dominates (sha-256 ~1.7 GB/s here with
                       # SHA-NI); a larger buffer only costs memory per survey thread
SURVEY_THREADS = 2     # a ramdisk's VM and this CI have 2+ cores. 1 GiB costs 0.7 s of CPU
                       # (bench/survey.py); sha-256 alone, 1 GiB: 0.60 s on 1 thread, 0.38 s
                       # on 2. On a busy machine the second thread gains little (docs)
# Two runs of differing pieces closer than this are fetched as one range: sending the good
# bytes between again is cheaper than another request. 1 MiB is about one request's cost
# at 1 Gb/s (~8 ms: a new connection's handshakes, a request head, the server's seek).
COALESCE_GAP = 1 << 20
# Most requests one plan makes; past it the smallest gaps are merged first. Each request
# costs a round trip and an event line; 256 keeps that overhead to seconds at worst while
# a 5 % change scattered over 1 GiB in 4 MiB pieces (~13 runs) stays far below it.
MAX_RANGES = 256

Target = Union[int, str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ByteRange:
    """Bytes first..last of the image, both included: RFC 9110 14.1.2's first-pos and
    last-pos, so `header` is the Range value that asks for exactly them."""
    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def header(self) -> str:
        return "bytes=%d-%d" % (self.first, self.last)


@dataclass(frozen=True)
class Plan:
    """What to fetch to turn the target into the image.

    `head` covers the pieces holding the first HEAD_HOLD bytes, given whenever anything is
    to be written (None when the target already matches). The caller holds its first
    HEAD_HOLD bytes in memory, zeroes them on the target before any other write and
    writes them last. With `head_fetch` the head is fetched first (some of its pieces
    differ); otherwise it is read from the target and kept. `body` is the rest, in file
    order, disjoint from the head. `requests()` is the order to ask in."""
    size: int
    differing: Tuple[int, ...]
    head: Optional[ByteRange]
    head_fetch: bool
    body: Tuple[ByteRange, ...]

    def requests(self) -> Tuple[ByteRange, ...]:
        """The Range requests in order: the head first when it is fetched, merged with
        the body's first range when they touch (its bytes still arrive first)."""
        if not self.head_fetch or self.head is None:
            return self.body
        if self.body and self.body[0].first == self.head.last + 1:
            return (ByteRange(0, self.body[0].last),) + self.body[1:]
        return (self.head,) + self.body

    @property
    def fetch_bytes(self) -> int:
        return sum(part.length for part in self.requests())

    @property
    def full(self) -> bool:
        """One request for the whole image: nothing on the target is worth keeping, so
        this is an ordinary download (its sink holds the first MiB as always)."""
        return self.size > 0 and self.requests() == (ByteRange(0, self.size - 1),)


# ---------------------------------------------------------------- the survey

def hash_target(target: Target, pieces: Pieces, size: int,
                threads: int = SURVEY_THREADS) -> List[int]:
    """The indexes of the pieces of a `size`-byte image that the target (an open fd, or a
    path) does not hold, ascending. A piece past the target's end differs; so does a
    piece the device cannot read (EIO): writing it is what re-imaging does anyway."""
    _check_cover(pieces, size)
    if isinstance(target, int):
        return _survey(target, pieces, size, threads, "fd %d" % target)
    path = os.fspath(target)
    with mapped("write", path=path):
        fd = os.open(path, os.O_RDONLY)
    try:
        return _survey(fd, pieces, size, threads, path)
    finally:
        os.close(fd)


def _survey(fd: int, pieces: Pieces, size: int, threads: int, name: str) -> List[int]:
    with mapped("write", path=name):
        held = os.lseek(fd, 0, os.SEEK_END)   # a block device's size too (fstat says 0)
    readable = min(held, size)
    count = pieces.count
    whole = readable // pieces.length          # pieces entirely on the target
    if readable == size:
        whole = count
    survey = _Survey(fd, pieces, size, whole, name)
    workers = [threading.Thread(target=survey.run, name="rawfetch-survey", daemon=True)
               for _ in range(max(1, min(threads, whole)) - 1)]
    for worker in workers:
        worker.start()
    survey.run()
    for worker in workers:
        worker.join()
    if survey.failure is not None:
        raise survey.failure
    return sorted(survey.differing) + list(range(whole, count))


class _Survey:
    """Pieces 0..whole-1 handed out one at a time to every thread that calls run()."""

    def __init__(self, fd: int, pieces: Pieces, size: int, whole: int, name: str) -> None:
        self.fd, self.pieces, self.size, self.whole, self.name = fd, pieces, size, whole, name
        self.differing: List[int] = []
        self.failure: Optional[BaseException] = None   # the first, for the caller
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> Optional[int]:
        with self._lock:
            if self._next >= self.whole or self.failure is not None:
                return None
            self._next += 1
            return self._next - 1

    def run(self) -> None:
        block = memoryview(bytearray(min(READ_BLOCK, self.pieces.length)))
        with timing.busy():
            while True:
                index = self._take()
                if index is None:
                    return
                try:
                    same = self._matches(index, block)
                except BaseException as exc:   # raised in the caller's thread by _survey
                    with self._lock:
                        self.failure = self.failure or exc
                    return
                if not same:
                    with self._lock:
                        self.differing.append(index)

    def _matches(self, index: int, block: memoryview) -> bool:
        offset, left = self.pieces.span(index, self.size)
        hasher = new_hasher(self.pieces.algorithm)
        while left:
            got = _pread(self.fd, block[:min(left, len(block))], offset, self.name)
            if got is None:
                return False
            hasher.update(block[:got])
            offset += got
            left -= got
        return hasher.digest() == self.pieces.digest(index)


def _pread(fd: int, into: memoryview, offset: int, name: str) -> Optional[int]:
    """Bytes read into `into`; None when the piece cannot be had (EIO, or the target
    shrank under the survey): it differs."""
    try:
        got = os.preadv(fd, [into], offset)
    except OSError as exc:  # an unreadable sector: the piece is rewritten, not a failure
        if exc.errno == errno.EIO:
            return None
        raise translate(exc, "write", path="%s (surveying it at %d)" % (name, offset)) from None
    return got or None


def _check_cover(pieces: Pieces, size: int) -> None:
    if size < 0 or pieces.count != piece_count(size, pieces.length):
        raise InvariantViolation("%d piece hashes do not cover %d bytes in pieces of %d"
                                 % (pieces.count, size, pieces.length))


# ---------------------------------------------------------------- the plan

def plan_ranges(indexes: Iterable[int], pieces: Pieces, size: int,
                coalesce_gap: int = COALESCE_GAP, max_ranges: int = MAX_RANGES) -> Plan:
    """The Range requests that fetch the pieces `indexes` (any order, repeats allowed),
    and the head the disk-safety rule needs (see Plan)."""
    _check_cover(pieces, size)
    differing = sorted(set(indexes))
    if differing and not 0 <= differing[0] <= differing[-1] < pieces.count:
        raise InvariantViolation("piece indexes %d..%d outside 0..%d"
                                 % (differing[0], differing[-1], pieces.count - 1))
    if not differing:
        return Plan(size, (), None, False, ())
    runs = _merge(_runs(differing, pieces, size), coalesce_gap, max(1, max_ranges))
    head_pieces = piece_count(min(HEAD_HOLD, size), pieces.length)
    head_end = min(head_pieces * pieces.length, size)         # one past the head's last byte
    head_fetch = differing[0] < head_pieces
    body = tuple(ByteRange(max(first, head_end), last) for first, last in runs
                 if last >= head_end)
    return Plan(size, tuple(differing), ByteRange(0, head_end - 1), head_fetch, body)


def _runs(differing: Sequence[int], pieces: Pieces, size: int) -> List[List[int]]:
    """[first byte, last byte] of each run of consecutive differing pieces."""
    runs: List[List[int]] = []
    for index in differing:
        first, length = pieces.span(index, size)
        if runs and runs[-1][1] + 1 == first:
            runs[-1][1] = first + length - 1
        else:
            runs.append([first, first + length - 1])
    return runs


def _merge(runs: List[List[int]], gap: int, max_ranges: int) -> List[List[int]]:
    """Join runs whose good bytes between are at most `gap`; while more than max_ranges
    remain, also join across the smallest gaps (ties join together)."""
    gaps = sorted(after[0] - before[1] - 1 for before, after in zip(runs, runs[1:]))
    if len(runs) > max_ranges:
        gap = max(gap, gaps[len(runs) - max_ranges - 1])
    merged = [list(runs[0])]
    for first, last in runs[1:]:
        if first - merged[-1][1] - 1 <= gap:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    return merged
