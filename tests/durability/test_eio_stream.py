"""The streaming in-place path onto a block device with a pending region (a disk's
pending sectors: unreadable until rewritten), a real EIO from the kernel.

The target is a loop device over tests/durability/eiofs.py's file, whose region
[BAD) answers EIO on read until it is written. The page cache of a block device turns
a write covering part of a page into read-page, change, write-page: the read fails,
and before the fix the job failed with exit 23 although writing the image is exactly
what heals the disk. Now every write onto a block device covers whole ALIGN-byte
blocks at ALIGN-aligned offsets (disk.BlockTail), so the kernel never reads one.

Three ways the bytes reach the device: chunked (no splice: Python writes), --sha256
(the digest path), and plain Content-Length (before the fix: spliced pipe -> device
in arbitrary amounts; now splice is off for block devices, sinks.SafeDisk).
The device must end with the image's sha256, read back through the loop device with
its page cache dropped, and in the FUSE server's backing file after detaching. Also:
seeks straight on InPlace (back into written and held blocks, forward over what the
target holds), and a stream cut mid-page, then resumed or restarted from zero.
"""
from __future__ import annotations

import hashlib
import os
import random
from typing import Any, Iterator, List

import pytest

from tests.faultserver import FaultServer, actions

from . import helpers
from .test_eio import EioDisk, prerequisites

pytestmark = [pytest.mark.durability, pytest.mark.timeout(120)]

SIZE = 8 << 20
BAD = ((3 << 20) + 1000, (5 << 20) + 123)   # pending; unaligned ends, as a disk's may be
TRICKLE_STEP = 40_009   # bytes per send: no multiple of a page, so writes end mid-page
VARIANTS = {   # (options, chunked, trickled); each exits 23 without whole-block writes
    "chunked": ((), True, False),   # the server's chunks end mid-page already
    "sha256": (("--sha256", "-"), False, True),   # "-": filled in with the image's digest
    "splice": ((), False, True),
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def image() -> bytes:
    return random.Random("eio-stream").getrandbits(8 * SIZE).to_bytes(SIZE, "little")


class LoopOverEio(EioDisk):
    """A pending-region FUSE file (holding `old`) and a loop device over it."""

    def __init__(self, tmp_path: Any, old: bytes) -> None:
        mountpoint = tmp_path / "align-eio-mnt"
        mountpoint.mkdir()
        backing = tmp_path / "align-eio-backing"
        backing.write_bytes(old)
        super().__init__(str(mountpoint), str(backing), "loop", "pending", bad=BAD)

    def read_device(self, size: int) -> bytes:
        """The device's first `size` bytes, its page cache dropped first (so they come
        from the FUSE file, not from what rawfetch left in memory)."""
        assert self.device is not None
        fd = os.open(self.device, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            data = bytearray()
            while len(data) < size:
                got = os.pread(fd, size - len(data), len(data))
                if not got:
                    break
                data += got
            return bytes(data)
        finally:
            os.close(fd)

@pytest.fixture
def pending_loop(tmp_path) -> Iterator[Any]:
    why = prerequisites()
    if why:
        pytest.skip(why)
    made: List[LoopOverEio] = []

    def make(old: bytes) -> LoopOverEio:
        made.append(LoopOverEio(tmp_path, old))
        return made[-1]

    yield make
    for disk in made:
        disk.close()


CUT = BAD[0] + 300_001   # the connection closed (FIN) inside the pending region, mid-page
INTERRUPTED = {   # the second response: the rest (a Range resume), or all of it again
    "resumed": (actions.normal(), "bytes=%d-" % CUT),
    "restarted": (actions.normal(ignore_range=True), "bytes=%d-" % CUT),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_streamed_image_heals_a_pending_region(pending_loop, image, variant):
    extra, chunked, trickled = VARIANTS[variant]
    extra = tuple(sha(image) if arg == "-" else arg for arg in extra)
    old = bytes(reversed(image[:SIZE]))    # an old disk: every byte to be replaced
    disk = pending_loop(old)
    with FaultServer() as srv:
        srv.add("/img", image, chunked=chunked)
        if trickled:   # from 2 MiB on, odd-sized sends (each its own recv, write, splice)
            srv.script([actions.trickle(2 << 20, gap=0.002, step=TRICKLE_STEP,
                                        chunked=chunked)], path="/img")
        done = helpers.run(srv.url("/img"), disk.device, *extra)
    assert done.returncode == 0, done.stderr
    assert sha(disk.read_device(SIZE)) == sha(image)
    assert disk.close() is None              # detached (flushed), the FUSE server ok
    with open(disk.backing, "rb") as handle:
        assert sha(handle.read()) == sha(image)


def test_rewinds_keep_whole_blocks(pending_loop, image):
    """InPlace straight onto the device: odd-sized writes, rewinds (a bad piece) to an
    unaligned offset in a block written before and to one in the held block, over the
    pending region (a partial-page write there would fail: EIO), then a skip forward
    over bytes the target already holds (delta re-imaging); the device ends with the
    image."""
    from rawfetch.disk import ALIGN, InPlace
    skip = ((6 << 20) + 100, (7 << 20) + 5)   # the target holds the image's bytes here
    old = bytearray(reversed(image))
    old[skip[0]:skip[1]] = image[skip[0]:skip[1]]
    disk = pending_loop(bytes(old))
    sizes = random.Random("eio-stream-chunks")
    target = InPlace(disk.device)
    target.open()

    def write_to(offset: int, end: int) -> None:
        while offset < end:
            step = min(end - offset, sizes.randrange(1, 200_000))
            target.write(image[offset:offset + step])
            offset += step
            assert target.position() == offset

    try:
        write_to(0, BAD[0] + 5 * ALIGN + 77)
        back = BAD[0] + 2 * ALIGN + 11           # a block already on the device
        target.seek(back)
        assert target.position() == back
        write_to(back, BAD[0] + 9 * ALIGN + 100)
        back = BAD[0] + 9 * ALIGN + 3            # inside the block still held
        target.seek(back)
        assert target.position() == back
        write_to(back, skip[0])
        target.seek(skip[1])                     # forward, as delta re-imaging skips
        assert target.position() == skip[1]
        write_to(skip[1], SIZE)
        target.commit(SIZE)
    finally:
        target.abandon(keep=False)
    assert sha(disk.read_device(SIZE)) == sha(image)
    assert disk.close() is None


@pytest.mark.parametrize("how", sorted(INTERRUPTED))
def test_interrupted_stream_heals_a_pending_region(pending_loop, image, how):
    """A close mid-page inside the pending region, then a resume (the held bytes of the
    cut block carry over) or a server that ignores Range (a restart from zero: the old
    pass's held bytes dropped); splice throughout. Exit 0, the image on the device."""
    second, asked = INTERRUPTED[how]
    disk = pending_loop(bytes(reversed(image)))
    with FaultServer() as srv:
        srv.add("/img", image)
        srv.script([actions.fin(CUT), second], path="/img")
        done = helpers.run(srv.url("/img"), disk.device)
        ranges = [r.range for r in srv.requests if r.path == "/img"]
    assert done.returncode == 0, done.stderr
    assert ranges == [None, asked]
    assert sha(disk.read_device(SIZE)) == sha(image)
    assert disk.close() is None
