"""Decompression as a download uses it: the decoder an option names (or, for `auto`, the
one the first bytes' magic names), and a reader that decompresses a Stream.

The decoders themselves are in decoders.py; xz streams of several blocks go to
xzblocks.py's parallel decoder when more than one core may decode.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional

from .decoders import (Bzip2Decoder, GzipDecoder, Passthrough, Pieces, SNIFF_BYTES,
                       XzDecoder, sniff)
# re-exported: tests import these from here, and xzblocks.py until it imports decoders
from .errors import InvalidRequest
from .options import DECOMPRESS_KINDS, DEFAULTS

Decoder = Any   # StreamDecoder, Passthrough or AutoDecoder: decoders.py's one interface


class AutoDecoder:
    """decompress='auto': the codec chosen by the magic of the first bytes received; any
    other body passes through unchanged. Holds back at most SNIFF_BYTES - 1 bytes."""

    def __init__(self, xz_memlimit: int = DEFAULTS["xz_memlimit"],
                 decode_threads: int = DEFAULTS["decode_threads"]) -> None:
        self.xz_memlimit = xz_memlimit
        self.decode_threads = decode_threads
        self.reset()

    def reset(self) -> None:
        self.close()
        self.inner: Optional[Decoder] = None
        self._head = b""

    def close(self) -> None:
        if getattr(self, "inner", None) is not None:
            self.inner.close()

    @property
    def kind(self) -> str:
        """The codec detected ("gzip", "xz", "bzip2", "none"), "auto" until decided."""
        return "auto" if self.inner is None else self.inner.kind

    @property
    def total_in(self) -> int:
        return len(self._head) if self.inner is None else self.inner.total_in

    @property
    def total_out(self) -> int:
        return 0 if self.inner is None else self.inner.total_out

    def feed(self, data: Any) -> Pieces:
        if self.inner is None:
            view = memoryview(data).cast("B")
            head = self._head + bytes(view[:SNIFF_BYTES - len(self._head)])
            kind = sniff(head)
            if kind is None:
                self._head = head
                return
            self.inner = make_decoder(kind, self.xz_memlimit, self.decode_threads)
            held, self._head = self._head, b""
            if held:   # bytes of earlier calls come first
                yield from self.inner.feed(held)
        yield from self.inner.feed(data)

    def finish(self) -> List[bytes]:
        if self.inner is None:   # shorter than the magic it began like: not compressed
            self.inner = Passthrough()
            held, self._head = self._head, b""
            return list(self.inner.feed(held))
        return self.inner.finish()


def make_decoder(kind: str, xz_memlimit: int = DEFAULTS["xz_memlimit"],
                 decode_threads: int = DEFAULTS["decode_threads"]) -> Decoder:
    """A fresh decoder for `kind`: auto, gzip, xz, bzip2 or none. xz decodes multi-block
    streams on `decode_threads` threads (0: the available cores; 1: one thread)."""
    if kind == "auto":
        return AutoDecoder(xz_memlimit, decode_threads)
    if kind == "xz":
        from .xzblocks import ParallelXzDecoder, available_cores  # a known circle: test_layout
        if (decode_threads or available_cores()) > 1:
            return ParallelXzDecoder(xz_memlimit, decode_threads)
        return XzDecoder(xz_memlimit)
    codec = {"gzip": GzipDecoder, "bzip2": Bzip2Decoder, "none": Passthrough}.get(kind)
    if codec is None:
        raise InvalidRequest("unknown decompression %r (one of %s)"
                             % (kind, ", ".join(DECOMPRESS_KINDS)))
    return codec()


class DecompressReader:
    """A decompressing view of a Stream: iterate, read(n) or readinto(buf)."""

    size = None  # the decompressed size is unknown until the end

    def __init__(self, stream: Any, kind: str = "auto",
                 xz_memlimit: int = DEFAULTS["xz_memlimit"], chunk_size: int = 1 << 20,
                 decode_threads: int = DEFAULTS["decode_threads"]) -> None:
        self.stream = stream
        self.decoder = make_decoder(kind, xz_memlimit, decode_threads)
        self._pieces: Iterator[Any] = iter(())   # pulled one at a time: a bomb stays bounded
        self._rest: Any = None                   # the unread end of the last piece
        self._chunk_size = chunk_size
        self._position = 0
        self._done = False

    @property
    def kind(self) -> str:
        return self.decoder.kind

    def tell(self) -> int:
        return self._position

    def __iter__(self) -> Iterator[bytes]:
        while True:
            piece = self._next_piece()
            if not len(piece):
                return
            self._position += len(piece)
            yield piece if isinstance(piece, bytes) else bytes(piece)

    def _next_piece(self) -> Any:
        if self._rest is not None:
            piece, self._rest = self._rest, None
            return piece
        while True:
            piece = next(self._pieces, None)
            if piece is not None:
                return piece
            if self._done:
                return b""
            chunk = self.stream.read(self._chunk_size)
            if chunk:
                self._pieces = self.decoder.feed(chunk)
            else:
                self._pieces = iter(self.decoder.finish())
                self._done = True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        piece = self._next_piece()
        size = min(len(piece), len(view))
        view[:size] = piece[:size]
        if size < len(piece):
            self._rest = memoryview(piece)[size:]   # a view: no copy of the rest
        self._position += size
        return size

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(self)
        from .client import read_via  # lazy: decoding needs no network stack
        return read_via(self.readinto, size)

    def close(self) -> None:
        try:
            self.decoder.close()
        finally:
            self.stream.close()

    def __enter__(self) -> "DecompressReader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def digest(self) -> Optional[str]:
        return self.stream.digest


def reader_for(stream: Any, options: Any) -> Any:
    """What rawfetch.open() returns: `stream` itself, or a DecompressReader over it when
    options.decompress asks for one (the checksum still covers the compressed bytes)."""
    if options.decompress == "none":
        return stream
    return DecompressReader(stream, options.decompress, options.xz_memlimit,
                            decode_threads=options.decode_threads)
