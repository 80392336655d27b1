"""Streamed decompression (issue 12 item 1): gzip, xz, bzip2, none and auto decoders, with
concatenated streams, padding rules, truncation/corruption/garbage as DecompressError
(exit 92), the xz memory limit, bounded memory on bombs, and xz/bzip2 through fault
storms via rawfetch.open(). Test data comes from the stdlib codecs; where the xz, bzip2
and gzip binaries exist they cross-check both the data and the verdicts."""
from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import random
import shutil
import subprocess
import tracemalloc
from typing import Callable, Dict, List

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch.decoders import DECOMPRESS_OUTPUT_STEP, MAGIC
from rawfetch.decompress import (SNIFF_BYTES, AutoDecoder, DecompressReader, GzipDecoder,
                                 Passthrough, make_decoder, sniff)
from rawfetch.options import Options
from tests.faultserver import actions as A, make_body
from tests.test_storm import OPTIONS as STORM_OPTIONS, schedule
from tests.timing_options import QUICK

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
CODECS = ("gzip", "xz", "bzip2")
PACKERS: Dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, compresslevel=6),
    "xz": lzma.compress,
    "bzip2": bz2.compress,
}


@functools.lru_cache(maxsize=64)
def packed(kind: str, data: bytes) -> bytes:
    """PACKERS[kind](data), once per run: many tests pack the same RAW and SMALL."""
    return PACKERS[kind](data)


COMPRESS: Dict[str, Callable[[bytes], bytes]] = {
    kind: functools.partial(packed, kind) for kind in PACKERS}
BINARY = {"gzip": "gzip", "xz": "xz", "bzip2": "bzip2"}
# ~1 MiB that compresses to ~260 KiB: random stretches (so storm offsets land inside the
# compressed body) between long runs (so the output outgrows several 4 MiB steps' worth
# when repeated, and each codec's run handling is exercised).
RAW = make_body(192 * 1024, seed=21) + b"\0" * (512 * 1024) + make_body(64 * 1024, seed=22) * 4
SMALL = make_body(3000, seed=23) + b"a" * 5000
BYTEWISE = 64 * 1024   # bytes fed one at a time: thousands of times SNIFF_BYTES


def decode(kind: str, blob: bytes, step: int = MiB, **kwargs) -> bytes:
    """Feed blob in `step`-byte pieces; return the joined output (pieces checked <= STEP)."""
    decoder = make_decoder(kind, **kwargs)
    out: List[bytes] = []
    for start in range(0, len(blob), step):
        out.extend(bytes(piece) for piece in decoder.feed(blob[start:start + step]))
    out.extend(decoder.finish())
    assert all(len(piece) <= DECOMPRESS_OUTPUT_STEP for piece in out)
    return b"".join(out)


def tool_accepts(kind: str, blob: bytes) -> bool:
    """Does the codec's own command-line tool decode blob without an error?"""
    proc = subprocess.run([BINARY[kind], "-dc"], input=blob, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=60)
    return proc.returncode == 0


def has_tool(kind: str) -> bool:
    return shutil.which(BINARY[kind]) is not None


def open_decoded(url: str, **options) -> DecompressReader:
    """rawfetch.open(url, decompress=...): a DecompressReader over the resumable stream."""
    reader = rawfetch.open(url, **options)
    assert isinstance(reader, DecompressReader)
    return reader


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize("step", [4099, MiB])
def test_each_codec_round_trips_two_streams_at_any_split(kind, step):
    blob = COMPRESS[kind](RAW) + COMPRESS[kind](SMALL)
    decoder = make_decoder(kind)
    out = []
    for start in range(0, len(blob), step):
        out.extend(decoder.feed(blob[start:start + step]))
    assert decoder.finish() == []
    assert b"".join(out) == RAW + SMALL and max(map(len, out)) <= DECOMPRESS_OUTPUT_STEP
    assert (decoder.total_in, decoder.total_out) == (len(blob), len(RAW + SMALL))
    assert decoder.streams == 2
    assert decoder.kind == kind


@pytest.mark.parametrize("kind", CODECS)
def test_each_codec_byte_at_a_time(kind):
    blob = COMPRESS[kind](SMALL) + COMPRESS[kind](b"") + COMPRESS[kind](SMALL[::-1])
    assert decode(kind, blob, step=1) == SMALL + SMALL[::-1]


@functools.lru_cache(maxsize=None)
def zeros_packed(kind: str) -> bytes:
    """64 MiB of zeros packed by `kind`, once per run (the bombs below are 4 of these)."""
    return PACKERS[kind](b"\0" * (64 * MiB))   # not kept as a key of packed()


@pytest.mark.parametrize("kind", CODECS)
def test_output_is_bounded_per_piece_on_a_bomb(kind):
    """64 MiB of zeros from a few KiB: every piece is at most one step, so it comes out in
    16+ pieces instead of one 64 MiB allocation."""
    blob = zeros_packed(kind)
    decoder = make_decoder(kind)
    sizes = [len(piece) for piece in decoder.feed(blob)]
    decoder.finish()
    assert sum(sizes) == 64 * MiB and max(sizes) == DECOMPRESS_OUTPUT_STEP
    assert len(sizes) >= 16


# A bomb: 4 x 64 MiB of zeros, each stream a few KiB to 10 KiB compressed.
BOMB_OUTPUT = 256 * MiB
# Peak allowed: three output steps alive at once (the caller's previous piece, the codec's
# output blocks and the piece joined from them) plus the codec's own state (xz preset 6
# keeps an 8 MiB dictionary; bzip2 ~3.6 MiB; zlib 32 KiB) and slack. Far below 256 MiB.
BOMB_MEMORY_BOUND = 3 * DECOMPRESS_OUTPUT_STEP + 12 * MiB


@pytest.fixture(scope="module")
def bombs() -> Dict[str, bytes]:
    return {kind: zeros_packed(kind) * 4 for kind in CODECS}


@pytest.mark.parametrize("kind", CODECS)
def test_decompression_bomb_stays_in_bounded_memory(kind, bombs):
    blob = bombs[kind]
    decoder = make_decoder(kind)
    produced = 0
    tracemalloc.start()
    try:
        for start in range(0, len(blob), 65536):
            for piece in decoder.feed(blob[start:start + 65536]):
                produced += len(piece)
        decoder.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert produced == BOMB_OUTPUT and len(blob) < BOMB_OUTPUT // 1000
    assert peak < BOMB_MEMORY_BOUND, "tracemalloc peak %d bytes" % peak


def test_reader_over_http_stays_bounded_on_a_bomb(make_server, bombs):
    """The reader pulls one piece at a time: a 1 MiB read of a gzip bomb (1000:1) never
    becomes 1 GiB of pending output."""
    srv = make_server()
    srv.add("/bomb", bombs["gzip"])
    buffer = bytearray(MiB)
    produced = 0
    tracemalloc.start()
    try:
        with open_decoded(srv.url("/bomb"), decompress="gzip", **QUICK) as reader:
            size = reader.readinto(buffer)
            while size:
                produced += size
                size = reader.readinto(buffer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert produced == BOMB_OUTPUT
    assert peak < BOMB_MEMORY_BOUND, "tracemalloc peak %d bytes" % peak


# ---------------------------------------------------------------- concatenation and padding
def test_gzip_members_then_nul_padding_like_gzip_1():
    blob = COMPRESS["gzip"](SMALL) + COMPRESS["gzip"](b"tail") + b"\0" * 10
    assert decode("gzip", blob, step=7) == SMALL + b"tail"
    with pytest.raises(E.GunzipError) as info:      # nothing may follow the padding
        decode("gzip", blob + COMPRESS["gzip"](b"more"))
    assert "trailing garbage" in str(info.value)
    assert info.value.offset == len(blob)


@pytest.mark.parametrize("padding,ok", [(4, True), (8, True), (3, False), (5, False)])
def test_xz_stream_padding_must_be_a_multiple_of_four(padding, ok):
    blob = COMPRESS["xz"](SMALL) + b"\0" * padding + COMPRESS["xz"](b"two") + b"\0" * padding
    if ok:
        assert decode("xz", blob, step=3) == SMALL + b"two"
    else:
        with pytest.raises(E.DecompressError) as info:
            decode("xz", blob, step=3)
        assert "multiple of 4" in str(info.value) and info.value.exit_code == 92
    if has_tool("xz"):
        assert tool_accepts("xz", blob) is ok


def test_bzip2_has_no_padding():
    blob = COMPRESS["bzip2"](SMALL) + b"\0\0\0\0"
    with pytest.raises(E.DecompressError) as info:
        decode("bzip2", blob)
    assert "trailing garbage" in str(info.value) and info.value.offset == len(blob) - 4


@pytest.mark.parametrize("kind", CODECS)
def test_streams_written_by_the_real_tools_decode(kind, tmp_path):
    """`xz -c a b`, `bzip2 -c a b`, `gzip -c a b` (one stream per file) and the tool's
    default settings, as images are published."""
    if not has_tool(kind):
        pytest.skip("%s is not installed" % BINARY[kind])
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(RAW)
    second.write_bytes(SMALL)
    blob = subprocess.run([BINARY[kind], "-c", str(first), str(second)], check=True,
                          stdout=subprocess.PIPE, timeout=120).stdout
    assert blob.startswith(MAGIC[kind])
    assert decode(kind, blob, step=65536) == RAW + SMALL


# ---------------------------------------------------------------- failures
def corruptions(kind: str) -> Dict[str, bytes]:
    """Damaged versions of one stream: cut at several points, a flipped payload byte, a
    flipped trailer byte (CRC/ISIZE, the xz footer, bzip2's stream CRC), trailing junk."""
    blob = COMPRESS[kind](RAW)
    middle = len(blob) // 2
    flipped = blob[:middle] + bytes([blob[middle] ^ 0x55]) + blob[middle + 1:]
    tail = len(blob) - 3
    trailer = blob[:tail] + bytes([blob[tail] ^ 0x01]) + blob[tail + 1:]
    return {"cut-in-magic": blob[:2], "cut-after-header": blob[:20], "cut-half": blob[:middle],
            "cut-last-byte": blob[:-1], "flipped-payload": flipped, "flipped-trailer": trailer,
            "junk-after": blob + b"junk", "empty": b""}


CASES = ["cut-in-magic", "cut-after-header", "cut-half", "cut-last-byte", "flipped-payload",
         "flipped-trailer", "junk-after", "empty"]
EXPECTED_WORDS = {"cut": "truncated", "flipped": "", "junk": "trailing garbage",
                  "empty": "truncated"}


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize("case", CASES)
def test_every_damage_is_a_decompress_error(kind, case):
    blob = corruptions(kind)[case]
    with pytest.raises(E.DecompressError) as info:
        decode(kind, blob, step=65536)
    error = info.value
    assert error.exit_code == 92 and not error.retryable and error.codec == kind
    assert str(error).startswith(kind + ": ") and EXPECTED_WORDS[case.split("-")[0]] in str(error)
    assert "compressed byte" in str(error) and "decompressed" in str(error)
    assert 0 <= error.offset <= len(blob) and error.produced <= len(RAW)
    assert isinstance(error, E.GunzipError) is (kind == "gzip")
    if has_tool(kind) and case != "junk-after":   # bzip2(1) only warns about junk
        assert not tool_accepts(kind, blob), "%s -d accepts it: the case proves nothing" % kind


def test_not_the_codec_asked_for_says_so():
    with pytest.raises(E.DecompressError) as info:
        decode("xz", COMPRESS["gzip"](SMALL))
    assert "not xz data" in str(info.value) and info.value.offset == 0


def test_xz_stream_over_the_memory_limit_names_the_limit_and_option():
    big_dictionary = lzma.compress(SMALL, filters=[{"id": lzma.FILTER_LZMA2,
                                                    "dict_size": 64 * MiB}])
    with pytest.raises(E.DecompressError) as info:
        decode("xz", big_dictionary, xz_memlimit=16 * MiB)
    message = str(info.value)
    assert "16,777,216 bytes" in message and "--xz-memlimit" in message
    assert info.value.exit_code == 92 and info.value.produced == 0
    assert decode("xz", big_dictionary, xz_memlimit=80 * MiB) == SMALL
    with pytest.raises(E.DecompressError):   # auto hands the limit on
        decode("auto", big_dictionary, xz_memlimit=16 * MiB)


def test_reset_starts_over_for_a_restart_from_zero():
    blob = COMPRESS["xz"](RAW)
    decoder = make_decoder("xz")
    list(decoder.feed(blob[: len(blob) // 2]))
    decoder.reset()
    out = b"".join(decoder.feed(blob))
    decoder.finish()
    assert out == RAW and decoder.total_in == len(blob) and decoder.streams == 1


# ---------------------------------------------------------------- auto and none
@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize("step", [1, 5, MiB])
def test_auto_detects_each_codec(kind, step):
    decoder = make_decoder("auto")
    blob = COMPRESS[kind](SMALL)
    out = []
    for start in range(0, len(blob), step):
        out.extend(decoder.feed(blob[start:start + step]))
    out.extend(decoder.finish())
    assert b"".join(out) == SMALL and decoder.kind == kind
    assert (decoder.total_in, decoder.total_out) == (len(blob), len(SMALL))


@pytest.mark.parametrize("body", [RAW, b"", b"\x1f", b"BZ", b"\xfd7zXZ", b"\xfd7zXZ\x01rest",
                                  b"BZx", b"plain text\n"],
                         ids=["raw", "empty", "gzip-prefix", "bzip2-prefix", "xz-prefix",
                              "xz-almost", "bzip2-almost", "text"])
@pytest.mark.parametrize("step", [1, MiB])
def test_auto_passes_anything_else_through_unchanged(body, step):
    if step == 1:   # byte by byte, far past the sniffed head; not a million feeds
        body = body[:BYTEWISE]
    decoder = AutoDecoder()
    out = []
    for start in range(0, len(body), step):
        out.extend(bytes(piece) for piece in decoder.feed(body[start:start + step]))
    out.extend(decoder.finish())
    assert b"".join(out) == body and decoder.kind == "none"
    assert decoder.total_out == len(body)


def test_auto_holds_back_at_most_the_longest_magic():
    decoder = AutoDecoder()
    assert list(decoder.feed(b"\xfd7zXZ")) == [] and decoder.kind == "auto"
    assert SNIFF_BYTES == 6 and decoder.total_in == 5
    assert b"".join(decoder.feed(b"!more")) == b"\xfd7zXZ!more" and decoder.kind == "none"


def test_passthrough_yields_the_very_object_fed():
    view = memoryview(bytearray(b"abc" * 100))
    for decoder in (Passthrough(), make_decoder("none"), make_decoder("auto")):
        assert [piece is view for piece in decoder.feed(view)] == [True]
        assert decoder.finish() == [] and decoder.total_out == 300


def test_sniff():
    assert [sniff(MAGIC[k]) for k in CODECS] == list(CODECS)
    assert sniff(b"") is None and sniff(b"\x1f") is None and sniff(b"\x1f\x00") == "none"


def test_unknown_kind_is_an_invalid_request():
    with pytest.raises(E.InvalidRequest):
        make_decoder("zstd")


# ---------------------------------------------------------------- over HTTP
def blob_server(make_server, kind: str, data: bytes = RAW):
    srv = make_server()
    blob = COMPRESS[kind](data)
    srv.add("/img", blob, etag='"%s"' % kind)
    return srv, blob


@pytest.mark.parametrize("kind", ["xz", "bzip2"])
@pytest.mark.parametrize("seed", range(6))
def test_xz_and_bzip2_through_a_fault_storm_byte_exact(vclock, kind, seed, make_server):
    """On the virtual clock: the storm's stalls, trickles and backoffs take no real time."""
    srv, blob = blob_server(make_server, kind)
    srv.script(schedule(random.Random(2000 + seed), allow_changes=False))
    with open_decoded(srv.url("/img"), decompress=kind, **STORM_OPTIONS) as reader:
        assert reader.read() == RAW and reader.kind == kind
        assert reader.stream.offset == len(blob)
    assert len(srv.requests) >= 2    # the storm did strike


@pytest.mark.parametrize("kind", CODECS + ("none",))
def test_auto_over_http_on_every_codec_and_a_raw_image(kind, make_server):
    srv = make_server()
    body = RAW if kind == "none" else COMPRESS[kind](RAW)
    srv.add("/img", body)
    srv.script([A.fin(at=len(body) // 3), A.normal()])   # a clean cut: exact resume
    with open_decoded(srv.url("/img"), decompress="auto", **QUICK) as reader:
        chunks = list(reader)
        assert b"".join(chunks) == RAW and reader.kind == kind
    assert srv.requests[1].range == "bytes=%d-" % (len(body) // 3)


@pytest.mark.parametrize("kind", CODECS)
def test_damaged_stream_over_http_is_a_decompress_error(kind, make_server):
    srv = make_server()
    srv.add("/img", corruptions(kind)["cut-half"])
    with open_decoded(srv.url("/img"), decompress=kind, **QUICK) as reader:
        with pytest.raises(E.DecompressError) as info:
            reader.read()
    assert info.value.exit_code == 92 and "truncated" in str(info.value)
    assert len(srv.requests) == 1    # the body arrived whole: nothing to retry


def test_reader_read_readinto_and_digest(make_server):
    srv, blob = blob_server(make_server, "bzip2", SMALL)
    import hashlib
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with open_decoded(srv.url("/img"), decompress="bzip2", checksum=digest, **QUICK) as reader:
        first = reader.read(1000)
        buffer = bytearray(3000)
        size = reader.readinto(buffer)
        rest = reader.read()
        assert first + bytes(buffer[:size]) + rest == SMALL
        assert reader.tell() == len(SMALL) and reader.size is None
    assert reader.digest == digest    # the checksum covers the compressed bytes


def test_gunzip_option_means_gzip(make_server):
    """gunzip=True (--gunzip), the first pipeline's spelling, is decompress="gzip"."""
    decoder = make_decoder(Options(gunzip=True).decompress)
    assert isinstance(decoder, GzipDecoder) and decoder.kind == "gzip"
    assert issubclass(E.GunzipError, E.DecompressError) and E.DecompressError.exit_code == 92
    srv, _ = blob_server(make_server, "gzip", SMALL)
    with rawfetch.open(srv.url("/img"), gunzip=True, **QUICK) as reader:
        assert isinstance(reader, DecompressReader) and reader.kind == "gzip"
        assert reader.read() == SMALL
    assert decoder.error_class is E.GunzipError
    assert Options(gunzip=True).decompress == "gzip"
