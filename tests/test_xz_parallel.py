"""Issue 25: multi-block xz streams decoded on a thread pool (rawfetch/xzblocks.py).

Every case asserts the bytes out by digest (or that what came out before an error is a
prefix of the image: never a wrong byte), the error class, and whether the stream went
to the pool (parallel_streams), so a silent fall-back to one thread fails a test.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from typing import List, Optional, Tuple

import pytest

from rawfetch import download
from rawfetch.decompress import XzDecoder, make_decoder
from rawfetch.errors import DecompressError
from rawfetch.xzblocks import ParallelXzDecoder
from tests.faultserver import FaultServer, actions as A, make_body
from tests.xzmake import block_offsets, xz_blocks

pytestmark = pytest.mark.timeout(60)

IMAGE = make_body(3 << 20, seed=25) + bytes(1 << 20) + b"text line\n" * 50000
BLOCK = 256 << 10
MULTI = xz_blocks(IMAGE, BLOCK)
FEEDS = (1, 7, 4093, 65537, 1 << 20)   # input chunk sizes: header bytes split every way
# Tiny feeds split every header and index byte just as well over four blocks as over
# eighteen: a million 3-byte feeds of MULTI would only repeat the same splits.
SHORT = IMAGE[:3 * BLOCK] + IMAGE[-BLOCK:]
SHORT_MULTI = xz_blocks(SHORT, BLOCK)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(stream: bytes, threads: int = 3, chunk: int = 65537,
           memlimit: int = 256 << 20) -> Tuple[bytes, Optional[DecompressError], object]:
    """Everything the decoder let out, and the error it ended with (if any)."""
    decoder = make_decoder("xz", memlimit, threads)
    out: List[bytes] = []
    try:
        for start in range(0, len(stream), chunk):
            out.extend(bytes(p) for p in decoder.feed(stream[start:start + chunk]))
        out.extend(bytes(p) for p in decoder.finish())
    except DecompressError as exc:
        return b"".join(out), exc, decoder
    return b"".join(out), None, decoder


def assert_refused(stream: bytes, want: bytes = IMAGE, threads: int = 3,
                   memlimit: int = 256 << 20) -> DecompressError:
    got, error, _ = decode(stream, threads, memlimit=memlimit)
    assert error is not None, "a bad stream was accepted"
    assert error.exit_code == 92
    assert want.startswith(got), "a wrong byte came out before the error"
    return error


@pytest.mark.parametrize("chunk", FEEDS)
def test_multi_block_decodes_on_the_pool(chunk: int) -> None:
    stream, image = (SHORT_MULTI, SHORT) if chunk < 4093 else (MULTI, IMAGE)
    got, error, decoder = decode(stream, chunk=chunk if chunk > 1 else 3)
    assert error is None and sha(got) == sha(image)
    assert isinstance(decoder, ParallelXzDecoder) and decoder.parallel_streams == 1
    assert decoder.total_in == len(stream) and decoder.total_out == len(image)


def test_one_thread_and_no_sizes_keep_the_one_thread_path() -> None:
    assert type(make_decoder("xz", 1 << 28, 1)) is XzDecoder
    for stream in (xz_blocks(IMAGE, BLOCK, sizes=False), xz_blocks(IMAGE, len(IMAGE))):
        got, error, decoder = decode(stream)
        assert error is None and sha(got) == sha(IMAGE)
    assert decoder.parallel_streams == 1   # one block with sizes: still the pool's


def test_auto_detects_xz_and_uses_the_pool() -> None:
    decoder = make_decoder("auto", 1 << 28, 2)
    got = b"".join(bytes(p) for start in range(0, len(MULTI), 4093)
                   for p in decoder.feed(MULTI[start:start + 4093]))
    got += b"".join(decoder.finish())
    assert sha(got) == sha(IMAGE) and decoder.kind == "xz"
    assert decoder.inner.parallel_streams == 1


def test_stream_without_sizes_goes_to_one_thread() -> None:
    got, error, decoder = decode(xz_blocks(IMAGE, BLOCK, sizes=False))
    assert error is None and sha(got) == sha(IMAGE) and decoder.parallel_streams == 0


def test_concatenated_streams_and_padding() -> None:
    plain = xz_blocks(IMAGE[:5000], BLOCK, sizes=False)
    stream = MULTI + bytes(8) + plain + MULTI + bytes(4)
    got, error, decoder = decode(stream, chunk=4093)
    assert error is None and sha(got) == sha(IMAGE + IMAGE[:5000] + IMAGE)
    assert decoder.parallel_streams == 2 and decoder.streams == 3
    assert_refused(MULTI + bytes(3), IMAGE)           # padding not a multiple of 4
    assert_refused(MULTI + b"garbage!", IMAGE)        # garbage after the stream


def test_corrupt_block_data_and_check() -> None:
    offsets = block_offsets(MULTI)
    pos, size = offsets[5]
    flipped = bytearray(MULTI)
    flipped[pos + size + 40] ^= 0x55          # inside block 6's compressed data
    error = assert_refused(bytes(flipped))
    assert "corrupt data in block 6 of stream 1" in str(error)
    check = bytearray(MULTI)
    check[offsets[6][0] - 1] ^= 0x01          # the last byte of block 6's CRC32
    assert_refused(bytes(check))


def test_corrupt_block_header_crc() -> None:
    pos, _ = block_offsets(MULTI)[3]
    bad = bytearray(MULTI)
    bad[pos + 2] ^= 0x01     # a size byte: the header CRC32 no longer matches
    assert "block 4" in str(assert_refused(bytes(bad)))


@pytest.mark.parametrize("lie", [(0, 1), (0, -1), (4, 0), (-4, 0)])
def test_lying_block_header(lie: Tuple[int, int]) -> None:
    """Sizes that disagree with the data (header CRC32 valid): liblzma or the framing
    notices; the declared sizes never become output."""
    assert_refused(xz_blocks(IMAGE, BLOCK, lie={4: lie}))


def test_index_and_footer_must_match() -> None:
    index_at = len(MULTI) - 12 - (struct.unpack("<I", MULTI[-8:-4])[0] + 1) * 4
    bad = bytearray(MULTI)
    bad[index_at + 3] ^= 0x01               # one record's size
    crc_at = len(MULTI) - 16
    bad[crc_at:crc_at + 4] = struct.pack("<I", zlib.crc32(bytes(bad[index_at:crc_at])))
    got, error, _ = decode(bytes(bad))
    assert error is not None and "index" in str(error)
    footer = bytearray(MULTI)
    footer[-1:] = b"Z" if MULTI[-1:] != b"Z" else b"Q"
    assert_refused(bytes(footer))


@pytest.mark.parametrize("cut", [1, 11, 13, 100, 262170, 262192, -20, -12, -1])
def test_truncated(cut: int) -> None:
    error = assert_refused(MULTI[:cut])
    assert "truncated" in str(error) or "corrupt" in str(error)


def test_block_over_the_memory_budget() -> None:
    """A first block bigger than --xz-memlimit's budget: the one-thread path decodes it;
    a later one (after blocks that fit) is refused with the way out named."""
    big_first = xz_blocks(IMAGE, 2 << 20)
    got, error, decoder = decode(big_first, memlimit=3 << 20)
    assert error is None and sha(got) == sha(IMAGE) and decoder.parallel_streams == 0
    mixed = xz_blocks(IMAGE, [BLOCK, BLOCK, 2 << 20])
    error = assert_refused(mixed, threads=2, memlimit=3 << 20)
    assert "--decode-threads 1" in str(error)


def pool_threads() -> int:
    return sum(t.name == "rawfetch-xz" for t in threading.enumerate())


POOL_END_WAIT = 20.0   # s real; a pool thread ends after the block it decodes


def wait_for_no_pool_threads() -> int:
    """Join the pool's threads (their end is the signal), POOL_END_WAIT in all; how many
    are left."""
    deadline = time.monotonic() + POOL_END_WAIT
    for thread in [t for t in threading.enumerate() if t.name == "rawfetch-xz"]:
        thread.join(max(0.0, deadline - time.monotonic()))
    return pool_threads()


def test_pool_threads_end_after_an_error_or_an_abandoned_feed() -> None:
    assert wait_for_no_pool_threads() == 0   # earlier tests' pools
    bad = bytearray(MULTI)
    bad[block_offsets(MULTI)[8][0] + 40] ^= 0x55
    assert_refused(bytes(bad))
    decoder = make_decoder("xz", 1 << 28, 3)
    pieces = decoder.feed(MULTI)
    next(pieces)
    pieces.close()          # the consumer failed: the output is dropped mid-stream
    assert wait_for_no_pool_threads() == 0


def test_reset_starts_over() -> None:
    decoder = make_decoder("xz", 1 << 28, 2)
    list(decoder.feed(MULTI[:len(MULTI) // 2]))
    decoder.reset()
    got = b"".join(bytes(p) for p in decoder.feed(MULTI))
    got += b"".join(decoder.finish())
    assert sha(got) == sha(IMAGE) and decoder.parallel_streams == 1


@pytest.mark.skipif(shutil.which("xz") is None, reason="the xz command is not installed")
def test_real_xz_T2_output_crc64_and_sha256() -> None:
    for check in ("crc64", "sha256"):
        packed = subprocess.run(["xz", "-T2", "-0", "--block-size=300KiB", "-C", check, "-c"],
                                input=IMAGE, stdout=subprocess.PIPE, check=True).stdout
        got, error, decoder = decode(packed)
        assert error is None and sha(got) == sha(IMAGE) and decoder.parallel_streams == 1
        bad = bytearray(packed)
        bad[block_offsets_any(packed)[2] - 1] ^= 0x80   # last check byte of block 2
        assert_refused(bytes(bad))


def block_offsets_any(stream: bytes) -> List[int]:
    return [pos for pos, _ in block_offsets(stream)]


def test_download_with_a_cut_restarts_and_resumes_byte_exact(tmp_path: object) -> None:
    """Through the pipeline: a cut mid-body, then the rest by Range; checksum over the
    compressed bytes; the file is the image."""
    with FaultServer() as srv:
        srv.add("/img.xz", MULTI, etag='"x1"')
        srv.script([A.rst(at=(1 << 20) + 13), A.normal()], path="/img.xz")
        out = os.path.join(str(tmp_path), "img")
        result = download(srv.url("/img.xz"), out, decompress="xz", decode_threads=2,
                          checksum="sha256:" + sha(MULTI), retry_delay=0.001)
        with open(out, "rb") as f:
            assert sha(f.read()) == sha(IMAGE)
        assert result.bytes == len(MULTI) and result.written == len(IMAGE)
        assert result.attempts >= 2   # the cut did happen


def test_a_failed_download_leaves_no_pool_thread(vclock: object, tmp_path: object) -> None:
    """max_time over a stall after two blocks went to the pool: DeadlineExceeded, no file,
    and the pool's threads end (a long-running agent retrying must not gather threads).
    The stall and max_time run on the virtual clock."""
    from rawfetch.errors import DeadlineExceeded
    assert wait_for_no_pool_threads() == 0
    with FaultServer() as srv:
        srv.add("/img.xz", MULTI, etag='"x1"')
        srv.script([A.stall(at=block_offsets_any(MULTI)[3])], path="/img.xz")
        out = os.path.join(str(tmp_path), "img")
        with pytest.raises(DeadlineExceeded):
            download(srv.url("/img.xz"), out, decompress="xz", decode_threads=3,
                     max_time=1.0, retries=0)
        assert not os.path.exists(out)
    assert wait_for_no_pool_threads() == 0


def test_in_place_from_two_mirrors_holds_the_head_back(tmp_path: object) -> None:
    """A disk-like target written in place: the first mirror cuts then fails, the second
    (same ETag) serves the rest. While it runs the first MiB is the old one or zeros,
    never image bytes; the wipe comes before the head is written; the target then holds
    the image (checksum over the compressed bytes)."""
    target = os.path.join(str(tmp_path), "disk")
    with open(target, "wb") as f:
        f.write(b"\xa5" * (len(IMAGE) + 4096))
    heads = set()
    events: List[str] = []

    def look(stream: object) -> None:
        with open(target, "rb") as f:
            heads.add(f.read(1 << 20))

    with FaultServer() as first, FaultServer() as second:
        for srv in (first, second):
            srv.add("/img.xz", MULTI, etag='"x1"')
        first.script([A.rst(at=(1 << 20) + 13), A.status(503)], path="/img.xz")
        mirror = second.url("/img.xz")
        result = download(first.url("/img.xz"), target, urls=[mirror],
                          in_place=True, decompress="xz", decode_threads=2,
                          checksum="sha256:" + sha(MULTI), retry_delay=0.001,
                          progress=look, on_event=lambda e: events.append(e["event"]))
    with open(target, "rb") as f:
        assert sha(f.read(len(IMAGE))) == sha(IMAGE)
    # The wipe runs on the writer thread, so a look may catch it half done: every byte
    # seen in the head is the old disk's or a zero, never an image byte.
    assert heads and all(set(head) <= {0, 0xA5} for head in heads)
    assert set(IMAGE[:1 << 20]) - {0, 0xA5}, "the image's head must be told apart"
    assert events.index("wipe") < events.index("head_written")
    assert mirror in {segment.url for segment in result.segments}


def test_cli_rejects_a_bad_thread_count() -> None:
    run = subprocess.run([sys.executable, "-m", "rawfetch", "http://127.0.0.1:9/x",
                          "-o", "-", "--decode-threads", "x"], capture_output=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert run.returncode == 2 and b"decode-threads" in run.stderr
