"""Decode the blocks of a multi-block xz stream on a pool of threads while they arrive.

`xz -T0` (xz-utils >= 5.2; the default with threads since 5.4) writes every block header
with the block's compressed and uncompressed sizes (xz file format 1.2.0, 3.1.3-3.1.4),
so a block's end is known from its header alone. Each whole block is wrapped as a
one-block stream of its own (the real stream header, the block, a one-record index and a
footer) and handed to lzma on a pool thread: liblzma then verifies the block header CRC32,
the block's check (CRC32, CRC64 or SHA-256) and the declared sizes, and releases the GIL
while it decodes. Output leaves in block order, and only after its block was verified; the
real index and footer must equal the ones the decoded blocks imply, byte for byte.

A stream whose first block header lacks a size, or whose first block is larger than the
memory budget, or whose header is anything unusual, goes to the one-thread XzDecoder
(today's path, byte for byte), which also reports any malformed header as it always did.
A later block without sizes, or larger than the budget, is a DecompressError naming
`--decode-threads 1` (xz-utils never mixes such blocks into one stream).
"""
from __future__ import annotations

import os
import threading
import zlib
from collections import deque
from typing import Any, Deque, Iterator, List, Optional, Tuple

from .decompress import DECOMPRESS_OUTPUT_STEP, XzDecoder, _count
from .options import DEFAULTS

STREAM_HEADER = 12      # magic 6 + flags 2 + CRC32 4 (xz spec 2.1.1)
FOOTER_MAGIC = b"YZ"    # xz spec 2.1.2.4
# Check ID -> check size (xz spec 2.1.1.2, 3.4); only the IDs liblzma verifies go parallel.
CHECK_SIZES = {0x00: 0, 0x01: 4, 0x04: 8, 0x0A: 32}
POOL_STEP = DECOMPRESS_OUTPUT_STEP   # output per lzma call on a pool thread (4 MiB
                                     # measured no faster, within this machine's noise)
BLOCKS_PER_THREAD = 2   # blocks in flight per thread: one decoding, one arriving/waiting
                        # (3 measured no faster, 30 MiB more RSS)


def available_cores() -> int:
    """The CPUs this process may run on (a cgroup/taskset narrows os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # cleanup: no affinity API here; count instead
        return max(1, os.cpu_count() or 1)


def encode_vli(value: int) -> bytes:
    """xz variable-length integer (xz spec 1.2): 7 bits a byte, low first."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_vli(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    """(value, next position); ValueError when it runs past `end`, exceeds 9 bytes or is
    not minimally encoded (xz spec 1.2 forbids both)."""
    value = 0
    for i in range(9):
        if pos + i >= end:
            raise ValueError("a size field runs past the block header")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                raise ValueError("a size field is not minimally encoded")
            return value, pos + i + 1
    raise ValueError("a size field is longer than 9 bytes")


def index_and_footer(records: List[Tuple[int, int]], flags: bytes) -> bytes:
    """The index (xz spec 4) and stream footer (2.1.2) a stream of these blocks has:
    records are (unpadded size, uncompressed size)."""
    index = bytearray(b"\x00" + encode_vli(len(records)))
    for unpadded, uncompressed in records:
        index += encode_vli(unpadded) + encode_vli(uncompressed)
    index += b"\x00" * (-len(index) % 4)
    index += _le32(zlib.crc32(index))
    backward = _le32(len(index) // 4 - 1) + flags
    return bytes(index) + _le32(zlib.crc32(backward)) + backward + FOOTER_MAGIC


def _le32(value: int) -> bytes:
    """A 32-bit little-endian field (xz spec 1.1; int methods: no struct in the ramdisk)."""
    return value.to_bytes(4, "little")


class BlockHeader:
    """What framing needs from a block header (xz spec 3.1): its sizes, when present."""

    def __init__(self, raw: bytes) -> None:
        self.size = len(raw)
        if int.from_bytes(raw[-4:], "little") != zlib.crc32(raw[:-4]):
            raise ValueError("block header CRC32 mismatch")
        flags = raw[1]
        if flags & 0x3C:
            raise ValueError("reserved block flags are set")
        pos = 2
        self.compressed: Optional[int] = None
        self.uncompressed: Optional[int] = None
        if flags & 0x40:
            self.compressed, pos = decode_vli(raw, pos, self.size - 4)
            if not self.compressed:
                raise ValueError("compressed size 0")
        if flags & 0x80:
            self.uncompressed, pos = decode_vli(raw, pos, self.size - 4)

    @property
    def sized(self) -> bool:
        return self.compressed is not None and self.uncompressed is not None


def decode_block(stream: bytearray, memlimit: int, expected: int) -> List[bytes]:
    """Pool thread: one wrapped block -> its output in pieces of <= DECOMPRESS_OUTPUT_STEP
    (no join of a whole block: half the peak), verified by liblzma (GIL released)."""
    import lzma
    codec = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=memlimit)
    view = memoryview(stream)
    pieces: List[bytes] = []
    produced = 0
    for start in range(0, len(view), POOL_STEP):   # lzma keeps what is left of one
        data: Any = view[start:start + POOL_STEP]  # slice only
        while not codec.eof:
            out = codec.decompress(data, POOL_STEP)
            produced += len(out)
            if produced > expected:
                raise lzma.LZMAError("the block is longer than its header says")
            if out:
                pieces.append(out)
            if codec.needs_input:
                break
            data = b""
    if not codec.eof or codec.unused_data or produced != expected:
        raise lzma.LZMAError("the block does not end where its header says")
    return pieces


class BlockJob:
    """One block handed to the pool: wait() gives its output or raises its error."""

    def __init__(self, args: Tuple[Any, ...]) -> None:
        self.args: Optional[Tuple[Any, ...]] = args
        self.finished = threading.Event()
        self.cancelled = False
        self.output: List[bytes] = []
        self.error: Optional[BaseException] = None

    def wait(self) -> List[bytes]:
        self.finished.wait()
        if self.error is not None:
            raise self.error
        return self.output


class BlockPool:
    """`threads` daemon threads taking jobs in order. Only threading and collections:
    concurrent.futures costs ~40 ms of import here, and neither it nor `queue` is in the
    traced stdlib of the bootstrap ramdisk (tools/ramdisk)."""

    def __init__(self, threads: int) -> None:
        self._jobs: Deque[Optional[BlockJob]] = deque()
        self._ready = threading.Condition()
        self._threads = threads
        for _ in range(threads):
            threading.Thread(target=self._run, name="rawfetch-xz", daemon=True).start()

    def submit(self, *args: Any) -> BlockJob:
        job = BlockJob(args)
        self._put(job)
        return job

    def _put(self, job: Optional[BlockJob]) -> None:
        with self._ready:
            self._jobs.append(job)
            self._ready.notify()

    def _take(self) -> Optional[BlockJob]:
        with self._ready:
            while not self._jobs:
                self._ready.wait()
            return self._jobs.popleft()

    def _run(self) -> None:
        while True:
            job = self._take()
            if job is None:
                return
            if not job.cancelled and job.args is not None:
                try:
                    job.output = decode_block(*job.args)
                except BaseException as exc:   # handed to the thread that waits for it
                    job.error = exc
            job.args = None
            job.finished.set()

    def close(self) -> None:
        """Threads end after the jobs already queued (cancelled ones are skipped)."""
        for _ in range(self._threads):
            self._put(None)


class ParallelXzDecoder(XzDecoder):
    """XzDecoder whose multi-block streams decode on `threads` pool threads (see module)."""

    def __init__(self, memlimit: int = DEFAULTS["xz_memlimit"], threads: int = 0) -> None:
        self.threads = threads or available_cores()
        self._pool: Optional[BlockPool] = None
        super().__init__(memlimit)

    def reset(self) -> None:
        self._stop_pool()
        super().reset()
        self.parallel_streams = 0   # streams decoded on the pool (the rest: one thread)
        self._new_stream_state()

    def _new_stream_state(self) -> None:
        self._serial = False
        self._buf = bytearray()      # the unit being assembled (header, block, index...)
        self._need = STREAM_HEADER   # its size, once known
        self._phase = "stream header"
        self._header = b""           # this stream's header (wrapped around every block)
        self._check_size = 0
        self._records: List[Tuple[int, int]] = []
        self._pending: Deque[Tuple[BlockJob, int]] = deque()   # (job, cost), in order
        self._in_flight = 0          # bytes the pending blocks hold (compressed + output)
        self._block: Optional[BlockHeader] = None
        self._replay = b""           # bytes to feed the one-thread decoder first

    def _new_codec(self) -> Any:
        self._new_stream_state()
        return self   # a stream is open; _decode decides how it is decoded

    def _decode(self, view: memoryview) -> Iterator[Any]:
        while True:
            if self._serial:
                held, self._replay = self._replay, b""
                if held:   # what was held back before the choice was made
                    yield from super()._decode(memoryview(held))
                return (yield from super()._decode(view))
            take = min(self._need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < self._need:
                return view
            try:
                yield from self._unit_done()
            except BaseException:   # an error, or the consumer dropped the output
                self._stop_pool()
                raise
            if self._phase == "end":
                self.parallel_streams += 1
                return self._stream_end(bytes(view))

    def _unit_done(self) -> Iterator[Any]:
        """The unit in _buf is whole: act on it and say what comes next."""
        if self._phase == "block":
            yield from self._block_done()
        elif self._phase == "index":
            yield from self._index_done()
        else:
            step = {"stream header": self._stream_header, "block start": self._block_start,
                    "block header": self._block_header}.get(self._phase)
            if step is not None:
                step()

    def _expect(self, phase: str, need: int) -> None:
        """The next unit: `need` bytes in _buf (which keeps the stream header)."""
        self._phase, self._need = phase, need

    def _stream_header(self) -> None:
        raw = bytes(self._buf)
        flags = raw[6:8]
        check = flags[1] & 0x0F
        if (flags[0] or flags[1] & 0xF0 or check not in CHECK_SIZES
                or int.from_bytes(raw[8:12], "little") != zlib.crc32(flags)):
            return self._go_serial()   # liblzma names what is wrong, as it always did
        self._header, self._check_size = raw, CHECK_SIZES[check]
        self._expect("block start", STREAM_HEADER + 1)

    def _block_start(self) -> None:
        """_buf holds the stream header (each block is wrapped in it, built in place) and
        the next unit's first byte."""
        size_byte = self._buf[STREAM_HEADER]
        if size_byte == 0:   # the index indicator (xz spec 4.1)
            if not self._records:
                return self._go_serial()   # an empty stream: nothing to gain
            size = len(index_and_footer(self._records, b"\0\0"))
            self._expect("index", STREAM_HEADER + size)
            return
        self._expect("block header", STREAM_HEADER + (size_byte + 1) * 4)

    def _block_header(self) -> None:
        try:
            block = BlockHeader(bytes(self._buf[STREAM_HEADER:]))
        except ValueError as exc:
            if not self._records:
                return self._go_serial()
            raise self._block_error("bad block header (%s)" % exc) from None
        if not block.sized or self._cost(block) > self.memlimit:
            if not self._records:
                return self._go_serial()
            raise self._block_error(
                "its header gives no sizes or more than --xz-memlimit (%s bytes) in one "
                "block; decode such a stream with --decode-threads 1" % _count(self.memlimit))
        self._block = block
        assert block.compressed is not None
        padded = block.compressed + (-block.compressed % 4)
        self._expect("block", STREAM_HEADER + block.size + padded + self._check_size)

    def _cost(self, block: BlockHeader) -> int:
        return (block.compressed or 0) + (block.uncompressed or 0)

    def _go_serial(self) -> None:
        """This stream goes to the one-thread decoder, fed what was held back so far."""
        import lzma
        self._serial = True
        held = bytes(self._buf)   # the stream's bytes so far (its header included)
        self._buf = bytearray()
        self._codec = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=self.memlimit)
        self._replay = held

    def _block_done(self) -> Iterator[Any]:
        block, self._block = self._block, None
        assert block is not None and block.uncompressed is not None
        unpadded = block.size + (block.compressed or 0) + self._check_size
        record = (unpadded, block.uncompressed)
        wrapped = self._buf   # header + block, in place: completed as a stream of its own
        wrapped += index_and_footer([record], self._header[6:8])
        self._buf = bytearray(self._header)
        cost = self._cost(block)
        while self._pending and (len(self._pending) >= self.threads * BLOCKS_PER_THREAD
                                 or self._in_flight + cost > self.memlimit):
            yield from self._drain_one()
        if self._pool is None:
            self._pool = BlockPool(self.threads)
        job = self._pool.submit(wrapped, self.memlimit, block.uncompressed)
        del wrapped
        self._pending.append((job, cost))
        self._in_flight += cost
        self._records.append(record)
        self._expect("block start", STREAM_HEADER + 1)
        while self._pending and self._pending[0][0].finished.is_set():   # frees memory early
            yield from self._drain_one()

    def _drain_one(self) -> Iterator[Any]:
        """The oldest pending block's output, in pieces of <= DECOMPRESS_OUTPUT_STEP."""
        import lzma
        job, cost = self._pending.popleft()
        try:
            pieces = job.wait()
        except lzma.LZMAError as exc:
            number = len(self._records) - len(self._pending)   # the block that failed
            self._stop_pool()
            if "memory usage limit" in str(exc).lower():
                raise self._codec_error(exc) from None
            raise self._error("corrupt data in block %d of stream %d (%s)" % (
                number, self.streams + 1, exc), self.total_in, within=True) from None
        self._in_flight -= cost
        job.output = []
        pieces.reverse()
        while pieces:   # each piece freed once written
            yield self._emit(pieces.pop())

    def _index_done(self) -> Iterator[Any]:
        while self._pending:   # every block is verified before the index is judged
            yield from self._drain_one()
        # the index the decoded blocks imply, and the footer: the real ones must be equal
        if self._buf[STREAM_HEADER:] != index_and_footer(self._records, self._header[6:8]):
            raise self._error("the index or stream footer of stream %d does not match "
                              "its %d blocks" % (self.streams + 1, len(self._records)),
                              self.total_in, within=True)
        self._stop_pool()
        self._phase = "end"

    def _block_error(self, what: str) -> Any:
        self._stop_pool()
        return self._error("block %d of stream %d: %s" % (len(self._records) + 1,
                                                          self.streams + 1, what),
                           self.total_in, within=True)

    def _stop_pool(self) -> None:
        """Drop queued blocks; running ones finish on their own (a block takes < 1 s)."""
        pending: Deque[Tuple[BlockJob, int]] = getattr(self, "_pending", deque())
        for job, _cost in pending:
            job.cancelled = True
        pending.clear()
        self._in_flight = 0
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def finish(self) -> List[bytes]:
        if self._codec is not None:
            self._stop_pool()
        return super().finish()

    def close(self) -> None:
        self._stop_pool()
