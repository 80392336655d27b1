"""The one clock and the time bounds built on it: max_time, curl's low-speed rule, the
rate limit.

Every read of the time and every wait in rawfetch goes through the module functions
below (now, wall, sleep, poll, wait). They ask the current Clock, the real one unless a
test installed another with use_clock(): the suite runs rawfetch on a virtual clock that
jumps to the next deadline when every thread is blocked (tests/vclock.py), so a 30 s
stall is asserted in milliseconds.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Deque, Iterator, List, Optional, Tuple

from .errors import DeadlineExceeded, LowSpeed

SPEED_SAMPLES = 10  # samples per speed_time window: enough resolution, constant memory
RATE_BURST = 1.0    # s; --limit-rate allows bursts of about one second's worth (curl's feel)
RATE_STEPS = 20     # a paced receive takes at least 1/20 s worth: bounded syscalls per second


class Clock:
    """The real clock. A substitute (a virtual clock) overrides every method."""

    def now(self) -> float:
        """Monotonic seconds: every deadline, timeout and elapsed time."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch: event stamps and HTTP dates only."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def poll(self, poller: Any, timeout: Optional[float]) -> List[Tuple[int, int]]:
        """select.poll().poll() with `timeout` in seconds (None = until ready)."""
        if timeout is None:
            return poller.poll()
        return poller.poll(int(max(timeout, 0.0) * 1000) + 1)

    def wait(self, event: threading.Event, timeout: Optional[float]) -> bool:
        """Wait for a helper thread's `event` (e.g. the DNS lookup) at most `timeout` s."""
        return event.wait(timeout)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Around a helper thread's work that another thread waits for: a virtual clock
        must not jump while it runs."""
        yield


_clock = Clock()


def clock() -> Clock:
    return _clock


def use_clock(new: Clock) -> Clock:
    """Install `new` as the clock of every later call; returns the previous one."""
    global _clock
    previous, _clock = _clock, new
    return previous


def now() -> float:
    return _clock.now()


def wall() -> float:
    return _clock.wall()


def sleep(seconds: float) -> None:
    _clock.sleep(seconds)


def poll(poller: Any, timeout: Optional[float]) -> List[Tuple[int, int]]:
    return _clock.poll(poller, timeout)


def wait(event: threading.Event, timeout: Optional[float]) -> bool:
    return _clock.wait(event, timeout)


def busy() -> Any:
    return _clock.busy()


class Deadline:
    """One absolute deadline (max_time) shared by every step of a job: DNS, connect,
    TLS, each recv, every retry and backoff sleep."""

    __slots__ = ("max_time", "at")

    def __init__(self, max_time: Optional[float] = None) -> None:
        self.max_time = max_time
        self.at = None if max_time is None else _clock.now() + max_time

    def remaining(self, now: Optional[float] = None) -> Optional[float]:
        if self.at is None:
            return None
        return self.at - (_clock.now() if now is None else now)

    def check(self, now: Optional[float] = None) -> None:
        if self.at is not None and (_clock.now() if now is None else now) >= self.at:
            raise DeadlineExceeded("max_time of %gs exceeded" % self.max_time)

    def bound(self, timeout: Optional[float], now: Optional[float] = None) -> Optional[float]:
        """The smaller of `timeout` and the time left (None = unbounded)."""
        left = self.remaining(now)
        if left is None:
            return timeout
        return left if timeout is None else min(timeout, left)


class SpeedMonitor:
    """curl's -Y/-y rule: fail when the average rate over the last `window` seconds is
    below `limit` bytes/s. Catches trickles that never trip the idle timeout."""

    __slots__ = ("limit", "window", "start", "total", "next_sample", "_step", "_samples")

    def __init__(self, limit: int, window: float, now: float) -> None:
        self.limit = limit
        self.window = window
        self.start = now
        self.total = 0
        self._step = window / SPEED_SAMPLES
        self.next_sample = now + self._step if limit > 0 else float("inf")
        self._samples: Deque[Tuple[float, int]] = deque([(now, 0)])

    def sample(self, now: float) -> None:
        """Record progress; raise LowSpeed when the window's average is too slow."""
        samples = self._samples
        samples.append((now, self.total))
        self.next_sample = now + self._step
        horizon = now - self.window
        while len(samples) > 2 and samples[1][0] <= horizon:
            samples.popleft()
        if now - self.start < self.window:
            return
        then, total_then = samples[0]
        rate = (self.total - total_then) / max(now - then, 1e-9)
        if rate < self.limit:
            raise LowSpeed("transfer slower than %d bytes/s for %gs (%.0f bytes/s)"
                           % (self.limit, self.window, rate))


class RateLimiter:
    """--limit-rate: a token bucket of `rate` bytes/s holding at most RATE_BURST seconds'
    worth, shared by every attempt of a job so the average holds over the transfer. It
    starts empty, so the first second is paced too. Pacing happens before a receive,
    never between a receive and the hand-over of its bytes."""

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.capacity = max(self.rate * RATE_BURST, 1.0)
        self.tokens = 0.0
        self.stamp: Optional[float] = None

    def _refill(self, now: float) -> None:
        if self.stamp is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def grant(self, want: int, deadline: Deadline) -> int:
        """Sleep until a receive may take bytes (within max_time); return how many it may
        take, 1 <= n <= want."""
        current = _clock.now()
        self._refill(current)
        need = min(float(want), max(self.rate / RATE_STEPS, 1.0))
        if self.tokens < need:
            delay = (need - self.tokens) / self.rate
            left = deadline.remaining(current)
            if left is not None and delay >= left:
                sleep(max(left, 0.0))
                deadline.check()
            sleep(delay)
            self._refill(_clock.now())
        return max(1, min(want, int(self.tokens)))

    def took(self, size: int) -> None:
        self.tokens -= size
