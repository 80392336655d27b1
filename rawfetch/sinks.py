"""Where downloaded bytes go: the Sink protocol and the sinks behind it.

* PartFile -- PATH.part with its sidecar and lock, renamed onto PATH only when complete
  and verified; resumable across runs (sidecar.py, lock.py).
* InPlace -- an existing file or a device written from its start; no .part, no rename
  (it lives in disk.py, beside the steps SafeDisk takes around it).
* SafeDisk -- every in-place write in download(): InPlace plus the format check, the first
  MiB zeroed first and written last, the read-back (disk.py says why).

A sink's life is one explicit state, moved only along its class's table (PART_STEPS,
DISK_STEPS). A call in a state that does not allow it raises InvariantViolation: a
rawfetch bug is reported as one, and the output is not kept, rather than a byte landing
where it must not.
"""
from __future__ import annotations

import enum
import os
import stat
from typing import (Any, Collection, Dict, FrozenSet, Mapping, Optional, Protocol, Tuple,
                    TypeVar, runtime_checkable)

from . import disk, sidecar
from .redact import redact_url
from .disk import HEAD_HOLD, SIGNATURE_BYTES, HeldHead, InPlace, WrittenDigest
from .errors import InvalidRequest, InvariantViolation, LocalWriteError, mapped
from .judge import Identity
from .lock import LockFile
from .output import Emit, close_fd, fsync_dir, open_part, write_all

__all__ = ["Sink", "PartFile", "InPlace", "SafeDisk", "open_output", "PartState", "DiskState",
           "PART_STEPS", "DISK_STEPS", "step", "require"]
State = TypeVar("State", bound=enum.Enum)


@runtime_checkable
class Sink(Protocol):
    """What download() and the pipeline need from an output, in the order they call it.

    Attributes: `fd` (the descriptor bytes land in; splice writes at its file offset),
    `path` (for messages), `part` (the .part that a digest of the output may read back,
    None for in-place sinks), `recorded` (the identity the bytes belong to), `resumable`
    (a failed run may keep its bytes for the next one), `in_place` (no .part, no rename),
    `splice_ready` (the kernel may move bytes into fd right now), `emit` (the event
    callback, or None).
    """

    emit: Emit

    @property
    def fd(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def part(self) -> Optional[str]: ...
    @property
    def recorded(self) -> Optional[Identity]: ...
    @property
    def resumable(self) -> bool: ...
    @property
    def in_place(self) -> bool: ...
    @property
    def splice_ready(self) -> bool: ...
    def open(self) -> Tuple[int, Optional[Identity]]:
        """First call: lock and open the output. Returns (bytes already held, their
        identity) when an earlier run's bytes can be resumed, else (0, None)."""

    def record(self, identity: Identity) -> None:
        """Before the first byte of a (new) identity is written: remember it (a PartFile
        writes its sidecar now, so a crash never leaves bytes of an unnamed object)."""

    def expect_size(self, size: int) -> None:
        """The number of bytes to write is known before the first one: refuse now, with
        nothing written, an output too small for it."""

    def write(self, view: Any) -> None:
        """Append every byte of `view` at the output's position, or raise LocalWriteError."""

    def spliced(self, count: int) -> None:
        """`count` bytes were moved into fd by splice (only while splice_ready)."""

    def restart(self) -> None:
        """The download starts over from byte zero: what was written no longer counts."""

    def position(self) -> Optional[int]:
        """Bytes the output holds, for the end-of-job accounting check (None: a target
        without positions, such as a pipe)."""

    def commit(self, size: int) -> Optional[float]:
        """All `size` bytes arrived and were verified: make them durable and final, then
        unlock. Returns the read-back seconds, if any. A failure leaves it for abandon()."""

    def abandon(self, keep: bool) -> None:
        """After a failure: close and unlock, keeping the bytes for a later run only when
        `keep` and the sink is resumable. A no-op once committed or abandoned."""


def step(table: Mapping[State, FrozenSet[State]], now: State, to: State, path: str) -> State:
    """`to` when the table allows now -> to; else InvariantViolation (a rawfetch bug)."""
    if to not in table[now]:
        raise InvariantViolation("%s: the output cannot go from %s to %s (a rawfetch bug); "
                                 "it was not kept" % (path, now.name, to.name))
    return to


def require(now: enum.Enum, allowed: Collection[enum.Enum], call: str, path: str) -> None:
    """InvariantViolation unless `call` is allowed in state `now` (a rawfetch bug)."""
    if now not in allowed:
        raise InvariantViolation("%s: %s() called on an output that is %s (a rawfetch bug); "
                                 "it was not kept" % (path, call, now.name))


# ---------------------------------------------------------------- PartFile
class PartState(enum.Enum):
    """Where a PartFile stands; each value says what it means on disk."""

    FRESH = "made: nothing locked or opened yet"
    OPEN = "locked, the .part open and appended to; checkpoints let the sidecar claim it"
    COMMITTED = "renamed onto PATH, the sidecar removed, unlocked"
    KEPT = "failed: the .part and its sidecar kept for a later run, unlocked"
    DISCARDED = "failed: the .part and its sidecar removed, unlocked"
    CLOSED = "never opened (or open failed): nothing of ours on disk to keep or remove"


PART_STEPS: Dict[PartState, FrozenSet[PartState]] = {
    PartState.FRESH: frozenset({PartState.OPEN, PartState.CLOSED}),
    PartState.OPEN: frozenset({PartState.COMMITTED, PartState.KEPT, PartState.DISCARDED}),
    PartState.COMMITTED: frozenset(),
    PartState.KEPT: frozenset(),
    PartState.DISCARDED: frozenset(),
    PartState.CLOSED: frozenset(),
}


class PartFile:
    """PATH.part with its sidecar; renamed onto PATH only when complete and verified.

    The whole job holds PATH.part.lock (lock.LockFile): one writer per output. The
    sidecar claims only bytes fsynced before it was written (sidecar.Claim keeps the
    write order); a resume cuts the .part back to that length before any Range.
    `resumable` False (gunzip output: the decoder state cannot be saved) means every run
    starts from zero and no sidecar is written.
    """

    in_place = False
    splice_ready = True   # the kernel may move bytes straight into fd at its offset
    rewindable = True     # a bad piece is cut back (rewind)

    def __init__(self, path: str, url: str, resumable: bool = True, emit: Emit = None) -> None:
        self.path = path
        self.part = path + ".part"
        self.resumable = resumable
        self.emit = emit
        self.fd = -1
        self.state = PartState.FRESH
        # the sidecar is on disk: its URL never with a password
        self.claim = sidecar.Claim(self.part + ".json", redact_url(url), self.part, resumable)
        self.lock = LockFile(self.part)

    @property
    def recorded(self) -> Optional[Identity]:
        return self.claim.identity

    def open(self) -> Tuple[int, Optional[Identity]]:
        """Lock, open the .part; return (bytes held, identity) if an earlier run's bytes
        are usable, cut back to the length its sidecar verified."""
        require(self.state, (PartState.FRESH,), "open", self.path)
        self.lock.acquire()
        try:
            held = self._open_locked()
        except BaseException:
            close_fd(self)
            self.lock.release()
            self._go(PartState.CLOSED)
            raise
        self._go(PartState.OPEN)
        return held, self.recorded

    def _open_locked(self) -> int:
        loaded = sidecar.load(self.claim.path, self.claim.url) if self.resumable else None
        self.fd = open_part(self.part)
        with mapped("write", path=self.part):
            size = os.fstat(self.fd).st_size
        held, why = sidecar.usable(loaded, size) if loaded is not None else (
            0, "a decompressing run always starts from zero")
        if why and (size or (loaded is not None and loaded.why != "no sidecar")):
            self._event("leftover", action="discarded", why=why, size=size, kept=0)
        elif held < size:
            self._event("leftover", action="cut", size=size, kept=held,
                        why="%d bytes past the %d the sidecar verified" % (size - held, held))
        with mapped("write", path=self.part):
            os.ftruncate(self.fd, held)   # before any Range: unverified bytes never count
            os.lseek(self.fd, held, os.SEEK_SET)
        self.claim.start(loaded.identity if loaded is not None and held else None, held)
        return held

    def record(self, identity: Identity) -> None:
        """Write the sidecar before any byte of this identity is written."""
        require(self.state, (PartState.OPEN,), "record", self.path)
        self.claim.record(identity)

    def expect_size(self, size: int) -> None:
        """A file grows to any size: nothing to check before writing."""

    def restart(self) -> None:
        """Back to zero: the sidecar stops claiming bytes first, then the .part is cut."""
        require(self.state, (PartState.OPEN,), "restart", self.path)
        self.claim.restart()
        with mapped("write", path=self.part):
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)

    def rewind(self, offset: int) -> None:
        """A bad piece: the sidecar stops claiming past `offset`, then the .part is cut
        back to it and the next byte is written there."""
        require(self.state, (PartState.OPEN,), "rewind", self.path)
        self.claim.cut(offset)
        with mapped("write", path=self.part):
            os.ftruncate(self.fd, offset)
            os.lseek(self.fd, offset, os.SEEK_SET)

    def write(self, view: Any) -> None:
        require(self.state, (PartState.OPEN,), "write", self.path)
        write_all(self.fd, view, self.part)
        self.claim.advance(self.fd, memoryview(view).nbytes)

    def spliced(self, count: int) -> None:
        require(self.state, (PartState.OPEN,), "spliced", self.path)
        self.claim.advance(self.fd, count)

    def position(self) -> Optional[int]:
        """Bytes in the .part (its size: it is only ever appended to)."""
        require(self.state, (PartState.OPEN,), "position", self.path)
        with mapped("write", path=self.part):
            return os.fstat(self.fd).st_size

    def commit(self, size: int) -> Optional[float]:
        """fsync, check the size on disk, let the sidecar claim it all, rename onto PATH,
        fsync the directory; remove the sidecar and temporaries killed writers left; unlock.
        A failure before the rename keeps the lock and leaves the rest to abandon()."""
        require(self.state, (PartState.OPEN,), "commit", self.path)
        with mapped("write", path=self.path):
            os.fsync(self.fd)
            on_disk = os.fstat(self.fd).st_size
            os.close(self.fd)
            self.fd = -1
            if on_disk != size:
                raise LocalWriteError("%s holds %d bytes, expected %d"
                                      % (self.part, on_disk, size))
            self.claim.claim_all(on_disk)
            os.replace(self.part, self.path)
        self._go(PartState.COMMITTED)
        try:
            self.claim.clear()
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        finally:
            self.lock.release()
        return None

    def abandon(self, keep: bool) -> None:
        """After a failure: keep the .part only if a later run can resume it, with a
        last checkpoint so the sidecar claims every byte that made it to disk."""
        if self.state is PartState.FRESH:
            self._go(PartState.CLOSED)   # never locked: nothing on disk is ours
        if not PART_STEPS[self.state]:
            return                       # final already: nothing left to undo
        try:
            if keep and self.fd >= 0:
                self.claim.last_checkpoint(self.fd)
            close_fd(self)
            if not keep:
                sidecar.remove(self.part)
                sidecar.remove(self.claim.path)
        finally:
            self.lock.release()
            self._go(PartState.KEPT if keep else PartState.DISCARDED)

    def _go(self, to: PartState) -> None:
        self.state = step(PART_STEPS, self.state, to, self.path)

    def _event(self, name: str, **fields: Any) -> None:
        if self.emit is not None:
            self.emit(name, path=self.part, **fields)


# ---------------------------------------------------------------- SafeDisk
class DiskState(enum.Enum):
    """Where a SafeDisk stands; each value says what it means for the target."""

    FRESH = "made: the target is not open yet"
    OPEN = "open; the first bytes are being collected, unchecked; its start never zeroed"
    HOLDING = "first bytes passed the format check, the start zeroed; the head being held"
    WRITING = "the head complete and held in memory; the rest written through at offsets"
    RESTARTED = "start zeroed earlier, the download began again: first bytes re-collected"
    STREAMING = "(a target without offsets) 4 bytes checked and written; the rest streams"
    HEAD_WRITTEN = "commit: tail fsynced, the held head written and fsynced, target closed"
    COMMITTED = "the image is on the target (and read back, when asked)"
    ABANDONED = "failed before its start was ever zeroed: nothing to undo"
    WIPED = "failed after zeroing began: the start zeroed again and fsynced"
    WIPE_FAILED = "failed after zeroing began, and zeroing the start again failed too"
    PRESERVED = "failed after zeroing began; preserve_on_error left the start as it was"


D = DiskState
FAILED_AFTER_WIPE = frozenset({D.WIPED, D.WIPE_FAILED, D.PRESERVED})
DISK_STEPS: Dict[DiskState, FrozenSet[DiskState]] = {
    D.FRESH: frozenset({D.OPEN, D.ABANDONED}),
    D.OPEN: frozenset({D.OPEN, D.HOLDING, D.STREAMING, D.ABANDONED}),
    D.HOLDING: frozenset({D.WRITING, D.RESTARTED, D.HEAD_WRITTEN}) | FAILED_AFTER_WIPE,
    # WRITING -> HOLDING: a bad piece inside the held head (rewind) cuts the head back
    D.WRITING: frozenset({D.HOLDING, D.RESTARTED, D.HEAD_WRITTEN}) | FAILED_AFTER_WIPE,
    D.RESTARTED: frozenset({D.RESTARTED, D.HOLDING}) | FAILED_AFTER_WIPE,
    D.STREAMING: frozenset({D.OPEN, D.HEAD_WRITTEN, D.ABANDONED}),
    # ABANDONED from HEAD_WRITTEN: a streamed target's only (it has nothing to undo)
    D.HEAD_WRITTEN: frozenset({D.COMMITTED, D.ABANDONED}) | FAILED_AFTER_WIPE,
    D.COMMITTED: frozenset(),
    D.ABANDONED: frozenset(),
    D.WIPED: frozenset(),
    D.WIPE_FAILED: frozenset(),
    D.PRESERVED: frozenset(),
}
ZEROED = frozenset({D.HOLDING, D.WRITING, D.RESTARTED, D.HEAD_WRITTEN})  # undo on failure
TAKING = frozenset({D.OPEN, D.HOLDING, D.WRITING, D.RESTARTED, D.STREAMING})  # write() ok


class SafeDisk:
    """InPlace as the state machine DISK_STEPS: the first bytes checked before the target
    is touched, its first MiB zeroed, the head held until commit() writes it last; a
    failure zeroes the start again (disk.py). Targets without offsets (character devices,
    FIFOs) hold and check only 4 bytes."""

    in_place = True
    resumable = False
    part: Optional[str] = None

    def __init__(self, inner: InPlace, *, preserve_on_error: bool = False,
                 allow_any_format: bool = False, verify_written: bool = False,
                 emit: Emit = None) -> None:
        self.inner = inner
        self.path: str = inner.path
        self.preserve_on_error = preserve_on_error
        self.allow_any_format = allow_any_format
        self.verify_written = verify_written
        self.emit = emit
        self.state = D.FRESH
        self.head = HeldHead(HEAD_HOLD)   # written last (4 bytes when not seekable)
        self.taken = 0               # output bytes taken in this pass (head included)
        self.digest: Optional[WrittenDigest] = None
        self.readback_seconds: Optional[float] = None

    fd = property(lambda self: self.inner.fd)
    recorded = property(lambda self: self.inner.recorded)
    rewindable = property(lambda self: self.inner.seekable and self.digest is None,
                          doc="a bad piece can be cut back: no read-back digest saw it")

    splice_ready = property(lambda self: self.state in (D.WRITING, D.STREAMING) and self.digest
                            is None, doc="the head complete, no read-back digest to feed")
    blocks = property(lambda self: self.inner.blocks,
                      doc="a block device's BlockTail (splice drains whole blocks into it)")

    def open(self) -> Tuple[int, Optional[Identity]]:
        """Open the target; nothing is written yet. Never resumes (returns 0 held)."""
        require(self.state, (D.FRESH,), "open", self.path)
        try:
            self.inner.open()
            if not self.inner.seekable:
                self.head = HeldHead(SIGNATURE_BYTES)
                if self.verify_written:
                    raise InvalidRequest("verify_written needs a block device or a regular"
                                         " file to read back, not %s" % self.path)
        except BaseException:
            self.abandon(keep=False)
            raise
        self.digest = WrittenDigest() if self.verify_written else None
        self._go(D.OPEN)
        return 0, None

    def record(self, identity: Identity) -> None:
        self.inner.record(identity)

    def expect_size(self, size: int) -> None:
        """A block device too small for the image is refused, nothing written (InPlace)."""
        self.inner.expect_size(size)

    def write(self, view: Any) -> None:
        require(self.state, TAKING, "write", self.path)
        view = memoryview(view)
        if self.digest is not None:
            self.digest.update(view)
        if not self.head.complete:
            rest = self.head.take(view)
            self.taken += len(view) - len(rest)
            view = rest
            if len(self.head.signature) == SIGNATURE_BYTES:
                self._check_then_wipe()
            if self.head.complete:
                self._head_complete()
        if view:
            self.inner.write(view)
            self.taken += len(view)

    def spliced(self, count: int) -> None:
        """Account for `count` bytes the kernel moved into fd (only when splice_ready)."""
        if not self.splice_ready:   # the bytes would miss the held head or the digest
            raise InvariantViolation("%s: bytes spliced while the output is %s (a rawfetch "
                                     "bug); it was not kept" % (self.path, self.state.name))
        self.taken += count

    def position(self) -> Optional[int]:
        """The fd's real offset once the head is complete, the held bytes before; None
        without positions (a character device, a FIFO)."""
        if self.state is D.WRITING or not self.inner.seekable:
            return self.inner.position()
        return len(self.head.data)

    def restart(self) -> None:
        """The download starts over from zero: drop the held head and check the new
        first bytes again. The zeroed start stays zeroed; the tail is rewritten."""
        require(self.state, TAKING, "restart", self.path)
        if not self.inner.seekable:
            self.inner.restart()
        self.head = HeldHead(self.head.size)
        self.taken = 0
        if self.digest is not None:
            self.digest = WrittenDigest()
        self._go(D.RESTARTED if self.state in ZEROED else D.OPEN)

    def rewind(self, offset: int) -> None:
        """A bad piece: `offset` next again (disk.cut_back; 0: restart, format re-checked)."""
        if offset == 0:
            return self.restart()
        require(self.state, (D.HOLDING, D.WRITING, D.RESTARTED), "rewind", self.path)
        if disk.cut_back(self.inner, self.head, offset) and self.state is D.WRITING:
            self._go(D.HOLDING)
        self.taken = offset

    def commit(self, size: int) -> Optional[float]:
        """Everything arrived and was verified: fsync the rest, write the held head,
        fsync; read back if asked. Returns the read-back seconds (None without it).
        A failure here cleans up (zeroes) before raising: abandon() then does nothing."""
        require(self.state, TAKING, "commit", self.path)
        try:
            if size != self.taken:
                raise LocalWriteError("%s: %d bytes to commit but %d were written"
                                      % (self.path, size, self.taken))
            self._check_then_wipe()
            self.inner.flush()       # a block device's last, partial block
            self.inner.cut(size)     # a regular file: no old tail under the new head
            self._write_head()
            self.inner.commit(size)
            self._go(D.HEAD_WRITTEN)
            self._event("head_written", bytes=len(self.head.data), written=size)
            if self.digest is not None:   # read back: the device holds what we wrote
                self.readback_seconds, bad = disk.verify_read_back(self.digest, self.path, size)
                self._event("readback", bytes=size, seconds=self.readback_seconds, ok=bad is None)
                if bad is not None:
                    raise bad
            self._go(D.COMMITTED)
        except BaseException:
            self._fail()
            raise
        return self.readback_seconds

    def abandon(self, keep: bool) -> None:
        """After a failure: zero the start again if zeroing began (not resumable, so
        `keep` is ignored). A no-op once committed or cleaned up."""
        if DISK_STEPS[self.state]:
            self._fail()

    # ------------------------------------------------------------ steps
    def _go(self, to: DiskState) -> None:
        self.state = step(DISK_STEPS, self.state, to, self.path)

    def _check_then_wipe(self) -> None:
        """Refuse a foreign container before touching the target; then zero its start."""
        if self.state not in (D.OPEN, D.RESTARTED):
            return               # checked already in this pass
        if not self.allow_any_format:
            disk.refuse_foreign(self.head.signature, self.path,
                                untouched=self.state not in ZEROED)
        if not self.inner.seekable:
            return               # STREAMING once the checked bytes are out
        first_time = self.state is D.OPEN
        self._go(D.HOLDING)      # from here on a failure zeroes again, even a failed wipe
        if first_time:
            zeroed = disk.zero_start(self.path, self.inner.capacity, "zeroing its first MiB")
            self._event("wipe", bytes=zeroed)

    def _head_complete(self) -> None:
        """Positional: later bytes go at their offsets (the fd's file offset, so splice
        works too). Otherwise the 4 checked bytes go out now."""
        if self.inner.seekable:
            self.inner.seek(self.head.size)   # drops bytes an earlier pass still held
            self._go(D.WRITING)
        else:
            self._write_head()

    def _write_head(self) -> None:
        """Positional: fsync the tail, then the held head at offset 0 (inner.commit
        fsyncs it). Otherwise the checked bytes go out, once (-> STREAMING)."""
        if self.inner.seekable:
            disk.write_head_last(self.fd, self.head.data, self.path)
        elif self.state is D.OPEN:
            write_all(self.fd, self.head.data, self.path)
            self._go(D.STREAMING)

    def _fail(self) -> None:
        """The end of a failed job: zero the start again when zeroing began, unless
        preserve_on_error (best effort: the job's own error is what the caller sees, the
        zeroing's outcome is the wipe_on_failure event and the state); close the target."""
        try:
            if self.state not in ZEROED:
                self._go(D.ABANDONED)
            elif self.preserve_on_error:
                self._go(D.PRESERVED)
            else:
                outcome = disk.zero_start_again(self.path, self.inner.capacity)
                self._event("wipe_on_failure", **outcome)
                self._go(D.WIPED if outcome["ok"] else D.WIPE_FAILED)
        finally:
            self.inner.abandon(keep=False)

    def _event(self, name: str, **fields: Any) -> None:
        if self.emit is not None:
            self.emit(name, path=self.path, **fields)


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
