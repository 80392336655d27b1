"""Every way bytes move from a Stream into a sink, chosen once per job (MODES).

    mode         worker thread does            this thread does        kernel splice
    splice       writes (responses that        splice_to + drains the  socket -> pipe -> file
                 cannot splice: TLS, chunked)  pipe into the file
    copy         nothing (never started)       receives, writes        no (stdout)
    digest       hashes                        receives, writes        no (devices, stdout)
    part-digest  hashes (spliced regions read  receives, writes,       yes
                 back from the .part)          drains the pipe
    decode       hashes, decodes, writes       receives                no

The pipeline is the Stream's consumer and the only caller in the data path that moves
bytes: it pulls from the stream (readinto into a ring of RING_BUFFERS buffers, or
splice_to into a pipe it then drains), follows the stream's ledger (a restart from zero,
a new identity) before any returned byte is written, counts what it fed and wrote, and
asks the digest.Verifier for the verdict at the end. Nothing below it writes to disk.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Tuple

from .decompress import make_decoder
from .digest import FileHasher, Verifier, Worker, new_hasher
from .errors import (ChecksumMismatch, DecompressError, InvariantViolation, ProtocolError,
                     ResourceChanged, mapped)
from .events import reporter
from .options import Options
from .resume import Stream
from .splice import Splicer

if TYPE_CHECKING:   # hints only: a plain job never loads the Metalink modules (job.py)
    from .metalink import Pieces
    from .piececheck import PieceCheck

WRITE_BUFFER = 1 << 20    # one recv_into + os.write per MiB: see docs/benchmarks.md
RING_BUFFERS = 2          # buffers in flight to the worker, 1 MiB each (bench, 768 MiB xz
                          # image: 2 met every pipeline target; 4 cost 2 MiB of peak RSS
                          # and was no faster)

Progress = Optional[Callable[[Stream], None]]


class Mode(NamedTuple):
    """How one job moves its bytes (see the table above)."""
    name: str
    writes_here: bool    # this thread writes each buffer while the worker hashes it
    splices: bool        # the kernel may move bytes socket -> pipe -> file


MODES = {mode.name: mode for mode in (
    Mode("splice", writes_here=False, splices=True),
    Mode("copy", writes_here=True, splices=False),     # bench baseline: a hand-over to a
                                                       # thread cost plain -o - 1.28x wall
    Mode("digest", writes_here=True, splices=False),
    Mode("part-digest", writes_here=True, splices=True),
    Mode("decode", writes_here=False, splices=False),
)}


def choose_mode(checksum: bool, decoding: bool, part: bool, stdout: bool) -> Mode:
    """The one place a job's mode is decided."""
    if decoding:
        return MODES["decode"]
    if checksum:
        return MODES["part-digest" if part else "digest"]
    return MODES["copy" if stdout else "splice"]


class StdoutSink:
    """-o -: bytes go to fd 1 as they come; nothing to record, resume or take back (the
    stream is not restartable, so a change of the object raises ResourceChanged)."""

    fd = 1
    path = "stdout"
    part = None
    recorded = None
    resumable = False
    in_place = False
    splice_ready = False
    emit = None

    def open(self) -> Tuple[int, None]:
        return 0, None

    def record(self, identity: Any) -> None:
        self.recorded = identity

    def expect_size(self, size: int) -> None:
        """Any size fits a stream."""

    def write(self, view: Any) -> None:
        with mapped("write", path=self.path):
            while view:
                view = view[os.write(self.fd, view):]

    def spliced(self, count: int) -> None:
        raise InvariantViolation("no splice into stdout")

    def restart(self) -> None:
        raise InvariantViolation("bytes written to stdout cannot be taken back")

    def position(self) -> Optional[int]:
        return None

    def commit(self, size: int) -> Optional[float]:
        return None

    def abandon(self, keep: bool) -> None:
        """Nothing to remove."""


class Pipeline:
    """Stream -> (verifier, decoder) -> sink in the job's mode, restartable from zero.

    `fed` counts the bytes taken from the stream (the compressed ones when decoding),
    `written` the bytes in the output; both include an earlier run's held bytes.
    """

    def __init__(self, sink: Any, opts: Options, checksum: Optional[Tuple[str, str]],
                 held: int, size: Optional[int] = None, pieces: Optional[Pieces] = None
                 ) -> None:
        self.sink = sink
        self.size = size            # the total a Metalink promised (None: the server's)
        self.decoder: Any = None if opts.decompress == "none" else make_decoder(
            opts.decompress, opts.xz_memlimit, opts.decode_threads)
        self.part = sink.part
        self.mode = choose_mode(checksum is not None, self.decoder is not None,
                                bool(self.part), isinstance(sink, StdoutSink))
        self.fed = self.written = held
        self.verifier: Optional[Verifier] = None
        self.worker = self._worker(checksum, held)
        self.splicer = Splicer.for_sink(sink) if self.mode.splices else None
        self._restarts = 0          # the stream generation the output holds
        self._identity: Any = None  # the identity last recorded or checked
        self.check = None if pieces is None else _piece_check(
            pieces, size, sink, held, self.decoder is not None, reporter(opts))

    def _worker(self, checksum: Optional[Tuple[str, str]], held: int) -> Worker:
        """The mode's worker thread, and the Verifier over it when there is a checksum."""
        if self.mode.name == "part-digest":
            assert checksum is not None
            worker: Worker = FileHasher(new_hasher(checksum[0]), self.part, held)
        elif checksum is not None:
            consume = self._write if self.mode.name == "decode" else None
            worker = Worker(new_hasher(checksum[0]), consume=consume)
        else:
            worker = Worker(consume=None if self.mode.writes_here else self._write)
        if checksum is not None:
            self.verifier = Verifier(checksum, worker, held)
        return worker

    # ------------------------------------------------------------ the byte loop
    def run(self, stream: Stream, progress: Progress = None) -> Optional[float]:
        """Move every byte, check the end, keep the output; on any failure abandon it
        (keeping a .part only when a later run can resume it). Returns read-back seconds."""
        self._identity = stream.identity
        try:
            self._move(stream, progress)
            self.finish()
            check_invariants(stream, self.fed, self.splicer, self.sink, self.written,
                             self.verifier.position if self.verifier else None)
            return self.sink.commit(self.written)
        except BaseException as exc:
            stream.close()
            self._settle(self.sink.resumable)
            self.sink.abandon(keep=_resumable(exc, stream, self.sink))
            raise

    def _move(self, stream: Stream, progress: Progress) -> None:
        """Splice while the response and the output allow it, else receive into the ring
        while the worker takes each buffer; at the end, the verifier's verdict (which may
        start one clean refetch from zero: then the loop goes on)."""
        ring = [memoryview(bytearray(WRITE_BUFFER)) for _ in range(ring_size(self))]
        turn = 0
        while True:
            if self.splicer is not None and self.sink.splice_ready and not (
                    self.check and self.check.holding) and self._splice(stream):
                _report(progress, stream)
                continue
            self.worker.drain(keep=len(ring) - 1)   # the buffer about to be reused is done
            view = ring[turn]
            size = stream.readinto(view)
            if size and self.size is not None and wrong_size(stream, self.size, self.fed):
                continue
            self._follow(stream, size)
            if size:
                self._take(stream, view[:size])
                turn = (turn + 1) % len(ring)
                _report(progress, stream)
                continue
            self.worker.drain()
            if self.verifier is None or self.verifier.verdict(stream):
                return

    def _splice(self, stream: Stream) -> bool:
        """One splice: socket -> pipe (the stream), then pipe -> output (here)."""
        self.worker.drain(keep=self.worker.behind_splice)   # queued writes land first;
        assert self.splicer is not None                     # a FileHasher may trail
        moved = stream.splice_to(self.splicer, WRITE_BUFFER)
        if moved <= 0:
            return False
        self._follow(stream, moved)
        self.splicer.drain(moved)
        self.sink.spliced(moved)
        for offset, size in runs(self.check, self.fed, moved):
            if self.check is not None and not self.check.passes(offset, size, stream, self):
                break
            if self.verifier is not None:
                self.verifier.spliced(size)
            self.fed += size
            self.written += size
        return True


    def _follow(self, stream: Stream, size: int) -> None:
        """Before writing what the stream just returned: start the output over if the
        stream restarted from zero; record a new identity before its first byte (the
        sidecar of a .part; a device too small for a known size is refused here)."""
        ledger = stream.ledger
        if ledger.restarts != self._restarts:
            self._restarts = ledger.restarts
            self.restart()
        identity = ledger.identity
        if size and identity is not None and identity is not self._identity:
            self._identity = identity
            if identity != self.sink.recorded:
                self.sink.record(identity)
            if self.decoder is None and identity.total is not None:
                self.sink.expect_size(identity.total)

    def _take(self, stream: Stream, view: memoryview) -> None:
        """One received buffer into the mode's stages, each piece checked first (and
        held back until it verifies when the output cannot be cut back)."""
        check = self.check
        if check is None:      # the common case, once per buffer: no run to split
            self._pass(view)
            return
        start = self.fed + check.pending
        for offset, size in runs(check, start, len(view)):
            part: Optional[memoryview] = view[offset - start:offset - start + size]
            if not check.passes(offset, part, stream, self):
                return
            part = check.release(part, self.worker)
            if part is not None:
                self._pass(part)

    def _pass(self, view: memoryview) -> None:
        """Bytes into the mode's stages (the worker does not copy them)."""
        self.fed += len(view)
        if self.verifier is not None:
            self.verifier.update(view)
        elif not self.mode.writes_here:
            self.worker.update(view)
        if self.mode.writes_here:
            self._write(view)

    # ------------------------------------------------------------ the stages
    def restart(self) -> None:
        self.worker.drain()   # no byte of the old start may land after the restart
        if self.check is not None:
            self.check.restart()
        self.sink.restart()
        self.fed = self.written = 0
        if self.decoder is not None:
            self.decoder.reset()
        if self.verifier is not None:
            self.verifier.reset()

    def _write(self, view: memoryview) -> None:
        if self.decoder is None:
            self.sink.write(view)
            self.written += len(view)
            return
        for piece in self.decoder.feed(view):
            self.sink.write(piece)
            self.written += len(piece)
            del piece   # freed before the decoder builds the next one (peak memory)

    def finish(self) -> None:
        """The input ended: the decoder checks its end (and may hand over a last piece)."""
        if self.decoder is not None:
            for piece in self.decoder.finish():
                self.sink.write(piece)
                self.written += len(piece)

    @property
    def digest(self) -> Optional[str]:
        return self.verifier.digest if self.verifier is not None else None

    def _settle(self, resumable: bool) -> None:
        """Before a failed job's output is abandoned: no write may still be in flight (the
        last checkpoint must see the final size, and the fd is closed next). Buffers already
        handed over are written first when the .part is kept for a resume."""
        try:
            if resumable:
                self.worker.drain()
        except BaseException:  # cleanup only: the job's own failure is what is reported
            pass
        finally:
            self.worker.close()

    def close(self) -> None:
        """Threads and pipes released, whatever happened (a failed xz download leaves no
        pool thread behind)."""
        self.worker.close()
        if self.check is not None:
            self.check.close()
        if self.decoder is not None:
            self.decoder.close()
        if self.splicer is not None:
            self.splicer.close()


def _piece_check(pieces: Pieces, size: Optional[int], sink: Any, held: int, decoding: bool,
                 emit: Any) -> Optional[PieceCheck]:
    """The job's piece stage (piececheck.piece_check)."""
    from .piececheck import piece_check   # lazily, like every Metalink module (job.py)
    return piece_check(pieces, size, sink, held, decoding, emit)


def ring_size(pipeline: Pipeline) -> int:
    """One buffer when nothing runs on the worker (copy mode: each buffer is written
    before the next recv; bench baseline, -o -: 1 MiB less peak RSS), else the ring."""
    if pipeline.verifier is None and pipeline.mode.writes_here and pipeline.check is None:
        return 1
    return RING_BUFFERS


def runs(check: Optional[PieceCheck], offset: int, size: int) -> Any:
    """[offset, offset+size) as runs that stay inside one piece (one run without)."""
    return ((offset, size),) if check is None else check.parts(offset, size)


def wrong_size(stream: Stream, expected: Optional[int], held: int) -> bool:
    """A mirror serving another length than the Metalink's <size> is not serving this
    image: what it just sent is dropped (the output holds `held` bytes) and the job moves
    on to the next mirror (non-retryable), or gives up when there is none."""
    identity = stream.ledger.identity
    if expected is None or identity is None or identity.total in (None, expected):
        return False
    stream.rewind(ProtocolError("the server's object is %d bytes; the Metalink says %d"
                                % (identity.total, expected), url=stream.url,
                                retryable=False), held)
    return True


def _report(progress: Progress, stream: Stream) -> None:
    if progress is not None:
        progress(stream)


def check_invariants(stream: Stream, delivered: int, splicer: Optional[Splicer] = None,
                     sink: Any = None, written: Optional[int] = None,
                     hashed: Optional[int] = None) -> None:
    """At the end of a job, before the output is kept: every byte received was delivered
    exactly once (and hashed once). A failure here is a rawfetch bug, reported instead of
    a wrong file."""
    problems = []
    left = splicer.pending() if splicer is not None else 0
    if left:
        problems.append("%d bytes left in the splice pipe" % left)
    if delivered != stream.offset:
        problems.append("%d bytes delivered but the stream is at %d" % (delivered, stream.offset))
    if stream.size is not None and stream.offset != stream.size:
        problems.append("stream at %d of %d bytes" % (stream.offset, stream.size))
    if hashed is not None and hashed != delivered:
        problems.append("%d bytes hashed of %d delivered" % (hashed, delivered))
    if sink is not None and written is not None:
        position = sink.position()
        if position is not None and position != written:
            problems.append("%s is at %d, expected %d" % (sink.path, position, written))
    if problems:
        raise InvariantViolation("byte accounting does not add up (%s); the output was not "
                                 "kept" % "; ".join(problems), url=stream.url)


def _resumable(exc: BaseException, stream: Stream, sink: Any) -> bool:
    """Keep the .part for a later run? Not after a verdict against these bytes, nor
    when nothing provable is held."""
    if not sink.resumable or stream.offset == 0:
        return False
    if isinstance(exc, (ChecksumMismatch, ResourceChanged, DecompressError,
                        InvariantViolation)):
        return False
    if isinstance(exc, ProtocolError) and not exc.retryable:
        return False
    return stream.resumable
