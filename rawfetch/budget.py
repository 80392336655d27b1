"""One job's attempts: the retry policy, the max_time deadline and the sleeps between.

A job may fetch more than one thing (a checksum file, then the image): they share one
Budget, so one `retries` count and one `max_time` bound the whole job.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Optional

from .errors import FetchError, HTTPStatusError
from .options import Options
from .policy import RetryPolicy
from . import timing
from .timing import Deadline, RateLimiter


class Budget:
    """Counts attempts, records failures in an immutable RetryPolicy, and sleeps the
    backoff only when the deadline leaves room for another attempt."""

    def __init__(self, options: Options, deadline: Optional[Deadline] = None) -> None:
        self.policy = RetryPolicy.from_options(options)
        self.deadline = deadline or Deadline(options.max_time)
        self.limiter = RateLimiter(options.limit_rate) if options.limit_rate else None
        self.started = timing.now()
        self.count = 0          # attempts started
        self._splay = options.splay
        self._splay_seed = options.splay_seed

    def begin(self, emit: Callable[..., Any]) -> int:
        """Start an attempt; before the job's first one, wait the splay."""
        if self.count == 0 and self._splay:
            self._wait_splay(emit)
        self.count += 1
        return self.count

    def _wait_splay(self, emit: Callable[..., Any]) -> None:
        """A random start delay in [0, splay] (deterministic with splay_seed, so a rack
        spreads the same way every boot), inside max_time."""
        rng = random.Random(self._splay_seed) if self._splay_seed is not None else random
        delay = rng.uniform(0, self._splay)
        emit("splay", seconds=round(delay, 3), seeded=self._splay_seed is not None)
        left = self.deadline.remaining()
        if left is not None and delay >= left:
            timing.sleep(max(left, 0.0))
            self.deadline.check()
        timing.sleep(delay)

    def elapsed(self) -> float:
        return timing.now() - self.started

    @property
    def exhausted(self) -> bool:
        return self.policy.exhausted

    def record(self, error: FetchError, offset: int, progress: int) -> None:
        """One failed attempt: `progress` new bytes delivered before it failed."""
        self.policy = self.policy.increment(error, offset, self.elapsed(), progress)

    def pause(self, error: FetchError, emit: Callable[..., Any]) -> None:
        """Sleep the backoff before the next attempt, or raise `error` when the next
        attempt could not start before max_time."""
        retry_after = error.retry_after if isinstance(error, HTTPStatusError) else None
        delay = self.policy.backoff(retry_after)
        left = self.deadline.remaining()
        if left is not None and delay >= left:
            error.message += " (no time left for another attempt within max_time)"
            raise error
        emit("backoff", seconds=round(delay, 3), attempt=self.count)
        timing.sleep(delay)
