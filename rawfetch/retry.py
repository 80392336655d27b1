"""The whole retry decision of one job, in the spirit of urllib3's Retry: for each failed
attempt one call answers "retry here after a backoff", "hand over to mirror M" or "give
up" -- never more attempts than `retries`, never a sleep past max_time.

RetryPolicy is the immutable count with history; Budget is one job's attempts (splay,
deadline, rate limit) over it. A job may fetch more than one thing (a checksum file,
then the image): they share one Budget, so one `retries` and one `max_time` bound it all.
Which mirror comes next in turn is mirrors.py's arrangement; when to leave one is here.
"""
from __future__ import annotations

import random
from typing import Any, Callable, NamedTuple, Optional, Tuple

from . import timing
from .errors import (ChecksumFileError, ChecksumMismatch, DeadlineExceeded, DecompressError,
                     FetchError, HTTPStatusError, InvalidRequest, InvariantViolation,
                     LocalWriteError, PieceMismatch, ReadBackMismatch, ResourceChanged,
                     UnsupportedImageFormat)
from .mirrors import MirrorSet
from .options import Options
from .timing import Deadline, RateLimiter

MAX_RETRY_AFTER = 120.0       # s; a master node's Retry-After is honoured up to 2 min
                              # (urllib3 caps at 6 h; cloud-init's uncapped wait parks nodes)
PROGRESS_REFUND = 1 << 20     # an attempt that delivered >= 1 MiB new bytes is not charged
MAX_HISTORY = 64              # failures kept in full: fuel-agent retries for ever (retries 0),
                              # so history must not grow per attempt; counts are kept apart


class Attempt(NamedTuple):
    """One failed attempt, as kept in RetryPolicy.history (the last MAX_HISTORY of them)."""
    error: str          # error class name
    message: str
    offset: int         # bytes delivered when it failed
    elapsed: float      # seconds since the job started
    charged: bool       # whether it used up one of the retries
    progress: int = 0   # new bytes this attempt delivered before failing


class RetryPolicy:
    """Immutable retry budget with history (in the spirit of urllib3's Retry).

    `retries` failed attempts are allowed over the whole job; an attempt that moved the
    download forward by PROGRESS_REFUND bytes is recorded but not charged, so a long
    transfer over a link that drops now and then completes, while a server that answers
    and closes burns the budget at once. Backoff: full jitter, exponential from
    retry_delay, capped at retry_max_delay, counted over consecutive failures (and none
    right after an attempt that delivered bytes); a
    Retry-After is a floor the jitter is added to, so a rack told "1 s" does not return
    in one burst. jitter=False (deterministic sleeps) exists to measure herd effects.
    `history` holds only the last MAX_HISTORY failures; `failures`, `charged` and the
    backoff streak count the whole job, so a retry-for-ever job runs in flat memory.
    """

    __slots__ = ("retries", "retry_delay", "retry_max_delay", "history", "jitter", "_random",
                 "failures", "_charged", "_streak")

    def __init__(self, retries: int = 10, retry_delay: float = 1.0,
                 retry_max_delay: float = 30.0, history: Tuple[Attempt, ...] = (),
                 rng: Optional[random.Random] = None, jitter: bool = True) -> None:
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_max_delay = retry_max_delay
        self.history = tuple(history)[-MAX_HISTORY:]   # the most recent failures, oldest first
        self.jitter = jitter
        self._random = rng or random.Random()
        self.failures = len(history)                   # every failure recorded, kept or not
        self._charged = sum(1 for attempt in history if attempt.charged)
        self._streak = _trailing_charged(history)      # consecutive charged failures, newest last

    @classmethod
    def from_options(cls, options: Options) -> "RetryPolicy":
        return cls(options.retries, options.retry_delay, options.retry_max_delay,
                   jitter=options.retry_jitter)

    @property
    def charged(self) -> int:
        """Failures that used up a retry, over the whole job (not only those in history)."""
        return self._charged

    @property
    def exhausted(self) -> bool:
        return self.charged > self.retries

    def increment(self, error: FetchError, offset: int, elapsed: float,
                  progress: int) -> "RetryPolicy":
        """A new policy with this failure recorded (history keeps the last MAX_HISTORY)."""
        attempt = Attempt(type(error).__name__, str(error.message), offset, round(elapsed, 3),
                          progress < PROGRESS_REFUND, progress)
        later = RetryPolicy(self.retries, self.retry_delay, self.retry_max_delay,
                            self.history[-(MAX_HISTORY - 1):] + (attempt,), self._random,
                            self.jitter)
        later.failures = self.failures + 1
        later._charged = self._charged + attempt.charged
        later._streak = self._streak + 1 if attempt.charged else 0
        return later

    def backoff(self, retry_after: Optional[float] = None) -> float:
        """Seconds to sleep before the next attempt: none right after an attempt that
        delivered new bytes (a cut in a transfer is not a sign of an overloaded server;
        if the next attempt gets nothing, backoff resumes), else full jitter over the
        exponential ceiling of consecutive failures."""
        if retry_after is None and self.history and self.history[-1].progress > 0:
            return 0.0
        exponent = min(max(self._streak - 1, 0), 64)
        ceiling = min(self.retry_max_delay, self.retry_delay * (2 ** exponent))
        if retry_after is not None:
            floor = min(retry_after, MAX_RETRY_AFTER)
            return floor + (self._random.uniform(0, ceiling) if self.jitter else 0.0)
        return self._random.uniform(0, ceiling) if self.jitter else ceiling

    def __repr__(self) -> str:
        return "RetryPolicy(retries=%d, used=%d, failures=%d)" % (
            self.retries, self.charged, self.failures)


def _trailing_charged(history: Tuple[Attempt, ...]) -> int:
    """How many failures at the end of `history` were charged, one after another."""
    streak = 0
    for attempt in reversed(history):
        if not attempt.charged:
            break
        streak += 1
    return streak


# Errors no other attempt or mirror can fix: the caller's input, the local side, the verdict.
FINAL_ERRORS = (InvalidRequest, LocalWriteError, ChecksumMismatch, ResourceChanged,
                InvariantViolation, DecompressError, ReadBackMismatch, UnsupportedImageFormat,
                ChecksumFileError)

RETRY = "retry"          # the same mirror again, after `delay` seconds
HAND_OVER = "hand over"  # the next attempt goes to `mirror`, at once
GIVE_UP = "give up"      # raise the error, its message extended by `note`


class Decision(NamedTuple):
    """What to do after one failed attempt."""
    action: str
    delay: float = 0.0
    mirror: Optional[str] = None
    note: str = ""


class Budget:
    """One job's attempts: counts them, records failures in an immutable RetryPolicy, and
    decides after each failure (decide) within the retries count and the deadline."""

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

    def failed(self, error: FetchError, offset: int, progress: int,
               emit: Callable[..., Any]) -> None:
        """Record a failed attempt (`progress` new bytes delivered before it) and report it."""
        self.record(error, offset, progress)
        emit("error", error=type(error).__name__, message=error.message, offset=offset,
             retryable=error.retryable, attempt=self.count)

    def recover(self, error: FetchError, mirrors: MirrorSet, offset: int, progress: int,
                emit: Callable[..., Any]) -> None:
        """After a failed attempt: record it, then raise it (give up), move `mirrors` on
        (hand over), or sleep the backoff (retry here) -- whatever decide() says."""
        self.failed(error, offset, progress, emit)
        previous = mirrors.current
        decision = self.decide(error, mirrors)
        if decision.action == GIVE_UP:
            error.message += decision.note
            raise error
        if decision.action == HAND_OVER:
            emit("mirror", url=previous, previous=previous, mirror=decision.mirror,
                 offset=offset, why=type(error).__name__)
            return
        emit("backoff", seconds=round(decision.delay, 3), attempt=self.count)
        timing.sleep(decision.delay)

    def decide(self, error: FetchError, mirrors: MirrorSet) -> Decision:
        """After `error` was recorded: retry here, hand over, or give up. A final error
        gives up at once; a mirror that failed for good (or used its share of the
        retries) hands over while the budget lasts; else a backoff that must end
        before max_time, or give up."""
        if isinstance(error, (DeadlineExceeded,) + FINAL_ERRORS):
            return Decision(GIVE_UP)
        if not self.exhausted:
            following = self._handover(error, mirrors)
            if following is not None:
                return Decision(HAND_OVER, mirror=following)
        if not error.retryable:
            return Decision(GIVE_UP)
        if self.exhausted:
            return Decision(GIVE_UP, note=" (gave up after %d attempts)" % self.count)
        retry_after = error.retry_after if isinstance(error, HTTPStatusError) else None
        delay = self.policy.backoff(retry_after)
        left = self.deadline.remaining()
        if left is not None and delay >= left:
            return Decision(GIVE_UP, note=" (no time left for another attempt within "
                                          "max_time)")
        return Decision(RETRY, delay=delay)

    def _handover(self, error: FetchError, mirrors: MirrorSet) -> Optional[str]:
        """The mirror the next attempt goes to, or None to stay: one that failed for good
        is dropped at once, a flaky one after its share of the retries, one that sent a
        bad piece at once (it may come back in turn)."""
        if len(mirrors) < 2:
            return None
        if not error.retryable:
            mirrors.drop_current()
        elif not isinstance(error, PieceMismatch):  # bad bytes: the next mirror at once
            mirrors.failures += 1
            if mirrors.failures < share(self.policy.retries, len(mirrors)):
                return None
        return mirrors.following()


def share(retries: int, mirrors: int) -> int:
    """Consecutive failures one mirror may use before the next one gets a turn."""
    return max(1, (retries + 1) // mirrors)
