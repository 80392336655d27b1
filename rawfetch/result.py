"""What a download returns (files.download, reimage.run): one record, here so that both
can build it without importing each other."""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from .resume import Segment
from .retry import Attempt


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
