"""Delta re-imaging's plan (issue 24): which of a Metalink's pieces the target already
holds, and the few Range requests that fetch the others.

`Survey` surveys the target (a file or a block device): it reads each piece with pread
and compares its hash, on SURVEY_THREADS background threads (hashlib and pread release
the GIL, so both cores hash), handing pieces out in file order; `hash_target` waits for
all of it. Memory is one READ_BLOCK buffer per thread, whatever the size.
`plan_ranges` turns the differing pieces into HTTP byte ranges (RFC 9110 section 14.1.2),
coalescing runs separated by at most `coalesce_gap` good bytes and capping the count of
requests, and separates the head: the pieces holding the first MiB, which the disk-safety
rule (disk.py) zeroes first and writes last. `walk` yields the same requests while the
survey is still reading, each as soon as it is known. The plan is data; reimage fetches it.
"""
from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

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
    survey = Survey(target, pieces, size, threads)
    try:
        return [index for index in range(pieces.count) if survey.differs(index)]
    finally:
        survey.close()


UNJUDGED, SAME, DIFFERS = 0, 1, 2    # a piece's state in Survey.states


class Survey:
    """The survey on `threads` background threads, pieces handed out in file order, so
    that a caller can act on the first pieces (differs()) while the rest are read: delta
    re-imaging fetches a changed piece, and hashes the good ones into the whole-file
    digest, while the survey is still reading the target (docs/delta.md)."""

    def __init__(self, target: Target, pieces: Pieces, size: int,
                 threads: int = SURVEY_THREADS) -> None:
        _check_cover(pieces, size)
        self.pieces, self.size = pieces, size
        self.began, self.seconds = timing.now(), 0.0    # seconds: until all were judged
        self._own = not isinstance(target, int)
        self.name = "fd %d" % target if isinstance(target, int) else os.fspath(target)
        if isinstance(target, int):
            self.fd = target
        else:
            with mapped("write", path=self.name):
                self.fd = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC)
        self.states = bytearray(pieces.count)
        self.failure: Optional[BaseException] = None   # the first, for the caller
        self._next = self._left = 0
        self._stopping = False
        self._judged = threading.Condition()
        try:
            self._start(threads)
        except BaseException:
            self.close()
            raise

    def _start(self, threads: int) -> None:
        with mapped("write", path=self.name):
            held = os.lseek(self.fd, 0, os.SEEK_END)   # a block device's size too
        readable = min(held, self.size)
        whole = self.pieces.count if readable == self.size else readable // self.pieces.length
        for index in range(whole, self.pieces.count):  # past the end, or cut by it
            self.states[index] = DIFFERS
        self._left = self._whole = whole
        if not whole:
            self.seconds = round(timing.now() - self.began, 3)
        self._workers = [threading.Thread(target=self._run, name="rawfetch-survey",
                                          daemon=True)
                         for _ in range(max(1, min(threads, whole)) if whole else 0)]
        for worker in self._workers:
            worker.start()

    def differs(self, index: int) -> bool:
        """Wait until piece `index` is judged: True when the target does not hold it.
        A failure of the survey (other than EIO) is raised here."""
        with self._judged:
            while not self.states[index] and self.failure is None:
                self._judged.wait()
            if self.failure is not None:
                raise self.failure
            return self.states[index] == DIFFERS

    def close(self) -> None:
        """Stop handing out pieces, wait for the threads, close our fd."""
        with self._judged:
            self._stopping = True
        for worker in getattr(self, "_workers", ()):
            worker.join()
        if self._own and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def _take(self) -> Optional[int]:
        with self._judged:
            if self._next >= self._whole or self.failure is not None or self._stopping:
                return None
            self._next += 1
            return self._next - 1

    def _run(self) -> None:
        block = memoryview(bytearray(min(READ_BLOCK, self.pieces.length)))
        with timing.busy():
            while True:
                index = self._take()
                if index is None:
                    return
                try:
                    same = self._matches(index, block)
                except BaseException as exc:   # raised in the caller's thread by differs()
                    same, failure = False, exc
                else:
                    failure = None
                with self._judged:
                    self.failure = self.failure or failure
                    self.states[index] = SAME if same else DIFFERS
                    self._left -= 1
                    if not self._left:
                        self.seconds = round(timing.now() - self.began, 3)
                    self._judged.notify_all()

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


Step = Union[int, ByteRange]


def walk(differs: Callable[[int], bool], pieces: Pieces, size: int,
         coalesce_gap: int = COALESCE_GAP, max_ranges: int = MAX_RANGES) -> Iterator[Step]:
    """plan_ranges' requests, in the same order, each yielded as soon as the survey
    (`differs`, answering in file order) has judged enough pieces to know it: a run is
    final once more than `coalesce_gap` good bytes follow it. Between them, an int: every
    byte before that offset is on the target already and needs nothing. Past
    max_ranges // 2 requests the rest waits for the whole survey and is planned by
    plan_ranges (so the cap still holds)."""
    walker = _Walker(pieces, size, coalesce_gap)
    head_pieces = piece_count(min(HEAD_HOLD, size), pieces.length)
    walker.head_fetch = any([differs(index) for index in range(head_pieces)])
    if not walker.head_fetch and head_pieces:
        yield walker.head_end
    for index in range(pieces.count):
        if walker.sent >= max_ranges // 2:
            rest = walker.open + [i for i in range(index, pieces.count) if differs(i)]
            plan = plan_ranges(rest, pieces, size, coalesce_gap, max_ranges - walker.sent)
            yield from plan.body if walker.sent else plan.requests()
            return
        yield from walker.step(index, differs(index))
    yield from walker.close()


class _Walker:
    """walk()'s state: the run of differing pieces not yet known to be complete."""

    def __init__(self, pieces: Pieces, size: int, gap: int) -> None:
        self.pieces, self.size, self.gap = pieces, size, gap
        self.head_end = min(piece_count(min(HEAD_HOLD, size), pieces.length) * pieces.length,
                            size)
        self.head_fetch = False
        self.run: Optional[List[int]] = None      # [first byte, last byte]
        self.open: List[int] = []                 # its pieces
        self.sent = 0

    def step(self, index: int, differs: bool) -> Iterator[Step]:
        first, length = self.pieces.span(index, self.size)
        last = first + length - 1
        if differs:
            if self.run is not None and first - self.run[1] - 1 > self.gap:
                yield from self.close()
            if self.run is None:
                self.run = [first, last]
            self.run[1] = last
            self.open.append(index)
        elif self.run is not None and last - self.run[1] > self.gap:
            yield from self.close()
        if self.run is None and not (self.head_fetch and not self.sent) \
                and last >= self.head_end:
            yield last + 1                            # all before it: good or fetched

    def close(self) -> Iterator[ByteRange]:
        """The open run is complete: its request(s), the head first when it is fetched
        (merged with the run when they touch, as Plan.requests does)."""
        run, self.run, self.open = self.run, None, []
        body = ByteRange(max(run[0], self.head_end), run[1]) \
            if run is not None and run[1] >= self.head_end else None
        if self.head_fetch and not self.sent:
            self.sent += 1
            if body is not None and body.first == self.head_end:
                yield ByteRange(0, body.last)
                return
            yield ByteRange(0, self.head_end - 1)
        if body is not None:
            self.sent += 1
            yield body


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
