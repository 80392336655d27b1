"""Drive SafeDisk the way download() will, so its tests run before files.py plugs it in.

`feed()` is download()'s in-place path reduced to what SafeDisk sees: the same Stream
(with the sink's restart as the restart callback), expect_size when the length is known
and nothing is decompressed, write() per received chunk, commit() or abandon().
Run as `python -m tests.disk_helpers URL TARGET` it prints the bytes written after every
write (the kill test reads those lines to know when to SIGKILL it).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional

from rawfetch.disk import SafeDisk
from rawfetch.options import Options
from rawfetch.output import InPlace
from rawfetch.resume import Stream

CHUNK = 64 * 1024   # many writes per MiB, so the held head fills across write() calls


def feed(url: str, target: str, events: Optional[List[Dict[str, Any]]] = None,
         progress: Optional[Callable[[SafeDisk], None]] = None,
         on_disk_event: Optional[Callable[[str], None]] = None, **options: Any) -> SafeDisk:
    """Download `url` onto the existing `target` through SafeDisk. Stream and disk
    events land in `events` in order; `on_disk_event(name)` runs inside the emit call
    (a test alters the target there, between two steps)."""
    if events is not None:
        options.setdefault("on_event", events.append)
    opts = Options(**options)

    def emit(name: str, **fields: Any) -> None:
        if events is not None:
            events.append(dict(fields, event=name))
        if on_disk_event is not None:
            on_disk_event(name)

    sink = SafeDisk(InPlace(target), preserve_on_error=opts.preserve_on_error,
                    allow_any_format=opts.allow_any_format,
                    verify_written=opts.verify_written, emit=emit)
    sink.open()
    stream = _stream(url, opts, sink)
    try:
        stream.start()
        if stream.size is not None:
            sink.expect_size(stream.size)
        _copy(stream, sink, progress)
        sink.commit(sink.taken)
    except BaseException:
        stream.close()
        sink.abandon(keep=False)
        raise
    return sink


class _Consumer:
    """download()'s pipeline as the Stream sees it: record an identity, restart."""

    def __init__(self, sink: SafeDisk) -> None:
        self.sink = sink

    def record(self, identity: Any) -> None:
        if identity != self.sink.recorded:
            self.sink.record(identity)

    def restart(self) -> None:
        self.sink.restart()


def _stream(url: str, opts: Options, sink: SafeDisk) -> Stream:
    """Stream(consumer=) on main since the resume split; Stream(restart=) before it.
    Gone when these tests call download() itself."""
    import inspect
    if "consumer" in inspect.signature(Stream).parameters:
        return Stream(url, opts, consumer=_Consumer(sink))
    return Stream(url, opts, restart=sink.restart)  # type: ignore[call-arg]


def _copy(stream: Stream, sink: SafeDisk, progress: Optional[Callable[[SafeDisk], None]]
          ) -> None:
    view = memoryview(bytearray(CHUNK))
    while True:
        size = stream.readinto(view)
        if stream.identity is not None and stream.identity != sink.recorded:
            sink.record(stream.identity)
        if not size:
            return
        sink.write(view[:size])
        if progress is not None:
            progress(sink)


def _print_position(sink: SafeDisk) -> None:
    print(sink.taken, flush=True)


if __name__ == "__main__":
    feed(sys.argv[1], sys.argv[2], progress=_print_position, idle_timeout=120.0, retries=0)
