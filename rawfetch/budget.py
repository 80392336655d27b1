"""One job's attempts: the retry policy, the max_time deadline and the sleeps between.

A job may fetch more than one thing (a checksum file, then the image): they share one
Budget, so one `retries` count and one `max_time` bound the whole job.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from .errors import FetchError, HTTPStatusError
from .options import Options
from .policy import RetryPolicy
from .timing import Deadline


class Budget:
    """Counts attempts, records failures in an immutable RetryPolicy, and sleeps the
    backoff only when the deadline leaves room for another attempt."""

    def __init__(self, options: Options, deadline: Optional[Deadline] = None) -> None:
        self.policy = RetryPolicy.from_options(options)
        self.deadline = deadline or Deadline(options.max_time)
        self.started = time.monotonic()
        self.count = 0          # attempts started

    def begin(self) -> int:
        self.count += 1
        return self.count

    def elapsed(self) -> float:
        return time.monotonic() - self.started

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
        time.sleep(delay)
