"""PATH.part.json: what a later run needs to resume PATH.part, and how far it may trust it.

The sidecar names the URL, the object's identity (length, ETag, Last-Modified and the
response's Date, which tells whether that Last-Modified is a strong validator) and
`verified`: how many bytes at the start of the .part were fsynced *before* this sidecar
was written. Write order (Claim.checkpoint, for sinks.PartFile):

  1. the data: write(2)/splice(2) into the .part, then fsync(.part);
  2. the sidecar: a new temporary with a unique name (O_CREAT|O_EXCL|O_NOFOLLOW), written
     and fsynced, then rename(2)d over PATH.part.json.

A crash anywhere in between leaves the previous sidecar, whose `verified` is at most what
the .part durably holds. Bytes past `verified` (written after the last checkpoint, or
appended by something else, or a zero-filled tail after a power cut) are cut away before
any Range is sent. Anything doubtful -- no sidecar, a truncated or garbage one, another
URL, more verified bytes than the .part holds -- means start from zero, never splice.
"""
from __future__ import annotations

import errno
import json
import os
import threading
from typing import List, NamedTuple, Optional, Tuple

from . import timing
from .errors import LocalWriteError, mapped
from .judge import Identity

SIDECAR_FORMAT = 2        # 2 added `verified`; a format-1 sidecar is not trusted (no length)
SIDECAR_MAX_BYTES = 65536  # a sidecar is a few hundred bytes; refuse to parse a huge one
TEMP_SUFFIX = ".tmp"
CHECKPOINT_SECONDS = 2.0      # fsync + sidecar this often: a kill -9 or a power cut costs
                              # at most ~2 s of transfer to fetch again, one fsync per 2 s
CHECKPOINT_BYTES = 1 << 30    # ...and per GiB, so a fast link never piles up a huge fsync
ENOSPC_ROOM = 64 << 10        # on a full disk the .part gives back this much so the last
                              # sidecar (one block, plus metadata) fits and the run resumes


class Loaded(NamedTuple):
    """What a sidecar says, or why it cannot be used (identity None, `why` set)."""
    identity: Optional[Identity]
    verified: int
    why: str = ""


def load(path: str, url: str) -> Loaded:
    """Read and check the sidecar at `path` (never following a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return Loaded(None, 0, "no sidecar")
    except OSError as exc:  # not a failure: an unusable sidecar means start from zero
        return Loaded(None, 0, "sidecar unreadable (%s)" % (exc.strerror or exc))
    try:
        raw = os.read(fd, SIDECAR_MAX_BYTES + 1)
    except OSError as exc:  # not a failure, as above (a directory or device: EISDIR...)
        return Loaded(None, 0, "sidecar unreadable (%s)" % (exc.strerror or exc))
    finally:
        os.close(fd)
    if len(raw) > SIDECAR_MAX_BYTES:
        return Loaded(None, 0, "sidecar larger than %d bytes" % SIDECAR_MAX_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeError):
        return Loaded(None, 0, "sidecar is not valid JSON (truncated or garbage)")
    return _check(data, url)


def _check(data: object, url: str) -> Loaded:
    if not isinstance(data, dict):
        return Loaded(None, 0, "sidecar is not a JSON object")
    if data.get("format") != SIDECAR_FORMAT:
        return Loaded(None, 0, "sidecar format %r, not %d (no verified length)"
                      % (data.get("format"), SIDECAR_FORMAT))
    if data.get("url") != url:
        return Loaded(None, 0, "sidecar is for another URL")
    total, verified = data.get("total"), data.get("verified")
    etag, modified = data.get("etag"), data.get("last_modified")
    date = data.get("date")   # the response's Date: decides whether Last-Modified is strong
    if not _count(verified) or not (total is None or _count(total)) or not all(
            v is None or isinstance(v, str) for v in (etag, modified, date)):
        return Loaded(None, 0, "sidecar fields malformed")
    if total is not None and verified > total:
        return Loaded(None, 0, "sidecar claims %d verified bytes of a %d-byte object"
                      % (verified, total))
    return Loaded(Identity(total, etag, modified, date), verified)


def usable(loaded: Loaded, size: int) -> Tuple[int, str]:
    """(bytes of a `size`-byte .part to keep, why none are kept): the sidecar's verified
    length, unless the sidecar is unusable or claims more than the .part holds."""
    if loaded.identity is None:
        return 0, loaded.why
    if loaded.verified > size:
        return 0, "sidecar claims %d verified bytes but the .part holds %d" % (
            loaded.verified, size)
    return loaded.verified, ""


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def write(path: str, url: str, identity: Identity, verified: int) -> None:
    """Replace the sidecar atomically through a temporary only this call creates."""
    body = json.dumps({"format": SIDECAR_FORMAT, "url": url, "total": identity.total,
                       "etag": identity.etag, "last_modified": identity.last_modified,
                       "date": identity.date, "verified": verified}).encode("utf-8")
    temporary = "%s.%d.%s%s" % (path, os.getpid(), os.urandom(4).hex(), TEMP_SUFFIX)
    with mapped("write", path=path):
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644)
        try:
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except BaseException:
            remove(temporary)
            raise


def stale_temporaries(path: str) -> List[str]:
    """Temporaries of `path` left by killed writers (only the lock holder may call this:
    no live process can be writing one then)."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(directory)
    except OSError:  # cleanup only: nothing to list, nothing to remove
        return []
    return [os.path.join(directory, n) for n in names
            if n.startswith(name + ".") and n.endswith(TEMP_SUFFIX)]


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:  # cleanup only: already gone, or nothing more we can do about it
        pass


class Claim:
    """How many bytes of the .part its sidecar at `path` claims, moved forward only by
    checkpoints that keep the write order above. Checkpoints come from the writing
    thread (`_guard`). Not `resumable` (a decoding run: the decoder state cannot be
    saved): no sidecar is ever written."""

    def __init__(self, path: str, url: str, part: str, resumable: bool) -> None:
        self.path = path
        self.url = url               # redacted by the caller: this goes to disk
        self.part = part
        self.resumable = resumable
        self.identity: Optional[Identity] = None
        self.verified = 0            # bytes the sidecar on disk claims (fsynced first)
        self._guard = threading.Lock()
        self._unsynced = 0
        self._due = 0.0

    def start(self, identity: Optional[Identity], verified: int) -> None:
        """The .part holds `verified` bytes of `identity` (kept from an earlier run)."""
        self.identity, self.verified = identity, verified
        self._due = timing.now() + CHECKPOINT_SECONDS

    def record(self, identity: Identity) -> None:
        """Name the object before any byte of it is written."""
        with self._guard:
            self.identity = identity
            if self.resumable:
                write(self.path, self.url, identity, self.verified)

    def restart(self) -> None:
        """Claim nothing, before the caller cuts the .part back to zero."""
        with self._guard:
            self.verified = 0
            self._unsynced = 0
            if self.resumable and self.identity is not None:
                write(self.path, self.url, self.identity, 0)

    def cut(self, offset: int) -> None:
        """Claim at most `offset` bytes, before the caller cuts the .part back to it (a
        bad piece)."""
        with self._guard:
            self._unsynced = 0
            if self.verified > offset:
                self.verified = offset
                if self.resumable and self.identity is not None:
                    write(self.path, self.url, self.identity, offset)

    def advance(self, fd: int, count: int) -> None:
        """`count` more bytes are in the .part (fd): a checkpoint when one is due."""
        self._unsynced += count
        if self._unsynced >= CHECKPOINT_BYTES or timing.now() >= self._due:
            self.checkpoint(fd)

    def checkpoint(self, fd: int) -> None:
        """fsync the .part, then let the sidecar claim what the fsync covered."""
        with self._guard:
            self._unsynced = 0
            self._due = timing.now() + CHECKPOINT_SECONDS
            if not self.resumable or self.identity is None:
                return
            with mapped("write", path=self.part):
                size = os.fstat(fd).st_size   # taken before the fsync that covers it
                os.fsync(fd)
            if size != self.verified:
                write(self.path, self.url, self.identity, size)
                self.verified = size

    def last_checkpoint(self, fd: int) -> None:
        """The claim a later run resumes from. On a full disk the sidecar itself has no
        room: the .part's last ENOSPC_ROOM bytes are given back and it is tried again."""
        try:
            self.checkpoint(fd)
            return
        except LocalWriteError as exc:
            if getattr(exc, "errno", None) != errno.ENOSPC:
                return           # cleanup-grade: the earlier sidecar still holds
        try:
            with mapped("write", path=self.part):
                size = os.fstat(fd).st_size
                os.ftruncate(fd, max(self.verified, size - ENOSPC_ROOM))
            self.checkpoint(fd)
        except LocalWriteError:  # cleanup-grade: the earlier sidecar still holds
            pass

    def claim_all(self, size: int) -> None:
        """Before the rename: the sidecar claims all `size` bytes (fsynced already), so a
        run killed before the rename asks for bytes=SIZE- and takes the 416 as complete."""
        if self.resumable and self.identity is not None and size != self.verified:
            write(self.path, self.url, self.identity, size)
            self.verified = size

    def clear(self) -> None:
        """After the rename: the sidecar and the temporaries killed writers left go."""
        for leftover in [self.path] + stale_temporaries(self.path):
            remove(leftover)
