"""How a Metalink and the operator's own URL, mirrors and checksum combine into one job
(issue 24; the rule is documented in docs/metalink.md, "How the inputs merge").

The operator's word comes first: explicit URLs keep their order ahead of the Metalink's
mirrors, and an explicit checksum wins. But two sources that contradict each other about
the same bytes are refused rather than one silently preferred: a checksum that disagrees
with the Metalink's hash of the same algorithm is a MetalinkError.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..errors import MetalinkError
from ..digest import parse_checksum
from . import HASH_TYPES, PRIORITY_RANGE, File, Pieces


@dataclass(frozen=True)
class Sources:
    """One job's inputs after the merge: the URL list in the order to try (the first is
    the primary URL, the rest its mirrors), the whole-file checksum ("algo:hex") or None,
    the expected size (None: unknown) and the piece list to verify with (None: none)."""
    urls: Tuple[str, ...]
    checksum: Optional[str]
    size: Optional[int]
    pieces: Optional[Pieces]


def merge_sources(item: File, url: Optional[str] = None, mirrors: Sequence[str] = (),
                  checksum: Optional[str] = None, location: Optional[str] = None) -> Sources:
    """Merge a Metalink's file with the explicit URL, mirrors and checksum.

    URLs: `url`, then `mirrors`, in the operator's order; then the Metalink's mirrors by
    priority (RFC 5854 4.2.16.1), those at `location` (ISO 3166-1 alpha-2) first among
    them; an exact duplicate appears once, at its first place. Checksum: the explicit
    one, which must agree with the Metalink's hash of its algorithm when there is one;
    without it, the Metalink's strongest hash."""
    urls: List[str] = []
    for candidate in [url] + list(mirrors) + _ranked(item, location):
        if candidate is not None and candidate not in urls:
            urls.append(candidate)
    pieces = item.best_pieces()
    return Sources(tuple(urls), _checksum(item, checksum), item.size, pieces)


def _ranked(item: File, location: Optional[str]) -> List[str]:
    """The Metalink's mirror URLs by priority, unranked last; `location`'s first."""
    last = PRIORITY_RANGE[1] + 1
    place = location.strip().lower() if location else None
    ranked = sorted(item.mirrors, key=lambda m: (place is not None and m.location != place,
                                                 last if m.priority is None else m.priority))
    return [mirror.url for mirror in ranked]


def _checksum(item: File, explicit: Optional[str]) -> Optional[str]:
    if explicit is None:
        return item.checksum()
    parsed = parse_checksum(explicit)   # InvalidRequest (exit 3) for a malformed one
    assert parsed is not None
    algorithm, digest = parsed
    for kind, published in item.hashes:
        if HASH_TYPES[kind][0] == algorithm and published != digest:
            raise MetalinkError("the checksum given (%s:%s) contradicts the Metalink's %s "
                                "hash of %s (%s): one of them is wrong, nothing was fetched"
                                % (algorithm, digest, kind, item.name, published))
    return "%s:%s" % (algorithm, digest)
