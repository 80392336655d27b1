"""One writer per output: an exclusive flock held for the whole job.

Why: two rawfetch processes on one PATH (an agent retried while its first run still
works, two agents sharing a cache directory) used to truncate each other's `.part` and
keep a file with a hole in it. Now the second one fails at once, naming the first:

* file mode: `PATH.part.lock` beside PATH (the lock file holds the writer's pid, for the
  message). It is removed by its holder, while still locked, when the job ends; a process
  that waited on the old inode notices it was unlinked and starts over on the new one
  (the usual lock-file protocol: a lock on a file no longer at its name counts for nothing);
* in place (a block device, or a file written with in_place): the target's own open file
  description is locked. LOCK_EX on a whole disk is also what systemd-udevd honours
  ("BSD file locks on block devices"): udev does not probe a disk being written;
* character devices and FIFOs (/dev/null, a pipe) are never locked: they have no content
  to protect and several writers are normal.

flock(2) locks belong to the open file description, so the kernel drops them when the
process dies however it dies (kill -9, OOM): a stale lock cannot exist, only a stale lock
file, which the next run simply takes over.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Optional

from .errors import LocalWriteError, OutputBusy, mapped

LOCK_SUFFIX = ".lock"   # appended to PATH.part: every file-mode leftover starts PATH.part
PID_BYTES = 32          # a pid in decimal plus a newline; more is not a pid
PROC_LOCKS_MAX = 1 << 20   # /proc/locks is one short line per lock; read at most this


def lock_fd(fd: int, path: str, holder: str = "") -> None:
    """Take LOCK_EX on `fd` without waiting; OutputBusy (exit 97) naming the other writer
    when someone holds it. `holder` is the lock file to read its pid from, if any."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:  # EWOULDBLOCK is the answer sought; the rest is a write error
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            with mapped("write", path=path + " (locking it)"):
                raise
        mine = _read_pid(holder) if holder else None   # written by a rawfetch
        other = mine or _flock_holder(fd)              # any program's flock (a disk tool)
        who = ("rawfetch process %d" % other if mine else "process %d" % other if other
               else "another process")
        raise OutputBusy("%s is being written by %s; refusing to write it too"
                         % (path, who)) from None


def lock_in_place(fd: int, path: str, mode: int) -> Optional["LockFile"]:
    """Lock a target written in place (fd open on it, `mode` its st_mode), as the module
    doc says: a regular file through PATH.part.lock -- or its own fd in a directory we may
    not create files in (no file-mode writer can work there either: it needs PATH.part)
    --, a block device on its own fd, anything else not at all. Returns the LockFile to
    release, if one was taken."""
    if stat.S_ISBLK(mode):
        lock_fd(fd, path)
    if not stat.S_ISREG(mode):
        return None
    lock = LockFile(path + ".part")
    try:
        lock.acquire()
    except LocalWriteError as exc:
        if getattr(exc, "errno", None) not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        lock_fd(fd, path)
        return None
    return lock


class LockFile:
    """PATH.part.lock: created without following links, locked, pid written, unlinked
    by its holder at release."""

    def __init__(self, part: str) -> None:
        self.path = part + LOCK_SUFFIX
        self.target = part[:-len(".part")] if part.endswith(".part") else part
        self.fd = -1

    def acquire(self) -> None:
        """Lock the file at self.path, retrying when it was replaced while we waited."""
        for _ in range(8):   # each retry means another holder came and went: bounded
            fd = self._open()
            try:
                lock_fd(fd, self.target, holder=self.path)
                if self._still_ours(fd):
                    self.fd = fd
                    with mapped("write", path=self.path):
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise OutputBusy("%s: its lock file %s keeps being replaced; another writer is "
                         "active" % (self.target, self.path))

    def _open(self) -> int:
        with mapped("write", path=self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, 0o644)
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if not regular:
            os.close(fd)
            raise LocalWriteError("%s is not a regular file; refusing to use it as the lock "
                                  "of %s: remove it" % (self.path, self.target))
        return fd

    def _still_ours(self, fd: int) -> bool:
        """The locked inode is still the one at self.path (its holder did not unlink it
        between our open and our lock)."""
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:   # unlinked by the holder we waited for: start over
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        """Unlink while still locked (nobody can take it in between), then unlock."""
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError:  # cleanup only: the next run takes over a leftover lock file
            pass
        try:
            os.close(self.fd)
        except OSError:  # cleanup only: closing drops the lock whatever it says
            pass
        self.fd = -1


def _flock_holder(fd: int) -> Optional[int]:
    """The pid holding a flock on fd's inode, from /proc/locks (Linux; a device has no
    lock file to read it from). None when it cannot be told."""
    try:
        info = os.fstat(fd)
        with open("/proc/locks") as handle:
            lines = handle.read(PROC_LOCKS_MAX).splitlines()
    except OSError:  # not a failure: the message then says "another process"
        return None
    inode = "%02x:%02x:%d" % (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode \
                and fields[4].isdigit() and int(fields[4]) != os.getpid():
            return int(fields[4])
    return None


def _read_pid(path: str) -> Optional[int]:
    """The pid in a lock file, or None (empty: its holder has not written it yet)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # not a failure: the message then says "another process"
        return None
    try:
        text = os.read(fd, PID_BYTES)
    except OSError:  # not a failure, as above
        return None
    finally:
        os.close(fd)
    digits = text.strip()
    return int(digits) if digits.isdigit() and len(digits) < 12 else None
