"""Streamed decompression that fails loudly: gzip, xz, bzip2, passthrough, and `auto`.

A truncated stream, corrupt data, a failed CRC/check, trailing garbage, or an xz stream
needing more memory than xz_memlimit is a DecompressError (exit 92); fuel-agent's gunzip
step accepted a truncated image. Concatenated streams are decoded like gzip(1), xz(1) and
bzip2(1) do, with their padding rules. Output per codec call is bounded, so a
decompression bomb cannot exhaust memory (curl CVE-2022-32206 class). zlib, lzma and bz2
are imported on first use.

Every decoder has one interface: feed(data) yields output pieces, finish() checks the end
(and returns the last pieces: only `auto` on a body shorter than a magic has any),
reset() starts over for a restart from zero; total_in/total_out count bytes; kind names
the codec.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple, Type

from .errors import DecompressError, GunzipError, InvalidRequest
from .options import DECOMPRESS_KINDS, DEFAULTS

# Decompressed bytes per codec call, at most: bounds a bomb's memory (curl CVE-2022-32206).
# zlib and lzma build a piece in blocks, then join them (peak about twice the step); the
# size of one network read is as fast as larger steps and keeps the peak memory lower.
DECOMPRESS_OUTPUT_STEP = 1 << 20
MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "bzip2": b"BZh"}   # RFC 1952, xz spec 2.1.1.1
SNIFF_BYTES = max(len(magic) for magic in MAGIC.values())   # `auto` holds back at most this

Pieces = Iterator[Any]   # bytes, or the caller's own view for passthrough
_EMPTY = memoryview(b"")


def _count(number: int) -> str:
    return format(number, ",")


class StreamDecoder:
    """Concatenated streams of one codec, each checked to start with the codec's magic,
    with the NUL padding its command-line tool accepts between or after them."""

    kind = ""
    padding_unit = 0             # NUL padding after a stream: 0 none, else a multiple of this
    padding_then_stream = False  # may another stream follow padding (xz), or only the end (gzip)
    error_class: Type[DecompressError] = DecompressError

    def __init__(self) -> None:
        self.reset()

    def close(self) -> None:
        """Release what decoding holds beyond memory (the xz pool's threads): called on
        every way out of a download, so a failed one leaves no thread behind."""

    def reset(self) -> None:
        """Forget everything: the next feed() is the start of the compressed input."""
        self.total_in = 0
        self.total_out = 0
        self.streams = 0           # streams (gzip members) completed
        self._codec: Any = None    # the codec object of the stream being decoded
        self._head = b""           # the next stream's first bytes, until its magic is whole
        self._padding = 0          # NULs seen since the last stream

    @property
    def magic(self) -> bytes:
        return MAGIC[self.kind]

    def feed(self, data: Any) -> Pieces:
        """Decompress `data` (any bytes-like), yielding pieces of <= DECOMPRESS_OUTPUT_STEP."""
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self.total_in += len(view)
        while len(view):
            if self._codec is not None:
                view = yield from self._decode(view)
                continue
            view = self._outside(view)
            if self._codec is not None:   # the magic is whole: decode it, then the rest
                head, self._head = self._head, b""
                yield from self._decode(memoryview(head))

    def _outside(self, view: memoryview) -> memoryview:
        """Between streams: padding NULs, then the next stream's magic bytes."""
        if not self._head and self.streams and self.padding_unit:
            view = self._skip_padding(view)
            if not len(view):
                return view
            if self._padding and not self.padding_then_stream:
                raise self._garbage(self.total_in - len(view), bytes(view[:8]))
            self._check_padding(self.total_in - len(view))
            self._padding = 0
        start = self.total_in - len(view) - len(self._head)   # of this stream, if it is one
        wanted = len(self.magic) - len(self._head)
        self._head += bytes(view[:wanted])
        if not self.magic.startswith(self._head):
            raise self._garbage(start, self._head)
        if len(self._head) == len(self.magic):
            self._codec = self._new_codec()
        return view[wanted:]

    def _skip_padding(self, view: memoryview) -> memoryview:
        if view[0] != 0:
            return view
        data = bytes(view)
        nuls = len(data) - len(data.lstrip(b"\0"))
        self._padding += nuls
        return view[nuls:]

    def _check_padding(self, offset: int) -> None:
        if self._padding % self.padding_unit:
            raise self._error("stream padding of %d NUL bytes is not a multiple of %d"
                              % (self._padding, self.padding_unit), offset)

    def _garbage(self, offset: int, found: bytes) -> DecompressError:
        if not self.streams:
            return self._error("not %s data (it starts %r)" % (self.kind, found), offset)
        return self._error("trailing garbage %r after stream %d" % (found, self.streams),
                           offset)

    def _decode(self, view: memoryview) -> Iterator[Any]:
        """Feed `view` to the current stream; return what follows the stream's end."""
        raise NotImplementedError

    def _new_codec(self) -> Any:
        raise NotImplementedError

    def _stream_end(self, unused: bytes) -> memoryview:
        self.streams += 1
        self._codec = None
        return memoryview(unused)

    def _emit(self, out: bytes) -> bytes:
        self.total_out += len(out)
        return out

    def finish(self) -> List[bytes]:
        """The compressed input ended: it must end on a stream boundary."""
        if self._codec is not None or self._head:
            raise self._error("truncated stream: the input ended inside stream %d"
                              % (self.streams + 1), self.total_in)
        if not self.streams:
            raise self._error("truncated stream: no %s stream in the input" % self.kind,
                              self.total_in)
        if self.padding_unit:
            self._check_padding(self.total_in)
        return []

    def _corrupt(self, exc: BaseException) -> DecompressError:
        return self._error("corrupt data in stream %d (%s)" % (self.streams + 1, exc),
                           self.total_in, within=True)

    def _error(self, what: str, offset: int, within: bool = False) -> DecompressError:
        where = "in the first %s compressed bytes" if within else "at compressed byte %s"
        return self.error_class(
            "%s: %s %s (%s bytes decompressed)" % (self.kind, what, where % _count(offset),
                                                   _count(self.total_out)),
            codec=self.kind, produced=self.total_out, offset=offset)


class GzipDecoder(StreamDecoder):
    """gzip members (RFC 1952) via zlib, which checks each member's CRC32 and ISIZE.
    NUL padding after the last member is accepted, like gzip(1); nothing may follow it."""

    kind = "gzip"
    padding_unit = 1
    error_class = GunzipError

    def _new_codec(self) -> Any:
        import zlib  # lazy: each codec is loaded on first use
        return zlib.decompressobj(16 + zlib.MAX_WBITS)   # gzip wrapper only

    def _decode(self, view: memoryview) -> Iterator[Any]:
        import zlib  # lazy: each codec is loaded on first use
        codec = self._codec
        while True:
            try:
                out = codec.decompress(view, DECOMPRESS_OUTPUT_STEP)
            except zlib.error as exc:
                raise self._corrupt(exc) from None
            full = len(out) == DECOMPRESS_OUTPUT_STEP   # a full step may hold more
            if out:
                yield self._emit(out)
                out = None   # not kept alive while the next piece is built
            if codec.eof:
                return self._stream_end(codec.unused_data)
            view = codec.unconsumed_tail
            if not view and not full:
                return _EMPTY


class _BufferingDecoder(StreamDecoder):
    """lzma and bz2 keep unconsumed input inside the codec object: drain it with empty
    calls while needs_input is False, so one feed never leaves more than its own bytes."""

    def _codec_errors(self) -> Tuple[type, ...]:
        raise NotImplementedError

    def _decode(self, view: memoryview) -> Iterator[Any]:
        codec = self._codec
        errors = self._codec_errors()
        data: Any = view
        while True:
            try:
                out = codec.decompress(data, DECOMPRESS_OUTPUT_STEP)
            except errors as exc:
                raise self._codec_error(exc) from None
            produced = bool(out)
            if out:
                yield self._emit(out)
                out = None   # not kept alive while the next piece is built
            if codec.eof:
                return self._stream_end(codec.unused_data)
            if codec.needs_input or (not produced and not len(data)):
                return _EMPTY
            data = b""

    def _codec_error(self, exc: BaseException) -> DecompressError:
        return self._corrupt(exc)


class XzDecoder(_BufferingDecoder):
    """.xz streams (xz file format 1.0) via lzma, checking each block's CRC32/CRC64/SHA-256
    and the index. Stream padding (NULs, a multiple of 4) may follow any stream."""

    kind = "xz"
    padding_unit = 4
    padding_then_stream = True

    def __init__(self, memlimit: int = DEFAULTS["xz_memlimit"]) -> None:
        self.memlimit = memlimit
        super().__init__()

    def _new_codec(self) -> Any:
        import lzma  # lazy: each codec is loaded on first use
        return lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=self.memlimit)

    def _codec_errors(self) -> Tuple[type, ...]:
        import lzma  # lazy: each codec is loaded on first use
        return (lzma.LZMAError,)

    def _codec_error(self, exc: BaseException) -> DecompressError:
        if "memory usage limit" not in str(exc).lower():
            return self._corrupt(exc)
        return self._error("stream %d needs more memory than the limit of %s bytes; raise "
                           "--xz-memlimit (xz_memlimit=) if the image is trusted"
                           % (self.streams + 1, _count(self.memlimit)), self.total_in,
                           within=True)


class Bzip2Decoder(_BufferingDecoder):
    """bzip2 streams via bz2 (block and stream CRCs checked); several streams back to back
    as `bzip2 -c a b` writes them; no padding (bzip2(1) defines none)."""

    kind = "bzip2"

    def _new_codec(self) -> Any:
        import bz2  # lazy: each codec is loaded on first use
        return bz2.BZ2Decompressor()

    def _codec_errors(self) -> Tuple[type, ...]:
        return (OSError, ValueError, EOFError)   # bz2 reports bad data as OSError


class Passthrough:
    """decompress='none': the input is the output, the very object fed (no copy)."""

    kind = "none"

    def __init__(self) -> None:
        self.reset()

    def close(self) -> None:
        """Nothing held."""

    def reset(self) -> None:
        self.total_in = 0
        self.total_out = 0

    def feed(self, data: Any) -> Pieces:
        size = memoryview(data).nbytes
        self.total_in += size
        self.total_out += size
        if size:
            yield data

    def finish(self) -> List[bytes]:
        return []


Decoder = Any   # StreamDecoder, Passthrough or AutoDecoder: the interface above


def sniff(head: bytes) -> Optional[str]:
    """The codec whose magic `head` starts with, "none" when it cannot be any, or None
    while `head` is still a prefix of some magic (more bytes needed)."""
    for kind, magic in MAGIC.items():
        if head.startswith(magic):
            return kind
        if magic.startswith(head):
            return None
    return "none"


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
