"""Delta re-imaging over a target with unreadable sectors: a real EIO from the kernel.

delta's survey treats a piece it cannot read (EIO) as differing: writing it is what
re-imaging does anyway. Here the target really answers EIO. The kernel has no
device-mapper (no dm `error` target here or in CI), so the bad region is made by a FUSE
filesystem (tests/durability/eiofs.py: its one file answers EIO in a region), used as it
is (a regular file) and through a loop device over it (a block device, the page cache in
between). The image is the target's content already, except piece 30; pieces 12-14 lie
under the bad region. Two kinds of bad region:

* dead (a dm `error` target): reads and writes fail. Written directly to the file, the
  first write into the region fails; through the loop device the writes land in the
  page cache and the fsync at commit fails. Either way the job fails with rawfetch's
  own LocalWriteError (exit 23), and the disk's first MiB is zeros.
* pending (a disk's pending sectors, reallocated on write): reads fail until written.
  The job succeeds and the disk holds the image, by digest. Through the loop device
  this needs whole-page writes: a write covering part of a page makes the kernel read
  that page first, which fails (reimage.fill makes every write page-aligned).

In every case the fault server saw exactly the Range requests for the pieces under the
region (12-14, one coalesced range) and for piece 30, and nothing else.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from rawfetch import reimage
from rawfetch.disk import HEAD_HOLD
from rawfetch.errors import LocalWriteError
from rawfetch.metalink.make import describe
from rawfetch.options import make_options
from tests.faultserver import FaultServer

from .eiofs import Mounted, MountRefused

pytestmark = [pytest.mark.durability, pytest.mark.timeout(120)]

PIECE = 256 << 10
COUNT = 40
SIZE = COUNT * PIECE
BAD = (12 * PIECE, 15 * PIECE)        # pieces 12, 13, 14 unreadable
CHANGED = 30                          # the one piece the old image has different
QUICK = dict(retry_delay=0.01, retry_max_delay=0.05, idle_timeout=5.0, connect_timeout=5.0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prerequisites() -> Optional[str]:
    """Why this cannot run here, or None."""
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: the kernel has no FUSE"
    for tool in ("umount", "losetup"):
        if shutil.which(tool) is None:
            return "%s is not installed" % tool
    return None


@pytest.fixture(scope="module")
def image() -> bytes:
    return random.Random("eio-image").getrandbits(8 * SIZE).to_bytes(SIZE, "little")


@pytest.fixture
def eio_disk(tmp_path, request) -> Iterator[Any]:
    """make(old bytes) -> a EioDisk holding them, of request.param's (kind, mode); every
    disk made is closed at the end, whatever the test did."""
    why = prerequisites()
    if why:
        pytest.skip(why)
    kind, mode = request.param
    made: List[EioDisk] = []

    def make(old: bytes) -> EioDisk:
        mountpoint = tmp_path / "reimage2-eio-mnt"
        mountpoint.mkdir()
        backing = tmp_path / "reimage2-eio-backing"
        backing.write_bytes(old)
        made.append(EioDisk(str(mountpoint), str(backing), kind, mode))
        return made[-1]

    yield make
    for disk in made:
        disk.close()


class EioDisk:
    """The FUSE mount and, for kind "loop", the loop device over its file; close()
    undoes them in reverse order (the device we attached, by its name; the mount we
    made) and says what the FUSE server wrote to stderr if it failed."""

    def __init__(self, mountpoint: str, backing: str, kind: str, mode: str,
                 bad: Tuple[int, int] = BAD) -> None:
        self.backing, self.kind, self.mode = backing, kind, mode
        try:
            self.fs: Optional[Mounted] = Mounted(mountpoint, backing, bad, mode)
        except MountRefused as exc:
            pytest.skip("the kernel refused a FUSE mount: %s" % exc)
        self.device: Optional[str] = None
        self.path = self.fs.path
        if kind == "loop":
            done = subprocess.run(["losetup", "-f", "--show", self.fs.path],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True)
            if done.returncode != 0 or not done.stdout.startswith("/dev/"):
                self.close()
                pytest.skip("losetup over a FUSE file failed: %s" % done.stderr.strip())
            self.device = self.path = done.stdout.strip()

    def close(self) -> Optional[str]:
        if self.device is not None:
            subprocess.run(["losetup", "-d", self.device], check=False)
            self.device = None
        fs, self.fs = self.fs, None
        return fs.stop() if fs is not None else None


CASES = [("file", "dead"), ("loop", "dead"), ("file", "pending"), ("loop", "pending")]


@pytest.mark.parametrize("eio_disk", CASES, ids=["-".join(c) for c in CASES],
                         indirect=True)
def test_unreadable_pieces_are_fetched_and_only_they(eio_disk, image, tmp_path):
    old = bytearray(image)
    old[CHANGED * PIECE + 99] ^= 0xFF
    disk = eio_disk(bytes(old))
    (tmp_path / "image.raw").write_bytes(image)
    events: List[Dict[str, Any]] = []
    failure: Optional[LocalWriteError] = None
    with FaultServer() as srv:
        srv.add("/img", image)
        item = describe(str(tmp_path / "image.raw"), [srv.url("/img")], piece_size=PIECE)
        try:
            reimage.run(disk.path, item, (), make_options(None, dict(
                QUICK, on_event=events.append)))
        except LocalWriteError as exc:
            failure = exc
        asked = [r.range for r in srv.requests if r.path == "/img"]
    assert disk.close() is None                # the loop device flushed, the FUSE server ok
    kind, mode = disk.kind, disk.mode
    survey = [e for e in events if e["event"] == "delta_survey"]
    if not (kind, mode) == ("file", "dead"):   # that one fails while the survey may go on
        assert [(e["judged"], e["differing"]) for e in survey] == [(COUNT, 4)], failure
    under, changed = "bytes=%d-%d" % (BAD[0], BAD[1] - 1), \
        "bytes=%d-%d" % (CHANGED * PIECE, (CHANGED + 1) * PIECE - 1)
    with open(disk.backing, "rb") as handle:
        held = handle.read()
    if mode == "pending":
        assert failure is None
        assert asked == [under, changed]
        assert sha(held) == sha(image)
        return
    assert failure is not None and failure.exit_code == 23, failure
    if kind == "file":      # direct I/O: the first write into the region fails at once
        assert asked == [under]
        assert str(failure).startswith("writing %s failed: Input/output error" % disk.path)
    else:                   # cached: every range fetched, commit's fsync fails
        assert asked == [under, changed]
        assert str(failure).startswith("writing %s (flushing what was written past its "
                                       "first MiB) failed: Input/output error" % disk.path)
    assert held[:HEAD_HOLD] == bytes(HEAD_HOLD)               # never bootable
    assert held[BAD[0]:BAD[1]] == bytes(old[BAD[0]:BAD[1]])  # the dead region: unwritten
