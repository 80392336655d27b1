"""The low-level file operations every sink shares (rawfetch.sinks): open a .part safely,
write every byte, start writeback early, fsync a directory, close once.

The sinks themselves are imported from sinks.py (PartFile and SafeDisk live there,
InPlace in disk.py).
"""
from __future__ import annotations

import os
import stat
from typing import Any, Callable, Optional

from .errors import LocalWriteError, mapped

Emit = Optional[Callable[..., Any]]   # a sink's event callback: emit(name, **fields), or None


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


def fsync_dir(directory: str) -> None:
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
