"""A disk is never left half-written: SafeDisk wraps every in-place sink (devices and
--in-place files).

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
from typing import Any, Callable, List, Optional, Tuple

from . import timing
from .errors import (InvalidRequest, LocalWriteError, ReadBackMismatch, UnsupportedImageFormat,
                     mapped)
from .output import Sink, write_all

HEAD_HOLD = 1 << 20   # coreos-installer's choice: MBR, GPT and boot code live in the first MiB
SIGNATURE_BYTES = 4   # the qcow2 and VMDK magics below are 4 bytes each
FOREIGN_FORMATS = ((b"QFI\xfb", "qcow2"), (b"KDMV", "VMDK"))  # qemu's docs/interop specs
READBACK_BLOCK = 1 << 20   # read-back unit, and the granularity a mismatch is reported in

Emit = Optional[Callable[..., Any]]


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _fsync(fd: int) -> None:
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


class WrittenDigest:
    """sha256 of the output in order, plus one crc32 per MiB so that a read-back that
    differs can name its first differing MiB without a second sha256 per block
    (4 bytes of memory per MiB written)."""

    def __init__(self) -> None:
        import hashlib
        import zlib
        self._crc32 = zlib.crc32
        self.sha256 = hashlib.sha256()
        self.blocks: List[int] = []   # crc32 of each complete MiB
        self._crc = 0
        self._fill = 0                # bytes of the current, incomplete MiB

    def update(self, data: Any) -> None:
        view = memoryview(data)
        self.sha256.update(view)
        while view:
            take = min(READBACK_BLOCK - self._fill, len(view))
            self._crc = self._crc32(view[:take], self._crc)
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


class SafeDisk(Sink):
    """The sink interface (open, record, write, restart, commit, abandon) around an
    InPlace sink, plus expect_size(n), head_bytes_needed, splice_ready and spliced(n)."""

    in_place = True
    resumable = False

    def __init__(self, inner: Any, *, preserve_on_error: bool = False,
                 allow_any_format: bool = False, verify_written: bool = False,
                 emit: Emit = None) -> None:
        self.inner = inner
        self.path: str = inner.path
        self.preserve_on_error = preserve_on_error
        self.allow_any_format = allow_any_format
        self.verify_written = verify_written
        self._emit = emit
        self.positional = True       # regular file or block device: writes at offsets
        self.capacity: Optional[int] = None   # block device size in bytes
        self.hold = HEAD_HOLD        # bytes of output held back (4 when not positional)
        self.head = bytearray()
        self.taken = 0               # output bytes taken in this pass (head included)
        self.checked = False         # first bytes checked against qcow2/VMDK
        self.wiped = False           # the target's start was zeroed: writing began
        self.head_flushed = False    # non-positional targets: the 4 held bytes went out
        self.done = False            # committed, or cleaned up after a failure
        self.digest: Optional[WrittenDigest] = None
        self.readback_seconds: Optional[float] = None

    # ------------------------------------------------------------ the sink interface
    @property
    def fd(self) -> int:
        return self.inner.fd

    @property
    def recorded(self) -> Any:
        return self.inner.recorded

    @property
    def head_bytes_needed(self) -> int:
        """Output bytes still to come before the held head is complete; while > 0 every
        byte must go through write() (no splice): it is being held or checked."""
        return max(0, self.hold - self.taken)

    @property  # type: ignore[override]
    def splice_ready(self) -> bool:
        """True when the kernel may move bytes straight into fd (at its file offset):
        the head is complete and no read-back digest has to see the bytes."""
        return self.head_bytes_needed == 0 and self.digest is None

    def open(self) -> Tuple[int, Any]:
        """Open the target; nothing is written yet. Never resumes (returns 0 held)."""
        self.inner.open()
        try:
            with mapped("write", path=self.path + " (inspecting it)"):
                mode = os.fstat(self.fd).st_mode
                if stat.S_ISBLK(mode):
                    self.capacity = device_size(self.fd)
        except LocalWriteError:
            self.inner.abandon(keep=False)
            raise
        self.positional = stat.S_ISREG(mode) or stat.S_ISBLK(mode)
        if not self.positional:
            self.hold = SIGNATURE_BYTES
            if self.verify_written:
                self.inner.abandon(keep=False)
                raise InvalidRequest("verify_written needs a block device or a regular file"
                                     " to read back, not %s" % self.path)
        if self.verify_written:
            self.digest = WrittenDigest()
        return 0, None

    def record(self, identity: Any) -> None:
        self.inner.record(identity)

    def expect_size(self, size: int) -> None:
        """The byte count to write is known in advance: refuse a device too small for it
        before anything is written (exit 23)."""
        if self.capacity is not None and size > self.capacity:
            raise LocalWriteError("the image is %d bytes but %s holds only %d bytes; "
                                  "nothing was written" % (size, self.path, self.capacity))

    def write(self, data: Any) -> None:
        view = memoryview(data)
        if self.digest is not None:
            self.digest.update(view)
        if self.taken < self.hold:
            take = min(self.hold - self.taken, len(view))
            self.head += view[:take]
            self.taken += take
            view = view[take:]
            if len(self.head) >= SIGNATURE_BYTES:
                self._check_then_wipe()
            if self.taken == self.hold:
                self._head_complete()
        if view:
            self._write(view)
            self.taken += len(view)

    def position(self) -> Optional[int]:
        """Where the output stands, for download()'s end-of-job accounting check: the
        fd's real offset once the head is complete (tail bytes and splice land there),
        the held bytes before; None for a target without positions."""
        if not self.positional:
            return None
        if self.head_bytes_needed:
            return len(self.head)
        with mapped("write", path=self.path):
            return os.lseek(self.fd, 0, os.SEEK_CUR)

    def spliced(self, count: int) -> None:
        """Account for `count` bytes the kernel moved into fd (only when splice_ready)."""
        self.taken += count

    def restart(self) -> None:
        """The download starts over from zero: drop the held head and check the new
        first bytes again. The zeroed start stays zeroed; the tail is rewritten."""
        if not self.positional:
            self.inner.restart()
        self.head = bytearray()
        self.taken = 0
        self.checked = False
        self.head_flushed = False
        if self.digest is not None:
            self.digest = WrittenDigest()

    def commit(self, size: int) -> Optional[float]:
        """Everything arrived and was verified: fsync the rest, write the held head,
        fsync; read back if asked. Returns the read-back seconds (None without it).
        A failure here cleans up (zeroes) before raising: abandon() then does nothing."""
        try:
            if size != self.taken:
                raise LocalWriteError("%s: %d bytes to commit but %d were written"
                                      % (self.path, size, self.taken))
            self._check_then_wipe()
            self.inner.cut(size)     # a regular file: no old tail under the new head
            self._write_head()
            self.inner.commit(size)
            self._event("head_written", bytes=len(self.head), written=size)
            if self.digest is not None:
                self.readback_seconds = self._read_back(size)
        except BaseException:
            self._clean_up()
            raise
        self.done = True
        return self.readback_seconds

    def abandon(self, keep: bool) -> None:
        """After a failure: zero the start again if writing began (not resumable, so
        `keep` is ignored)."""
        if not self.done:
            self._clean_up()

    # ------------------------------------------------------------ steps
    def _check_then_wipe(self) -> None:
        """Refuse a foreign container before touching the target; then zero its start."""
        if not self.checked:
            found = foreign_format(bytes(self.head[:SIGNATURE_BYTES]))
            if found and not self.allow_any_format:
                untouched = "" if self.wiped else "; nothing was written"
                raise UnsupportedImageFormat(
                    "image is %s, not raw: refusing to write it to %s%s (--allow-any-format"
                    " / allow_any_format writes it anyway)" % (found, self.path, untouched))
            self.checked = True
        if self.positional and not self.wiped:
            self.wiped = True   # from here on a failure zeroes again, even a failed wipe
            zeroed = self._zero_start("zeroing its first MiB")
            self._event("wipe", bytes=zeroed)

    def _head_complete(self) -> None:
        """Positional: later bytes go at their offsets (the fd's file offset, so splice
        works too). Otherwise the 4 checked bytes go out now."""
        if self.positional:
            self._seek(self.hold)
        else:
            self._write_head()

    def _write_head(self) -> None:
        if not self.positional:
            if not self.head_flushed:
                self._write(self.head)
                self.head_flushed = True
            return
        with mapped("write", path=self.path + " (its first MiB)"):
            _fsync(self.fd)              # the tail is durable before the head exists
            _pwrite_all(self.fd, self.head, 0)

    def _read_back(self, size: int) -> float:
        assert self.digest is not None
        started = timing.now()
        with mapped("write", path=self.path + " (reading it back)"):
            read = read_back(self.path, size)
        seconds = round(timing.now() - started, 3)
        differs = first_difference(self.digest, read)
        self._event("readback", bytes=size, seconds=seconds, ok=differs is None)
        if differs is not None:
            where = ("in MiB %d (bytes %d-%d)" % (differs, differs * READBACK_BLOCK,
                                                   min(size, (differs + 1) * READBACK_BLOCK) - 1)
                     if differs >= 0 else "(sha256 differs; no single MiB identified)")
            raise ReadBackMismatch("%s read back differs from what was written: first "
                                   "difference %s" % (self.path, where))
        return seconds

    def _clean_up(self) -> None:
        """Zero the start again unless preserve_on_error; close the target."""
        self.done = True
        try:
            if self.wiped and self.positional and not self.preserve_on_error:
                self._zero_after_failure()
        finally:
            self.inner.abandon(keep=False)

    def _zero_after_failure(self) -> None:
        """Best effort (the original error is what the caller must see): the outcome is
        reported in the wipe_on_failure event."""
        try:
            zeroed = self._zero_start("zeroing its first MiB again")
        except LocalWriteError as exc:
            self._event("wipe_on_failure", bytes=0, ok=False, error=exc.message)
            return
        self._event("wipe_on_failure", bytes=zeroed, ok=True)

    # ------------------------------------------------------------ helpers
    def _start_size(self) -> int:
        """The target's first MiB, or all of it when smaller (a small file is not grown)."""
        if self.capacity is not None:
            return min(HEAD_HOLD, self.capacity)
        try:
            return min(HEAD_HOLD, os.stat(self.path).st_size)
        except OSError:  # not reported here: the zeroing's own open() reports the path
            return 0

    def _zero_start(self, what: str) -> int:
        """Zero and fsync the start through a fd of our own (the sink's may be closed);
        return how many bytes were zeroed."""
        size = self._start_size()
        with mapped("write", path="%s (%s)" % (self.path, what)):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                _pwrite_all(fd, bytes(size), 0)
                _fsync(fd)
            finally:
                os.close(fd)
        return size

    def _write(self, data: Any) -> None:
        write_all(self.fd, data, self.path)

    def _seek(self, offset: int) -> None:
        with mapped("write", path=self.path):
            os.lseek(self.fd, offset, os.SEEK_SET)

    def _event(self, name: str, **fields: Any) -> None:
        if self._emit is not None:
            self._emit(name, path=self.path, **fields)
