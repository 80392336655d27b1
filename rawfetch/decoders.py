"""The stream decoders: gzip, xz, bzip2 and passthrough, each failing loudly.

A truncated stream, corrupt data, a failed CRC/check, trailing garbage, or an xz stream
needing more memory than xz_memlimit is a DecompressError (exit 92); fuel-agent's gunzip
step accepted a truncated image. Concatenated streams are decoded like gzip(1), xz(1) and
bzip2(1) do, with their padding rules. Output per codec call is bounded, so a
decompression bomb cannot exhaust memory (curl CVE-2022-32206 class). zlib, lzma and bz2
are imported on first use.

Every decoder has one interface: feed(data) yields output pieces, finish() checks the end
(and returns the last pieces: only `auto` on a body shorter than a magic has any),
reset() starts over for a restart from zero; total_in/total_out count bytes; kind names
the codec. Which decoder a download uses is chosen above, in decompress.py (and
xzblocks.py's parallel xz decoder builds on XzDecoder here).
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple, Type

from .errors import DecompressError, GunzipError
from .options import DEFAULTS

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


def sniff(head: bytes) -> Optional[str]:
    """The codec whose magic `head` starts with, "none" when it cannot be any, or None
    while `head` is still a prefix of some magic (more bytes needed)."""
    for kind, magic in MAGIC.items():
        if head.startswith(magic):
            return kind
        if magic.startswith(head):
            return None
    return "none"
