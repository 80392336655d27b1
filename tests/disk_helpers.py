"""Drive download()'s in-place path (SafeDisk) the way the disk tests need it.

`feed()` is rawfetch.download(url, target, in_place=True) with its events collected, a
hook run inside each event (a test alters the target between two steps there), and the
outcome the tests assert on. Run as `python -m tests.disk_helpers URL TARGET` it prints
the bytes written after every write (the kill test reads those lines to know when to
SIGKILL it).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import rawfetch


class Outcome(NamedTuple):
    taken: int                        # bytes written to the target
    readback_seconds: Optional[float]


def feed(url: str, target: str, events: Optional[List[Dict[str, Any]]] = None,
         progress: Optional[Callable[[Any], None]] = None,
         on_disk_event: Optional[Callable[[str], None]] = None, **options: Any) -> Outcome:
    """Download `url` onto the existing `target`; events land in `events` in order and
    `on_disk_event(name)` runs inside each one; `progress(stream)` after each write."""
    seen: List[Dict[str, Any]] = [] if events is None else events

    def on_event(event: Dict[str, Any]) -> None:
        seen.append(event)
        if on_disk_event is not None:
            on_disk_event(event["event"])

    result = rawfetch.download(url, target, in_place=True, on_event=on_event,
                               progress=progress, **options)
    done = [e for e in seen if e["event"] == "done"]
    return Outcome(result.written, done[-1]["readback_seconds"])


def flip_byte_after(event_name: str, path: str, offset: int, original: int
                    ) -> Callable[[str], None]:
    """An on_disk_event hook: once `event_name` happened, change the byte at `offset`
    behind rawfetch's back (another writer; a device that does not keep what it got)."""
    import os

    def hook(name: str) -> None:
        if name == event_name:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, bytes([original ^ 0xFF]), offset)
                os.fsync(fd)
            finally:
                os.close(fd)
    return hook


def _print_position(stream: Any) -> None:
    print(stream.offset, flush=True)


if __name__ == "__main__":
    feed(sys.argv[1], sys.argv[2], progress=_print_position, idle_timeout=120.0, retries=0)
