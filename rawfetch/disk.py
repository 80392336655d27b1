"""What keeps a disk from being left half-written: the device helpers behind
sinks.SafeDisk, which wraps every in-place sink (devices and --in-place files).

Why: an image written over an old system boots whatever its first sectors say. If a run
dies halfway, the old partition table (or the new one, pointing at partitions still
missing) may boot a broken or stale system. So, like coreos-installer:

* the first bytes of the output are checked before anything is written: qcow2 or VMDK
  written raw never boots, so it is refused with the target untouched;
* once they pass, the target's first MiB is zeroed and fsynced (lazily, at that first
  write, because the check needs the first bytes: a run that fails before any output
  arrives leaves the target exactly as it was);
* the first MiB of the output is held in memory; the rest is written through at its
  offset as it arrives;
* commit(), called after the whole image was received, decompressed and verified, cuts
  a regular file to the image's size, fsyncs the rest, then writes the held MiB and
  fsyncs again (so no crash leaves a valid head over an old tail): until then the disk has no
  bootable start, so a SIGKILL or a power cut leaves it unbootable, never half-booting;
* on any failure after writing began, the first MiB is zeroed again and fsynced (the
  held head may already be on disk when the failure is a read-back mismatch);
  preserve_on_error skips that, for debugging.

Targets that cannot be written at an offset (character devices such as /dev/null,
FIFOs) only get the format check: the first 4 bytes are held, then everything streams.
"""
from __future__ import annotations

import errno
import hashlib
import os
import zlib
from typing import Any, List, Optional, Tuple

from . import timing
from .errors import UnsupportedImageFormat, mapped

HEAD_HOLD = 1 << 20   # coreos-installer's choice: MBR, GPT and boot code live in the first MiB
SIGNATURE_BYTES = 4   # the qcow2 and VMDK magics below are 4 bytes each
FOREIGN_FORMATS = ((b"QFI\xfb", "qcow2"), (b"KDMV", "VMDK"))  # qemu's docs/interop specs
READBACK_BLOCK = 1 << 20   # read-back unit, and the granularity a mismatch is reported in


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """Write every byte of `data` at `offset` (the fd's file offset does not move)."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def fsync_if_possible(fd: int) -> None:
    """fsync, tolerating outputs that cannot sync (character devices answer EINVAL)."""
    try:
        os.fsync(fd)
    except OSError as exc:  # callers map the rest; only "can't sync this" is ignored
        if exc.errno != errno.EINVAL:
            raise


def device_size(fd: int) -> int:
    """Size of the block device behind `fd`: lseek(SEEK_END) gives the same number as the
    BLKGETSIZE64 ioctl without needing fcntl or the ioctl's platform constant."""
    size = os.lseek(fd, 0, os.SEEK_END)
    os.lseek(fd, 0, os.SEEK_SET)
    return size


def foreign_format(first: bytes) -> Optional[str]:
    """'qcow2' or 'VMDK' when `first` starts with that container's magic, else None."""
    for magic, name in FOREIGN_FORMATS:
        if first[:len(magic)] == magic:
            return name
    return None


def refuse_foreign(first: bytes, path: str, untouched: bool) -> None:
    """UnsupportedImageFormat when the output's `first` bytes are a qcow2 or VMDK header:
    written raw it never boots. `untouched`: nothing was written to `path` yet."""
    found = foreign_format(first)
    if found:
        raise UnsupportedImageFormat(
            "image is %s, not raw: refusing to write it to %s%s (--allow-any-format"
            " / allow_any_format writes it anyway)"
            % (found, path, "; nothing was written" if untouched else ""))


def start_size(path: str, capacity: Optional[int]) -> int:
    """How much of the target's start is zeroed: its first MiB, or all of it when smaller
    (a small file is not grown). `capacity` is a block device's size, else None."""
    if capacity is not None:
        return min(HEAD_HOLD, capacity)
    try:
        return min(HEAD_HOLD, os.stat(path).st_size)
    except OSError:  # not reported here: the zeroing's own open() reports the path
        return 0


def zero_start(path: str, capacity: Optional[int], what: str) -> int:
    """Zero and fsync the target's start through a fd of our own (the sink's may be
    closed already); return how many bytes were zeroed. `what` names the step in errors."""
    size = start_size(path, capacity)
    with mapped("write", path="%s (%s)" % (path, what)):
        fd = os.open(path, os.O_WRONLY)
        try:
            pwrite_all(fd, bytes(size), 0)
            fsync_if_possible(fd)
        finally:
            os.close(fd)
    return size


class WrittenDigest:
    """sha256 of the output in order, plus one crc32 per MiB so that a read-back that
    differs can name its first differing MiB without a second sha256 per block
    (4 bytes of memory per MiB written)."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.blocks: List[int] = []   # crc32 of each complete MiB
        self._crc = 0
        self._fill = 0                # bytes of the current, incomplete MiB

    def update(self, data: Any) -> None:
        view = memoryview(data)
        self.sha256.update(view)
        while view:
            take = min(READBACK_BLOCK - self._fill, len(view))
            self._crc = zlib.crc32(view[:take], self._crc)
            self._fill += take
            view = view[take:]
            if self._fill == READBACK_BLOCK:
                self.blocks.append(self._crc)
                self._crc, self._fill = 0, 0

    def crcs(self) -> List[int]:
        """Every block's crc32, the last partial block included."""
        return self.blocks + ([self._crc] if self._fill else [])


def first_difference(written: WrittenDigest, read: WrittenDigest) -> Optional[int]:
    """None when both sha256 agree; else the index of the first differing MiB (-1 when
    the per-MiB crc32s collide everywhere and only the sha256 differs)."""
    if written.sha256.digest() == read.sha256.digest():
        return None
    ours, theirs = written.crcs(), read.crcs()
    for index, crc in enumerate(ours):
        if index >= len(theirs) or theirs[index] != crc:   # a short read differs too
            return index
    return -1


def read_back(path: str, size: int) -> WrittenDigest:
    """Drop `path`'s first `size` bytes from the page cache, then read and digest them,
    so the bytes compared come from the device, not from memory we wrote."""
    digest = WrittenDigest()
    buffer = memoryview(bytearray(READBACK_BLOCK))
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise") and size:
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
        done = 0
        while done < size:
            got = os.readv(fd, [buffer[:min(READBACK_BLOCK, size - done)]])
            if not got:
                break     # shorter than written: the digests differ
            digest.update(buffer[:got])
            done += got
    finally:
        os.close(fd)
    return digest


def verify_read_back(written: WrittenDigest, path: str, size: int
                     ) -> Tuple[float, Optional[str]]:
    """Read `path`'s first `size` bytes back from the device: (seconds it took, None when
    they are what was written, else where they first differ, worded for a message)."""
    started = timing.now()
    with mapped("write", path=path + " (reading it back)"):
        differs = first_difference(written, read_back(path, size))
    seconds = round(timing.now() - started, 3)
    if differs is None:
        return seconds, None
    if differs < 0:
        return seconds, "(sha256 differs; no single MiB identified)"
    return seconds, "in MiB %d (bytes %d-%d)" % (
        differs, differs * READBACK_BLOCK, min(size, (differs + 1) * READBACK_BLOCK) - 1)
