"""download(): the file appears only when complete and verified; resumable across runs.

Bytes go to PATH.part; PATH.part.json (the sidecar) records the URL, the object's
identity (length, ETag, Last-Modified) and how many bytes were fsynced, so a later run can
resume with If-Range (sidecar.py). PATH.part.lock keeps a second process off the same
output (lock.py). On success: fsync, verify, rename onto PATH, fsync the directory, drop
the sidecar. Devices
(and in_place files) are written directly instead; a decoder (gzip, xz, bzip2, auto)
decompresses on the way.
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

from . import timing
from .digest import FileHasher, Worker, new_hasher, parse_checksum
from .decompress import make_decoder
from .errors import (ChecksumMismatch, DecompressError, InvariantViolation, ProtocolError,
                     ResourceChanged)
from .events import emit, wants_events
from .options import Options, make_options
from .output import open_output
from .retry import Attempt, Budget
from .resume import Segment, Stream, with_checksum_file
from .splice import Splicer

WRITE_BUFFER = 1 << 20    # one recv_into + os.write per MiB: see docs/benchmarks.md
RING_BUFFERS = 2          # buffers in flight to the worker, 1 MiB each (bench, 768 MiB xz
                          # image: 2 met every pipeline target; 4 cost 2 MiB of peak RSS
                          # and was no faster)


class DownloadResult(NamedTuple):
    path: str
    url: str
    bytes: int               # bytes downloaded (the compressed bytes when decompressing)
    written: int             # bytes written to path (decompressed bytes when decompressing)
    attempts: int
    restarts: int
    resumed_from: int        # bytes already held from an earlier run
    elapsed: float
    digest: Optional[str]    # "algo:hex" of the downloaded bytes, when a checksum was given
    history: Tuple[Attempt, ...]     # the last policy.MAX_HISTORY failed attempts
    segments: Tuple[Segment, ...]   # which mirror served which byte ranges


class _Pipeline:
    """Stream -> (decoder) -> sink, restartable from zero: the stream's consumer.

    `fed` counts the bytes the stream delivered into the pipeline (the compressed ones
    when decompressing), `written` the bytes in the output; both include an earlier run's.
    """

    def __init__(self, sink: Any, opts: Options, held: int) -> None:
        self.sink = sink
        self.decoder: Any = None if opts.decompress == "none" else make_decoder(
            opts.decompress, opts.xz_memlimit, opts.decode_threads)
        self.fed = held
        self.written = held
        self.worker: Optional[Worker] = None   # hashes, decodes and writes off-thread

    def record(self, identity: Any) -> None:
        """A new identity, before any byte of it is written (the sidecar of a .part; a
        device too small for a known size is refused here, before the first byte)."""
        if identity != self.sink.recorded:
            self.sink.record(identity)
        if self.decoder is None and identity.total is not None:
            self.sink.expect_size(identity.total)

    def restart(self) -> None:
        if self.worker is not None:
            self.worker.drain()   # no byte of the old start may land after the restart
        self.sink.restart()
        self.fed = self.written = 0
        if self.decoder is not None:
            self.decoder.reset()

    def write(self, view: memoryview) -> None:
        self.fed += len(view)
        if self.decoder is None:
            self.sink.write(view)
            self.written += len(view)
            return
        for piece in self.decoder.feed(view):
            self.sink.write(piece)
            self.written += len(piece)
            del piece   # freed before the decoder builds the next one (peak memory)

    def spliced(self, size: int) -> None:
        """`size` bytes went socket -> pipe -> output in the kernel."""
        self.sink.spliced(size)
        self.fed += size
        self.written += size

    def finish(self) -> None:
        """The input ended: the decoder checks its end (and may hand over a last piece)."""
        if self.decoder is not None:
            for piece in self.decoder.finish():
                self.sink.write(piece)
                self.written += len(piece)


def download(url: str, path: Any, *, urls: Sequence[str] = (),
             options: Optional[Options] = None,
             progress: Optional[Callable[[Stream], None]] = None,
             **kwargs: Any) -> DownloadResult:
    """Download `url` (or the same object from mirrors `urls`) to `path`.

    `progress(stream)` is called after each write (the command's progress line uses it).
    """
    opts = make_options(options, kwargs)
    path = os.fspath(path)
    sink = open_output(path, url, opts.in_place, resumable=opts.decompress == "none")
    budget = Budget(opts)
    opts = with_checksum_file(url, opts, budget)
    sink = _safe_disk(sink, url, opts) if sink.in_place else _reporting(sink, url, opts)
    held, identity = sink.open()      # locked from here: one writer per output
    pipeline = _Pipeline(sink, opts, held)
    splicer = None
    try:
        worker = _worker_for(pipeline, opts, held)
        if worker is None or worker.hashes_spliced:
            splicer = Splicer.create(sink.fd, sink.path)
        stream = Stream(url, opts, offset=held, identity=identity, consumer=pipeline,
                        hasher=worker, mirrors=urls, budget=budget)
        readback = _run(stream, pipeline, progress, splicer)
    except BaseException:
        sink.abandon(keep=True)   # a no-op after _run's own; else unlocks, keeps the .part
        raise
    finally:
        if pipeline.worker is not None:
            pipeline.worker.close()
        if pipeline.decoder is not None:
            pipeline.decoder.close()   # a failed xz download leaves no pool thread behind
        if splicer is not None:
            splicer.close()
    result = DownloadResult(path, url, stream.offset, pipeline.written, stream.attempts,
                            stream.restarts, held, round(timing.now() - stream.started, 3),
                            stream.digest, stream.history, tuple(stream.segments))
    if wants_events(opts):
        emit(opts.on_event, "done", url=url, path=path, bytes=result.bytes,
             written=result.written, digest=result.digest, attempts=result.attempts,
             elapsed=result.elapsed, refetched=stream.refetched, restarts=result.restarts,
             segments=[list(s) for s in result.segments], readback_seconds=readback,
             decompress=pipeline.decoder.kind if pipeline.decoder is not None else "none")
    return result


def _worker_for(pipeline: _Pipeline, opts: Options, held: int) -> Optional[Worker]:
    """When bytes must pass through Python (a checksum, a decoder), one worker thread
    hashes, decodes and writes them; otherwise None (splice or a plain copy)."""
    checksum = parse_checksum(opts.checksum)
    if not checksum and pipeline.decoder is None:
        return None
    part = getattr(pipeline.sink, "part", None)
    if pipeline.decoder is None and part:
        # the worker hashes what reaches the .part: spliced regions read back from it, an
        # earlier run's bytes too, and received buffers as given (no splice: Python 3.8)
        pipeline.worker = FileHasher(new_hasher(checksum[0]), part, held)
        return pipeline.worker
    hasher = new_hasher(checksum[0]) if checksum else None   # nothing held: not a .part
    # With a decoder the worker decodes and writes too (the heavy part); with a digest
    # only it just hashes, while the receiving thread writes the same buffer (bench:
    # hashing and writing in parallel, not one after the other on the worker).
    pipeline.worker = Worker(hasher, consume=pipeline.write if pipeline.decoder else None)
    return pipeline.worker


def _run(stream: Stream, pipeline: _Pipeline, progress: Optional[Callable[[Stream], None]],
         splicer: Optional[Splicer]) -> Optional[float]:
    """Move every byte, check the end, keep the output; on any failure abandon it
    (keeping a .part only when a later run can resume it). Returns read-back seconds."""
    sink = pipeline.sink
    try:
        _move(stream, pipeline, progress, splicer)
        pipeline.finish()
        check_invariants(stream, pipeline.fed, splicer, sink, pipeline.written)
        return sink.commit(pipeline.written)
    except BaseException as exc:
        stream.close()
        _settle(pipeline.worker, sink.resumable)
        sink.abandon(keep=_resumable(exc, stream, sink))
        raise


def _settle(worker: Optional[Worker], resumable: bool) -> None:
    """Before a failed job's output is abandoned: no write may still be in flight (the
    last checkpoint must see the final size, and the fd is closed next). Buffers already
    handed over are written first when the .part is kept for a resume."""
    if worker is None:
        return
    try:
        if resumable:
            worker.drain()
    except BaseException:  # cleanup only: the job's own failure is what is reported
        pass
    finally:
        worker.close()


def _safe_disk(sink: Any, url: str, opts: Options) -> Any:
    """Every in-place write (devices, --in-place files) goes through SafeDisk: format and
    size guards, the first MiB zeroed first and written last, read-back on request."""
    from .disk import SafeDisk
    return SafeDisk(sink, preserve_on_error=opts.preserve_on_error,
                    allow_any_format=opts.allow_any_format,
                    verify_written=opts.verify_written, emit=_reporter(url, opts))


def _reporting(sink: Any, url: str, opts: Options) -> Any:
    """A .part sink reports what it did with an earlier run's leftovers."""
    sink.emit = _reporter(url, opts)
    return sink


def _reporter(url: str, opts: Options) -> Callable[..., None]:
    """The sinks' event callback: their events carry the URL like the stream's."""
    def report(name: str, **fields: Any) -> None:
        if wants_events(opts):
            emit(opts.on_event, name, url=url, **fields)
    return report


def _move(stream: Stream, pipeline: _Pipeline, progress: Optional[Callable[[Stream], None]],
          splicer: Optional[Splicer]) -> None:
    """Every byte from the stream to the output. Plain HTTP into a file: the kernel
    splices socket -> pipe -> file. Otherwise receive into a ring of buffers while the
    worker thread takes each one: the stream hands it over (its `hasher`) to be hashed --
    and decoded and written, with a decoder; else this thread writes it meanwhile --
    or, with nothing to hash or decode (TLS, chunked), it is handed over to be written."""
    ring = [memoryview(bytearray(WRITE_BUFFER)) for _ in range(RING_BUFFERS)]
    turn = 0
    while True:
        worker = pipeline.worker
        if splicer is not None and pipeline.sink.splice_ready:
            if worker is not None:     # queued writes land before spliced bytes;
                worker.drain(keep=worker.behind_splice)   # a FileHasher may trail
            size = stream.splice_to(splicer, WRITE_BUFFER)
            if size > 0:
                pipeline.spliced(size)
                _report(progress, stream)
                continue
        if worker is None:
            worker = pipeline.worker = Worker(consume=pipeline.write)
        worker.drain(keep=RING_BUFFERS - 1)   # the buffer about to be reused is done
        view = ring[turn]
        size = stream.readinto(view)
        if not size:
            worker.drain()
            return
        if stream.hasher is not worker:
            worker.update(view[:size])        # written off this thread
        elif pipeline.decoder is None:
            pipeline.write(view[:size])       # written here while the worker hashes it
        turn = (turn + 1) % RING_BUFFERS
        _report(progress, stream)


def _report(progress: Optional[Callable[[Stream], None]], stream: Stream) -> None:
    if progress is not None:
        progress(stream)


def check_invariants(stream: Stream, delivered: int, splicer: Optional[Splicer] = None,
                     sink: Any = None, written: Optional[int] = None) -> None:
    """At the end of a job, before the output is kept: every byte received was delivered
    exactly once. A failure here is a rawfetch bug, reported instead of a wrong file."""
    problems = []
    left = splicer.pending() if splicer is not None else 0
    if left:
        problems.append("%d bytes left in the splice pipe" % left)
    if delivered != stream.offset:
        problems.append("%d bytes delivered but the stream is at %d" % (delivered, stream.offset))
    if stream.size is not None and stream.offset != stream.size:
        problems.append("stream at %d of %d bytes" % (stream.offset, stream.size))
    hashed = getattr(stream.hasher, "position", delivered)
    if hashed != delivered:
        problems.append("%d bytes hashed of %d delivered" % (hashed, delivered))
    if sink is not None and written is not None:
        position = sink.position()
        if position is not None and position != written:
            problems.append("%s is at %d, expected %d" % (sink.path, position, written))
    if problems:
        raise InvariantViolation("byte accounting does not add up (%s); the output was not "
                                 "kept" % "; ".join(problems), url=stream.url)


def _resumable(exc: BaseException, stream: Stream, sink: Any) -> bool:
    if not sink.resumable or stream.offset == 0:
        return False
    if isinstance(exc, (ChecksumMismatch, ResourceChanged, DecompressError,
                        InvariantViolation)):
        return False
    if isinstance(exc, ProtocolError) and not exc.retryable:
        return False
    return stream.resumable


def segments_summary(segments: List[Segment]) -> str:
    """'mirror-a: 0-1048575, mirror-b: 1048576-...' for logs and the command."""
    return ", ".join("%s: %d-%d" % (s.url, s.start, s.end - 1) for s in segments)
