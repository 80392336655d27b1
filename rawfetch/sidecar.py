"""PATH.part.json: what a later run needs to resume PATH.part, and how far it may trust it.

The sidecar names the URL, the object's identity (length, ETag, Last-Modified and the
response's Date, which tells whether that Last-Modified is a strong validator) and
`verified`: how many bytes at the start of the .part were fsynced *before* this sidecar
was written. Write order (sinks.PartFile.checkpoint):

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

import json
import os
from typing import List, NamedTuple, Optional, Tuple

from .errors import mapped
from .judge import Identity

SIDECAR_FORMAT = 2        # 2 added `verified`; a format-1 sidecar is not trusted (no length)
SIDECAR_MAX_BYTES = 65536  # a sidecar is a few hundred bytes; refuse to parse a huge one
TEMP_SUFFIX = ".tmp"


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
