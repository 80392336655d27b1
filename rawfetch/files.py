"""download(): the file appears only when complete and verified; resumable across runs.

Bytes go to PATH.part; PATH.part.json (the sidecar) records the URL, the object's
identity (length, ETag, Last-Modified) and how many bytes were fsynced, so a later run can
resume with If-Range (sidecar.py). PATH.part.lock keeps a second process off the same
output (lock.py). On success: fsync, verify, rename onto PATH, fsync the directory, drop
the sidecar. Devices
(and in_place files) are written directly instead; a decoder (gzip, xz, bzip2, auto)
decompresses on the way.

One page, top-down: options -> sink -> stream -> pipeline -> result (download()). The
command's -o - takes the same path with a stdout sink (to_stdout()).
"""
from __future__ import annotations

import os
import stat
from typing import Any, Callable, List, Optional, Sequence

from . import timing
from .digest import parse_checksum
from .events import emit, reporter, wants_events
from .job import Job, resolve
from .options import Options, make_options
from .pipeline import Pipeline, StdoutSink, check_invariants
from .result import DownloadResult
from .resume import ENGINE, Segment, Stream
from .retry import Budget
from .sinks import SafeDisk, open_output

__all__ = ["download", "to_stdout", "DownloadResult", "check_invariants",
           "segments_summary"]


def download(url: Optional[str], path: Any, *, urls: Sequence[str] = (),
             options: Optional[Options] = None,
             progress: Optional[Callable[[Stream], None]] = None,
             **kwargs: Any) -> DownloadResult:
    """Download `url` (or the same object from mirrors `urls`) to `path`.

    `progress(stream)` is called after each write (the command's progress line uses it).
    With `metalink=` (a .meta4 path or URL) `url` may be None: the Metalink's mirrors,
    size, whole-file hash and piece hashes are merged in (docs/metalink.md).
    """
    opts = make_options(options, kwargs)
    path = os.fspath(path)
    budget = Budget(opts)
    job = resolve(url, urls, opts, budget, path, ENGINE)
    url, opts = job.url, job.options
    if _delta_applies(job, path):
        return _reimage(job, path, budget)
    sink = open_output(path, url, opts.in_place, resumable=opts.decompress == "none")
    sink = _safe_disk(sink, url, opts) if sink.in_place else _reporting(sink, url, opts)
    return _transfer(job, budget, sink, path, progress)


def to_stdout(url: Optional[str], *, urls: Sequence[str] = (), options: Optional[Options] = None,
              progress: Optional[Callable[[Stream], None]] = None) -> DownloadResult:
    """The command's -o -: the same pipeline into fd 1. Bytes written cannot be taken
    back, so a change of the object mid-stream is an error (exit 91), never a duplicate;
    a checksum mismatch is reported at the end (exit 90)."""
    opts = make_options(options, {})
    budget = Budget(opts)
    job = resolve(url, urls, opts, budget, None, ENGINE)
    return _transfer(job, budget, StdoutSink(), None, progress)


def _transfer(job: Job, budget: Budget, sink: Any, path: Optional[str],
              progress: Optional[Callable[[Stream], None]]) -> DownloadResult:
    """sink -> stream -> pipeline -> result. A file (`path`) restarts from zero when the
    object changes and reports `done`; a stream (stdout, path None) cannot."""
    url, opts = job.url, job.options
    held, identity = sink.open()      # locked from here: one writer per output
    pipeline = None
    try:
        if job.pieces is not None:
            held = _verified_held(job, sink, held)
        checksum = parse_checksum(opts.checksum)
        pipeline = Pipeline(sink, opts, checksum, held, size=job.size, pieces=job.pieces)
        stream = Stream(url, opts, offset=held, identity=identity, restartable=path is not None,
                        checksum=checksum, mirrors=job.mirrors, budget=budget)
        stream.pieces_checked = pipeline.check is not None
        readback = pipeline.run(stream, progress)
    except BaseException:
        sink.abandon(keep=True)   # a no-op after run()'s own; else unlocks, keeps the .part
        raise
    finally:
        if pipeline is not None:
            pipeline.close()
    result = DownloadResult(path or sink.path, url, stream.offset, pipeline.written,
                            stream.attempts, stream.restarts, held,
                            round(timing.now() - stream.started, 3), pipeline.digest,
                            stream.history, tuple(stream.segments))
    if path is not None and wants_events(opts):
        emit(opts.on_event, "done", url=url, path=path, bytes=result.bytes,
             written=result.written, digest=result.digest, attempts=result.attempts,
             elapsed=result.elapsed, refetched=stream.refetched, restarts=result.restarts,
             segments=[list(s) for s in result.segments], readback_seconds=readback,
             decompress=pipeline.decoder.kind if pipeline.decoder is not None else "none")
    return result


def _delta_applies(job: Job, path: str) -> bool:
    """Delta re-imaging (docs/delta.md): a Metalink with pieces and a size, written in
    place (--in-place, or a block device) onto a target that exists, bytes as published
    (no decoder: the pieces hash the published bytes, not what a decoder writes)."""
    if job.pieces is None or job.size is None or job.options.decompress != "none":
        return False
    if not os.path.exists(path):
        return False
    return job.options.in_place or stat.S_ISBLK(os.stat(path).st_mode)


def _reimage(job: Job, path: str, budget: Budget) -> DownloadResult:
    """The delta path (docs/delta.md)."""
    # lazily, like every Metalink module (job.resolve): no cycle, reimage imports no files
    from .metalink.sources import Sources
    from .reimage import Reimage
    sources = Sources((job.url,) + tuple(job.mirrors), job.options.checksum, job.size,
                      job.pieces)
    return Reimage(path, sources, job.options, budget).run()


def _verified_held(job: Job, sink: Any, held: int) -> int:
    """An earlier run's bytes checked piece by piece (piececheck.verify_held)."""
    from .piececheck import verify_held   # lazily, like every Metalink module (job.resolve)
    return verify_held(job.pieces, job.size, sink, held, reporter(job.options))


def _safe_disk(sink: Any, url: str, opts: Options) -> Any:
    """Every in-place write (devices, --in-place files) goes through SafeDisk: format and
    size guards, the first MiB zeroed first and written last, read-back on request."""
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


def segments_summary(segments: List[Segment]) -> str:
    """'mirror-a: 0-1048575, mirror-b: 1048576-...' for logs and the command."""
    return ", ".join("%s: %d-%d" % (s.url, s.start, s.end - 1) for s in segments)
