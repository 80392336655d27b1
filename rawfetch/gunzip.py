"""The gzip-only names of the first pipeline, kept importable: the decoder and reader now
live in rawfetch.decompress (gzip, xz, bzip2, auto), which these are thin aliases of."""
from __future__ import annotations

from typing import Any

from .decompress import DECOMPRESS_OUTPUT_STEP, DecompressReader, GzipDecoder

GUNZIP_OUTPUT_STEP = DECOMPRESS_OUTPUT_STEP
Gunzip = GzipDecoder   # feed() yields pieces, finish() checks the end; raises GunzipError


class GunzipReader(DecompressReader):
    """A gunzipping view of a Stream: iterate, read(n) or readinto(buf)."""

    def __init__(self, stream: Any, chunk_size: int = 1 << 20) -> None:
        super().__init__(stream, "gzip", chunk_size=chunk_size)

    def __enter__(self) -> "GunzipReader":
        return self


__all__ = ["Gunzip", "GunzipReader", "GUNZIP_OUTPUT_STEP"]
