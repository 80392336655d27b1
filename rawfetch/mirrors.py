"""Mirror selection: which URL the next attempt goes to, and why.

Mirrors are tried in the order arranged here. One that fails permanently (404,
certificate, NXDOMAIN...) hands over at once; a flaky one after its share of the retry
budget, and may come back in turn (that decision is retry.py's). The resume rules across
mirrors live in judge.py.
"""
from __future__ import annotations

import random
from typing import List, Optional, Sequence, Set


class MirrorSet:
    """The mirror list of one job, the one in use, and those that failed for good; when
    to move on is retry.py's decision (Budget.decide)."""

    def __init__(self, url: str, mirrors: Sequence[str] = (), order: str = "ordered",
                 seed: Optional[str] = None) -> None:
        self.urls: List[str] = arrange([url] + [m for m in mirrors if m != url], order, seed)
        self.current = self.urls[0]
        self.failures = 0        # consecutive failures of the current mirror
        self._dead: Set[str] = set()

    def __len__(self) -> int:
        return len(self.urls)

    def drop_current(self) -> None:
        """The current mirror failed for good: it gets no turn again."""
        self._dead.add(self.current)

    def following(self) -> Optional[str]:
        """Move to the next mirror still alive, walking the list from the current one and
        wrapping around; None (and no move) when there is no other one."""
        alive = [u for u in self.urls if u not in self._dead]
        if not alive or alive == [self.current]:
            return None
        index = self.urls.index(self.current)
        self.current = next(u for u in self.urls[index + 1:] + self.urls[:index + 1]
                            if u in alive)
        self.failures = 0
        return self.current


def arrange(urls: List[str], order: str, seed: Optional[str]) -> List[str]:
    """The order mirrors are tried in: as given; shuffled per run ("random"); or rotated by
    a hash of `seed` (else the host name) so a rack spreads over its mirrors the same way
    every boot ("hash"). Failover then walks the list from there, wrapping around."""
    if order == "random":
        shuffled = list(urls)
        random.shuffle(shuffled)
        return shuffled
    if order == "hash" and len(urls) > 1:
        if seed is None:
            import socket
            seed = socket.gethostname()
        start = random.Random("mirror-order:" + seed).randrange(len(urls))
        return urls[start:] + urls[:start]
    return list(urls)
