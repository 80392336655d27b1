"""A Metalink as a download's input (issue 24): read it (a path, or a URL fetched with
the job's own engine and budget), choose its file, and merge it with the operator's URL,
mirrors and checksum (sources.merge_sources). job.resolve() calls it only for a Metalink
job, and makes the result the Job that files.download() runs.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Tuple

from ..events import emit, wants_events
from ..options import Options
from . import File, Metalink, parse
from .sources import Sources, merge_sources

REMOTE_SCHEMES = ("http://", "https://")


def merge_metalink(url: Optional[str], mirrors: Sequence[str], opts: Options, budget: Any,
                   output: Optional[str], engine: Any) -> Tuple[Sources, Options]:
    """Read the Metalink (with the engine's open_stream), choose its file, fetch a
    --checksum-url entry for it (engine.with_checksum_file), merge (an explicit checksum
    that contradicts the Metalink's hash of the same algorithm is a MetalinkError, exit
    98). Returns the merged sources and the options without the Metalink's fields."""
    document = read(opts.metalink, opts, budget, engine.open_stream)
    item = choose(document, opts.metalink_name, output)
    place = opts.metalink_location
    first = merge_sources(item, url, mirrors, None, place)
    opts = engine.with_checksum_file(first.urls[0], opts.replace(
        metalink=None, metalink_name=None, metalink_location=None), budget)
    sources = merge_sources(item, url, mirrors, opts.checksum, place)
    if wants_events(opts):
        emit(opts.on_event, "metalink", url=sources.urls[0], file=item.name, size=sources.size,
             mirrors=len(sources.urls), checksum=sources.checksum is not None,
             pieces=sources.pieces.count if sources.pieces else 0,
             piece_length=sources.pieces.length if sources.pieces else None)
    return sources, opts


def read(where: str, opts: Options, budget: Any, open_stream: Callable[..., Any]) -> Metalink:
    """A path is read from disk; an http(s) URL is fetched like a checksum file: the
    job's options, retries and max_time, plain bytes (no decoder), and never more than
    MAX_DOCUMENT_BYTES + 1 bytes are read before it is refused."""
    if not where.lower().startswith(REMOTE_SCHEMES):
        return parse(where)
    plain = opts.replace(metalink=None, metalink_name=None, metalink_location=None,
                         checksum=None, checksum_url=None,
                         checksum_name=None, decompress="none", gunzip=False)
    with open_stream(where, plain, budget=budget) as stream:
        return parse(stream)


def choose(document: Metalink, name: Optional[str], output: Optional[str]) -> File:
    """--metalink-name; else the one file named like the output; else the only file."""
    if name is None and output is not None and len(document.files) > 1:
        base = os.path.basename(output)
        named = [item for item in document.files if os.path.basename(item.name) == base]
        if len(named) == 1:
            return named[0]
    return document.choose(name)
