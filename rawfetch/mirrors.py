"""Mirror selection: which URL the next attempt goes to, and why.

Mirrors are tried in order. One that fails permanently (404, certificate, NXDOMAIN...)
hands over at once; a flaky one after its share of the retry budget, and may come back
in turn. The resume rules across mirrors live in judge.py.
"""
from __future__ import annotations

import random
from typing import List, Optional, Sequence, Set, Tuple

from .errors import FetchError


class MirrorSet:
    """The mirror list of one job and the one in use."""

    def __init__(self, url: str, mirrors: Sequence[str] = (), order: str = "ordered",
                 seed: Optional[str] = None) -> None:
        self.urls: List[str] = arrange([url] + [m for m in mirrors if m != url], order, seed)
        self.current = self.urls[0]
        self._dead: Set[str] = set()
        self._failures = 0       # consecutive failures of the current mirror

    def __len__(self) -> int:
        return len(self.urls)

    def after_failure(self, error: FetchError, retries: int) -> Optional[Tuple[str, str]]:
        """Record `error` on the current mirror; return (previous, next) when the next
        attempt should go to another mirror, None to stay."""
        if len(self.urls) < 2:
            return None
        if not error.retryable:
            self._dead.add(self.current)
        else:
            self._failures += 1
            if self._failures < self.share(retries):
                return None
        alive = [u for u in self.urls if u not in self._dead]
        if not alive or alive == [self.current]:
            return None
        index = self.urls.index(self.current)
        following = next(u for u in self.urls[index + 1:] + self.urls[:index + 1] if u in alive)
        previous, self.current = self.current, following
        self._failures = 0
        return previous, following

    def share(self, retries: int) -> int:
        """Consecutive failures one mirror may use before the next one gets a turn."""
        return max(1, (retries + 1) // len(self.urls))


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
