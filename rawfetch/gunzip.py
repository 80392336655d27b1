"""Streamed gunzip that fails loudly: truncation, bad CRC/ISIZE and trailing garbage are
errors (fuel-agent's gunzip step accepted a truncated image). Multi-member aware; NUL
padding after the last member is accepted like gzip(1) does. Output per step is bounded,
so a decompression bomb cannot exhaust memory (curl CVE-2022-32206 class)."""
from __future__ import annotations

import zlib
from typing import Any, Iterator, List, Optional

from .errors import GunzipError

GUNZIP_OUTPUT_STEP = 4 << 20   # decompressed bytes produced per zlib call, at most
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip wrapper only: zlib checks CRC32 and ISIZE


class Gunzip:
    """Incremental gzip decoder: feed() yields output pieces, finish() checks the end."""

    def __init__(self) -> None:
        self.total_in = 0
        self.total_out = 0
        self.members = 0
        self._decoder: Optional[Any] = zlib.decompressobj(_GZIP_WBITS)
        self._padding = False

    def feed(self, data: Any) -> Iterator[bytes]:
        """Decompress `data` (any bytes-like), yielding pieces of <= GUNZIP_OUTPUT_STEP."""
        self.total_in += len(data)
        data = memoryview(data)
        while len(data):
            if self._padding:
                if bytes(data).strip(b"\0"):
                    raise self._error("trailing garbage after the gzip stream")
                return
            if self._decoder is None:  # between members
                if data[0] == 0:
                    self._padding = True
                    continue
                if data[0] != 0x1F:
                    raise self._error("trailing garbage after the gzip stream")
                self._decoder = zlib.decompressobj(_GZIP_WBITS)
            data = yield from self._inflate(data)

    def _inflate(self, data: memoryview) -> Iterator[bytes]:
        decoder = self._decoder
        assert decoder is not None
        try:
            out = decoder.decompress(data, GUNZIP_OUTPUT_STEP)
        except zlib.error as exc:
            raise self._error("corrupt gzip data (%s)" % exc) from None
        if out:
            self.total_out += len(out)
            yield out
        if decoder.eof:
            self.members += 1
            self._decoder = None
            return memoryview(decoder.unused_data)
        return memoryview(decoder.unconsumed_tail)

    def finish(self) -> None:
        """The compressed input ended: it must end on a member boundary."""
        if self._decoder is not None or self.members == 0:
            raise self._error("truncated gzip stream")

    def _error(self, what: str) -> GunzipError:
        return GunzipError("%s after %s compressed bytes (%s bytes decompressed)"
                           % (what, format(self.total_in, ","), format(self.total_out, ",")))


class GunzipReader:
    """A decompressing view of a Stream: iterate, read(n) or readinto(buf)."""

    def __init__(self, stream: Any, chunk_size: int = 1 << 20) -> None:
        self.stream = stream
        self.decoder = Gunzip()
        self._pending: List[bytes] = []
        self._chunk_size = chunk_size
        self._position = 0
        self._done = False

    size = None  # decompressed size is unknown until the end

    def tell(self) -> int:
        return self._position

    def __iter__(self) -> Iterator[bytes]:
        while True:
            piece = self._next_piece()
            if not piece:
                return
            self._position += len(piece)
            yield piece

    def _next_piece(self) -> bytes:
        while not self._pending and not self._done:
            chunk = self.stream.read(self._chunk_size)
            if chunk:
                self._pending.extend(self.decoder.feed(chunk))
            else:
                self.decoder.finish()
                self._done = True
        return self._pending.pop(0) if self._pending else b""

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        piece = self._next_piece()
        size = min(len(piece), len(view))
        view[:size] = piece[:size]
        if size < len(piece):
            self._pending.insert(0, piece[size:])
        self._position += size
        return size

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(self)
        from .client import read_via
        return read_via(self.readinto, size)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> "GunzipReader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def digest(self) -> Optional[str]:
        return self.stream.digest
