"""A one-file FUSE filesystem whose file has a bad region: the kernel hands its reads
(and, for a dead region, its writes) an EIO, as a disk with unreadable sectors does.

Why FUSE: the brief's device-mapper `error` target needs the kernel's device-mapper, and
this machine's kernel (and CI's, the same kind) has none (`dmsetup targets`: "Failure to
communicate with kernel device-mapper driver"; no modules to load). FUSE is in the kernel
and /dev/fuse is there, so the EIO a reader gets is the kernel's own, through the same
read(2)/pread(2) path; a loop device over the file makes it a block device with the same
hole (tests/durability/test_eio.py).

The protocol is spoken directly on /dev/fuse (include/uapi/linux/fuse.h, ABI 7.31; no
libfuse, no Python package): one request read, one reply written, in a single thread.
The file is opened with FOPEN_DIRECT_IO, so every read and write reaches this server
with its real offset and size (no page cache in between on the FUSE side).

Modes for the bad region [bad_start, bad_end):
* ``dead``: reads and writes there fail with EIO (a dm `error` target);
* ``pending``: reads fail until the sector is written; writes land and make it readable
  (a disk's pending sector, reallocated on write).

    python3 tests/durability/eiofs.py MOUNTPOINT BACKING BAD_START BAD_END dead|pending

The directory holds only that file and refuses new ones (EACCES, as a directory we may
not write in): rawfetch then locks the target's own fd instead of PATH.part.lock
(lock.lock_in_place). Prints "ready" once mounted; the file is MOUNTPOINT/disk, its bytes are kept in BACKING
(a regular file the caller made). It ends when the mount is gone (umount -l MOUNTPOINT).
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import subprocess
import sys
from typing import Optional, Tuple

# opcodes (fuse.h)
LOOKUP, FORGET, GETATTR, SETATTR, OPEN, READ, WRITE, STATFS, RELEASE = 1, 2, 3, 4, 14, 15, 16, 17, 18
FSYNC, FLUSH, INIT, OPENDIR, RELEASEDIR, ACCESS, INTERRUPT, DESTROY = 20, 25, 26, 27, 29, 34, 36, 38
MKNOD, MKDIR, CREATE, BATCH_FORGET = 8, 9, 35, 42
NO_REPLY = (FORGET, BATCH_FORGET, INTERRUPT)

IN_HEADER = struct.Struct("<IIQQIIIHH")          # len opcode unique nodeid uid gid pid ...
OUT_HEADER = struct.Struct("<IiQ")               # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")        # fuse_attr, 88 bytes
ATTR_OUT = struct.Struct("<QII")                 # attr_valid, nsec, dummy (+ attr)
ENTRY_OUT = struct.Struct("<QQQQII")             # nodeid generation entry/attr valid (+ attr)
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")       # 64 bytes: ABI 7.31's layout, zero-padded
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQIIQII")              # fh offset size flags lock_owner flags pad
WRITE_IN = READ_IN
WRITE_OUT = struct.Struct("<II")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
STATFS_OUT = struct.Struct("<QQQQQIIII6I")
FATTR_SIZE = 1 << 3
FOPEN_DIRECT_IO = 1
FUSE_BIG_WRITES = 1 << 5
FUSE_MAX_PAGES = 1 << 22
MAX_WRITE = 1 << 20          # bytes one WRITE request may carry (max_pages 256 x 4 KiB)
BUFFER = MAX_WRITE + 4096    # one request: the kernel refuses a read buffer that cannot hold it
ROOT, FILE = 1, 2            # node ids: the root directory and its one file, "disk"
NAME = b"disk"
SECTOR = 512


class EioFs:
    """The file's state: its backing bytes, the bad region and, when pending, which of
    its sectors were written since (readable again)."""

    def __init__(self, backing: str, bad_start: int, bad_end: int, mode: str) -> None:
        self.backing = os.open(backing, os.O_RDWR)
        self.bad_start, self.bad_end, self.mode = bad_start, bad_end, mode
        self.rewritten = bytearray(-(-(bad_end - bad_start) // SECTOR))

    def size(self) -> int:
        return os.fstat(self.backing).st_size

    def attr(self, node: int) -> bytes:
        if node == ROOT:
            return ATTR.pack(ROOT, 0, 0, 0, 0, 0, 0, 0, 0, stat.S_IFDIR | 0o755, 2,
                             0, 0, 0, 4096, 0)
        size = self.size()
        return ATTR.pack(FILE, size, -(-size // 512), 0, 0, 0, 0, 0, 0,
                         stat.S_IFREG | 0o644, 1, 0, 0, 0, 4096, 0)

    def _bad_sectors(self, offset: int, size: int) -> range:
        first = max(offset, self.bad_start)
        last = min(offset + size, self.bad_end)
        if first >= last:
            return range(0)
        return range((first - self.bad_start) // SECTOR,
                     (last - 1 - self.bad_start) // SECTOR + 1)

    def read(self, offset: int, size: int) -> Tuple[int, bytes]:
        """The bytes before the first unreadable sector (a short read, as a buffered read
        of a disk returns), EIO when the first sector asked for is unreadable."""
        for sector in self._bad_sectors(offset, size):
            if not self.rewritten[sector]:
                size = self.bad_start + sector * SECTOR - offset
                if size <= 0:
                    return -errno.EIO, b""
                break
        return 0, os.pread(self.backing, size, offset)

    def write(self, offset: int, data: bytes) -> int:
        sectors = self._bad_sectors(offset, len(data))
        if sectors and self.mode == "dead":
            return -errno.EIO
        os.pwrite(self.backing, data, offset)
        for s in sectors:
            self.rewritten[s] = 1
        return 0


def reply(fd: int, unique: int, error: int = 0, body: bytes = b"") -> None:
    try:
        os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body)
    except OSError as exc:   # ENOENT: the request was interrupted, its caller is gone
        if exc.errno != errno.ENOENT:
            raise


def answer(fs: EioFs, opcode: int, node: int, arg: bytes) -> Tuple[int, bytes]:
    """(negative errno or 0, reply body) for one request."""
    if opcode == INIT:
        major, minor, readahead, _ = INIT_IN.unpack_from(arg)
        return 0, INIT_OUT.pack(7, 31, readahead, FUSE_BIG_WRITES | FUSE_MAX_PAGES, 16, 12,
                                MAX_WRITE, 1, MAX_WRITE // 4096, 0, 0, *([0] * 7))
    if opcode == LOOKUP:
        if node != ROOT or arg.rstrip(b"\0") != NAME:
            return -errno.ENOENT, b""
        return 0, ENTRY_OUT.pack(FILE, 0, 0, 0, 0, 0) + fs.attr(FILE)
    if opcode == GETATTR:
        return 0, ATTR_OUT.pack(0, 0, 0) + fs.attr(node)
    if opcode == SETATTR:
        valid = SETATTR_IN.unpack_from(arg)[0]
        if valid & FATTR_SIZE:
            os.ftruncate(fs.backing, SETATTR_IN.unpack_from(arg)[3])
        return 0, ATTR_OUT.pack(0, 0, 0) + fs.attr(node)
    if opcode in (CREATE, MKNOD, MKDIR):   # the one file only: as a directory we may not
        return -errno.EACCES, b""         # write in (rawfetch then locks the file's fd)
    if opcode in (OPEN, OPENDIR):
        return 0, OPEN_OUT.pack(0, FOPEN_DIRECT_IO if opcode == OPEN else 0, 0)
    if opcode == READ:
        _, offset, size = READ_IN.unpack_from(arg)[:3]
        return fs.read(offset, size)
    if opcode == WRITE:
        _, offset, size = WRITE_IN.unpack_from(arg)[:3]
        error = fs.write(offset, arg[WRITE_IN.size:WRITE_IN.size + size])
        return error, b"" if error else WRITE_OUT.pack(size, 0)
    if opcode == FSYNC:
        os.fsync(fs.backing)
        return 0, b""
    if opcode in (RELEASE, RELEASEDIR, FLUSH, ACCESS, DESTROY):
        return 0, b""
    if opcode == STATFS:
        return 0, STATFS_OUT.pack(1 << 20, 1 << 19, 1 << 19, 16, 14, 4096, 255, 4096, 0,
                                  *([0] * 6))
    return -errno.ENOSYS, b""


def serve(fd: int, fs: EioFs) -> None:
    while True:
        try:
            request = os.read(fd, BUFFER)
        except OSError as exc:   # ENODEV: unmounted, the server's end; EINTR/ENOENT: again
            if exc.errno == errno.ENODEV:
                return
            if exc.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                continue
            raise
        _, opcode, unique, node = IN_HEADER.unpack_from(request)[:4]
        if opcode in NO_REPLY:
            continue
        error, body = answer(fs, opcode, node, request[IN_HEADER.size:])
        reply(fd, unique, error, body)
        if opcode == DESTROY:
            return


MOUNT_REFUSED = 77      # the child's exit status when mount(2) itself is refused


class MountRefused(RuntimeError):
    """mount(2) refused the FUSE mount (no CAP_SYS_ADMIN, FUSE not usable): a missing
    prerequisite, which the tests skip on; any other failure of the server is a failure."""


def mount(mountpoint: str) -> int:
    """/dev/fuse opened and mounted on `mountpoint` (root: mount(2) itself)."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    data = "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other" % fd
    if libc.mount(b"reimage2-eiofs", mountpoint.encode(), b"fuse", ctypes.c_ulong(6),  # nosuid nodev
                  data.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, "mount fuse on %s: %s" % (mountpoint, os.strerror(code)))
    return fd


class Mounted:
    """The server as a child process (the kernel's loop thread may call into it, so
    never the test's own thread), mounted on `mountpoint` until stop()."""

    def __init__(self, mountpoint: str, backing: str, bad: Tuple[int, int], mode: str) -> None:
        self.mountpoint = mountpoint
        self.path = os.path.join(mountpoint, NAME.decode())
        self.child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), mountpoint, backing,
             str(bad[0]), str(bad[1]), mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        line = self.child.stdout.readline() if self.child.stdout else ""
        if line.strip() != "ready":
            _, err = self.child.communicate(timeout=10)
            if self.child.returncode == MOUNT_REFUSED:
                raise MountRefused(err.strip())
            raise RuntimeError("eiofs did not start: %s" % err)

    def stop(self) -> Optional[str]:
        """Unmount (lazily: a test that failed may hold the file open) and reap the
        child; its stderr when it failed."""
        subprocess.run(["umount", "-l", self.mountpoint], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        try:
            _, err = self.child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.child.kill()        # our own child, by its pid
            _, err = self.child.communicate()
        return err if self.child.returncode else None


def main(argv: list) -> int:
    mountpoint, backing, start, end, mode = argv
    if mode not in ("dead", "pending"):
        raise SystemExit("mode: dead or pending")
    fs = EioFs(backing, int(start), int(end), mode)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, 15)       # PR_SET_PDEATHSIG, SIGTERM: never outlive the test
    try:
        fd = mount(mountpoint)
    except OSError as exc:  # the prerequisite is missing: said on stderr, status 77
        print(exc, file=sys.stderr)
        return MOUNT_REFUSED
    print("ready", flush=True)
    serve(fd, fs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
