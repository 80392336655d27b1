"""The in-place target and what keeps it from being left half-written: InPlace (a device
or an existing file written from its start) and the steps sinks.SafeDisk takes around it
(format check, held head, zeroing, read-back); SafeDisk wraps every in-place sink.

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
import os
import stat
import zlib
from typing import Any, Dict, List, Optional, Tuple

from . import sidecar, timing
from .errors import (InvariantViolation, LocalWriteError, ReadBackMismatch,
                     UnsupportedImageFormat, mapped)
from .judge import Identity
from .lock import LockFile, lock_in_place
from .output import Emit, close_fd, write_all

HEAD_HOLD = 1 << 20   # coreos-installer's choice: MBR, GPT and boot code live in the first MiB
SIGNATURE_BYTES = 4   # the qcow2 and VMDK magics below are 4 bytes each
FOREIGN_FORMATS = ((b"QFI\xfb", "qcow2"), (b"KDMV", "VMDK"))  # qemu's docs/interop specs
READBACK_BLOCK = 1 << 20   # read-back unit, and the granularity a mismatch is reported in
ALIGN = 4096   # the page size: a block device's cache reads a page it is to change in part


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


class HeldHead:
    """The output's first `size` bytes, held in memory while the rest is written, so
    that commit() writes them last (the first MiB; 4 bytes for a target without offsets,
    where they are held only for the format check)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray()

    @property
    def complete(self) -> bool:
        return len(self.data) == self.size

    @property
    def signature(self) -> bytes:
        """The first SIGNATURE_BYTES held so far: what refuse_foreign checks."""
        return bytes(self.data[:SIGNATURE_BYTES])

    def take(self, view: memoryview) -> memoryview:
        """Hold what the head still lacks from the front of `view`; return the rest."""
        count = min(self.size - len(self.data), len(view))
        self.data += view[:count]
        return view[count:]


class BlockTail:
    """Whole ALIGN-byte blocks onto a block device: its page cache turns a write that
    covers part of a page into read-page, change, write-page, and that read fails on a
    pending sector (unreadable until rewritten) that writing the image would heal
    (tests/durability/test_eio_stream.py). Bytes short of a whole block wait here until
    the next write completes it; flush() writes them as they are (the image's last,
    partial block: the device keeps what follows it). The fd's offset stays a multiple
    of ALIGN (every seek made here or by InPlace is one)."""

    def __init__(self) -> None:
        self.data = bytearray()   # less than ALIGN bytes, due at the fd's offset

    def write(self, fd: int, view: memoryview, path: str) -> None:
        """Every whole block of tail + `view` to fd; what is short of one stays here."""
        if self.data:
            take = min(ALIGN - len(self.data), len(view))
            self.data += view[:take]
            view = view[take:]
            if len(self.data) < ALIGN:
                return
            write_all(fd, self.data, path)
            self.data = bytearray()
        whole = len(view) - len(view) % ALIGN
        if whole:
            write_all(fd, view[:whole], path)
        self.data += view[whole:]

    def flush(self, fd: int, path: str) -> None:
        """Write what is held as it is (commit: the image's last, partial block)."""
        if self.data:
            write_all(fd, self.data, path)
            self.data = bytearray()

    def seek(self, fd: int, offset: int, path: str) -> None:
        """The next byte written is byte `offset`: back (a restart, a bad piece) or
        forward (delta re-imaging skips what the target holds already). Held bytes past
        `offset` are dropped; going past them, they are written first, as they are. The
        bytes of `offset`'s block before it are held: kept, or read back (written whole
        by us, or the target's own that the delta survey read), the fd at its start."""
        start = offset - offset % ALIGN
        with mapped("write", path=path):
            at = os.lseek(fd, 0, os.SEEK_CUR)
            if start == at and offset - start <= len(self.data):
                del self.data[offset - start:]
                return
            if offset > at + len(self.data):   # forward: the held bytes are good ones
                self.flush(fd, path)
            self.data = bytearray(read_at(path, start, offset - start)
                                  if offset > start else b"")
            os.lseek(fd, start, os.SEEK_SET)


def read_at(path: str, offset: int, size: int) -> bytes:
    """`size` bytes of `path` from `offset`, through a read-only fd of our own (the
    target's is write-only); the caller maps OS errors."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = b""
        while len(data) < size:
            got = os.pread(fd, size - len(data), offset + len(data))
            if not got:
                raise LocalWriteError("%s ended at %d while reading back its block before "
                                      "%d" % (path, offset + len(data), offset + size))
            data += got
        return data
    finally:
        os.close(fd)


def cut_back(target: "InPlace", head: HeldHead, offset: int) -> bool:
    """A bad piece (issue 24): the next byte written is byte `offset` again. Inside the
    head its held copy is cut (the target's zeroed start is untouched: True); past it
    the fd seeks back and the bad bytes are overwritten in turn (False)."""
    if not target.seekable or offset < SIGNATURE_BYTES:
        raise InvariantViolation("%s: cannot rewind to %d (a rawfetch bug)"
                                 % (target.path, offset))
    if offset < head.size:
        del head.data[offset:]
        return True
    target.seek(offset)
    return False


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


def zero_start_again(path: str, capacity: Optional[int]) -> Dict[str, Any]:
    """After a failed job: zero the start again, best effort (the job's own error is what
    the caller sees). Returns the wipe_on_failure event's fields: `ok` says if it worked."""
    try:
        zeroed = zero_start(path, capacity, "zeroing its first MiB again")
    except LocalWriteError as exc:
        return {"bytes": 0, "ok": False, "error": exc.message}
    return {"bytes": zeroed, "ok": True}


def write_head_last(fd: int, head: Any, path: str) -> None:
    """fsync everything written past the head, then write the held head at offset 0 (the
    caller fsyncs it): the tail is durable before the target has a bootable start."""
    with mapped("write", path=path + " (flushing what was written past its first MiB)"):
        fsync_if_possible(fd)    # where a bad sector's cached write fails (test_eio)
    with mapped("write", path=path + " (its first MiB)"):
        pwrite_all(fd, head, 0)


class WrittenDigest:
    """sha256 of the output in order, plus one crc32 per MiB so that a read-back that
    differs can name its first differing MiB without a second sha256 per block
    (4 bytes of memory per MiB written)."""

    def __init__(self) -> None:
        import hashlib  # lazily: it loads OpenSSL's libcrypto (+3.7 MiB RSS); read-back only
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
                     ) -> Tuple[float, Optional[ReadBackMismatch]]:
    """Read `path`'s first `size` bytes back from the device: (seconds it took, None when
    they are what was written, else the error naming where they first differ)."""
    started = timing.now()
    with mapped("write", path=path + " (reading it back)"):
        differs = first_difference(written, read_back(path, size))
    seconds = round(timing.now() - started, 3)
    if differs is None:
        return seconds, None
    if differs < 0:
        where = "(sha256 differs; no single MiB identified)"
    else:
        where = "in MiB %d (bytes %d-%d)" % (
            differs, differs * READBACK_BLOCK, min(size, (differs + 1) * READBACK_BLOCK) - 1)
    return seconds, ReadBackMismatch("%s read back differs from what was written: first "
                                     "difference %s" % (path, where))


class InPlace:
    """A block/character device, or an existing file with in_place: written directly from
    its start, no .part and no rename, fsynced at the end. Within a run a resume simply
    continues writing; a restart seeks back to the start. Not resumable across runs.
    Its life is open -> written -> closed (fd -1); SafeDisk, which wraps it in download(),
    holds the state machine."""

    in_place = True
    resumable = False
    splice_ready = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.part: Optional[str] = None
        self.emit: Emit = None
        self.fd = -1
        self.regular = False
        self.seekable = False                 # a regular file or a block device
        self.capacity: Optional[int] = None   # a block device's size in bytes
        self.blocks: Optional[BlockTail] = None   # a block device's: whole-block writes
        self.recorded: Optional[Identity] = None
        self.lock: Optional[LockFile] = None

    def open(self) -> Tuple[int, Optional[Identity]]:
        """Open and lock it (lock.lock_in_place says how each kind of target is locked)."""
        with mapped("write", path=self.path):
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            mode = os.fstat(self.fd).st_mode
        self.regular = stat.S_ISREG(mode)
        self.seekable = self.regular or stat.S_ISBLK(mode)
        try:
            if stat.S_ISBLK(mode):
                with mapped("write", path=self.path + " (inspecting it)"):
                    self.capacity = device_size(self.fd)
                self.blocks = BlockTail()
            self.lock = lock_in_place(self.fd, self.path, mode)
        except BaseException:
            close_fd(self)
            raise
        return 0, None

    def cut(self, size: int) -> None:
        """A regular file is cut to the image's size before its head is written, so no
        crash leaves a valid head over the old file's tail."""
        if self.regular:
            with mapped("write", path=self.path):
                os.ftruncate(self.fd, size)

    def record(self, identity: Identity) -> None:
        self.recorded = identity

    def expect_size(self, size: int) -> None:
        """Refuse a block device too small for the image before anything is written
        (exit 23); files grow, so they are never refused."""
        if self.capacity is not None and size > self.capacity:
            raise LocalWriteError("the image is %d bytes but %s holds only %d bytes; "
                                  "nothing was written" % (size, self.path, self.capacity))

    def write(self, view: Any) -> None:
        """At the write position; a block device's in whole blocks (BlockTail)."""
        if self.blocks is not None:
            self.blocks.write(self.fd, memoryview(view), self.path)
        else:
            write_all(self.fd, view, self.path)

    def spliced(self, count: int) -> None:
        """Nothing to account: the bytes are at fd's offset already."""

    def seek(self, offset: int) -> None:
        """The next byte written is byte `offset` (a block device's held bytes follow)."""
        if self.blocks is not None:
            self.blocks.seek(self.fd, offset, self.path)
            return
        with mapped("write", path=self.path):
            os.lseek(self.fd, offset, os.SEEK_SET)

    def restart(self) -> None:
        self.seek(0)

    def flush(self) -> None:
        """A block device's held bytes (the image's last, partial block) written as is."""
        if self.blocks is not None:
            self.blocks.flush(self.fd, self.path)

    def position(self) -> Optional[int]:
        """The write position, held bytes included (None for a character device or a
        FIFO: no position)."""
        if not self.seekable:
            return None
        with mapped("write", path=self.path):
            at = os.lseek(self.fd, 0, os.SEEK_CUR)
        return at + (len(self.blocks.data) if self.blocks is not None else 0)

    def commit(self, size: int) -> Optional[float]:
        """fsync (a regular file was cut to size already, see cut()); remove sidecar
        temporaries killed file-mode writers left beside a regular file; unlock."""
        try:
            self.flush()
            self.cut(size)
            with mapped("write", path=self.path):
                fsync_if_possible(self.fd)   # /dev/null and FIFOs can't: EINVAL
            if self.regular:
                for leftover in sidecar.stale_temporaries(self.path + ".part.json"):
                    sidecar.remove(leftover)
        finally:
            self.abandon(keep=True)
        return None

    def abandon(self, keep: bool) -> None:
        """Close and unlock; a block device's held bytes are dropped (the job failed:
        writing part of a block could only fail a second time, on a pending sector)."""
        if self.blocks is not None:
            self.blocks.data = bytearray()
        close_fd(self)
        if self.lock is not None:
            self.lock.release()
