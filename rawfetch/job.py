"""What one download runs: the URL list, the options (carrying the whole-file checksum),
the size every mirror must serve and the piece hashes, once a checksum file and a
Metalink (if any) are merged in. A plain job never loads the Metalink reader.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

from .errors import MetalinkError
from .options import Options


class Job(NamedTuple):
    """One download's inputs once a Metalink (if any) is merged in."""
    url: str
    mirrors: Tuple[str, ...]
    options: Options
    size: Optional[int]          # the Metalink's <size>: the total every mirror must serve
    pieces: Any                  # the metalink.Pieces to verify with (None: none)


class Engine(NamedTuple):
    """resume.py's two readers, passed in (this module and metalink.wire sit below it)."""
    with_checksum_file: Callable[[str, Options, Any], Options]
    open_stream: Callable[..., Any]


def resolve(url: Optional[str], mirrors: Sequence[str], opts: Options, budget: Any,
            output: Optional[str], engine: Engine) -> Job:
    """The job for `url`/`mirrors` under `opts`: as given (the checksum file, if any,
    read first), or merged with the Metalink's file (metalink.wire.merge_metalink)."""
    if opts.metalink is None:
        if url is None:
            raise MetalinkError("no URL and no Metalink: nothing to download")
        return Job(url, tuple(mirrors), engine.with_checksum_file(url, opts, budget), None,
                   None)
    # lazily: the Metalink reader (expat, dataclasses, the piece modules) would cost every
    # plain job ~18 ms and ~6 MiB at start-up (bench baseline); no cycle: wire imports
    # nothing of this module
    from .metalink.wire import merge_metalink
    sources, opts = merge_metalink(url, mirrors, opts, budget, output, engine)
    return Job(sources.urls[0], sources.urls[1:], opts.replace(checksum=sources.checksum),
               sources.size, sources.pieces)
