"""Where downloaded bytes go: PATH.part renamed on success, or a device written in place.

Both sinks share one small interface (open, record, write, restart, commit, abandon) so
download() does not care which it feeds.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from typing import Any, Callable, Optional, Tuple

from . import timing
from . import sidecar
from .credentials import redact_url
from .errors import LocalWriteError, mapped
from .judge import Identity
from .lock import LockFile, lock_fd

CHECKPOINT_SECONDS = 2.0      # fsync + sidecar this often: a kill -9 or a power cut costs
                              # at most ~2 s of transfer to fetch again, one fsync per 2 s
CHECKPOINT_BYTES = 1 << 30    # ...and per GiB, so a fast link never piles up a huge fsync
ENOSPC_ROOM = 64 << 10        # on a full disk the .part gives back this much so the last
                              # sidecar (one block, plus metadata) fits and the run resumes
Emit = Optional[Callable[..., Any]]


class Sink:
    """Defaults of the sink interface that only some sinks refine (disk.SafeDisk does)."""

    splice_ready = True   # the kernel may move bytes straight into fd at its offset

    def spliced(self, count: int) -> None:
        """`count` bytes were moved into fd by splice (nothing to account here)."""

    def expect_size(self, size: int) -> None:
        """The byte count to write is known in advance (nothing to check here)."""


class PartFile(Sink):
    """PATH.part with its sidecar; renamed onto PATH only when complete and verified.

    The whole job holds PATH.part.lock (lock.LockFile): one writer per output. The
    sidecar claims only bytes fsynced before it was written (see sidecar.py for the
    write order); a resume cuts the .part back to that length before any Range.
    `resumable` False (gunzip output: the decoder state cannot be saved) means every run
    starts from zero and no sidecar is written.
    """

    in_place = False

    def __init__(self, path: str, url: str, resumable: bool = True, emit: Emit = None) -> None:
        self.path = path
        self.part = path + ".part"
        self.sidecar = self.part + ".json"
        self.url = redact_url(url)   # the sidecar is on disk: never with a password
        self.resumable = resumable
        self.emit = emit
        self.fd = -1
        self.recorded: Optional[Identity] = None
        self.verified = 0            # bytes the sidecar on disk claims (fsynced first)
        self.lock = LockFile(self.part)
        self._guard = threading.Lock()   # checkpoints come from the writing thread
        self._unsynced = 0
        self._next_checkpoint = 0.0

    def open(self) -> Tuple[int, Optional[Identity]]:
        """Lock, open the .part; return (bytes held, identity) if an earlier run's bytes
        are usable, cut back to the length its sidecar verified."""
        self.lock.acquire()
        try:
            return self._open_locked()
        except BaseException:
            close_fd(self)
            self.lock.release()
            raise

    def _open_locked(self) -> Tuple[int, Optional[Identity]]:
        loaded = sidecar.load(self.sidecar, self.url) if self.resumable else None
        self.fd = open_part(self.part)
        with mapped("write", path=self.part):
            size = os.fstat(self.fd).st_size
        held, why = _usable(loaded, size) if loaded is not None else (
            0, "a decompressing run always starts from zero")
        if why and (size or (loaded is not None and loaded.why != "no sidecar")):
            self._event("leftover", action="discarded", why=why, size=size, kept=0)
        elif held < size:
            self._event("leftover", action="cut", size=size, kept=held,
                        why="%d bytes past the %d the sidecar verified" % (size - held, held))
        with mapped("write", path=self.part):
            os.ftruncate(self.fd, held)   # before any Range: unverified bytes never count
            os.lseek(self.fd, held, os.SEEK_SET)
        self.verified = held
        self.recorded = loaded.identity if loaded is not None and held else None
        self._next_checkpoint = timing.now() + CHECKPOINT_SECONDS
        return held, self.recorded

    def record(self, identity: Identity) -> None:
        """Write the sidecar before any byte of this identity is written."""
        with self._guard:
            self.recorded = identity
            if self.resumable:
                sidecar.write(self.sidecar, self.url, identity, self.verified)

    def restart(self) -> None:
        """Back to zero: the sidecar stops claiming bytes first, then the .part is cut."""
        with self._guard:
            self.verified = 0
            self._unsynced = 0
            if self.resumable and self.recorded is not None:
                sidecar.write(self.sidecar, self.url, self.recorded, 0)
        with mapped("write", path=self.part):
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)

    def write(self, data: Any) -> None:
        write_all(self.fd, data, self.part)
        self._advance(memoryview(data).nbytes)

    def spliced(self, count: int) -> None:
        self._advance(count)

    def _advance(self, count: int) -> None:
        self._unsynced += count
        if self._unsynced >= CHECKPOINT_BYTES or timing.now() >= self._next_checkpoint:
            self.checkpoint()

    def checkpoint(self) -> None:
        """fsync the .part, then let the sidecar claim what the fsync covered."""
        with self._guard:
            self._unsynced = 0
            self._next_checkpoint = timing.now() + CHECKPOINT_SECONDS
            if not self.resumable or self.recorded is None:
                return
            with mapped("write", path=self.part):
                size = os.fstat(self.fd).st_size   # taken before the fsync that covers it
                os.fsync(self.fd)
            if size != self.verified:
                sidecar.write(self.sidecar, self.url, self.recorded, size)
                self.verified = size

    def position(self) -> Optional[int]:
        """Bytes in the .part (its size: it is only ever appended to)."""
        with mapped("write", path=self.part):
            return os.fstat(self.fd).st_size

    def commit(self, size: int) -> None:
        """fsync, check the size on disk, let the sidecar claim it all, rename onto PATH,
        fsync the directory; remove the sidecar and temporaries killed writers left; unlock."""
        try:
            with mapped("write", path=self.path):
                os.fsync(self.fd)
                on_disk = os.fstat(self.fd).st_size
                os.close(self.fd)
                self.fd = -1
                if on_disk != size:
                    raise LocalWriteError("%s holds %d bytes, expected %d"
                                          % (self.part, on_disk, size))
                if self.resumable and self.recorded is not None and on_disk != self.verified:
                    # The last checkpoint claims every byte: killed before the rename, a
                    # rerun asks for bytes=SIZE- and takes the 416 as complete.
                    sidecar.write(self.sidecar, self.url, self.recorded, on_disk)
                    self.verified = on_disk
                os.replace(self.part, self.path)
                for leftover in [self.sidecar] + sidecar.stale_temporaries(self.sidecar):
                    sidecar.remove(leftover)
                _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        finally:
            self.lock.release()

    def abandon(self, keep: bool) -> None:
        """After a failure: keep the .part only if a later run can resume it, with a
        last checkpoint so the sidecar claims every byte that made it to disk."""
        try:
            if keep and self.fd >= 0:
                self._last_checkpoint()
            close_fd(self)
            if not keep:
                sidecar.remove(self.part)
                sidecar.remove(self.sidecar)
        finally:
            self.lock.release()

    def _last_checkpoint(self) -> None:
        """The state a later run resumes from. On a full disk the sidecar itself has no
        room: the .part's last ENOSPC_ROOM bytes are given back and it is tried again."""
        try:
            self.checkpoint()
            return
        except LocalWriteError as exc:
            if getattr(exc, "errno", None) != errno.ENOSPC:
                return           # cleanup-grade: the earlier sidecar still holds
        try:
            with mapped("write", path=self.part):
                size = os.fstat(self.fd).st_size
                os.ftruncate(self.fd, max(self.verified, size - ENOSPC_ROOM))
            self.checkpoint()
        except LocalWriteError:  # cleanup-grade: the earlier sidecar still holds
            pass

    def _event(self, name: str, **fields: Any) -> None:
        if self.emit is not None:
            self.emit(name, path=self.part, **fields)


def _usable(loaded: "sidecar.Loaded", size: int) -> Tuple[int, str]:
    """(bytes of the .part to keep, why none are kept): the sidecar's verified length,
    unless the sidecar is unusable or claims more than the .part holds."""
    if loaded.identity is None:
        return 0, loaded.why
    if loaded.verified > size:
        return 0, "sidecar claims %d verified bytes but the .part holds %d" % (
            loaded.verified, size)
    return loaded.verified, ""


def open_part(part: str) -> int:
    """Open (or create) the .part for writing, never through a symlink, a FIFO, a
    device or a file with other hard links (someone else's file under our name)."""
    if os.path.islink(part):
        raise LocalWriteError("%s is a symbolic link; rawfetch never creates one there and "
                              "refuses to write through it: remove it" % part)
    with mapped("write", path=part):
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o644)
    try:
        with mapped("write", path=part):
            info = os.fstat(fd)
            os.set_blocking(fd, True)
        if not stat.S_ISREG(info.st_mode):
            raise LocalWriteError("%s is not a regular file; refusing to use it" % part)
        if info.st_nlink > 1:
            raise LocalWriteError("%s has %d hard links (another file shares it); refusing "
                                  "to write it: remove it" % (part, info.st_nlink))
    except BaseException:
        os.close(fd)
        raise
    return fd


def close_fd(holder: Any) -> None:
    """Close holder.fd, once (cleanup only: after a failure, the failure is what we report)."""
    if holder.fd >= 0:
        try:
            os.close(holder.fd)
        except OSError:  # cleanup only
            pass
        holder.fd = -1


def _fsync_dir(directory: str) -> None:
    """Make the rename durable; a filesystem that can't fsync a directory is not an
    error (cleanup-grade: the file itself was fsynced before the rename)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # cleanup-grade, see above
        return
    try:
        os.fsync(fd)
    except OSError:  # cleanup-grade, see above
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: Any, name: str) -> None:
    """Write every byte at fd's position (errors as `name`'s), then start its writeback."""
    view = memoryview(data)
    count = view.nbytes
    with mapped("write", path=name):
        while view:
            view = view[os.write(fd, view):]
    start_writeback(fd, count)


def start_writeback(fd: int, count: int) -> None:
    """Start writing the `count` bytes just written before fd's position to the disk now,
    while the transfer goes on, so the fsync at the end has little left to write (bench,
    1 GiB to a file: the commit ~0.5 s -> ~0.01 s, the whole download 1.0-1.3 s -> 0.7 s
    via splice). POSIX_FADV_DONTNEED starts writeback of dirty pages and drops only
    pages already clean, so nothing written can be lost; the fsync still decides."""
    if count <= 0 or not hasattr(os, "posix_fadvise"):
        return
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)
        os.posix_fadvise(fd, max(0, end - count), count, os.POSIX_FADV_DONTNEED)
    except OSError:  # not a failure: advice only (a pipe or tty says ESPIPE/EINVAL)
        pass


class InPlace(Sink):
    """A block/character device, or an existing file with in_place: written directly from
    its start, no .part and no rename, fsynced at the end. Within a run a resume simply
    continues writing; a restart seeks back to the start. Not resumable across runs."""

    in_place = True
    resumable = False

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.regular = False
        self.seekable = False
        self.recorded: Optional[Identity] = None
        self.lock: Optional[LockFile] = None

    def open(self) -> Tuple[int, Optional[Identity]]:
        """Open and lock: a regular file through PATH.part.lock (shared with file mode on
        the same PATH), a block device on its own fd (udev's convention for a disk being
        written); character devices and FIFOs are not locked (lock.py)."""
        with mapped("write", path=self.path):
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            mode = os.fstat(self.fd).st_mode
        self.regular = stat.S_ISREG(mode)
        self.seekable = self.regular or stat.S_ISBLK(mode)
        try:
            if self.regular:
                self._lock_file()
            elif stat.S_ISBLK(mode):
                lock_fd(self.fd, self.path)
        except BaseException:
            close_fd(self)
            raise
        return 0, None

    def _lock_file(self) -> None:
        """PATH.part.lock; in a directory we may not create files in, the file's own fd
        (no file-mode writer can work there either: it needs PATH.part)."""
        lock = LockFile(self.path + ".part")
        try:
            lock.acquire()
        except LocalWriteError as exc:
            if getattr(exc, "errno", None) not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            lock_fd(self.fd, self.path)
            return
        self.lock = lock

    def cut(self, size: int) -> None:
        """A regular file is cut to the image's size before its head is written, so no
        crash leaves a valid head over the old file's tail."""
        if self.regular:
            with mapped("write", path=self.path):
                os.ftruncate(self.fd, size)

    def record(self, identity: Identity) -> None:
        self.recorded = identity

    def write(self, data: Any) -> None:
        write_all(self.fd, data, self.path)

    def restart(self) -> None:
        with mapped("write", path=self.path):
            os.lseek(self.fd, 0, os.SEEK_SET)

    def position(self) -> Optional[int]:
        """The write position (None for a character device or a FIFO: no position)."""
        if not self.seekable:
            return None
        with mapped("write", path=self.path):
            return os.lseek(self.fd, 0, os.SEEK_CUR)

    def commit(self, size: int) -> None:
        """fsync (a regular file was cut to size already, see cut()); remove sidecar
        temporaries killed file-mode writers left beside a regular file; unlock."""
        try:
            self.cut(size)
            with mapped("write", path=self.path):
                try:
                    os.fsync(self.fd)
                except OSError as exc:  # inside mapped: only /dev/null's EINVAL is ignored
                    if exc.errno != errno.EINVAL:  # (character devices and FIFOs can't fsync)
                        raise
            if self.regular:
                for leftover in sidecar.stale_temporaries(self.path + ".part.json"):
                    sidecar.remove(leftover)
        finally:
            self.abandon(keep=True)

    def abandon(self, keep: bool) -> None:
        close_fd(self)
        if self.lock is not None:
            self.lock.release()


def open_output(path: str, url: str, in_place: bool, resumable: bool) -> Any:
    """Choose the sink for `path`, refusing directories and dangling symlinks."""
    if os.path.islink(path) and not os.path.exists(path):
        raise LocalWriteError("output %s is a dangling symlink; refusing to write through it"
                              % path)
    if os.path.isdir(path):
        raise LocalWriteError("output %s is a directory" % path)
    if os.path.exists(path):
        with mapped("write", path=path):
            mode = os.stat(path).st_mode
        if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            return InPlace(path)
        if in_place:
            return InPlace(os.path.realpath(path))
        path = os.path.realpath(path)  # write next to a symlink's target, replace the target
    elif in_place:
        raise LocalWriteError("in_place needs an existing file or device: %s" % path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise LocalWriteError("directory %s does not exist" % parent)
    return PartFile(path, url, resumable)
